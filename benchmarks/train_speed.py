"""Training throughput by precision and memory format, and the Trainer's overhead over a bare loop.

Usage: python benchmarks/train_speed.py [--models cnn_small,resnet18_narrow,preact_resnet18,airnet] [--steps 6]
       [--batch-size 128] [--no-compile] [--device auto]

Per model: images/s of one SGD step (forward, backward, update) in float32, bf16 autocast, float32 +
channels_last, bf16 + channels_last and (unless --no-compile) bf16 + channels_last + torch.compile, each as a
ratio to float32 measured in the same run. Then advml's Trainer (one epoch over a resident dataset, with crop +
flip) against a bare loop of the same steps on the same data: the overhead is 1 - trainer / bare.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_of  # noqa: E402

from advml.data import load_dataset  # noqa: E402
from advml.data.base import TensorImageDataset  # noqa: E402
from advml.data.batches import standard_augment  # noqa: E402
from advml.models import build_model  # noqa: E402
from advml.train import TrainConfig, Trainer  # noqa: E402
from advml.utils.precision import autocast, bf16_support, resolve_precision  # noqa: E402
from advml.utils.runtime import resolve_device  # noqa: E402

VARIANTS = [("fp32", False, False), ("bf16", True, False), ("fp32+cl", False, True), ("bf16+cl", True, True)]


def step_rate(name: str, amp: bool, cl: bool, compiled: bool, args: argparse.Namespace,
              device: torch.device) -> tuple[float, float]:
    """(images/s of a training step, seconds of the first, compiling, step)."""
    torch.manual_seed(0)
    model = build_model(name, 10).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    secs = best_of(lambda: [step() for _ in range(args.steps)], 2)
    return args.steps * args.batch_size / secs, first


def trainer_overhead(name: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(bare loop images/s, Trainer images/s) for one epoch of the same steps on the same resident data."""
    data = load_dataset("sample").train
    n = (len(data) // args.batch_size) * args.batch_size
    x_all, y_all = data.get_batch(torch.arange(n))
    resident = TensorImageDataset((x_all * 255).round().to(torch.uint8), y_all, data.classes)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, device=str(device), progress=False)

    prec = resolve_precision("auto", device)

    def bare() -> None:
        torch.manual_seed(0)
        model = build_model(name, 10).to(device)
        model = model.to(memory_format=torch.channels_last) if prec.channels_last else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        for idx in torch.randperm(n, generator=gen).split(args.batch_size):
            x, y = resident.get_batch(idx)
            x = standard_augment(x.to(device), gen, 4, channels_last=prec.channels_last)
            with autocast(device, prec.amp):
                loss = F.cross_entropy(model(x).float(), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        float(loss.detach())

    def trainer() -> None:
        torch.manual_seed(0)
        Trainer(build_model(name, 10), cfg).fit(resident)

    t_bare, t_trainer = best_of(bare, 2), best_of(trainer, 2)
    return n / t_bare, n / t_trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn_small,resnet18_narrow,preact_resnet18,airnet")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--overhead-model", default="resnet18_narrow")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    ok, why = bf16_support(device)
    print(f"device {device}, {torch.get_num_threads()} threads, bf16: {ok} ({why}), batch {args.batch_size}")
    print("| model | " + " | ".join(v for v, *_ in VARIANTS) + (" | bf16+cl+compile | compile s" if not
                                                                  args.no_compile else "") + " |")
    print("| --- " * (len(VARIANTS) + 1 + (0 if args.no_compile else 2)) + "|")
    for name in args.models.split(","):
        rates = [step_rate(name, amp, cl, False, args, device)[0] for _, amp, cl in VARIANTS]
        cells = [f"{rates[0]:,.0f} img/s"] + [f"{r:,.0f} ({r / rates[0]:.2f}x)" for r in rates[1:]]
        if not args.no_compile:
            try:
                rate, first = step_rate(name, True, True, True, args, device)
                cells += [f"{rate:,.0f} ({rate / rates[0]:.2f}x)", f"{first:.0f}"]
            except Exception as e:  # the compiler is missing or fails on this machine
                cells += [f"n/a ({type(e).__name__})", "-"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    bare, trainer = trainer_overhead(args.overhead_model, args, device)
    print(f"\nTrainer vs bare loop ({args.overhead_model}, bf16 + channels_last where supported, crop + flip): "
          f"bare {bare:,.0f} img/s, Trainer {trainer:,.0f} img/s, overhead {1 - trainer / bare:+.1%}")


if __name__ == "__main__":
    main()
