"""StegaStamp encoder-decoder (Tancik et al. 2020) in PyTorch, trained offline on any image dataset: the
encoder hides a bit string in an image as an additive residual, the decoder reads it back. ISSBA uses the
residual of a fixed secret as its sample-specific trigger.

Encoder: secret -> dense (linear) -> (C, g, g) map (g = min(H, 32)) upsampled (nearest) to H x W,
concatenated with the image, a U-Net -> residual. Decoder: optional spatial transformer + strided convs with
batch norm -> secret logits. Loss as StegaStamp / BackdoorBox's port: 2.0 * mean(residual^2) + 1.5 *
perceptual + 1.5 * BCE(secret) (+ 0.5 * WGAN critic, off by default). The perceptual term is SSIM (kornia's
(1 - SSIM) / 2): LPIPS needs downloaded AlexNet weights. advml adds hinges that keep every encoded image's
PSNR within [`psnr_floor`, `psnr_ceiling`] and the residuals of different images sharing a secret from
being alike (mean cosine above `specificity_margin`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from advml.config import Seed, Settings
from advml.data.base import ImageDataset, as_image_dataset, stratified_indices
from advml.errors import ConfigError, DataError, InputError, NumericalError
from advml.utils.checks import check_images, check_state
from advml.utils.io import load_tensors, save_tensors
from advml.utils.precision import AmpSetting, autocast, resolve_precision
from advml.utils.runtime import resolve_device
from advml.utils.state import load_optimizer, model_state, optimizer_state, optimizer_tensors

CHECKPOINT_NAME = "last.safetensors"


class StegaStampSettings(Settings):
    """Architecture and training of the encoder-decoder (together they key the encoder cache)."""

    bits: int = Field(20, ge=1, description="secret length in bits (BackdoorBox's CIFAR demo: 20; paper: 100)")
    width: int = Field(16, ge=4, description="channels of the first U-Net level (doubled per level)")
    depth: int = Field(3, ge=1, le=6, description="U-Net down-sampling levels")
    stn: bool = Field(False, description="spatial transformer in front of the decoder")
    epochs: int = Field(8, ge=1)
    secret_only_epochs: int = Field(1, ge=0, description="first epochs train the secret loss only")
    ramp_epochs: float = Field(1.0, ge=0, description="image-loss weights ramp linearly from 0 over these epochs "
                                                      "after the warm-up (StegaStamp's ramp)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam step size (StegaStamp: 1e-4; 1e-3 for the CPU budget)")
    train_size: int | None = Field(12000, ge=1, description="class-stratified training subset; None: all of it")
    l2_weight: float = Field(2.0, ge=0)
    perceptual_weight: float = Field(1.5, ge=0, description="weight of the SSIM loss (1 - SSIM) / 2")
    secret_weight: float = Field(1.5, gt=0)
    critic_weight: float = Field(0.0, ge=0, description="WGAN critic term (0.5 in StegaStamp; 0 = no critic)")
    psnr_floor: float | None = Field(27.1, gt=0, description="hinge on each image's MSE above the PSNR floor "
                                                             "(dB); None: off")
    psnr_ceiling: float | None = Field(27.6, gt=0, description="hinge on each image's MSE below the PSNR ceiling "
                                                               "(dB): keeps the residual loud enough to be learnt; "
                                                               "None: off")
    floor_weight: float = Field(1.0, ge=0, description="weight of the floor and ceiling hinges")
    specificity_weight: float = Field(1.0, ge=0, description="weight of the hinge on the mean cosine similarity of "
                                                             "residuals of different images sharing a secret")
    specificity_margin: float = Field(0.35, ge=-1, le=1, description="mean cosines above this are penalised")
    cosine_floor: float | None = Field(None, ge=-1, le=1, description="mean cosines below this are penalised too "
                                                                      "(a shared part the model learns); None: off")
    secret_group: int = Field(8, ge=1, description="images per batch that share one random secret")
    seed: Seed = 0


def _conv(cin: int, cout: int, stride: int = 1, norm: bool = False) -> nn.Sequential:
    if norm:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """(image in [0,1], secret bits in {0,1}) -> additive residual, any image size."""

    def __init__(self, bits: int, image_shape: tuple[int, int, int], width: int = 16, depth: int = 3) -> None:
        super().__init__()
        c, h, w = image_shape
        self.bits, self.image_shape = bits, (c, h, w)
        self.grid = (min(h, 32), min(w, 32))
        self.secret_dense = nn.Linear(bits, c * self.grid[0] * self.grid[1])
        chans = [min(width * 2 ** i, 256) for i in range(depth + 1)]
        self.inc = _conv(2 * c, chans[0])
        self.down = nn.ModuleList(nn.Sequential(_conv(chans[i], chans[i + 1], 2), _conv(chans[i + 1], chans[i + 1]))
                                  for i in range(depth))
        self.up = nn.ModuleList(_conv(chans[i + 1], chans[i]) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_conv(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.out = nn.Sequential(_conv(chans[0] + 2 * c, chans[0]), nn.Conv2d(chans[0], c, 1))

    def forward(self, x: Tensor, secret: Tensor) -> Tensor:
        """The residual (N,C,H,W) for images `x` (N,C,H,W) and secrets (N, bits) or (bits,)."""
        if secret.ndim == 1:
            secret = secret.expand(x.shape[0], -1)
        s = self.secret_dense(secret.to(x.dtype) - 0.5).view(-1, self.image_shape[0], *self.grid)
        if s.shape[-2:] != x.shape[-2:]:
            s = F.interpolate(s, size=x.shape[-2:], mode="nearest")
        inp = torch.cat([x - 0.5, s], 1)
        skips = [self.inc(inp)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up, merge in zip(self.up, self.merge):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = merge(torch.cat([skip, h], 1))
        return self.out(torch.cat([h, inp], 1))


class Decoder(nn.Module):
    """Encoded image -> secret logits (N, bits); an optional spatial transformer first."""

    def __init__(self, bits: int, image_shape: tuple[int, int, int], width: int = 16, stn: bool = False) -> None:
        super().__init__()
        c, h, w = image_shape
        self.stn = None
        if stn:
            self.stn = nn.Sequential(_conv(c, 16, 2), _conv(16, 32, 2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                     nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Linear(128, 6))
            nn.init.zeros_(cast(nn.Linear, self.stn[-1]).weight)
            with torch.no_grad():
                cast(nn.Linear, self.stn[-1]).bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        levels = min(6, max(3, int(math.log2(min(h, w) / 4))))
        layers, cin = [], c
        for i in range(levels):
            cout = min(width * 2 ** i, 256)
            layers += [_conv(cin, cout, 2, norm=True), _conv(cout, cout, 1, norm=True)]
            cin = cout
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(cin * 16, 256), nn.ReLU(inplace=True), nn.Linear(256, bits))

    def forward(self, x: Tensor) -> Tensor:
        """Secret logits for images `x` in [0,1]."""
        x = x - 0.5
        if self.stn is not None:
            theta = self.stn(x).view(-1, 2, 3)
            x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        return self.head(self.convs(x))


class Critic(nn.Module):
    """WGAN critic: a score per image (StegaStamp's discriminator)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv(channels, 8, 2), _conv(8, 16, 2), _conv(16, 32, 2), nn.Conv2d(32, 1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Mean score of each image (N,)."""
        return self.net(x - 0.5).mean((1, 2, 3))


class StegaStamp(nn.Module):
    """Encoder + decoder (+ critic when its weight is non-zero) for images of one shape."""

    def __init__(self, settings: StegaStampSettings, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        if c not in (1, 3) or min(h, w) < 8:
            raise ConfigError(f"StegaStamp needs 1 or 3 channels and images of at least 8x8, got {image_shape}")
        self.settings, self.image_shape = settings, (c, h, w)
        s = settings
        self.encoder = Encoder(s.bits, self.image_shape, s.width, s.depth)
        self.decoder = Decoder(s.bits, self.image_shape, s.width, s.stn)
        self.critic = Critic(c) if s.critic_weight > 0 else None

    def _check(self, x: Tensor, secret: Tensor) -> Tensor:
        check_images(x, "StegaStamp input", channels=self.image_shape[0])
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"this encoder is for images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
        if secret.shape[-1] != self.settings.bits or secret.ndim not in (1, 2) \
                or (secret.ndim == 2 and secret.shape[0] != x.shape[0]):
            raise InputError(f"secret must be ({self.settings.bits},) or (N, {self.settings.bits}) bits, "
                             f"got shape {tuple(secret.shape)}")
        return secret.to(x.device)

    def residual(self, x: Tensor, secret: Tensor) -> Tensor:
        """The encoder's residual for images `x` and secret bits (one vector for all, or one per image)."""
        return self.encoder(x, self._check(x, secret))

    def encode(self, x: Tensor, secret: Tensor) -> Tensor:
        """clamp(x + residual, 0, 1)."""
        return (x + self.residual(x, secret)).clamp(0, 1)

    def decode(self, x: Tensor) -> Tensor:
        """Bit probabilities (N, bits) read from images `x`."""
        check_images(x, "StegaStamp decoder input", channels=self.image_shape[0])
        return torch.sigmoid(self.decoder(x))


@torch.no_grad()
def bit_accuracy(model: StegaStamp, images: Tensor, secret: Tensor, *, batch_size: int = 256) -> float:
    """Fraction of secret bits the decoder recovers from the encoded `images` (one secret for all)."""
    model.eval()
    device = next(model.parameters()).device
    secret = secret.to(device)
    hits = []
    for chunk in images.split(batch_size):
        p = model.decode(model.encode(chunk.to(device), secret))
        hits.append(((p > 0.5).float() == secret).float().flatten())
    return float(torch.cat(hits).mean())


# --- checkpoints -----------------------------------------------------------------------------------------
def _settings_key(settings: StegaStampSettings, image_shape: tuple[int, int, int]) -> str:
    return json.dumps({"settings": settings.model_dump(), "image_shape": list(image_shape)}, sort_keys=True)


def save_stegastamp(path: str | os.PathLike[str], model: StegaStamp, info: dict[str, Any] | None = None) -> None:
    """Encoder and decoder weights as safetensors, with the settings (and `info`) in the metadata."""
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith("critic.")}
    meta = {"format": "advml.stegastamp/1", "settings": json.dumps(model.settings.model_dump(), sort_keys=True),
            "image_shape": json.dumps(list(model.image_shape)), "info": json.dumps(info or {}, sort_keys=True)}
    save_tensors(path, tensors, meta)


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], StegaStampSettings,
                                                        tuple[int, int, int], dict[str, Any]]:
    """(tensors, settings, image shape, info) of a saved encoder-decoder; DataError if it is not one."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "advml.stegastamp/1":
        raise DataError(f"{path}: not an advml StegaStamp encoder file (no 'advml.stegastamp/1' metadata)")
    try:
        settings = StegaStampSettings(**json.loads(meta["settings"]))
        shape = tuple(int(v) for v in json.loads(meta["image_shape"]))
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: unreadable StegaStamp metadata ({e})") from None
    if len(shape) != 3:
        raise DataError(f"{path}: image_shape must be (C,H,W), got {shape}")
    return tensors, settings, shape, info


def load_stegastamp(path: str | os.PathLike[str]) -> tuple[StegaStamp, dict[str, Any]]:
    """A saved encoder-decoder (safetensors only) in eval mode, with its recorded info."""
    tensors, settings, shape, info = read_metadata(path)
    model = StegaStamp(settings.model_copy(update={"critic_weight": 0.0}), shape)
    model.settings = settings
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DataError(f"{path}: weights do not match the recorded settings ({str(e).splitlines()[0]})") from None
    return model.eval(), info


def _group_cosine(residual: Tensor, group: int) -> Tensor:
    """Mean cosine similarity of the residuals of different images within each secret group, per group (G,)."""
    n = residual.shape[0] // group * group
    if group < 2 or n == 0:
        return residual.new_zeros(1)
    r = F.normalize(residual[:n].flatten(1), dim=1).view(n // group, group, -1)
    gram = r @ r.transpose(1, 2)
    return (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (group * (group - 1))


# --- training --------------------------------------------------------------------------------------------
def train_stegastamp(train: ImageDataset, settings: StegaStampSettings | None = None, *,
                     checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
                     stop_after: int | None = None, device: str = "auto",
                     progress: bool = True, amp: AmpSetting = "auto") -> tuple[StegaStamp, list[dict[str, Any]]]:
    """Train an encoder-decoder on the (training) images with random secrets; returns it and the per-epoch
    history (losses, bit accuracy, PSNR of the encoded training batches, seconds). With `checkpoint_dir`, an
    atomic checkpoint after every epoch; `resume` continues from it. `stop_after` ends after that many epochs.
    `amp`: the networks' forward passes in bf16 autocast where it pays (losses in float32)."""
    import kornia

    from advml.metrics import psnr

    s = settings or StegaStampSettings()
    train = as_image_dataset(train)
    if len(train) == 0:
        raise ConfigError("cannot train StegaStamp on an empty dataset")
    dev = resolve_device(device)
    precision = resolve_precision(amp, dev)
    torch.manual_seed(s.seed)
    model = StegaStamp(s, train.image_shape).to(dev)
    gen = torch.Generator().manual_seed(s.seed)
    pool = torch.arange(len(train))
    if s.train_size is not None and s.train_size < len(train):
        pool = stratified_indices(train.labels, s.train_size, train.num_classes, gen)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=s.lr)
    critic_opt = torch.optim.RMSprop(model.critic.parameters(), lr=1e-5) if model.critic is not None else None
    key = _settings_key(s, train.image_shape)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    epoch, history = 0, []
    if resume and ckpt is not None and ckpt.is_file():
        tensors, meta = load_tensors(ckpt)
        if meta.get("key") != key:
            raise ConfigError(f"{ckpt}: checkpoint was written with other StegaStamp settings; resume with the "
                              "same settings or use another folder")
        check_state(model_state(tensors), model.state_dict(), str(ckpt))
        try:
            model.load_state_dict(model_state(tensors))
            load_optimizer(opt, optimizer_state(tensors, "adam", dev), json.loads(meta["adam_scalars"]),
                           json.loads(meta["adam_groups"]))
            if critic_opt is not None:
                load_optimizer(critic_opt, optimizer_state(tensors, "rms", dev), json.loads(meta["rms_scalars"]),
                               json.loads(meta["rms_groups"]))
            gen.set_state(tensors["rng.data"])
            epoch, history = int(meta["epoch"]), json.loads(meta["history"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:  # optimiser state, RNG state or history
            raise DataError(f"{ckpt}: damaged checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    steps_per_epoch = math.ceil(pool.numel() / s.batch_size)
    floor_mse = 10 ** (-s.psnr_floor / 10) if s.psnr_floor is not None else None
    ceiling_mse = 10 ** (-s.psnr_ceiling / 10) if s.psnr_ceiling is not None else None
    if floor_mse is not None and ceiling_mse is not None and ceiling_mse >= floor_mse:
        raise ConfigError(f"psnr_ceiling ({s.psnr_ceiling} dB) must be above psnr_floor ({s.psnr_floor} dB)")
    last = s.epochs if stop_after is None else min(s.epochs, stop_after)
    bar = tqdm(range(epoch, last), initial=epoch, total=s.epochs, desc="stegastamp", disable=not progress)
    for epoch in bar:
        model.train()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        order = pool[torch.randperm(pool.numel(), generator=gen)]
        inner = tqdm(order.split(s.batch_size), leave=False, disable=not progress, desc=f"epoch {epoch + 1}")
        for step, idx in enumerate(inner):
            x = train.get_batch(idx)[0].to(dev)
            groups = math.ceil(len(idx) / s.secret_group)
            secret = torch.randint(0, 2, (groups, s.bits), generator=gen).float()
            secret = secret.repeat_interleave(s.secret_group, 0)[:len(idx)].to(dev)
            with autocast(dev, precision.amp):
                residual = model.encoder(x, secret).float()
                encoded = (x + residual).clamp(0, 1)
                logits = model.decoder(encoded).float()
            bce = F.binary_cross_entropy_with_logits(logits, secret)
            progress_epochs = epoch - s.secret_only_epochs + step / steps_per_epoch
            ramp = 0.0 if progress_epochs < 0 else min(1.0, progress_epochs / s.ramp_epochs) if s.ramp_epochs else 1.0
            l2 = residual.pow(2).mean()
            perceptual = kornia.losses.ssim_loss(encoded, x, window_size=min(11, x.shape[-1] // 2 * 2 - 1))
            mse = (encoded - x).pow(2).flatten(1).mean(1)
            floor = F.relu(mse / floor_mse - 1).mean() if floor_mse is not None else mse.new_zeros(())
            if ceiling_mse is not None:
                floor = floor + F.relu(1 - mse / ceiling_mse).mean()
            cosine = _group_cosine(residual, s.secret_group)
            specific = F.relu(cosine - s.specificity_margin).mean()
            if s.cosine_floor is not None:
                specific = specific + F.relu(s.cosine_floor - cosine).mean()
            loss = s.secret_weight * bce + ramp * (s.l2_weight * l2 + s.perceptual_weight * perceptual
                                                   + s.floor_weight * floor + s.specificity_weight * specific)
            if model.critic is not None and ramp > 0:
                with autocast(dev, precision.amp):
                    real, fake = model.critic(x).float(), model.critic(encoded.detach()).float()
                critic_loss = (real - fake).mean()
                assert critic_opt is not None  # made with model.critic
                critic_opt.zero_grad(set_to_none=True)
                critic_loss.backward()
                critic_opt.step()
                with torch.no_grad():
                    for p in model.critic.parameters():
                        p.clamp_(-0.01, 0.01)
                with autocast(dev, precision.amp):
                    loss = loss + ramp * s.critic_weight * model.critic(encoded).float().mean()
            if not torch.isfinite(loss):
                raise NumericalError(f"StegaStamp loss became {loss.item()} in epoch {epoch + 1}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                acc = ((logits > 0).float() == secret).float().mean()
                p = psnr(x, encoded.detach())  # type: ignore[assignment]  # the name was a critic Parameter
            for name, v in (("loss", loss), ("bce", bce), ("l2", l2), ("perceptual", perceptual),
                            ("floor", floor), ("specific", specific), ("cosine", cosine.mean()), ("bit_acc", acc),
                            ("psnr", p[torch.isfinite(p)].mean())):
                sums[name] = sums.get(name, 0.0) + float(v.detach()) * len(idx)
            inner.set_postfix(bce=f"{float(bce.detach()):.3f}", acc=f"{float(acc):.3f}", psnr=f"{float(p.mean()):.1f}")
        record = {"epoch": epoch + 1, **{k: v / pool.numel() for k, v in sums.items()},
                  "seconds": time.perf_counter() - start}
        history.append(record)
        bar.set_postfix(bit_acc=f"{record['bit_acc']:.3f}", psnr=f"{record['psnr']:.1f}")
        if ckpt is not None:
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            adam_t, adam_s = optimizer_tensors(opt, "adam")
            tensors.update(adam_t)
            meta = {"key": key, "epoch": str(epoch + 1), "history": json.dumps(history),
                    "adam_scalars": json.dumps(adam_s), "adam_groups": json.dumps(opt.state_dict()["param_groups"])}
            if critic_opt is not None:
                rms_t, rms_s = optimizer_tensors(critic_opt, "rms")
                tensors.update(rms_t)
                meta.update(rms_scalars=json.dumps(rms_s),
                            rms_groups=json.dumps(critic_opt.state_dict()["param_groups"]))
            tensors["rng.data"] = gen.get_state()
            save_tensors(ckpt, tensors, meta)
    return model.eval(), history
