"""Backdoor defenses: one module per defense plus one line here; FCT and the SD module are shared parts."""

from __future__ import annotations

from typing import Any

from advml.backdoor.defenses.abl import ABL
from advml.backdoor.defenses.activation_clustering import ActivationClustering
from advml.backdoor.defenses.base import (
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
from advml.backdoor.defenses.dbd import DBD
from advml.backdoor.defenses.dbr import DBR
from advml.backdoor.defenses.dst import DST, Baseline1, Baseline2
from advml.backdoor.defenses.fct import TRANSFORMS, fct_scores
from advml.backdoor.defenses.fine_pruning import FinePruning
from advml.backdoor.defenses.nad import NAD
from advml.backdoor.defenses.none import NoDefense
from advml.backdoor.defenses.sd import (
    SDSettings,
    Split,
    distinguish,
    fct_histogram,
    split_by_score,
)
from advml.backdoor.defenses.spectral import SpectralSignatures
from advml.config import deep_merge
from advml.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")
DEFENSES.add("none", NoDefense, "No defense: the model trained on the untrusted data")
DEFENSES.add("d-br", DBR, "D-BR: FCT split, then unlearn D_p (gradient ascent) / relearn D_c, 20 epochs, lr 1e-4")
DEFENSES.add("d-st", DST, "D-ST: FCT split, SS-CTL encoder (label positives for D_c only), MCE linear classifier")
DEFENSES.add("baseline1", Baseline1, "SimCLR encoder (labels unused) + linear head on all labels")
DEFENSES.add("baseline2", Baseline2, "SupCon encoder on all labels + linear head on all labels")
DEFENSES.add("spectral", SpectralSignatures,
             "Spectral Signatures: drop each class's top 1.5 x eps spectral outliers, retrain")
DEFENSES.add("ac", ActivationClustering,
             "Activation Clustering: PCA-10 + 2-means per class, drop clusters < 0.35, retrain")
DEFENSES.add("fine-pruning", FinePruning,
             "Fine-Pruning: prune least-active last-layer channels, fine-tune (5% clean oracle)")
DEFENSES.add("nad", NAD, "NAD: attention distillation from a clean-fine-tuned teacher (5% clean oracle)")
DEFENSES.add("dbd", DBD, "DBD: SimCLR backbone, SCE linear head, 50 % lowest-loss labelled, MixMatch fine-tuning")
DEFENSES.add("abl", ABL, "ABL: LGA training, isolate the 1 % lowest-loss samples, train on the rest, unlearn them")

for _name, _title in {"none": "No defense", "d-br": "D-BR", "d-st": "D-ST", "baseline1": "Baseline1",
                      "baseline2": "Baseline2", "spectral": "Spectral Signatures", "ac": "Activation Clustering",
                      "fine-pruning": "Fine-Pruning", "nad": "NAD", "dbd": "DBD", "abl": "ABL"}.items():
    DEFENSES.set_title(_name, _title)  # display names in tables and reports


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
    base = dict(per_defense.get(name) or {})
    if "sd" in data and name in DEFENSES and DEFENSES.get(name).uses_sd_module:
        base["sd"] = deep_merge(data["sd"], base.get("sd", {}))
    if base:
        data["defense"] = deep_merge(base, defense)
    return data


def build_defense(spec: str | dict[str, Any], **settings: Any) -> Defense:
    """A defense from a name plus settings, or from a mapping {'name': ..., **settings}."""
    return DEFENSES.build(spec, **settings)


__all__ = ["ABL", "DBD", "DBR", "DEFENSES", "DST", "TRANSFORMS", "Baseline1", "Baseline2", "Defense", "DefenseContext",
           "DefenseResult", "DefenseSettings", "NoDefense", "SDSettings", "Split", "apply_defense_presets",
           "build_defense", "contrastive_loss", "distinguish", "fct_histogram", "fct_scores", "split_by_score",
           "train_encoder", "train_probe", "untrusted_view"]
