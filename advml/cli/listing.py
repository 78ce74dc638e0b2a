"""`advml datasets | models | attacks | defenses | presets`: the registries, one line per name."""

from __future__ import annotations

from advml.cli.app import app, errors, print_registry


@app.command()
@errors
def datasets() -> None:
    """List the dataset registry."""
    from advml.data import DATASETS

    print_registry(DATASETS.describe())


@app.command()
@errors
def models() -> None:
    """List the model registry."""
    from advml.models import MODELS

    print_registry(MODELS.describe())


@app.command()
@errors
def attacks() -> None:
    """List the backdoor attacks, with what their poisoning rate means."""
    from advml.backdoor import ATTACKS

    print_registry(ATTACKS.describe())


@app.command()
@errors
def defenses() -> None:
    """List the backdoor defenses."""
    from advml.backdoor.defenses import DEFENSES

    print_registry(DEFENSES.describe())


@app.command()
@errors
def presets() -> None:
    """List the packaged settings presets (use with --preset): backdoor presets serve backdoor and detect runs."""
    from advml.experiments.base import PRESETS, preset_kind

    print_registry([(name, f"[{preset_kind(name)}] {text}") for name, text in PRESETS.describe()])
