#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it into a fresh venv (no editable install, no source
# tree on the path, no data folder), then run `advml --version` and one tiny run that reads a bundled trigger.
# Usage: tools/check_wheel.sh [python]   (default: .venv/bin/python, for building the wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
"$py" -m pip wheel -q --no-deps -w "$tmp/dist" .   # build isolation: the setuptools pyproject.toml asks for
rm -rf build
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "$tmp"/dist/advml-*.whl
mkdir "$tmp/work"
cd "$tmp/work"
unset ADVML_DATA_DIR PYTHONPATH
"$tmp/venv/bin/advml" --version
OMP_NUM_THREADS=1 "$tmp/venv/bin/advml" backdoor --attack blend_kitty --train-size 200 --test-size 100 --epochs 1 \
    --no-progress --out run >/dev/null
test -s run/metrics.json
echo "wheel: built, installed into a fresh venv and run (blend_kitty, bundled trigger) in $(( $(date +%s) - start )) s"
