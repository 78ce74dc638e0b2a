"""A transfer run: `run_transfer(settings, out)` crafts adversarial examples on a surrogate and measures their
success on target models (and white-box on the surrogate) at several iteration counts; metrics.json + a heat-map."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from advml.config import Seed, Settings, dump_yaml, validate
from advml.data import load_dataset
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.evasion.methods import compose, method_settings, parse
from advml.evasion.zoo import ZooSettings, zoo_model
from advml.experiments.base import EXPERIMENTS, Experiment, RunResult, comparable, layers, prepare_out
from advml.metrics import predict
from advml.models import MODELS, build_model, load_weights
from advml.provenance import file_sha256
from advml.stats import wilson
from advml.utils.figures import pyplot, save_figure
from advml.utils.io import write_json, write_text_atomic
from advml.utils.precision import AmpField, resolve_precision, set_precision
from advml.utils.rundir import RunFolder
from advml.utils.runtime import resolve_device, seed_everything

CHECKPOINTS = (10, 100, 200, 300, 400)


class TransferSettings(Settings):
    """Everything a transfer run uses; written back as config.yaml."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    surrogate: str = "resnet18_narrow"
    surrogate_weights: str | None = Field(None, description="the user's weights for the surrogate (safetensors)")
    targets: list[str] = Field(default_factory=lambda: ["cnn_small", "vgg16_bn", "mobilenet_v2"])
    method: str = Field("mi-ti-di", description="the composed method, e.g. mi-ti-di+rap-ls; or a mapping {name: "
                        "mi-ti-di+rap-ls, rap-ls.eps_n_ratio: 0.5} of the method with its options (a bench grid value)")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method settings")
    targeted: bool = True
    loss: str | None = Field(None, description="ce or logit; default logit when targeted, else ce (the paper)")
    eps: float = Field(16, gt=0, le=255, description="l-inf budget on the 0-255 scale")
    step: float | None = Field(2, gt=0, le=255, description="step on the 0-255 scale; null: eps / iters "
                               "(TransferAttack's alpha, e.g. PGN's and VMI's official 1.6 at eps 16, 10 iterations)")
    iters: int = Field(400, ge=1)
    record_at: list[int] = Field(default_factory=lambda: list(CHECKPOINTS), description="iteration counts at which "
                                 "success (and cost) is also measured; the last iteration always is")
    n_images: int = Field(1000, ge=1)
    batch_size: int = Field(50, ge=1)
    zoo: ZooSettings = Field(default_factory=ZooSettings)
    pretrained: bool = Field(False, description="torchvision ImageNet weights instead of the zoo (ImageNet data)")
    only_correct: bool = Field(True, description="evaluate on images every model classifies correctly")
    device: str = "auto"
    amp: AmpField = Field(False, description="bf16 autocast + channels_last for the surrogate's and targets' "
                                               "passes: auto, true or false (default: float32, as the papers)")
    progress: bool = True
    seed: Seed = 0

    @model_validator(mode="before")
    @classmethod
    def _method_with_options(cls, data: Any) -> Any:
        """method: {name: spec, 'ingredient.option': value, ...} -> method: spec, options merged (these win)."""
        if not isinstance(data, dict) or not isinstance(data.get("method"), dict):
            return data
        given = dict(data["method"])
        if not isinstance(given.get("name"), str):
            raise ValueError("a method mapping needs a 'name', e.g. {name: mi-ti-di+rap-ls, rap-ls.eps_n_ratio: 0.5}")
        options = {k: dict(v) for k, v in (data.get("options") or {}).items()}
        for key, value in given.items():
            if key == "name":
                continue
            ingredient, _, option = key.partition(".")
            if not option:
                raise ValueError(f"method option {key!r} needs the form ingredient.option (e.g. rap-ls.eps_n_ratio)")
            options.setdefault(ingredient, {})[option] = value
        return {**data, "method": given["name"], "options": options}

    @field_validator("record_at")
    @classmethod
    def _record_at(cls, v: list[int]) -> list[int]:
        if any(i < 1 for i in v):
            raise ValueError(f"record_at needs iteration counts >= 1, got {v}")
        return sorted(set(v))

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        parse(v)
        return v

    @model_validator(mode="after")
    def _options(self) -> TransferSettings:
        """Each method's options name one of the method's ingredients and are valid settings of it."""
        method_settings(self.method, self.options)
        return self

    @field_validator("surrogate")
    @classmethod
    def _surrogate(cls, v: str) -> str:
        MODELS.get(v)  # unknown names fail before any zoo model is trained
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one target model")
        for name in v:
            MODELS.get(name)
        return v


