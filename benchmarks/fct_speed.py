"""FCT scoring speed against its ideal: two plain forward passes (clean + transformed) of the same model.

Usage: python benchmarks/fct_speed.py [--n 2048] [--model resnet18_narrow] [--device auto]
Uses the bundled CIFAR-10 sample; prints images/s of both and the ratio (1.0 = FCT costs exactly two passes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of  # noqa: E402

from advml.backdoor.defenses.fct import fct_scores  # noqa: E402
from advml.data import load_dataset  # noqa: E402
from advml.models import build_model  # noqa: E402
from advml.utils.runtime import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="resnet18_narrow")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("sample")
    train = data.train.subset(torch.arange(min(args.n, len(data.train))))
    model = build_model(args.model, data.num_classes, mean=data.mean, std=data.std).to(device).eval()
    x_all = train.get_batch(torch.arange(len(train)))[0]

    @torch.no_grad()
    def two_passes() -> None:
        for start in range(0, len(train), args.batch_size):
            x = x_all[start:start + args.batch_size].to(device)
            model.features(x), model.features(x)

    def fct() -> None:
        fct_scores(model, train, batch_size=args.batch_size, device=device)

    two_passes(), fct()  # warm-up
    t_ref = best_of(two_passes, args.repeats)
    t_fct = best_of(fct, args.repeats)
    n = len(train)
    print(f"device {device}, model {args.model}, {n} images, batch {args.batch_size}")
    print(f"two plain forward passes: {n / t_ref:10.0f} images/s")
    print(f"FCT (rotate+translate):   {n / t_fct:10.0f} images/s")
    print(f"FCT cost / two passes:    {t_fct / t_ref:10.2f}x (ideal 1.0)")


if __name__ == "__main__":
    main()
