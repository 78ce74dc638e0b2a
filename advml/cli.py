"""The `advml` command line: a thin layer over the Python API (see README)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from advml.errors import AdvmlError, ConfigError

FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="advml: backdoor attacks and defenses, transferable adversarial examples.")


_RESUME = {"backdoor": "rerun the same command with --resume to continue from the last checkpoint",
           "detect": "rerun the same command with --resume to continue from the last checkpoint",
           "bench": "rerun the same command to continue (finished cells are kept, a cut one resumes)",
           "zoo_train": "rerun the same command to continue (a zoo model resumes from its checkpoint)",
           "transfer": "a transfer run does not resume: rerun it with --overwrite"}


def _errors(fn: Callable[..., None]) -> Callable[..., None]:
    """advml errors become one line on stderr and exit code 2, never a traceback; Ctrl-C says how to go on."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except AdvmlError as e:
            typer.echo("advml: error: " + str(e).replace("\n", " "), err=True)  # one line, whatever the text
            raise typer.Exit(2) from None
        except MemoryError:  # the last net: inputs are bounded before allocation, settings may still ask too much
            typer.echo("advml: error: out of memory; use smaller data, batches or models", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("advml: interrupted; " + _RESUME.get(fn.__name__, "nothing was finished"), err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        from advml import __version__

        typer.echo(f"advml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print advml's version and exit")] = False) -> None:
    """advml: backdoor attacks and defenses, transferable adversarial examples."""


def _print_registry(rows: list[tuple[str, str]]) -> None:
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        typer.echo(f"{name:<{width}}  {desc}")


@app.command()
@_errors
def datasets() -> None:
    """List the dataset registry."""
    from advml.data import DATASETS

    _print_registry(DATASETS.describe())


@app.command()
@_errors
def models() -> None:
    """List the model registry."""
    from advml.models import MODELS

    _print_registry(MODELS.describe())


@app.command()
@_errors
def attacks() -> None:
    """List the backdoor attacks, with what their poisoning rate means."""
    from advml.backdoor import ATTACKS

    _print_registry(ATTACKS.describe())


def _overrides(**flags: Any) -> dict[str, Any]:
    """The settings given on the command line, nested like the YAML config."""
    from advml.config import deep_merge, nest, parse_assignments

    given = nest({k: v for k, v in flags.items() if v is not None and k != "sets"})
    return deep_merge(given, parse_assignments(flags.get("sets") or []))


