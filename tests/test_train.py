import math

import pytest
import torch
from torch.nn import functional as F

from advml.data.batches import random_rotate, standard_augment
from advml.errors import ConfigError
from advml.models import build_model
from advml.train import Batch, TrainConfig, Trainer


def test_augment_is_a_padded_crop_with_optional_flip():
    x = torch.rand(64, 3, 8, 8)
    out = standard_augment(x, torch.Generator().manual_seed(0), padding=2)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(64):  # every output is one window of the padded image, maybe mirrored
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    flipped = sum(any(torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8].flip(-1)) for r in range(5) for c in range(5))
                  and not any(torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))
                  for i in range(64))
    assert 15 < flipped < 49  # about half are mirrored


def test_rotation_equals_torchvisions_rotate_per_image():
    """`train.rotation` (BackdoorBench's WaNet recipe: 10 degrees) rotates each image as torchvision's
    RandomRotation does (nearest, zero fill), the angle drawn from the trainer's generator."""
    import torchvision.transforms.functional as TF

    x = torch.rand(6, 3, 32, 32)
    out = random_rotate(x, 10.0, torch.Generator().manual_seed(3))
    angles = (torch.rand(6, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 10.0
    assert angles.abs().max() > 1 and angles.abs().max() <= 10
    for img, o, a in zip(x, out, angles):
        assert torch.equal(TF.rotate(img, float(a)), o)
    half = random_rotate(x, 10.0, torch.Generator().manual_seed(3), draws=12, offset=6)  # a DDP rank's share
    assert half.shape == x.shape and not torch.equal(half, out)
    cl = random_rotate(x.contiguous(memory_format=torch.channels_last), 10.0, torch.Generator().manual_seed(3))
    assert torch.equal(cl, out) and cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="rotation"):
        TrainConfig(rotation=200)


def test_lr_schedules():
    t = Trainer(torch.nn.Linear(1, 1), TrainConfig(epochs=4, lr=0.1))
    assert [round(t.lr_at(e), 6) for e in range(4)] == [0.1, round(0.05 * (1 + math.cos(math.pi / 4)), 6), 0.05,
                                                         round(0.05 * (1 + math.cos(3 * math.pi / 4)), 6)]
    t = Trainer(torch.nn.Linear(1, 1), TrainConfig(epochs=10, lr=1.0, schedule="multistep", milestones=[3, 6]))
    assert [t.lr_at(e) for e in (0, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])
    t = Trainer(torch.nn.Linear(1, 1), TrainConfig(epochs=10, lr=1.0, warmup_epochs=3))
    assert t.lr_at(0) == pytest.approx(0.25) and t.lr_at(3) == pytest.approx(1.0)


def _trainer(tmp_path, sample, name):
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, mean=sample.mean, std=sample.std)
    return Trainer(model, TrainConfig(epochs=2, progress=False), seed=3, checkpoint_dir=tmp_path / name)


def test_resume_after_epoch_one_equals_an_uninterrupted_run(tmp_path, sample):
    train, evals = sample.train.subset(range(0, 2000, 4)), {"acc": sample.test}
    full = _trainer(tmp_path, sample, "full")
    full.fit(train, evals)
    first = _trainer(tmp_path, sample, "cut")
    first.fit(train, evals, stop_after=1)
    assert first.epoch == 1 and (tmp_path / "cut" / "last.safetensors").is_file()
    torch.manual_seed(123)  # a new process would start from another RNG state
    second = _trainer(tmp_path, sample, "cut")
    second.fit(train, evals, resume=True)
    assert second.history == full.history
    for (k, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_refuses_other_settings(tmp_path, sample):
    t = _trainer(tmp_path, sample, "r")
    t.fit(sample.train.subset(range(64)), stop_after=1)
    other = Trainer(build_model("cnn_small", 10), TrainConfig(epochs=2, lr=0.5, progress=False), seed=3,
                    checkpoint_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="other training settings"):
        other.fit(sample.train.subset(range(64)), resume=True)


def test_custom_loss_sees_batches_with_indices(sample):
    seen = []

    def ascent(model, batch: Batch):
        seen.append(batch.index)
        return -F.cross_entropy(model(batch.x), batch.y)

    data = sample.train.subset(range(100))
    t = Trainer(build_model("cnn_small", 10), TrainConfig(epochs=1, batch_size=32, progress=False), loss_fn=ascent)
    t.fit(data)
    assert sorted(torch.cat(seen).tolist()) == list(range(100))
    assert t.history[0]["loss"] < 0


def test_bad_training_settings():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Trainer(torch.nn.Linear(1, 1), TrainConfig(device="cuda"))
    with pytest.raises(ConfigError, match="invalid device"):
        Trainer(torch.nn.Linear(1, 1), TrainConfig(device="gpu0"))
