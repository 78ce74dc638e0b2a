"""`advml backdoor | zoo train | transfer | detect | demo`: one run each, settings from flags, --config, --preset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from advml.cli.app import app, errors, flag_settings, print_metrics


@app.command()
@errors
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

    overrides = flag_settings(**{
        "dataset": dataset, "model": model, "attack.name": attack, "attack.target": target, "attack.rate": rate,
        "attack.mode": mode, "defense.name": defense, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "train_size": train_size, "test_size": test_size, "subset": subset, "seed": seed,
        "data_dir": data_dir,
        "train.device": device, "train.progress": None if progress else False, "init_weights": init_weights,
        "sets": sets})
    settings = load_settings(config, overrides, preset=preset)
    result = run_backdoor(settings, out, resume=resume, overwrite=overwrite)
    print_metrics(result.metrics)
    typer.echo(f"wrote {result.out / 'metrics.json'}")


zoo_app = typer.Typer(no_args_is_help=True, help="The offline model zoo (cached surrogate and target models).")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
@errors
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
@errors
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

    overrides = flag_settings(dataset=dataset, surrogate=surrogate, surrogate_weights=surrogate_weights,
                              targets=targets.split(",") if targets else None, method=method, targeted=targeted,
                              eps=eps, iters=iters, n_images=n_images, data_dir=data_dir, seed=seed, sets=sets)
    settings = load_transfer_settings(config, overrides, preset=preset)
    m = run_transfer(settings, out, overwrite=overwrite).metrics
    typer.echo(f"white-box {m['white_box']:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in m["success"].items()))
    typer.echo(f"wrote {out / 'metrics.json'}")


@app.command()
@errors
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

    overrides = flag_settings(**{
        "dataset": dataset, "model": model, "attack.name": attack, "attack.rate": rate, "train_size": train_size,
        "subset": subset, "seed": seed, "data_dir": data_dir, "train.device": device,
        "train.progress": None if progress else False,
        "sets": sets})
    settings, sd = load_detect_settings(config, overrides, preset=preset)
    result = run_detect(settings, sd, out, resume=resume, overwrite=overwrite)
    print_metrics(result.metrics)
    typer.echo(f"wrote {result.out / 'metrics.json'} and {result.out / 'fct_hist.png'}")


@app.command()
@errors
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
