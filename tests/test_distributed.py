"""DDP in the one Trainer: two gloo processes under torchrun train the same weights as one process."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch
from helpers.paths import ROOT

from advml.utils.io import load_tensors

SCRIPT = ROOT / "tests" / "helpers" / "ddp_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_ranks_match_single_process_training(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT), str(tmp_path / "ddp")],
                   env=env, check=True, capture_output=True, timeout=240)
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "--single"], env=env, check=True,
                   capture_output=True, timeout=120)
    r0, _ = load_tensors(tmp_path / "ddp.rank0.safetensors")
    r1, _ = load_tensors(tmp_path / "ddp.rank1.safetensors")
    one, _ = load_tensors(tmp_path / "one.rank0.safetensors")
    for k in one:
        assert torch.equal(r0[k], r1[k]), k  # the ranks stay in sync
        # half of each global batch per rank, gradients averaged = the full batch on one process
        assert torch.allclose(r0[k], one[k], atol=1e-5), (k, (r0[k] - one[k]).abs().max())
    spec = importlib.util.spec_from_file_location("ddp_train", SCRIPT)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    before = helper.net().state_dict()
    assert any(not torch.allclose(before[k], one[k]) for k in one)  # it did train
