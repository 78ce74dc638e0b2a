"""ISSBA encoding throughput: the shipped 32x32 encoder applied to CIFAR-10 images in batches vs one image at a
time in a Python loop (the baseline, measured in the same run), in images/s.

Usage: python benchmarks/issba_speed.py [--images 2000] [--loop-images 200] [--batch 256] [--threads N]
Uses the bundled sample's real CIFAR-10 images (repeated up to --images), so no data folder is needed.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of

from advml.backdoor import ISSBA
from advml.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--loop-images", type=int, default=200, help="images for the per-image baseline")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    attack = ISSBA(encode_batch=args.batch)
    trigger = attack.trigger_for((3, 32, 32))
    x = load_dataset("sample").train.tensors()[0]
    x = x.repeat((args.images + len(x) - 1) // len(x), 1, 1, 1)[:args.images]
    singles = [img[None] for img in x[:args.loop_images]]
    trigger.apply(x[:8]), trigger.apply(singles[0])  # warm-up
    t_batched = best_of(lambda: trigger.apply(x), args.repeats)
    t_loop = best_of(lambda: [trigger.apply(i) for i in singles], args.repeats)
    batched, loop = len(x) / t_batched, len(singles) / t_loop
    print(f"ISSBA encoder ({attack.encoder_info['source']}), 3x32x32, {torch.get_num_threads()} thread(s), "
          f"batches of {args.batch}")
    print("| mode | images | images/s |\n| --- | ---: | ---: |")
    print(f"| batched | {len(x)} | {batched:,.0f} |\n| per-image loop | {len(singles)} | {loop:,.0f} |")
    print(f"batched / per-image: {batched / loop:.1f}x")


if __name__ == "__main__":
    main()
