"""ISSBA (Li et al., ICCV 2021): an invisible, sample-specific backdoor. A StegaStamp encoder hides a string
(default 'a', BCH-coded) in each poisoned image; the additive residual, different for every image, is the
trigger: x' = clip(x + residual(x, secret), 0, 1). all2one, rate 0.1, target 0 by default.

The encoder is trained in advml (`advml.backdoor.stegastamp`), offline, on the clean training split. A small
3x32x32 encoder trained on CIFAR-10 ships with the package (`assets/issba_cifar10_32.safetensors`); others are
trained once per (settings, training data) and cached as safetensors under $ADVML_CACHE_DIR/issba.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.attacks.none import IdentityTrigger
from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.secret import SecretCode
from advml.backdoor.stegastamp import (
    StegaStamp,
    StegaStampSettings,
    load_stegastamp,
    read_metadata,
    save_stegastamp,
    train_stegastamp,
)
from advml.backdoor.triggers import Trigger
from advml.data.base import ImageDataset
from advml.errors import ConfigError, DataError, InputError
from advml.utils.checks import check_images

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "issba_cifar10_32.safetensors"


class ISSBASettings(AttackSettings):
    """ISSBA settings: the secret, its error-correcting code, and the encoder (file, or training settings)."""

    secret: str = Field("a", min_length=1, description="the hidden string (the paper: 'a')")
    data_bytes: int | None = Field(None, ge=1, description="pad the secret to this many bytes (paper: 7); "
                                                           "None: its own length")
    ecc_m: int | None = Field(None, ge=5, le=15, description="BCH field order m; None: the strongest code "
                                                             "that fits the bit length")
    ecc_t: int | None = Field(None, ge=1, description="BCH correctable bits t (paper: m=7, t=5 at 100 bits)")
    packet: Literal["advml", "issba"] = Field("advml", description="issba: the ISSBA code's 100-bit packet (secret "
                                              "space-padded to 7 bytes, BCH(137, 5) as 5 bytes, 4 zeros; needs "
                                              "stegastamp.bits 100, no data_bytes/ecc_*); advml: the layout above")
    encoder: str = Field("auto", description="'auto': the shipped encoder if its settings and image shape "
                                             "match, else the cache, else train; 'train': the cache or train "
                                             "on the training split; or a path to an encoder .safetensors")
    stegastamp: StegaStampSettings = Field(default_factory=StegaStampSettings,
                                           description="encoder-decoder architecture and training (bits here)")
    encode_batch: int = Field(256, ge=1, description="images per encoder forward pass")
    precompute_mb: float = Field(1024, ge=0, description="encode the poisoned (and backdoor test) images once and "
                                                         "keep them when they fit in this many MB as float32; "
                                                         "else encode per batch, lazily")

    def code(self) -> SecretCode:
        """The secret's error-correcting code: the ISSBA packet, or advml's BCH layout for these settings."""
        if self.packet == "issba":
            return SecretCode.issba()
        return SecretCode(self.stegastamp.bits, self.data_bytes, self.ecc_m, self.ecc_t)

    def model_post_init(self, _: Any) -> None:
        if self.packet == "issba" and (self.stegastamp.bits != 100 or any(
                v is not None for v in (self.data_bytes, self.ecc_m, self.ecc_t))):
            raise ConfigError("packet: issba is the ISSBA code's 100-bit packet; set stegastamp.bits 100 and "
                              "leave data_bytes, ecc_m and ecc_t unset")
        self.code().encode(self.secret)  # the secret must fit the bit length


def settings_key(settings: StegaStampSettings) -> str:
    """A short hash of encoder-decoder settings (the cache key, with the data fingerprint)."""
    return hashlib.sha256(json.dumps(settings.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def cache_entry(settings: StegaStampSettings, data: ImageDataset) -> Path:
    """The cache folder of the encoder trained with `settings` on `data`."""
    from advml.utils.runtime import cache_dir

    c, h, w = data.image_shape
    return cache_dir() / "issba" / f"{c}x{h}x{w}" / f"{settings_key(settings)}-{data.fingerprint()[:16]}"


def residual_cosine(clean: Tensor, poisoned: Tensor) -> float:
    """Mean cosine similarity of the residuals (poisoned - clean) over all pairs of different images: 1.0 when
    every image gets the same residual, near 0 for unrelated ones (sample-specific)."""
    if clean.shape != poisoned.shape or clean.ndim != 4 or clean.shape[0] < 2:
        raise InputError(f"need two (N,C,H,W) batches of the same shape with N >= 2, got {tuple(clean.shape)} "
                         f"and {tuple(poisoned.shape)}")
    r = (poisoned.double() - clean.double()).flatten(1)
    r = r[r.norm(dim=1) > 0]
    if r.shape[0] < 2:
        raise InputError("fewer than two images changed: the residual cosine is undefined")
    r = torch.nn.functional.normalize(r, dim=1)
    gram = r @ r.T
    n = r.shape[0]
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


class ISSBATrigger(Trigger):
    """x' = clamp(x + encoder(x, secret), 0, 1), batched, on x's device, without gradients."""

    def __init__(self, model: StegaStamp, secret_bits: Tensor, batch_size: int = 256) -> None:
        if secret_bits.ndim != 1 or secret_bits.numel() != model.settings.bits:
            raise ConfigError(f"the secret has {secret_bits.numel()} bits but the encoder takes {model.settings.bits}")
        self.model, self.secret, self.batch_size = model.eval(), secret_bits.float(), batch_size
        self._on: dict[torch.device, tuple[StegaStamp, Tensor]] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this trigger fits."""
        return self.model.image_shape

    def _model_on(self, device: torch.device) -> tuple[StegaStamp, Tensor]:
        if device not in self._on:
            model = self.model if next(self.model.parameters()).device == device else copy.deepcopy(self.model)
            self._on[device] = (model.to(device).eval(), self.secret.to(device))
        return self._on[device]

    def residual(self, x: Tensor) -> Tensor:
        """The (unclipped) encoder residual of each image of `x`."""
        check_images(x, "ISSBA input")
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(f"this ISSBA encoder is for images of shape {self.shape}, got {tuple(x.shape[1:])}")
        model, secret = self._model_on(x.device)
        with torch.no_grad():
            return torch.cat([model.residual(c.float(), secret) for c in x.split(self.batch_size)]) \
                if x.shape[0] else torch.zeros_like(x)

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        return (x + self.residual(x).to(x.dtype)).clamp_(0, 1)


