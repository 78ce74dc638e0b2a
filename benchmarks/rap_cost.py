"""Cost of RAP, PGN and VMI: seconds per outer iteration of MI-TI-DI with and without RAP (and warm-started RAP),
and of MI-PGN / MI-VMI, in units of one forward-backward pass of the same model on the same batch, measured in
the same run. The ideal for RAP with K inner steps is 1 + K passes (the official code and TransferAttack spend
8.5-10.8 and 9.1-9.7 for K = 8 on their setups), for PGN 2 N (N = 20 neighbours), for VMI 1 + N.

Usage: python benchmarks/rap_cost.py [--model resnet18_narrow] [--batch 50] [--iters 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from advml.evasion import compose
from advml.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18_narrow")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model, 10, image_size=args.size).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    t = (y + 1) % 10

    def one_pass() -> None:
        d = torch.zeros_like(x, requires_grad=True)
        torch.autograd.grad(F.cross_entropy(model(x + d), t), d)

    one_pass()
    start = time.perf_counter()
    for _ in range(args.iters):
        one_pass()
    unit = (time.perf_counter() - start) / args.iters
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads: "
          f"one forward-backward pass = {unit * 1000:.1f} ms")
    print("| method (K = 8; warm: 2 inner steps after the first) | s / outer iteration | passes (time) | "
          "passes (counted) | ideal |")
    print("| --- | ---: | ---: | ---: | ---: |")
    n = args.iters
    for spec, ideal in [("mi-ti-di", 1.0), ("mi-ti-di+rap", 9.0), ("mi-ti-di+rap-warm", 1 + (8 + 2 * (n - 1)) / n),
                        ("mi-pgn", 40.0), ("mi-vmi", 21.0)]:
        opts = {"rap-warm": {"late_start": 0}} if spec.endswith("warm") else None
        attack = compose(spec, model, iters=args.iters, options=opts)
        attack(x[:2], y[:2], t[:2])  # warm-up
        start = time.perf_counter()
        attack(x, y, t)
        per = (time.perf_counter() - start) / args.iters
        print(f"| {spec} | {per:.4f} | {per / unit:.2f} | {attack.passes / args.iters:.2f} | {ideal:.2f} |")


if __name__ == "__main__":
    main()
