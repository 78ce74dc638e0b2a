"""Poison the whole 50,000-image CIFAR-10 train set with BadNets: advml's batched trigger vs the per-image
PIL/NumPy loop that BackdoorBench uses (its AddMaskPatchTrigger applied image by image), in one run.

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/poison_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from timing import best_of

from advml.backdoor import BadNets, MaskTrigger
from advml.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=512, help="images per batched trigger call")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    train = load_dataset("cifar10", download=False).train  # the full 50,000 images (needs ADVML_DATA_DIR)
    n = len(train)
    images = train.images  # uint8 (N,3,32,32)
    trigger = MaskTrigger.square((3, 32, 32))

    # baseline: BackdoorBench-style, one PIL image at a time through a NumPy mask/pattern
    pil_images = [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).numpy()]
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[29:, 29:] = 1
    pattern = mask * 255

    def per_image_loop() -> list[Image.Image]:
        out = []
        for img in pil_images:
            arr = np.array(img)
            out.append(Image.fromarray((arr * (mask == 0) + pattern * (mask > 0)).astype(np.uint8)))
        return out

    def batched() -> list[torch.Tensor]:
        return [trigger.apply(chunk.float().div_(255)).mul_(255).round_().to(torch.uint8)
                for chunk in images.split(args.chunk)]

    # same result, checked on every image before timing
    ours = torch.cat(batched())
    ref = torch.from_numpy(np.stack([np.asarray(i) for i in per_image_loop()])).permute(0, 3, 1, 2)
    assert torch.equal(ours, ref), "batched and per-image BadNets differ"

    t_loop, t_ours = best_of(per_image_loop, args.repeats), best_of(batched, args.repeats)
    print(f"BadNets trigger on all {n} CIFAR-10 train images ({torch.get_num_threads()} threads, best of "
          f"{args.repeats}):")
    print(f"  per-image PIL/NumPy loop (BackdoorBench style): {n / t_loop:>10,.0f} images/s  ({t_loop:.3f} s)")
    print(f"  advml batched trigger.apply                   : {n / t_ours:>10,.0f} images/s  ({t_ours:.3f} s)")
    print(f"  ratio: {t_loop / t_ours:.1f}x faster")

    # the whole poisoned training set at rate 0.1, read once through PoisonedDataset in training batches
    poisoned = BadNets(rate=0.1).poison(train, seed=0)
    t_pd = best_of(lambda: [poisoned.get_batch(i) for i in torch.arange(n).split(128)], args.repeats)
    print(f"  PoisonedDataset (rate 0.1) read in batches of 128: {n / t_pd:,.0f} images/s ({t_pd:.3f} s per epoch)")


if __name__ == "__main__":
    main()
