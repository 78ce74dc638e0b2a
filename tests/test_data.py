import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from advml.data import DATASETS, TensorImageDataset, balanced_indices, load_dataset, stratified_indices
from advml.errors import ConfigError, DataError, UnsafeFileError


def test_sample_is_real_balanced_cifar10(sample):
    assert (len(sample.train), len(sample.test)) == (2000, 500)
    assert sample.train.labels.bincount().tolist() == [200] * 10
    assert sample.test.labels.bincount().tolist() == [50] * 10
    x, y = sample.train.get_batch(torch.arange(64))
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert sample.classes[0] == "airplane" and sample.num_classes == 10
    assert x.std() > 0.1  # real images, not a constant


def test_sample_pixels_match_the_full_cifar10_file(sample, data_dir):
    from advml.data.formats import read_jpeg_npz

    full_train, _ = read_jpeg_npz(data_dir / "cifar10_jpeg.npz")
    src = np.load(__import__("importlib").resources.files("advml.data") / "assets" / "cifar10_sample.npz")
    idx = torch.from_numpy(src["source_index_train"].astype(np.int64))
    assert torch.equal(full_train.images[idx], sample.train.images)


def test_subsets_are_seeded_stratified_and_sized(sample):
    a = load_dataset("sample", train_size=300, test_size=100, seed=3)
    b = load_dataset("sample", train_size=300, test_size=100, seed=3)
    c = load_dataset("sample", train_size=300, test_size=100, seed=4)
    assert len(a.train) == 300 and len(a.test) == 100
    assert a.train.labels.bincount().tolist() == [30] * 10
    assert torch.equal(a.train.tensors()[0], b.train.tensors()[0])
    assert not torch.equal(a.train.tensors()[0], c.train.tensors()[0])


def test_balanced_indices_uneven_size_and_errors():
    labels = torch.arange(10).repeat(5)
    idx = balanced_indices(labels, 13, 10, torch.Generator().manual_seed(0))
    assert len(idx) == 13 and len(set(idx.tolist())) == 13
    assert labels[idx].bincount(minlength=10).tolist() == [2, 2, 2] + [1] * 7
    with pytest.raises(ConfigError, match="only 50"):
        balanced_indices(labels, 51, 10, torch.Generator())
    with pytest.raises(ConfigError, match="class 9"):
        balanced_indices(labels[labels != 9], 30, 10, torch.Generator())


# GTSRB's training split as torchvision ships it: 43 classes, 210 to 2,250 images each (39,209)
GTSRB_COUNTS = [210, 2220, 2250, 1410, 1980, 1860, 420, 1440, 1410, 1470, 2010, 1320, 2100, 2160, 780, 630, 420, 1110,
                1200, 210, 360, 330, 390, 510, 270, 1500, 600, 240, 540, 270, 450, 780, 240, 689, 420, 1200, 390, 210,
                2070, 300, 360, 240, 240]


def _imbalanced_npz(path, scale=4, seed=0, side=16):
    """A GTSRB-shaped npz (43 classes in GTSRB's proportions, /scale) of random images (small: seconds to train)."""
    counts = np.array(GTSRB_COUNTS) // scale
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(43), counts))
    x = rng.integers(0, 256, (len(y), side, side, 3), dtype=np.uint8)
    return _npz(path, x_train=x, y_train=y, x_test=x[:430], y_test=np.arange(430) % 43), counts


def _assert_proportional(counts, subset_counts, size):
    quota = np.asarray(counts) * size / np.sum(counts)
    assert subset_counts.sum() == size and (subset_counts >= 1).all()
    assert np.abs(subset_counts - quota).max() < 1  # each class within one image of its share


