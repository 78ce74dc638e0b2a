"""Train the StegaStamp encoder-decoder that ships with advml (advml/backdoor/assets/issba_cifar10_32.safetensors)
on the CIFAR-10 training split, and record its settings, training time and held-out figures in its metadata.

Usage: ADVML_DATA_DIR=../shared/data python tools/train_issba_encoder.py [--train-size 20000] [--out FILE]
       [--set key=value ...] [--threads 1]
Checkpoints go to runs/issba_encoder/checkpoints (one per epoch); rerunning resumes. Without --set the
settings are `StegaStampSettings()`'s defaults, so the ISSBA attack's `encoder: auto` finds the result.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from advml.backdoor.attacks.issba import SHIPPED, residual_cosine
from advml.backdoor.secret import SecretCode
from advml.backdoor.stegastamp import (
    StegaStampSettings,
    bit_accuracy,
    save_stegastamp,
    train_stegastamp,
)
from advml.config import parse_assignments
from advml.data import load_dataset
from advml.metrics import stealth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=50000, help="CIFAR-10 training images loaded (the "
                                                                       "settings' train_size subsets them)")
    parser.add_argument("--test-images", type=int, default=2000, help="held-out test images for the figures")
    parser.add_argument("--out", default=str(SHIPPED))
    parser.add_argument("--checkpoints", default="runs/issba_encoder/checkpoints")
    parser.add_argument("--set", nargs="*", default=[], help="StegaStampSettings overrides, key=value")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (leave cores for other work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = StegaStampSettings(**parse_assignments(args.set))
    data = load_dataset("cifar10", train_size=args.train_size, test_size=args.test_images, download=False)
    print(f"training on {len(data.train)} CIFAR-10 train images ({settings.train_size or 'all'} used), "
          f"{torch.get_num_threads()} thread(s): {json.dumps(settings.model_dump())}", flush=True)
    start = time.perf_counter()
    model, history = train_stegastamp(data.train, settings, checkpoint_dir=args.checkpoints, resume=True)
    seconds = sum(r["seconds"] for r in history)
    secret = SecretCode(settings.bits).encode("a")
    x, _ = data.test.tensors()
    with torch.no_grad():
        poisoned = torch.cat([model.encode(c, secret) for c in x.split(256)])
    figures = stealth(x, poisoned)
    held_out = {"test_images": len(x), "bit_acc": bit_accuracy(model, x, secret), "psnr": figures["psnr"],
                "linf": figures["linf"], "ssim": figures["ssim"], "residual_cosine": residual_cosine(x, poisoned)}
    info = {"dataset": "cifar10", "split": "train", "train_images": len(data.train), "train_seconds": seconds,
            "threads": torch.get_num_threads(), "history": history, "held_out_secret_a": held_out,
            "script": "tools/train_issba_encoder.py"}
    save_stegastamp(args.out, model, info)
    print(f"saved {args.out}: {seconds / 60:.1f} min of training (this call {time.perf_counter() - start:.0f} s); "
          f"held-out {json.dumps(held_out)}")


if __name__ == "__main__":
    main()