@app.command()
@_errors
def backdoor(
    out: Annotated[Path, typer.Option(help="run folder: config.yaml, metrics.json, model.safetensors")],
    dataset: Annotated[str | None, typer.Option(help="dataset name (advml datasets)")] = None,
    model: Annotated[str | None, typer.Option(help="model name (advml models)")] = None,
    attack: Annotated[str | None, typer.Option(help="attack name (advml attacks)")] = None,
    target: Annotated[int | None, typer.Option(help="target label")] = None,
    rate: Annotated[float | None, typer.Option(help="poisoning rate in (0, 1]")] = None,
    mode: Annotated[str | None, typer.Option(help="all2one or all2all")] = None,
    defense: Annotated[str | None, typer.Option(help="defense name (advml defenses), or none")] = None,
    preset: Annotated[str | None, typer.Option(help="a packaged settings preset (advml presets), e.g. "
                                                       "defense_cpu; --config and flags override it")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="training batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    train_size: Annotated[int | None, typer.Option(help="train subset size (seeded, class-stratified)")] = None,
    test_size: Annotated[int | None, typer.Option(help="test subset size (seeded, class-stratified)")] = None,
    subset: Annotated[str | None, typer.Option(help="subset rule: stratified (class proportions, default) or "
                                                    "balanced (equal per class)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of data order, poisoned indices and init")] = None,
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps")] = None,
    init_weights: Annotated[str | None, typer.Option(help="start from these weights (.safetensors)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file; flags override it")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override, e.g. attack.size=4")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Poison a dataset, train a model on it, and write clean accuracy, ASR and stealth metrics."""
    from advml.experiments import load_settings, run_backdoor

    overrides = _overrides(**{
        "dataset": dataset, "model": model, "attack.name": attack, "attack.target": target, "attack.rate": rate,
        "attack.mode": mode, "defense.name": defense, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "train_size": train_size, "test_size": test_size, "subset": subset, "seed": seed,
        "data_dir": data_dir,
        "train.device": device, "train.progress": None if progress else False, "init_weights": init_weights,
        "sets": sets})
    settings = load_settings(config, overrides, preset=preset)
    result = run_backdoor(settings, out, resume=resume, overwrite=overwrite)
    _print_metrics(result.metrics)
    typer.echo(f"wrote {result.out / 'metrics.json'}")


zoo_app = typer.Typer(no_args_is_help=True, help="The offline model zoo (cached surrogate and target models).")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
@_errors
def zoo_train(
    dataset: Annotated[str, typer.Option(help="dataset name")] = "cifar10",
    archs: Annotated[str, typer.Option(help="comma-separated model names")] = "resnet18_narrow,cnn_small,"
                                                                           "vgg16_bn,mobilenet_v2",
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="zoo setting KEY=VALUE, e.g. epochs=30")] = None,
) -> None:
    """Train (or find) and cache zoo models; prints each one's clean accuracy."""
    from advml.config import parse_assignments, validate
    from advml.data import load_dataset
    from advml.evasion.zoo import ZooSettings, entry, zoo_model

    settings = validate(ZooSettings, parse_assignments(sets or []))
    data = load_dataset(dataset, data_dir, seed=settings.seed)
    for arch in archs.split(","):
        _, info = zoo_model(data, arch, settings)
        typer.echo(f"{arch:<18} clean_acc {info['clean_acc']:.4f}  {entry(data, arch, settings)}")


@app.command()
@_errors
def transfer(
    out: Annotated[Path, typer.Option(help="run folder: config.yaml, metrics.json, success.png")],
    dataset: Annotated[str | None, typer.Option(help="dataset name")] = None,
    surrogate: Annotated[str | None, typer.Option(help="surrogate model name (zoo)")] = None,
    surrogate_weights: Annotated[str | None, typer.Option(help="your surrogate weights (safetensors)")] = None,
    targets: Annotated[str | None, typer.Option(help="comma-separated target model names (zoo)")] = None,
    method: Annotated[str | None, typer.Option(help="e.g. mi-ti-di, mi-ti-di-si+rap-ls")] = None,
    targeted: Annotated[bool | None, typer.Option(help="targeted (random target classes) or not")] = None,
    eps: Annotated[float | None, typer.Option(help="l-inf budget, 0-255 scale")] = None,
    iters: Annotated[int | None, typer.Option(help="outer iterations")] = None,
    n_images: Annotated[int | None, typer.Option(help="evaluation images")] = None,
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    preset: Annotated[str | None, typer.Option(help="a packaged transfer preset (advml presets)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file; flags override it")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE, e.g. options.ti.kernel=15")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
) -> None:
    """Craft adversarial examples on a surrogate and report their success on target models."""
    from advml.experiments import load_transfer_settings, run_transfer

    overrides = _overrides(dataset=dataset, surrogate=surrogate, surrogate_weights=surrogate_weights,
                           targets=targets.split(",") if targets else None, method=method, targeted=targeted, eps=eps,
                           iters=iters, n_images=n_images, data_dir=data_dir, seed=seed, sets=sets)
    settings = load_transfer_settings(config, overrides, preset=preset)
    m = run_transfer(settings, out, overwrite=overwrite).metrics
    typer.echo(f"white-box {m['white_box']:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in m["success"].items()))
    typer.echo(f"wrote {out / 'metrics.json'}")


def _print_metrics(m: dict[str, Any]) -> None:
    fmt = {"clean_acc_before": "{:.3f}", "asr_before": "{:.3f}", "clean_acc": "{:.3f}", "asr": "{:.3f}",
           "psnr": "{:.2f} dB", "linf": "{:.1f}", "ssim": "{:.4f}", "detect_precision": "{:.3f}",
           "detect_recall": "{:.3f}", "clean_split_poison_rate": "{:.4f}"}
    for key, f in fmt.items():
        if key in m:
            value = m[key]
            typer.echo(f"{key:<24} {f.format(value) if value is not None else 'n/a'}")


@app.command()
@_errors
def defenses() -> None:
    """List the backdoor defenses."""
    from advml.backdoor.defenses import DEFENSES

    _print_registry(DEFENSES.describe())


@app.command()
@_errors
def presets() -> None:
    """List the packaged settings presets (use with --preset): backdoor presets serve backdoor and detect runs."""
    from advml.experiments.base import PRESETS, preset_kind

    _print_registry([(name, f"[{preset_kind(name)}] {text}") for name, text in PRESETS.describe()])


@app.command()
@_errors
def detect(
    out: Annotated[Path, typer.Option(help="run folder: split.safetensors, metrics.json, fct_hist.png")],
    dataset: Annotated[str | None, typer.Option(help="dataset name")] = None,
    model: Annotated[str | None, typer.Option(help="model name")] = None,
    attack: Annotated[str | None, typer.Option(help="attack name")] = None,
    rate: Annotated[float | None, typer.Option(help="poisoning rate in (0, 1]")] = None,
    train_size: Annotated[int | None, typer.Option(help="train subset size (seeded, class-stratified)")] = None,
    subset: Annotated[str | None, typer.Option(help="subset rule: stratified (default) or balanced")] = None,
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    data_dir: Annotated[str | None, typer.Option(help="data folder (default $ADVML_DATA_DIR)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
    preset: Annotated[str | None, typer.Option(help="a packaged preset; its defense.sd settings are used")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file; flags override it")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE, e.g. sd.draws=4")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """The SD module alone: poison, train, FCT-score every sample, split into D_c / D_u / D_p."""
    from advml.experiments import load_detect_settings, run_detect

    overrides = _overrides(**{
        "dataset": dataset, "model": model, "attack.name": attack, "attack.rate": rate, "train_size": train_size,
        "subset": subset, "seed": seed, "data_dir": data_dir, "train.device": device,
        "train.progress": None if progress else False,
        "sets": sets})
    settings, sd = load_detect_settings(config, overrides, preset=preset)
    result = run_detect(settings, sd, out, resume=resume, overwrite=overwrite)
    _print_metrics(result.metrics)
    typer.echo(f"wrote {result.out / 'metrics.json'} and {result.out / 'fct_hist.png'}")


def _data(dataset: str, data_dir: str | None, train_size: int | None, seed: int):
    from advml.data import load_dataset

    return load_dataset(dataset, data_dir, train_size=train_size, seed=seed)


@app.command()
@_errors
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
@_errors
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


@app.command()
@_errors
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="training epochs of the backdoored model")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """The quick start: BadNets on the bundled 10,000-image CIFAR-10 sample -> train -> D-BR -> a before/after table."""
    from advml.experiments import load_settings, run_backdoor

    overrides: dict[str, Any] = {"train": {"progress": progress}}
    if epochs is not None:
        overrides["train"]["epochs"] = epochs
    settings = load_settings(None, overrides, preset="demo")
    typer.echo(f"advml demo: BadNets (3x3 white square, all2one -> class 0, rate 0.1) on the bundled CIFAR-10 "
               f"sample (10,000 train / 1,000 test images); train {settings.model} on it, then D-BR: the SD "
               f"module's FCT split of the training set, unlearn the suspected poisoned samples, relearn the clean "
               f"ones (preset: advml/presets/demo.yaml)")
    start = time.perf_counter()
    result = run_backdoor(settings, out, overwrite=True)
    m = result.metrics
    typer.echo("")
    typer.echo(f"| {'run':<24} | {'clean acc':>9} | {'ASR':>6} | {'PSNR (dB)':>9} | {'l-inf':>5} |")
    typer.echo(f"|{'-' * 26}|{'-' * 11}|{'-' * 8}|{'-' * 11}|{'-' * 7}|")
    typer.echo(f"| {'BadNets, no defense':<24} | {m['clean_acc_before']:>9.3f} | {m['asr_before']:>6.3f} | "
               f"{m['psnr']:>9.2f} | {m['linf']:>5.0f} |")
    typer.echo(f"| {'BadNets + D-BR':<24} | {m['clean_acc']:>9.3f} | {m['asr']:>6.3f} | {'':>9} | {'':>5} |")
    typer.echo(f"\n{m['poison_count']} of {m['train_size']} training images poisoned; the FCT split's suspected "
               f"poisoned set D_p ({m['split_sizes']['poisoned']} images) has precision {m['detect_precision']:.3f}, "
               f"and its clean set D_c ({m['split_sizes']['clean']}) is {100 * m['clean_split_poison_rate']:.1f}% "
               f"poisoned. ASR over {m['backdoor_test_size']} triggered non-target test images. "
               f"{time.perf_counter() - start:.0f} s.")
    typer.echo(f"Files in {result.out}/: metrics.json, model.safetensors, split.safetensors; the FCT histogram: "
               f"{result.out / 'fct_hist.png'}")


@app.command()
@_errors
def bench(
    spec: Annotated[Path, typer.Argument(help="a bench spec, e.g. configs/seed/table2_defense.yaml")],
    preset: Annotated[str, typer.Option(help="the spec's scale: smoke, cpu, paper (or others it defines)")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="bench folder (default runs/bench/<spec>-<preset>)")] = None,
    ray: Annotated[str, typer.Option(help="'off' (cells in this process), 'local' (a local Ray instance) or the "
                                          "address of a Ray cluster")] = "off",
    only: Annotated[list[str] | None, typer.Option(help="cell ids to run: comma-separated and/or repeated")] = None,
) -> None:
    """Run a grid of runs (resumable), collect results.sqlite, render report.md and report.html."""
    from advml.bench import load_spec, run_bench

    s = load_spec(spec)
    folder = run_bench(s, preset, out or Path("runs/bench") / f"{s.name}-{preset}", ray=ray,
                       only=[c for o in only for c in o.split(",") if c] if only else None)
    typer.echo((folder / "report.md").read_text())
    typer.echo(f"wrote {folder / 'report.html'}")


@app.command()
@_errors
def report(
    folder: Annotated[Path, typer.Argument(help="a bench folder holding results.sqlite")],
    spec: Annotated[Path | None, typer.Option(help="a newer edition of the bench's spec (same cells and settings): "
                                                   "its title and display names are used and recorded")] = None,
) -> None:
    """Re-render report.md and report.html of a bench from its results table alone."""
    from advml.bench import load_spec, render_report

    md, page = render_report(folder, load_spec(spec) if spec else None)
    typer.echo(md.read_text())
    typer.echo(f"wrote {page}")


def main() -> None:
    """Entry point of the `advml` command."""
    import logging

    handler = logging.StreamHandler()  # advml's own notes (e.g. the precision chosen) on stderr, one line each
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("advml")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app()


if __name__ == "__main__":
    main()
