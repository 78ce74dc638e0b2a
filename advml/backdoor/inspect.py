"""Looking at triggers: a clean / poisoned / amplified-residual figure, and a stealth table of attacks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advml.backdoor.attacks import ATTACKS, BackdoorAttack, build_attack
from advml.data.registry import DatasetSplits
from advml.metrics import stealth
from advml.utils.figures import pyplot, save_figure
from advml.utils.io import write_json, write_text_atomic


def poisoned_examples(attack: BackdoorAttack, data: DatasetSplits, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(clean, poisoned) for the first `n` test images (class-balanced order), as the attack poisons training
    images; attacks that need a clean model or a generated trigger first prepare on the training set."""
    attack.prepare(data.train, seed)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.test), generator=gen)[:n]
    x, y = data.test.get_batch(idx)
    return x, attack.poison_images(x, y)


def trigger_figure(attack: BackdoorAttack, data: DatasetSplits, out: str | os.PathLike[str], n: int = 8,
                   seed: int = 0) -> dict[str, Any]:
    """Save a 3 x n figure (clean, poisoned, residual amplified to full range); returns its stealth figures."""
    plt = pyplot()
    clean, poisoned = poisoned_examples(attack, data, n, seed)
    residual = (poisoned - clean).abs()
    gain = 1.0 / float(residual.max()) if residual.max() > 0 else 1.0
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    rows = [("clean", clean), ("poisoned", poisoned), (f"|residual| x{gain:.1f}", (residual * gain).clamp(0, 1))]
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = imgs[c].permute(1, 2, 0).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=8)
    figures = stealth(clean, poisoned)
    psnr = f"{figures['psnr']:.1f} dB" if figures["psnr"] is not None else "n/a"
    fig.suptitle(f"{attack.name} on {data.name}: PSNR {psnr}, l-inf {figures['linf']:.0f}/255", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)
    return figures


def stealth_table(data: DatasetSplits, out_dir: str | os.PathLike[str], *, attacks: list[str] | None = None,
                  n: int = 1000, seed: int = 0, settings: dict[str, dict[str, Any]] | None = None,
                  skip_model_attacks: bool = False) -> list[dict]:
    """PSNR, l-inf and SSIM of every registered attack (or `attacks`) over `n` test images: stealth.json +
    stealth.md. Attacks that need a clean model (clean_label, trojannn) get it from the model zoo's cache (trained
    once per dataset and settings), or are left out with `skip_model_attacks`."""
    from advml.backdoor.attacks.surrogate import cached_surrogate, uses_surrogate

    names = attacks or [a for a in ATTACKS.names() if a != "none"]
    built = {name: build_attack(name, **(settings or {}).get(name, {})) for name in names}  # bad names fail first
    skipped = [name for name, a in built.items() if skip_model_attacks and uses_surrogate(a)]
    rows = []
    for name, attack in built.items():
        if name in skipped:
            continue
        if uses_surrogate(attack) and getattr(attack, "model", None) is None:
            surrogate = attack.settings.surrogate  # type: ignore[attr-defined]  # uses_surrogate: it has one
            attack.model = cached_surrogate(surrogate, data, seed)  # type: ignore[attr-defined]
        rows.append({"attack": name, **stealth(*poisoned_examples(attack, data, n, seed))})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "stealth.json", {"dataset": data.name, "images": n, "rows": rows, "skipped": skipped})
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [f"Stealth over {n} {data.name} test images (l-inf on the 0-255 scale)", "",
             "| attack | PSNR (dB) | l-inf | SSIM |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['attack']} | {fmt(r['psnr'], '.2f')} | {fmt(r['linf'], '.1f')} | {fmt(r['ssim'], '.4f')} |"
              for r in rows]
    if skipped:
        lines += ["", f"Skipped (they train a clean model first): {', '.join(skipped)}"]
    write_text_atomic(out_dir / "stealth.md", "\n".join(lines) + "\n")
    return rows
