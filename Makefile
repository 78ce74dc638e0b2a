# advml: `make demo` runs the quick start, `make test` the tests; both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-advml
# the real CIFAR-10 files and triggers for tests and benchmarks (tests skip what is absent)
export ADVML_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test test-fast lint bench docs docs-serve wheel-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/advml demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check advml tests benchmarks tools
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/poison_speed.py
	$(BIN)/python benchmarks/trigger_speed.py

# the documentation site (mkdocs, offline): docs/ + pages generated from results/ -> site/
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# build the wheel, install it into a fresh venv, run `advml --version` and a tiny run there
wheel-check: setup
	bash tools/check_wheel.sh $(BIN)/python

clean:
	rm -rf $(VENV) runs .pytest_cache site
