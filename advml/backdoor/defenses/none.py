"""No defense: the model trained on the untrusted data, unchanged."""

from __future__ import annotations

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult
from advml.data.base import ImageDataset
from advml.errors import ConfigError


@DEFENSES.register("none", title="No defense")
class NoDefense(Defense):
    """No defense: the model trained on the untrusted data

    The undefended model (the table's "no defense" column)."""

    needs_backdoored_model = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        if ctx.backdoored is None:
            raise ConfigError("no model to return")
        return DefenseResult(ctx.backdoored)