def test_stratified_subset_of_an_imbalanced_dataset_is_proportional(tmp_path):
    path, counts = _imbalanced_npz(tmp_path / "gtsrb_like.npz")
    a = load_dataset(f"npz:{path}", train_size=6000, seed=1)
    _assert_proportional(counts, a.train.labels.bincount(minlength=43).numpy(), 6000)
    assert torch.equal(a.train.tensors()[0], load_dataset(f"npz:{path}", train_size=6000, seed=1).train.tensors()[0])
    assert not torch.equal(a.train.labels, load_dataset(f"npz:{path}", train_size=6000, seed=2).train.labels)
    with pytest.raises(ConfigError, match="a balanced subset of 6000 needs 140 images of class 0, the data has 52"):
        load_dataset(f"npz:{path}", train_size=6000, subset="balanced")
    # a size so small that proportions would drop the rare classes still keeps one image of each
    tiny = load_dataset(f"npz:{path}", train_size=50).train.labels.bincount(minlength=43)
    assert tiny.sum() == 50 and (tiny >= 1).all()
    with pytest.raises(ConfigError, match="cannot keep all 43 classes"):
        load_dataset(f"npz:{path}", train_size=42)


def test_stratified_equals_balanced_on_balanced_data():
    labels = torch.arange(10).repeat(50)
    for size in (13, 300, 500):  # the same indices: earlier class-balanced runs and benches keep their subsets
        assert torch.equal(stratified_indices(labels, size, 10, torch.Generator().manual_seed(5)),
                           balanced_indices(labels, size, 10, torch.Generator().manual_seed(5)))


def test_cli_backdoor_on_an_imbalanced_dataset_with_train_size(tmp_path):
    import json

    from typer.testing import CliRunner

    from advml.cli import app

    path, counts = _imbalanced_npz(tmp_path / "gtsrb_like.npz")
    args = ["backdoor", "--dataset", f"npz:{path}", "--train-size", "6000", "--test-size", "200", "--epochs", "1",
            "--set", "train.augment=none", "--no-progress"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_size"] == 6000 and metrics["poison_count"] == 600
    r = CliRunner().invoke(app, [*args, "--subset", "balanced", "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "a balanced subset of 6000 needs 140 images of class 0" in r.output
    assert not (tmp_path / "run2").exists()


def test_subset_larger_than_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="only 2000"):
        load_dataset("sample", train_size=5000)


def test_cifar10_from_the_shared_files(data_dir):
    small = load_dataset("cifar10", data_dir, train_size=1000, test_size=500, download=False)
    assert small.train.labels.bincount().tolist() == [100] * 10 and small.image_shape == (3, 32, 32)
    full = DATASETS.get("cifar10")(None, data_dir, download=False, train_size=None)
    assert len(full.train) == 50000 and len(full.test) == 10000
    # the README's checksums of the decoded arrays (pixels in NHWC order)
    nhwc = full.test.images.permute(0, 2, 3, 1).contiguous().numpy()
    assert hashlib.sha256(nhwc.tobytes()).hexdigest().startswith("5a6aa8185204d80b")


def test_missing_cifar10_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="cifar10.npz"):
        load_dataset("cifar10", tmp_path / "nothing", download=False)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_dataset_roundtrip_and_validation(tmp_path, sample):
    x = (sample.train.images[:40].permute(0, 2, 3, 1)).numpy()
    y = sample.train.labels[:40].numpy()
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    d = load_dataset(f"npz:{p}")
    assert torch.equal(d.train.images, sample.train.images[:40]) and len(d.test) == 10
    with pytest.raises(DataError, match="missing arrays"):
        load_dataset(f"npz:{_npz(tmp_path / 'm.npz', x_train=x, y_train=y)}")
    with pytest.raises(DataError, match="uint8"):
        load_dataset(f"npz:{_npz(tmp_path / 'f.npz', x_train=x.astype(np.float32), y_train=y, x_test=x, y_test=y)}")
    with pytest.raises(DataError, match="length"):
        load_dataset(f"npz:{_npz(tmp_path / 'l.npz', x_train=x, y_train=y[:5], x_test=x, y_test=y)}")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_dataset(f"npz:{tmp_path / 'corrupt.npz'}")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "evil.npz", x_train=obj, y_train=obj, x_test=obj, y_test=obj)
    with pytest.raises(UnsafeFileError, match="pickled"):
        load_dataset(f"npz:{tmp_path / 'evil.npz'}")