@ATTACKS.register("issba", title="ISSBA")
class ISSBA(BackdoorAttack):
    """ISSBA: a StegaStamp encoder's sample-specific residual hiding a BCH-coded string ('a'); encoder trained in advml
    (a CIFAR-10 32x32 one ships); rate = fraction of the whole training set

    ISSBA: a StegaStamp encoder's residual of a BCH-coded string as a sample-specific trigger, all2one."""

    Settings = ISSBASettings
    settings: ISSBASettings

    def __init__(self, settings: ISSBASettings | None = None, *, model: StegaStamp | None = None,
                 **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.code = self.settings.code()  # checked with the settings
        self.secret_bits = self.code.encode(self.settings.secret)
        self.model = model
        self.encoder_info: dict[str, Any] = {"source": "given"} if model is not None else {}
        if model is not None:
            self._check_model(model, "the given encoder")

    def _check_model(self, model: StegaStamp, where: str) -> None:
        if model.settings.bits != self.settings.stegastamp.bits:
            raise ConfigError(f"{where} takes {model.settings.bits}-bit secrets but the attack's settings say "
                              f"{self.settings.stegastamp.bits} (stegastamp.bits)")

    def _load(self, path: Path, shape: tuple[int, int, int], source: str, data: ImageDataset | None = None) -> None:
        model, info = load_stegastamp(path)
        self._check_model(model, f"encoder {path}")
        if data is not None and (model.settings != self.settings.stegastamp
                                 or info.get("data_fingerprint") != data.fingerprint()):
            raise DataError(f"cached encoder {path} was trained with other settings or data than asked for; delete "
                            f"{path.parent} to retrain it")
        if model.image_shape != shape:
            raise ConfigError(f"encoder {path} is for images of shape {model.image_shape}, the data is {shape}")
        self.model, self.encoder_info = model, {"source": source, "path": str(path), **info}

    def _shipped_matches(self, shape: tuple[int, int, int]) -> bool:
        if not SHIPPED.is_file():
            return False
        _, settings, shipped_shape, _ = read_metadata(SHIPPED)
        return settings == self.settings.stegastamp and shipped_shape == shape

    def load_encoder(self, shape: tuple[int, int, int], train: ImageDataset | None = None, seed: int = 0,
                     *, progress: bool = True) -> StegaStamp:
        """The encoder for images of `shape`: a file, the shipped one, the cache, or one trained on `train`."""
        if self.model is not None:
            if self.model.image_shape != tuple(shape):
                raise ConfigError(f"the encoder is for images of shape {self.model.image_shape}, not {tuple(shape)}")
            return self.model
        s = self.settings
        if s.encoder not in ("auto", "train"):
            path = Path(s.encoder).expanduser()
            if not path.is_file():
                raise ConfigError(f"encoder file {s.encoder} not found (use 'auto', 'train' or a .safetensors path)")
            self._load(path, cast(tuple[int, int, int], tuple(shape)), "file")
            return cast(StegaStamp, self.model)  # set by _load
        if s.encoder == "auto" and self._shipped_matches(cast(tuple[int, int, int], tuple(shape))):
            self._load(SHIPPED, cast(tuple[int, int, int], tuple(shape)), "shipped")
            return cast(StegaStamp, self.model)
        if train is None:
            raise ConfigError("no shipped ISSBA encoder matches these settings and image shape: call poison() or "
                              "prepare(train, seed) to train one (it is cached)")
        entry = cache_entry(s.stegastamp, train)
        path = entry / "encoder.safetensors"
        if not path.is_file():
            import time

            start = time.perf_counter()
            model, history = train_stegastamp(train, s.stegastamp, checkpoint_dir=entry / "checkpoints",
                                              resume=True, progress=progress)
            save_stegastamp(path, model, {"history": history, "train_images": len(train),
                                          "train_seconds": time.perf_counter() - start,
                                          "data_fingerprint": train.fingerprint()})
        self._load(path, cast(tuple[int, int, int], tuple(shape)), "cache", train)
        return cast(StegaStamp, self.model)

    def prepare(self, train: ImageDataset, seed: int) -> None:
        self.load_encoder(train.image_shape, train, seed)

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        return ISSBATrigger(self.load_encoder(cast(tuple[int, int, int], tuple(image_shape))), self.secret_bits,
                            self.settings.encode_batch)

    def _precomputed(self, ds: PoisonedDataset) -> PoisonedDataset:
        """`ds` with its triggered images encoded once (when they fit `precompute_mb`): the encoder is a network,
        and a lazy dataset would run it again on every pass over the data."""
        idx = ds.poison_indices
        c, h, w = ds.image_shape
        if idx.numel() == 0 or idx.numel() * c * h * w * 4 > self.settings.precompute_mb * 2**20:
            return ds
        encoded = torch.cat([ds.trigger.apply(ds.base.get_batch(chunk)[0], train=ds.train)
                             for chunk in idx.split(self.settings.encode_batch)])
        return PoisonedDataset(ds.base, idx, IdentityTrigger(), ds.labels[idx], train=ds.train,
                               settings=ds.settings, perturbed=encoded)

    def poison(self, train: ImageDataset, *, seed: int = 0) -> PoisonedDataset:
        """The poisoned training set (the encoded images computed once when they fit `precompute_mb`)."""
        return self._precomputed(super().poison(train, seed=seed))

    def backdoor_test_set(self, test: ImageDataset) -> PoisonedDataset:
        """Non-target test images with the trigger, target labels (encoded once when they fit `precompute_mb`)."""
        return self._precomputed(super().backdoor_test_set(test))

    @torch.no_grad()
    def decode(self, images: Tensor) -> tuple[Tensor, list[str | None]]:
        """Bit probabilities (N, bits) the decoder reads from `images` and each image's BCH-decoded string."""
        if self.model is None:
            self.load_encoder(cast(tuple[int, int, int], tuple(images.shape[1:])))
        assert self.model is not None  # load_encoder set it (or raised)
        probs = self.model.decode(images.to(next(self.model.parameters()).device)).cpu()
        nbytes = self.code.data_bytes or len(self.settings.secret.encode("utf-8"))
        return probs, [self.code.decode(p, nbytes)[0] for p in probs]
