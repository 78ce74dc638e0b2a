"""BadNets end to end on real CIFAR-10 (about a minute and a half on 2 CPU cores)."""

import pytest

from advml.experiments import load_settings, run_backdoor


@pytest.mark.slow
def test_badnets_all2one_on_real_cifar10(data_dir, tmp_path):
    settings = load_settings(None, {
        "dataset": "cifar10", "data_dir": str(data_dir), "train_size": 4000, "test_size": 2000, "download": False,
        "model": "cnn_small", "attack": {"name": "badnets", "target": 0, "rate": 0.1, "mode": "all2one"},
        "train": {"epochs": 6, "lr": 0.05, "augment": "none", "progress": False}, "seed": 0})
    m = run_backdoor(settings, tmp_path / "run").metrics
    print({k: m[k] for k in ("clean_acc", "asr", "psnr", "linf", "ssim")})
    assert m["poison_count"] == 400 and m["backdoor_test_size"] == 1800
    assert m["asr"] >= 0.90
    assert m["clean_acc"] >= 0.45
    assert 250 > m["linf"] > 0 and m["psnr"] > 15
