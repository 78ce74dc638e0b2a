"""No defense: the model trained on the untrusted data, unchanged."""

from __future__ import annotations

from advml.backdoor.defenses.base import Defense, DefenseContext, DefenseResult
from advml.data.base import ImageDataset
from advml.errors import ConfigError


class NoDefense(Defense):
    """The undefended model (the table's "no defense" column)."""

    name = "none"
    needs_backdoored_model = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        if ctx.backdoored is None:
            raise ConfigError("no model to return")
        return DefenseResult(ctx.backdoored)