def evaluation_images(test: ImageDataset, models: list[nn.Module], n: int, num_classes: int, seed: int,
                      device: torch.device, only_correct: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`n` seeded test images (that every model classifies correctly, with `only_correct`), their target
    classes (the dataset's own, NIPS'17's TargetClass, or seeded random classes different from the truth) and
    their indices in the test set."""
    correct = torch.ones(len(test), dtype=torch.bool)
    for m in models if only_correct else []:
        correct &= predict(m, test, device=device) == test.labels
    pool = correct.nonzero().flatten()
    if pool.numel() < n:
        raise ConfigError(f"only {pool.numel()} test images are classified correctly by every model; "
                          f"ask for n_images <= {pool.numel()}")
    gen = torch.Generator().manual_seed(seed)
    idx = pool[torch.randperm(pool.numel(), generator=gen)[:n]].sort().values
    x, y = test.get_batch(idx)
    given = getattr(test, "targets", None)
    targets = given[idx] if given is not None else (y + torch.randint(1, num_classes, y.shape, generator=gen)) \
        % num_classes
    return x, y, targets, idx


def load_transfer_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                           preset: str | None = None) -> TransferSettings:
    """Defaults < packaged transfer preset < YAML file < overrides, validated."""
    return validate(TransferSettings, layers(config, overrides, preset, "transfer"))


def run_transfer(settings: TransferSettings, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> RunResult:
    """Attack the surrogate with `settings.method`; success on every target and white-box. A transfer run has no
    checkpoints to resume from: rerun an unfinished one with `overwrite` (its zoo models come from the cache)."""
    start = time.perf_counter()
    if resume:
        raise ConfigError("a transfer run has no checkpoints to resume from; rerun it with --overwrite")
    folder = prepare_out(out, "transfer", resume=False, overwrite=overwrite)
    try:
        return _run_transfer(settings, folder, overwrite=overwrite, start=start)
    finally:
        folder.release()


def _run_transfer(settings: TransferSettings, folder: RunFolder, *, overwrite: bool, start: float) -> RunResult:
    out = folder.path
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    data = load_dataset(settings.dataset, settings.data_dir, seed=settings.seed)
    if settings.surrogate in settings.targets:
        raise ConfigError(f"the surrogate {settings.surrogate!r} is also a target; white-box success is reported "
                          "separately")
    c, h, _ = data.image_shape

    def model(name: str) -> nn.Module:
        if settings.pretrained:
            return build_model(name, data.num_classes, image_size=h, in_channels=c, pretrained=True).eval()
        return zoo_model(data, name, settings.zoo, progress=settings.progress)[0]

    if settings.surrogate_weights:
        surrogate = load_weights(build_model(settings.surrogate, data.num_classes, image_size=h, in_channels=c,
                                             mean=data.mean, std=data.std), settings.surrogate_weights).eval()
    else:
        surrogate = model(settings.surrogate)
    targets = {name: model(name).to(device) for name in settings.targets}
    surrogate = surrogate.to(device)
    for m in (surrogate, *targets.values()):  # one precision for every model, trained now or cached
        set_precision(m, resolve_precision(settings.amp, device, m))
    x, y, t, image_ids = evaluation_images(data.test, [surrogate, *targets.values()], settings.n_images,
                                           data.num_classes, settings.seed, device, settings.only_correct)
    loss = settings.loss or ("logit" if settings.targeted else "ce")
    record = tuple(i for i in settings.record_at if i < settings.iters) + (settings.iters,)
    step = settings.step if settings.step is not None else settings.eps / settings.iters
    snaps: dict[int, list[Tensor]] = {i: [] for i in record}
    attack = compose(settings.method, surrogate, options=settings.options, eps=settings.eps / 255,
                     step=step / 255, iters=settings.iters, loss=loss, record_at=record,
                     generator=torch.Generator().manual_seed(settings.seed))
    for xb, yb, tb in zip(x.split(settings.batch_size), y.split(settings.batch_size), t.split(settings.batch_size)):
        attack(xb.to(device), yb.to(device), tb.to(device) if settings.targeted else None)
        for i in record:
            snaps[i].append(attack.snapshots[i])
    passes = dict(attack.passes_at)  # per image: the same for every batch
    goal = t if settings.targeted else y
    success_at: dict[str, dict[str, float]] = {}
    outcomes: dict[str, str] = {}
    for i in record:
        adv = torch.cat(snaps[i])
        success_at[str(i)] = {}
        for name, model in {"white_box": surrogate, **targets}.items():
            with torch.no_grad():
                pred = torch.cat([model(a.to(device)).argmax(1).cpu() for a in adv.split(500)])
            hit = pred == goal if settings.targeted else pred != goal
            success_at[str(i)][name] = float(hit.float().mean())
            if i == settings.iters:
                outcomes[name] = "".join("1" if h else "0" for h in hit.tolist())
    final = success_at[str(settings.iters)]
    n = len(x)
    metrics = {
        "method": settings.method, "targeted": settings.targeted, "n_images": n,
        "success": {k: v for k, v in final.items() if k != "white_box"},
        "white_box": final["white_box"],
        "success_ci95": {k: list(wilson(round(v * n), n)) for k, v in final.items()},
        "success_at": success_at,
        # the cost: forward-backward passes of the surrogate per image after each recorded iteration count
        "passes_at": {str(i): passes[i] for i in record},
        "passes_per_image": passes[settings.iters],
        "image_ids": image_ids.tolist(),  # test-set indices: runs with the same seed and models share them
        "outcomes": outcomes,  # per image, at the last iteration, for paired comparisons between methods
        "denominator": "all n_images evaluation images (each classified correctly by every model before the "
                       "attack); targeted success = predicted as the target class",
    }
    folder.begin({"settings": comparable(settings), "surrogate_weights_sha256": file_sha256(settings.surrogate_weights),
                  "data": {"source": data.source, "content": data.fingerprint()}}, resume=False, overwrite=overwrite,
                 start=start)
    write_text_atomic(out / "config.yaml", dump_yaml(settings.model_dump(mode="json")))
    heatmap(success_at, out / "success.png", f"{settings.method} from {settings.surrogate}")
    precision = resolve_precision(settings.amp, device, surrogate).describe()
    assert folder.scope is not None  # bound by folder.begin until release
    write_json(out / "timing.json", {"seconds": folder.scope.seconds(), "precision": precision})
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(out, metrics)


def heatmap(success_at: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Success per model (columns) and iteration count (rows)."""
    plt = pyplot()
    rows = list(success_at)
    cols = list(success_at[rows[0]])
    values = [[success_at[r][c] for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.4 * len(cols) + 1.5, 0.5 * len(rows) + 1.5))
    im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r} it" for r in rows], fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


EXPERIMENTS.add("transfer", Experiment("transfer", TransferSettings, load_transfer_settings, run_transfer, "transfer",
                                       resumable=False),
                "craft adversarial examples on a surrogate, measure their success on target models")
