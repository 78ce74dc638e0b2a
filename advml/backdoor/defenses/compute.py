"""The compute a defense spends, stage by stage: wall seconds and epochs x images, for `metrics.json`
(`defense_compute`), so that defenses (DBD and D-ST at equal presets) can be compared side by side."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from advml import provenance


class ComputeLog:
    """Records, per stage, the wall time, `epochs` x `images` (samples per epoch) and `forward_images`, the
    images that went through the network (default epochs x images; 2x for a two-view contrastive stage)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    @contextmanager
    def stage(self, name: str, *, epochs: int, images: int, forward_images: int | None = None) -> Iterator[None]:
        """Time the body as stage `name`; within a run, resumed stages add the seconds earlier processes spent."""
        start = time.perf_counter()
        scope = provenance.current()
        with scope.stage(f"defense.{name}") if scope is not None else nullcontext(None) as clock:
            try:
                yield
            finally:
                seconds = clock() if clock is not None else time.perf_counter() - start
                self.add(name, seconds=seconds, epochs=epochs, images=images, forward_images=forward_images)

    def add(self, name: str, *, seconds: float, epochs: int, images: int, forward_images: int | None = None) -> None:
        """Record a stage timed elsewhere (one interleaved with another, as DBD's per-epoch split)."""
        self.stages[name] = {"seconds": round(seconds, 3), "epochs": epochs, "images": images,
                             "epoch_images": epochs * images,
                             "forward_images": epochs * images if forward_images is None else forward_images}

    def report(self) -> dict[str, Any]:
        """{'stages': {...}, 'seconds', 'epoch_images', 'forward_images': totals} (in a resumed run a stage's
        seconds are summed over its processes, each counted up to its last checkpoint)."""
        total = {k: sum(s[k] for s in self.stages.values()) for k in ("seconds", "epoch_images", "forward_images")}
        return {"stages": self.stages, **total, "seconds": round(total["seconds"], 3)}
