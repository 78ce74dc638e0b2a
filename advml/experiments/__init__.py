"""Experiments: one module per kind of run (backdoor, detect, transfer), each "settings in, folder out", and the
`EXPERIMENTS` registry through which the CLI and the bench find a kind's settings and run function."""

from __future__ import annotations

from advml.experiments.backdoor import BackdoorRunSettings, load_settings, run_backdoor
from advml.experiments.base import EXPERIMENTS, PRESETS, Experiment, RunResult
from advml.experiments.detect import DetectRunSettings, load_detect_settings, run_detect
from advml.experiments.transfer import TransferSettings, load_transfer_settings, run_transfer

__all__ = ["EXPERIMENTS", "PRESETS", "BackdoorRunSettings", "DetectRunSettings", "Experiment", "RunResult",
           "TransferSettings", "load_detect_settings", "load_settings", "load_transfer_settings", "run_backdoor",
           "run_detect", "run_transfer"]
