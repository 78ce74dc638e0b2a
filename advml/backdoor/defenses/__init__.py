"""Backdoor defenses: one module per defense, each class registered at its definition (`@DEFENSES.register`); the
imports below load them in the listing's order. FCT and the SD module are shared parts."""

from __future__ import annotations

from typing import Any

# isort: off
# registration order = the listing's order: the undefended column, the paper's defenses, then the baselines
from advml.backdoor.defenses.none import NoDefense
from advml.backdoor.defenses.dbr import DBR
from advml.backdoor.defenses.dst import DST, Baseline1, Baseline2
from advml.backdoor.defenses.dbd import DBD
from advml.backdoor.defenses.abl import ABL
from advml.backdoor.defenses.spectral import SpectralSignatures
from advml.backdoor.defenses.activation_clustering import ActivationClustering
from advml.backdoor.defenses.fine_pruning import FinePruning
from advml.backdoor.defenses.nad import NAD
# isort: on
from advml.backdoor.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseResult,
    DefenseSettings,
    untrusted_view,
)
from advml.backdoor.defenses.contrastive import (
    contrastive_loss,
    train_encoder,
    train_probe,
)
from advml.backdoor.defenses.fct import TRANSFORMS, fct_scores
from advml.backdoor.defenses.sd import SDSettings, distinguish, fct_histogram
from advml.backdoor.defenses.split import Split, split_by_score
from advml.config import deep_merge


def apply_defense_presets(data: dict[str, Any]) -> dict[str, Any]:
    """Resolve a preset's per-defense layers in merged run settings: `defense_presets[<name>]` goes under the run's
    own defense settings, and the top-level `sd` (the SD module shared by D-BR, D-ST and `advml detect`) under those
    of a defense that uses the SD module; what the layers set explicitly wins."""
    data = dict(data)
    per_defense = data.pop("defense_presets", None) or {}
    defense = data.get("defense", {"name": "none"})
    if isinstance(defense, str):
        defense = {"name": defense}
    name = defense.get("name", "none")
    if not isinstance(name, str):
        return data  # validating the settings then names the bad value
    base = dict(per_defense.get(name) or {})
    if "sd" in data and name in DEFENSES and DEFENSES.get(name).uses_sd_module:
        base["sd"] = deep_merge(data["sd"], base.get("sd", {}))
    if base:
        data["defense"] = deep_merge(base, defense)
    return data


def build_defense(spec: str | dict[str, Any], **settings: Any) -> Defense:
    """A defense from a name plus settings, or from a mapping {'name': ..., **settings}."""
    return DEFENSES.build(spec, **settings)


__all__ = ["ABL", "DBD", "DBR", "DEFENSES", "DST", "NAD", "TRANSFORMS", "ActivationClustering", "Baseline1",
           "Baseline2", "Defense", "DefenseContext", "DefenseResult", "DefenseSettings", "FinePruning", "NoDefense",
           "SDSettings", "SpectralSignatures", "Split", "apply_defense_presets", "build_defense", "contrastive_loss",
           "distinguish", "fct_histogram", "fct_scores", "split_by_score", "train_encoder", "train_probe",
           "untrusted_view"]
