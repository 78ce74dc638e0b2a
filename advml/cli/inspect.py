"""`advml triggers | stealth`: look at an attack's triggers, measure every attack's stealth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advml.cli.app import app, errors
from advml.errors import ConfigError

FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _data(dataset: str, data_dir: str | None, train_size: int | None, seed: int):
    from advml.data import load_dataset

    return load_dataset(dataset, data_dir, train_size=train_size, seed=seed)


@app.command()
@errors
def triggers(
    attack: Annotated[str, typer.Option(help="attack name (advml attacks)")],
    out: Annotated[Path, typer.Option(help="figure file (.png, .pdf, .svg)")],
    dataset: Annotated[str, typer.Option(help="dataset name")] = "sample",
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    n: Annotated[int, typer.Option(help="images shown")] = 8,
    train_size: Annotated[int | None, typer.Option(help="train images for attacks that train a clean model")] = None,
    seed: Annotated[int, typer.Option(help="which images, and the seed of attacks that train")] = 0,
    sets: Annotated[list[str] | None, typer.Option("--set", help="attack setting KEY=VALUE")] = None,
) -> None:
    """Draw clean, poisoned and amplified-residual images for one attack."""
    from advml.backdoor import build_attack
    from advml.backdoor.inspect import trigger_figure
    from advml.config import check_seed, parse_assignments

    if out.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(f"--out {out}: a figure file must end in {', '.join(FIGURE_FORMATS)}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a figure file name")
    if not 1 <= n <= 64:
        raise ConfigError(f"--n must be between 1 and 64 images, got {n}")
    check_seed(seed)
    built = build_attack(attack, **parse_assignments(sets or []))
    data = _data(dataset, data_dir, train_size, seed)
    if n > len(data.test):
        raise ConfigError(f"--n {n}: the test split has only {len(data.test)} images")
    figures = trigger_figure(built, data, out, n=n, seed=seed)
    typer.echo(f"wrote {out}  (" + ", ".join(f"{k} {v:.3g}" for k, v in figures.items() if v is not None) + ")")


@app.command()
@errors
def stealth(
    out: Annotated[Path, typer.Option(help="folder for stealth.json and stealth.md")],
    dataset: Annotated[str, typer.Option(help="dataset name")] = "sample",
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    n: Annotated[int, typer.Option(help="test images measured")] = 1000,
    train_size: Annotated[int | None, typer.Option(help="train images for attacks that train a clean model")] = None,
    attacks: Annotated[str | None, typer.Option(help="comma-separated attacks, e.g. badnets,sig (default all)")] = None,
    skip_model_attacks: Annotated[bool, typer.Option(help="leave out the attacks that train a clean model first "
                                                          "(clean_label, trojannn)")] = False,
    seed: Annotated[int, typer.Option(help="which images, and the seed of attacks that train")] = 0,
    sets: Annotated[list[str] | None, typer.Option("--set", help="ATTACK.KEY=VALUE, e.g. trojannn.iters=200")] = None,
) -> None:
    """PSNR, l-inf and SSIM of every registered attack over the same test images, as one table. The clean models
    that clean_label and trojannn need are trained once per dataset and cached like the zoo ($ADVML_CACHE_DIR)."""
    from advml.backdoor.inspect import stealth_table
    from advml.config import check_seed, parse_assignments

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder")
    if n < 1:
        raise ConfigError(f"--n must be at least 1 test image, got {n}")
    check_seed(seed)
    data = _data(dataset, data_dir, train_size, seed)
    n = min(n, len(data.test))
    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else None
    stealth_table(data, out, attacks=names, n=n, seed=seed, settings=parse_assignments(sets or []),
                  skip_model_attacks=skip_model_attacks)
    typer.echo((out / "stealth.md").read_text())
