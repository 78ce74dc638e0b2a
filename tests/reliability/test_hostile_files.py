"""Hostile files: each ends quickly with one line and exit code 2, within bounded memory.

`test_every_hostile_case_ends_in_10_s_under_4_gib` runs every case as an `advml` command line in its own forked
child under an address-space limit of 4 GiB (`tests/helpers/hostile.py`, RLIMIT_AS as `ulimit -v` sets it); the
other tests check the same readers in-process, with property-based inputs where they fit.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.paths import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advml.errors import AdvmlError, ConfigError, DataError

RUN = ["--epochs", "1", "--no-progress", "--train-size", "20", "--test-size", "10"]


def _tiny(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10
    return {"x_train": x, "y_train": y, "x_test": x[:20], "y_test": y[:20]}


def _npy_bytes(arr: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """An .npy file of `arr`, its header declaring `shape` (a lie) when given."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(arr.dtype),
                                               "fortran_order": False, "shape": shape or arr.shape})
    return buf.getvalue() + arr.tobytes()


def _bomb(path: Path, gib: int = 2) -> None:
    """The tiny dataset plus an unused member that decompresses to `gib` GiB (a 2 MB file)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in _tiny().items():
            zf.writestr(f"{k}.npy", _npy_bytes(v))
        with zf.open("unused.npy", "w", force_zip64=True) as f:
            f.write(_npy_bytes(np.zeros(0, np.uint8), (gib * 2**30,)))  # the header alone, then the zeros
            zeros = bytes(1 << 24)
            for _ in range(gib * 64):
                f.write(zeros)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A 32x32 JPEG whose frame header claims width x height (decoding it would allocate that)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """Every hostile file, made once."""
    f = tmp_path_factory.mktemp("hostile")
    _bomb(f / "bomb.npz")
    tiny = _tiny()
    with zipfile.ZipFile(f / "header_lies.npz", "w") as zf:
        for k, v in tiny.items():
            zf.writestr(f"{k}.npy", _npy_bytes(v, (2**40, 32, 32, 3) if k == "x_train" else None))
    big_label = dict(tiny, y_train=tiny["y_train"].astype(np.int64))
    big_label["y_train"][3] = 2**40
    np.savez(f / "label.npz", **big_label)
    jpeg = _jpeg_claiming(12000, 12000)  # under PIL's own bomb limit, which only warns
    (f / "jpeg").mkdir()
    np.savez(f / "jpeg" / "cifar10_jpeg.npz", jpeg_train=np.frombuffer(jpeg, np.uint8),
             offsets_train=np.array([0, len(jpeg)]),
             y_train=np.array([0]), jpeg_test=np.frombuffer(jpeg, np.uint8), offsets_test=np.array([0, len(jpeg)]),
             y_test=np.array([0]))
    (f / "laughs.yaml").write_text(_laughs())
    (f / "recursive.yaml").write_text("train: &t {epochs: [1, *t]}\n")
    (f / "deep.yaml").write_text("seed: " + "[" * 20000 + "]" * 20000 + "\n")
    (f / "latin1.yaml").write_bytes("train:\n  epochs: 1  # réglé\n".encode("latin-1"))
    batches = f / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "batches.meta").write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.")
    lengths = f / "cifar_lengths" / "cifar-10-batches-py"  # a batch whose array bytes claim 4 GiB
    lengths.mkdir(parents=True)
    (lengths / "batches.meta").write_bytes(pickle.dumps({"label_names": [b"a"] * 10}, protocol=2))
    for j in range(1, 6):
        (lengths / f"data_batch_{j}").write_bytes(b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01B"
                                                  + struct.pack("<I", 2**32 - 1) + b"xyz")
    for name, links in {"loops": {"a/again": ".", "a/sub/up": ".."},
                        "cross": {"a/other": "../b"}}.items():
        for split in ("train", "val"):
            for cls in ("a", "b"):
                d = f / name / split / cls
                (d / "sub").mkdir(parents=True)
                from PIL import Image

                Image.new("RGB", (8, 8), (200, 10, 10)).save(d / "x.png")
                Image.new("RGB", (8, 8), (10, 200, 10)).save(d / "sub" / "y.png")
            for link, target in links.items():
                (f / name / split / link).symlink_to(target)
    import shutil

    shutil.copytree(f / "loops", f / "loops_odd_val", symlinks=True)  # walked to the end, then refused: val has
    (f / "loops_odd_val" / "val" / "c").mkdir()  # a class train lacks (a run at 224 px would not fit beside
    shutil.copy(f / "loops" / "val" / "a" / "x.png", f / "loops_odd_val" / "val" / "c")  # torch in 4 GiB)
    return f


def _cases(f: Path) -> list[dict]:
    B = lambda *a: ["backdoor", "--out", str(f / "out" / a[-1]), *RUN, *a[:-1]]  # noqa: E731
    laughs_value = "[" + ", ".join(["&a [1,1,1,1,1,1,1,1,1]"] + [
        f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]) + "]"
    return [
        {"id": "npz-unused-2gib-member", "args": B("--dataset", f"npz:{f / 'bomb.npz'}", "bomb"), "code": 0},
        {"id": "npz-header-claims-1tib", "args": B("--dataset", f"npz:{f / 'header_lies.npz'}", "lies"),
         "fragment": "declares shape (1099511627776, 32, 32, 3)"},
        {"id": "label-2-to-the-40", "args": B("--dataset", f"npz:{f / 'label.npz'}", "label"),
         "fragment": "labels go up to 1099511627776 but there are only 40 training images"},
        {"id": "jpeg-claims-144-megapixels", "args": B("--dataset", "cifar10", "--data-dir", str(f / "jpeg"),
                                                       "jpeg"),
         "fragment": "a 12000x12000 image is larger than 64 megapixels"},
        {"id": "yaml-billion-laughs", "args": B("--config", str(f / "laughs.yaml"), "laughs"),
         "fragment": "YAML aliases expand to more than 100,000 values"},
        {"id": "yaml-recursive-alias", "args": B("--config", str(f / "recursive.yaml"), "rec"),
         "fragment": "refers to the node that holds it"},
        {"id": "yaml-nested-20000-deep", "args": B("--config", str(f / "deep.yaml"), "deep"),
         "fragment": "nested too deeply"},
        {"id": "set-value-billion-laughs", "args": B("--set", f"attack.size={laughs_value}", "setl"),
         "fragment": "YAML aliases expand"},
        {"id": "config-not-utf8", "args": B("--config", str(f / "latin1.yaml"), "latin1"),
         "fragment": "not UTF-8 text"},
        {"id": "cifar-pickle-2-to-the-40-length", "args": B("--dataset", "cifar10", "--data-dir", str(f / "cifar"),
                                                           "cifar"),
         "fragment": "batches.meta: corrupt pickle"},
        {"id": "cifar-array-2-to-the-50-length", "args": B("--dataset", "cifar10", "--data-dir",
                                                          str(f / "cifar_lengths"), "cifarlen"),
         "fragment": "data_batch_1: corrupt pickle"},
        {"id": "imagefolder-two-link-loops", "args": ["triggers", "--attack", "badnets", "--dataset",
                                                      f"imagefolder:{f / 'loops_odd_val'}", "--n", "2", "--out",
                                                      str(f / "out" / "loops.png")],
         "fragment": "train and val of"},
        {"id": "imagefolder-link-into-another-class", "args": ["triggers", "--attack", "badnets", "--dataset",
                                                               f"imagefolder:{f / 'cross'}", "--n", "2", "--out",
                                                               str(f / "out" / "cross.png")],
         "fragment": "is also in class 'a' (through a link)"},
    ]


def test_every_hostile_case_ends_in_10_s_under_4_gib(hostile, tmp_path):
    cases = _cases(hostile)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ADVML_CACHE_DIR": str(tmp_path / "c")}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "hostile.py"), str(tmp_path / "cases.json"),
                        str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = {c["id"]: c for c in json.loads((tmp_path / "out.json").read_text())}
    table = "\n".join(f"{c['id']:<40} exit {c['code']} {c['seconds']:5.1f} s  {c['stderr'].strip()[:110]}"
                      for c in results.values())
    print("\n" + table)
    for case in cases:
        got = results[case["id"]]
        assert got["seconds"] <= 10, table
        if case.get("code") == 0:
            assert got["code"] == 0, got
        else:
            assert got["code"] == 2 and got["stderr"].startswith("advml: error: ") and \
                got["stderr"].count("\n") == 1 and case["fragment"] in got["stderr"], got


def test_only_the_needed_npz_keys_are_read(hostile, monkeypatch):
    from advml.utils import io as advml_io
    from advml.utils.io import load_npz, npz_keys

    assert "unused" in npz_keys(hostile / "bomb.npz")
    assert set(load_npz(hostile / "bomb.npz", ["x_train", "y_train", "nope"])) == {"x_train", "y_train"}
    monkeypatch.setattr(advml_io, "MAX_ARRAY_BYTES", 2**20)
    with pytest.raises(DataError, match=r"a 2\.0 GiB array \(array 'unused'\) is larger than ADVML_MAX_ARRAY_BYTES"):
        load_npz(hostile / "bomb.npz")  # every key: the bound holds before a byte is decompressed


def test_big_endian_and_fortran_arrays_come_back_native_and_equal(tmp_path):
    from advml.utils.io import load_array, load_npz

    a = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    np.save(tmp_path / "be.npy", a)
    np.savez(tmp_path / "f.npz", f=np.asfortranarray(a.astype("<i2")))
    got = load_array(tmp_path / "be.npy")
    assert got.dtype.isnative and np.array_equal(got, a)
    assert np.array_equal(load_npz(tmp_path / "f.npz")["f"], a)
    with pytest.raises(DataError, match="an .npz archive, not one .npy array"):
        load_array(tmp_path / "f.npz")


def test_a_link_loop_is_walked_once_and_every_file_counted_once(hostile):
    from advml.data.folders import scan_image_folder

    files, labels, classes = scan_image_folder(hostile / "loops" / "train")
    assert classes == ["a", "b"] and labels == [0, 0, 1, 1]
    assert sorted(os.path.realpath(p) for p in files) == sorted(
        str((hostile / "loops" / "train" / c / n).resolve()) for c in "ab" for n in ("sub/y.png", "x.png"))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=300), cut=st.integers(0, 400))
def test_any_bytes_as_a_cifar_pickle_give_data_or_a_clean_error(tmp_path_factory, data, cut):
    from advml.utils.io import load_restricted_pickle

    path = tmp_path_factory.mktemp("pk") / "batch"
    good = pickle.dumps({"data": np.zeros((1, 8), np.uint8), "labels": [0]}, protocol=4)
    path.write_bytes(good[:cut] + data)
    try:
        load_restricted_pickle(path)
    except AdvmlError:
        pass


_yaml_values = st.recursive(st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=4), max_leaves=30)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(value=_yaml_values, levels=st.integers(0, 12), width=st.integers(1, 12))
def test_yaml_with_aliases_loads_when_small_and_is_refused_when_it_expands(tmp_path_factory, value, levels, width):
    from advml.config import MAX_YAML_NODES, dump_yaml, load_yaml

    lines = [dump_yaml({"v": value}).replace("v:", "v0: &a0", 1)]
    lines += [f"v{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    path = tmp_path_factory.mktemp("y") / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    expanded = sum(width ** i for i in range(levels + 1))  # copies of the first value, at least
    try:
        data = load_yaml(path)
    except ConfigError as e:
        assert "expand to more than" in str(e) and expanded > MAX_YAML_NODES / 200
        return
    assert data["v0"] == value and expanded <= MAX_YAML_NODES
