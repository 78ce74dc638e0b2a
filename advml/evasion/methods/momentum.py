"""MI-FGSM (Dong et al. 2018): g <- g / mean|g| + decay * g_prev."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from advml.config import Settings
from advml.evasion.base import METHODS, IterativeAttack, Method


class MISettings(Settings):
    """MI's settings."""

    decay: float = Field(1.0, ge=0, description="momentum decay (1.0 in the RAP code)")


@METHODS.register("mi", "momentum, decay 1.0")
class MI(Method):
    """Momentum: accumulate L1-normalised gradients (decay 1.0 as in the RAP code)."""

    Settings = MISettings
    settings: MISettings

    def momentum(self, attack: IterativeAttack, g: Tensor, state: dict[str, Any]) -> Tensor:
        g = g / g.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        prev = state.get("mi")
        state["mi"] = g if prev is None else g + self.settings.decay * prev
        return state["mi"]