def _write_cifar_python(root, sample):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data = sample.train.images.reshape(2000, -1).numpy()
    labels = sample.train.labels.tolist()
    for i in range(1, 6):
        sl = slice((i - 1) * 400, i * 400)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data[sl], b"labels": labels[sl]}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": data[:100], b"labels": labels[:100]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in sample.classes]}, f)
    return d


def test_cifar10_python_layout_is_read_without_unpickling_code(tmp_path, sample):
    _write_cifar_python(tmp_path, sample)
    d = load_dataset("cifar10", tmp_path, download=False)
    assert torch.equal(d.train.images, sample.train.images) and d.classes == sample.classes


class _Plant:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path, sample):
    d = _write_cifar_python(tmp_path, sample)
    planted = tmp_path / "pwned"
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Plant(str(planted)), b"labels": []}, f)
    with pytest.raises(UnsafeFileError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not planted.exists()


def test_cifar10_binary_layout(tmp_path, sample):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    recs = np.concatenate([sample.train.labels.numpy().astype(np.uint8)[:, None],
                           sample.train.images.reshape(2000, -1).numpy()], axis=1)
    for i in range(1, 6):
        recs[(i - 1) * 400:i * 400].tofile(d / f"data_batch_{i}.bin")
    recs[:50].tofile(d / "test_batch.bin")
    (d / "batches.meta.txt").write_text("\n".join(sample.classes) + "\n")
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert torch.equal(ds.train.images, sample.train.images) and torch.equal(ds.train.labels, sample.train.labels)
    (d / "test_batch.bin").write_bytes(recs[:50].tobytes()[:-7])
    with pytest.raises(DataError, match="record"):
        load_dataset("cifar10", tmp_path, download=False)


def test_imagefolder_any_size(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, (w, h) in enumerate([(50, 40), (30, 60)]):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    d = load_dataset(f"imagefolder:{tmp_path}", image_size=24)
    x, y = d.train.get_batch(torch.arange(6))
    assert x.shape == (6, 3, 24, 24) and y.tolist() == [0, 0, 0, 1, 1, 1] and d.classes == ["class0", "class1"]
    (tmp_path / "train" / "class0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0.png"):
        d.train.get_batch(torch.arange(1))
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_tensor_dataset_rejects_bad_arrays():
    with pytest.raises(DataError, match="channels"):
        TensorImageDataset(torch.zeros(2, 5, 8, 8, dtype=torch.uint8), [0, 1], ["a", "b"])
    with pytest.raises(DataError, match="labels"):
        TensorImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0], ["a", "b"])
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        TensorImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 2], ["a", "b"])


def test_cifar10_subset_file_alone_refuses_a_full_size_request(tmp_path, data_dir, monkeypatch):
    """cifar10.npz holds 5,000 train images: asking for all of CIFAR-10 must fail, not train on 5,000."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar10.npz").symlink_to(data_dir / "cifar10.npz")
    with pytest.raises(DataError, match="5,000-image train subset.*cifar10_jpeg.npz"):
        load_dataset("cifar10", tmp_path / "d", download=False)
    with pytest.raises(DataError, match="train_size <= 5000"):
        load_dataset("cifar10", tmp_path / "d", download=False, train_size=8000)
    assert len(load_dataset("cifar10", tmp_path / "d", download=False, train_size=5000).train) == 5000


def test_the_bundled_10k_sample_is_class_balanced_real_cifar10(sample):
    big = load_dataset("sample10k")
    assert (len(big.train), len(big.test)) == (10000, 1000)
    assert torch.bincount(big.train.labels).tolist() == [1000] * 10
    assert torch.bincount(big.test.labels).tolist() == [100] * 10
    assert big.classes == sample.classes and big.mean == sample.mean
