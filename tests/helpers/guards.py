"""Shared test helpers for defense runs: a test split that fails if read during a defense, and a tiny run."""

from __future__ import annotations

import torch

from advml.data.base import ImageDataset

TINY = {"dataset": "sample", "train_size": 500, "test_size": 100, "model": "cnn_small",
        "train": {"epochs": 1, "progress": False, "augment": "none"}}


class GuardedTest(ImageDataset):
    """A test split that fails the run if it is read while a defense runs."""

    def __init__(self, base: ImageDataset, state: dict) -> None:
        self.base, self.state, self.classes = base, state, base.classes

    @property
    def labels(self) -> torch.Tensor:
        assert not self.state["in_defense"], "a defense read test labels"
        return self.base.labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def get_batch(self, index: torch.Tensor):
        assert not self.state["in_defense"], "a defense read test data"
        return self.base.get_batch(index)


def guard_defenses(monkeypatch, state: dict) -> None:
    """Make every defense run fail if it reads the test split or sees poison flags; record its clean subset."""
    import advml.experiments.backdoor as run_module
    from advml.backdoor.defenses.base import Defense

    real_load = run_module.load_dataset

    def guarded_load(*args, **kwargs):
        data = real_load(*args, **kwargs)
        data.test = GuardedTest(data.test, state)
        return data

    def guard(real_run):
        def run(self, train, ctx):
            assert not hasattr(train, "poison_flags")
            state["in_defense"], state["clean"] = True, ctx.clean_data
            try:
                return real_run(self, train, ctx)
            finally:
                state["in_defense"] = False
        return run

    monkeypatch.setattr(run_module, "load_dataset", guarded_load)
    for cls in Defense.__subclasses__():
        monkeypatch.setattr(cls, "run", guard(cls.run))
