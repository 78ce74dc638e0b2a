"""Determinism on CPU: the same seed gives bit-identical metrics.json (and weights) for a defense run and a transfer
run; another seed does not (so the comparison can fail). Attack runs: tests/test_cli.py (badnets, wanet); runs in
fresh processes after SIGKILLs: tests/reliability/test_crash_safety.py. What is and is not deterministic on a GPU:
README."""

from __future__ import annotations

import pytest
import torch

from advml.config import validate
from advml.experiments import TransferSettings, load_settings, run_backdoor, run_transfer
from advml.utils.io import load_tensors

DBR = {"dataset": "sample", "train_size": 200, "test_size": 60, "model": "cnn_small",
       "train": {"epochs": 1, "progress": False, "augment": "standard"},
       "defense": {"name": "d-br", "epochs": 2, "sd": {"warmup_epochs": 1, "finetune_epochs": 1}}}


def test_defense_run_same_seed_same_bytes(tmp_path):
    def run(name: str, seed: int) -> bytes:
        run_backdoor(load_settings(None, {**DBR, "seed": seed}), tmp_path / name)
        return (tmp_path / name / "metrics.json").read_bytes() + (tmp_path / name / "model.safetensors").read_bytes()

    a, b, c = run("a", 4), run("b", 4), run("c", 5)
    assert a == b
    assert c != a
    assert (tmp_path / "a" / "split.safetensors").read_bytes() == (tmp_path / "b" / "split.safetensors").read_bytes()
    # a checkpoint's metadata has several keys, which safetensors writes in hash-map order: same content, not bytes
    (ta, ma), (tb, mb) = (load_tensors(tmp_path / r / "checkpoints" / "last.safetensors") for r in "ab")
    assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _transfer(seed: int) -> TransferSettings:
    return validate(TransferSettings, {
        "dataset": "sample", "surrogate": "cnn_small", "targets": ["resnet18_narrow"], "method": "mi-ti-di",
        "iters": 6, "n_images": 10, "batch_size": 5, "only_correct": False, "progress": False, "seed": seed,
        "zoo": {"epochs": 1, "lr": 0.05, "augment": "standard", "train_size": 200, "seed": seed}})


def test_transfer_run_same_seed_same_bytes_with_a_freshly_trained_zoo(tmp_path, monkeypatch):
    def run(name: str, seed: int) -> bytes:
        monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / f"cache_{name}"))  # the zoo is trained anew each time
        run_transfer(_transfer(seed), tmp_path / name)
        return (tmp_path / name / "metrics.json").read_bytes()

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a == b
    assert c != a
    zoo = sorted(p.relative_to(tmp_path / "cache_a") for p in (tmp_path / "cache_a").rglob("model.safetensors"))
    assert len(zoo) == 2
    for rel in zoo:
        assert (tmp_path / "cache_a" / rel).read_bytes() == (tmp_path / "cache_b" / rel).read_bytes(), rel


@pytest.mark.parametrize("method", ["mi-ti-di-si", "admix+rap-ls"])
def test_composed_evasion_attack_is_deterministic_given_its_generator(method):
    from advml.evasion.methods import compose
    from advml.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn_small", 10).eval()
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])

    def adv(seed: int) -> torch.Tensor:
        return compose(method, model, eps=8 / 255, step=2 / 255, iters=4,
                       generator=torch.Generator().manual_seed(seed))(x, y)

    assert torch.equal(adv(0), adv(0))
