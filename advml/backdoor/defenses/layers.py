"""Where the post-training defenses (fine-pruning, NAD) look inside a model: the children of its sequential
backbone (cnn_small, resnet18_narrow, preact_resnet18), their output shapes, and hooks that keep outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from advml.backdoor.defenses.base import DefenseContext
from advml.data.base import ImageDataset
from advml.errors import ConfigError


def backbone_children(model: nn.Module, defense: str) -> list[nn.Module]:
    """The children of `model.backbone`, which must be an nn.Sequential (run in order)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Sequential):
        raise ConfigError(f"{defense} needs an ImageClassifier with a sequential backbone (cnn_small, "
                          f"resnet18_narrow, preact_resnet18); got {type(backbone).__name__}")
    return list(backbone)


@torch.no_grad()
def child_output_shapes(model: nn.Module, x: Tensor, defense: str) -> list[tuple[int, ...]]:
    """Output shape of every backbone child for the input batch `x` (eval mode)."""
    children = backbone_children(model, defense)
    shapes: list[tuple[int, ...]] = [()] * len(children)
    taps = Taps(children)
    was_training = model.training
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
        shapes = [tuple(o.shape) for o in taps.outputs]  # type: ignore[union-attr]
    finally:
        taps.remove()
        model.train(was_training)
    return shapes


class Taps:
    """Forward hooks that keep the latest output of each of `modules` (with its graph, for losses)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.outputs: list[Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._keep(i)) for i, m in enumerate(modules)]

    def _keep(self, i: int) -> Callable[[nn.Module, object, Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            self.outputs[i] = output
        return hook

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self.handles:
            h.remove()


def require_clean(ctx: DefenseContext, defense: str) -> ImageDataset:
    """The defender's clean subset, or a clear error saying where it comes from."""
    if ctx.backdoored is None:
        raise ConfigError(f"{defense} purifies a trained model; none was given")
    if ctx.clean_data is None or len(ctx.clean_data) == 0:
        raise ConfigError(f"{defense} needs a small clean subset (DefenseContext.clean_data); run_backdoor draws "
                          "one of truly clean training samples (settings.clean_fraction), or pass your own")
    return ctx.clean_data
