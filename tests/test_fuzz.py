"""Property-based tests: random shapes, dtypes and values give a correct result or a clean advml error.

Derandomised so that CI is reproducible. For a wider hunt, set derandomize=False and raise max_examples
(randomised runs found the empty-npz crash fixed in formats.py and two faults in this test itself)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advml.backdoor import ATTACKS, MaskTrigger, build_attack
from advml.data import TensorImageDataset, load_dataset
from advml.errors import AdvmlError

TRIGGER_ATTACKS = ["badnets", "sig", "wanet"]  # built without data files or a trained model

images = st.builds(
    lambda n, c, h, w, dtype, scale, seed: (torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))
                                            * scale).to(dtype),
    n=st.integers(0, 3), c=st.sampled_from([1, 3, 4]), h=st.integers(1, 40), w=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64]),
    scale=st.sampled_from([1.0, 2.0, float("nan"), float("inf")]), seed=st.integers(0, 1000))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(x=images, name=st.sampled_from(TRIGGER_ATTACKS))
def test_triggers_give_a_result_in_range_or_a_clean_error(x, name):
    trig = build_attack(name).trigger_for((3, 32, 32))
    try:
        out = trig.apply(x)
    except AdvmlError:
        return
    assert out.shape == x.shape and out.dtype == x.dtype
    assert x.shape[2:] == (32, 32)  # any other image size must have been refused
    if out.numel():
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=60, deadline=None, derandomize=True)
@given(size=st.integers(1, 6), corner=st.sampled_from(["bottom_right", "top_left", "top_right", "bottom_left"]),
       margin=st.integers(0, 5), h=st.integers(4, 12))
def test_square_patch_changes_exactly_size_squared_pixels(size, corner, margin, h):
    try:
        trig = MaskTrigger.square((3, h, h), size=size, corner=corner, margin=margin)
    except AdvmlError:
        assert size + margin > h
        return
    out = trig.apply(torch.zeros(1, 3, h, h))
    assert int((out[0, 0] != 0).sum()) == size * size


arrays = st.builds(
    lambda n, h, c, dtype, k: (np.zeros((n, h, h, c), dtype=dtype), np.arange(n) % max(k, 1)),
    n=st.integers(0, 4), h=st.integers(1, 8), c=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from([np.uint8, np.float32, np.int16]), k=st.integers(0, 3))


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=arrays, test=arrays, drop=st.sampled_from([None, "x_test", "y_train"]))
def test_npz_loader_gives_a_dataset_or_a_clean_error(tmp_path_factory, train, test, drop):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    data = {"x_train": train[0], "y_train": train[1], "x_test": test[0], "y_test": test[1]}
    if drop:
        data.pop(drop)
    np.savez(path, **data)
    try:
        d = load_dataset(f"npz:{path}")
    except AdvmlError:
        return
    assert isinstance(d.train, TensorImageDataset) and len(d.train) == len(train[0]) > 0
    x, _ = d.train.get_batch(torch.arange(len(d.train)))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_every_registered_attack_is_covered_somewhere():
    assert set(TRIGGER_ATTACKS) <= set(ATTACKS.names())
