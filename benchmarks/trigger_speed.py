"""Throughput of every registered attack's trigger on the 50,000 CIFAR-10 train images: one batched call per
chunk vs the same trigger called image by image in a Python loop (measured on a subset in the same run).

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/trigger_speed.py [--loop-images 2000] [--chunk 512]
TrojanNN's trigger is generated from an untrained cnn_small in one step here: its apply cost does not depend
on the pattern's values. Clean-label is timed for its trigger only (its PGD step is a model cost).
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of

from advml.backdoor import ATTACKS, build_attack
from advml.data import load_dataset
from advml.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-images", type=int, default=2000, help="images for the per-image baseline")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train = load_dataset("cifar10", download=False).train
    images = train.images  # uint8 (50000, 3, 32, 32)
    n = len(train)
    print(f"{n} CIFAR-10 train images, {torch.get_num_threads()} threads; uint8 in, float trigger, timing the "
          f"trigger on float chunks of {args.chunk}")
    print("| attack | batched images/s | per-image loop images/s | ratio |\n| --- | ---: | ---: | ---: |")
    for name in ATTACKS.names():
        if name == "none":
            continue
        if name == "trojannn":
            torch.manual_seed(0)
            attack = build_attack(name, iters=1)
            attack.model = build_model("cnn_small", 10)
            attack.prepare(train, 0)
        else:
            attack = build_attack(name)
        trig = attack.trigger_for(train)
        chunks = [c.float().div_(255) for c in images.split(args.chunk)]
        singles = [img[None] for img in torch.cat(chunks[:args.loop_images // args.chunk + 1])[:args.loop_images]]
        trig.apply(chunks[0]), trig.apply(singles[0])  # warm-up: per-device constants are built on first use
        t_batched = best_of(lambda trig=trig, chunks=chunks: [trig.apply(c) for c in chunks], args.repeats)
        t_loop = best_of(lambda trig=trig, singles=singles: [trig.apply(i) for i in singles], args.repeats)
        batched, loop = n / t_batched, len(singles) / t_loop
        print(f"| {name} | {batched:,.0f} | {loop:,.0f} | {batched / loop:.0f}x |")


if __name__ == "__main__":
    main()
