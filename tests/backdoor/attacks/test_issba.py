"""ISSBA: the BCH secret, the StegaStamp encoder-decoder, the shipped CIFAR-10 encoder, the attack contract."""

from __future__ import annotations

import pytest
import torch

from advml.backdoor import ISSBA, BadNets, build_attack
from advml.backdoor.attacks import issba as issba_module
from advml.backdoor.attacks.issba import SHIPPED, ISSBATrigger, residual_cosine
from advml.backdoor.inspect import trigger_figure
from advml.backdoor.secret import SecretCode, choose_code
from advml.backdoor.stegastamp import (
    StegaStamp,
    StegaStampSettings,
    bit_accuracy,
    load_stegastamp,
    read_metadata,
    save_stegastamp,
    train_stegastamp,
)
from advml.data.base import TensorImageDataset
from advml.errors import ConfigError, DataError, InputError
from advml.metrics import psnr
from advml.utils.io import save_tensors

TINY = {"width": 4, "depth": 2, "epochs": 2, "secret_only_epochs": 0, "ramp_epochs": 0, "batch_size": 16,
        "lr": 1e-3, "bits": 20}


@pytest.fixture(scope="module")
def shipped() -> ISSBA:
    """The default attack, which uses the encoder shipped in the package."""
    assert SHIPPED.is_file(), "the shipped encoder is missing: run tools/train_issba_encoder.py"
    attack = ISSBA()
    attack.load_encoder((3, 32, 32))
    assert attack.encoder_info["source"] == "shipped"
    return attack


@pytest.fixture(scope="module")
def test_images(sample) -> torch.Tensor:
    """The 500 real CIFAR-10 test images of the bundled sample (never seen by the shipped encoder)."""
    return sample.test.tensors()[0]


def _tiny_data(n: int = 64, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.6 + 0.2
    images = (base + 0.15 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return TensorImageDataset((images * 255).round().to(torch.uint8), torch.arange(n) % 10, [str(i) for i in range(10)])


# --- the secret -------------------------------------------------------------------------------------------
def test_secret_round_trip_and_correction() -> None:
    code = SecretCode(20)
    bits = code.encode("a")
    assert bits.shape == (20,) and set(bits.tolist()) <= {0.0, 1.0}
    assert bits[:8].tolist() == [0, 1, 1, 0, 0, 0, 0, 1]  # 'a' = 0x61, MSB first
    assert code.layout(1) == (8, 5, 2) and bits[18:].sum() == 0  # 8 data + 10 parity bits + 2 zeros
    assert code.decode(bits, 1) == ("a", 0)
    flipped = bits.clone()
    flipped[[1, 12]] = 1 - flipped[[1, 12]]  # one data and one parity error: corrected
    assert code.decode(flipped, 1) == ("a", 2)
    assert code.decode(bits * 0.8 + 0.1, 1)[0] == "a"  # probabilities are thresholded at 0.5
    flipped[[3, 6, 9]] = 1 - flipped[[3, 6, 9]]  # five errors: beyond t = 2
    assert code.decode(flipped, 1) != ("a", 5)


def test_secret_paper_layout() -> None:
    code = SecretCode(100, data_bytes=7, ecc_m=7, ecc_t=5)  # 'a' padded to 7 bytes + BCH(137, 5)
    bits = code.encode("a")
    assert bits.shape == (100,) and code.layout(7) == (56, 7, 5)
    assert code.decode(bits, 7) == ("a", 0)
    noisy = bits.clone()
    noisy[[0, 20, 40, 80, 95]] = 1 - noisy[[0, 20, 40, 80, 95]]  # 4 in the 91-bit codeword, 1 in the padding
    assert code.decode(noisy, 7) == ("a", 4)
    assert choose_code(100, 56) == (7, 6)


def test_secret_issba_packet_equals_the_issba_code() -> None:
    """SCLBD/ISSBA encode_image.py (as copied into EBD utils/SSBA/encode_image.py l. 54-66): bchlib.BCH(137, 5)
    (bchlib >= 1: BCH(5, prim_poly=137)), data = secret + ' ' * (7 - len(secret)), packet = data + ecc, its bits
    MSB first, then [0, 0, 0, 0]."""
    import bchlib

    bch = bchlib.BCH(5, prim_poly=137)
    data = bytearray("a" + " " * 6, "utf-8")
    packet = data + bch.encode(data)
    official = [int(b) for b in "".join(format(x, "08b") for x in packet)] + [0, 0, 0, 0]
    code = SecretCode.issba()
    bits = code.encode("a")
    assert bits.tolist() == official and len(official) == 100
    assert code.decode(bits, 7) == ("a", 0)
    noisy = bits.clone()
    noisy[[3, 30, 60, 93]] = 1 - noisy[[3, 30, 60, 93]]  # bits 91-95: the ECC bytes' unused padding
    assert code.decode(noisy, 7) == ("a", 3)
    # advml's own layout of the same sizes differs from it in 22 bits (NUL padding, default polynomial, packing)
    assert int((SecretCode(100, data_bytes=7, ecc_m=7, ecc_t=5).encode("a") != bits).sum()) == 22
    with pytest.raises(ConfigError, match="stegastamp.bits 100"):
        build_attack("issba", packet="issba")


def test_secret_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="no room"):
        SecretCode(10).encode("a")
    with pytest.raises(ConfigError, match="do not fit"):
        SecretCode(20, ecc_m=8, ecc_t=5).encode("a")
    with pytest.raises(ConfigError, match="non-empty"):
        SecretCode(20).encode("")
    with pytest.raises(ConfigError, match="both"):
        SecretCode(20, ecc_m=5)
    with pytest.raises(InputError, match=r"\(20,\)"):
        SecretCode(20).decode(torch.zeros(19), 1)
    with pytest.raises(ConfigError, match="more than data_bytes"):
        SecretCode(100, data_bytes=2).encode("abc")


# --- the encoder-decoder ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 224])
def test_encoder_decoder_shapes(size: int) -> None:
    torch.manual_seed(0)
    model = StegaStamp(StegaStampSettings(bits=100 if size == 224 else 20, stn=size == 224), (3, size, size)).eval()
    x = torch.rand(2, 3, size, size)
    secret = torch.randint(0, 2, (model.settings.bits,)).float()
    with torch.no_grad():
        assert model.residual(x, secret).shape == x.shape
        encoded = model.encode(x, secret)
        assert encoded.shape == x.shape and encoded.min() >= 0 and encoded.max() <= 1
        assert model.decode(encoded).shape == (2, model.settings.bits)
    with pytest.raises(InputError, match="secret must be"):
        model.residual(x, torch.zeros(7))
    with pytest.raises(InputError, match="shape"):
        model.residual(torch.rand(2, 3, 16, 16), secret)


def test_training_lowers_loss_and_resumes(tmp_path) -> None:
    torch.set_num_threads(1)
    data = _tiny_data()
    settings = StegaStampSettings(**TINY)
    full, history = train_stegastamp(data, settings, progress=False)
    assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]
    # interrupted after one epoch, then resumed: the same weights as the uninterrupted run
    train_stegastamp(data, settings, checkpoint_dir=tmp_path, stop_after=1, progress=False)
    resumed, h2 = train_stegastamp(data, settings, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in h2] == [1, 2]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    with pytest.raises(ConfigError, match="other StegaStamp settings"):
        train_stegastamp(data, StegaStampSettings(**{**TINY, "lr": 1e-2}), checkpoint_dir=tmp_path, resume=True,
                         progress=False)


def test_save_load_round_trip_and_bad_files(tmp_path) -> None:
    torch.manual_seed(0)
    model = StegaStamp(StegaStampSettings(**TINY), (3, 32, 32)).eval()
    save_stegastamp(tmp_path / "e.safetensors", model, {"note": "x"})
    loaded, info = load_stegastamp(tmp_path / "e.safetensors")
    assert info == {"note": "x"} and loaded.settings == model.settings
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.residual(x, torch.ones(20)), model.residual(x, torch.ones(20)))
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError):
        load_stegastamp(tmp_path / "corrupt.safetensors")
    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(DataError, match="not an advml StegaStamp"):
        load_stegastamp(tmp_path / "other.safetensors")
    tensors, _, _, _ = read_metadata(tmp_path / "e.safetensors")
    tensors.pop(next(iter(tensors)))
    save_tensors(tmp_path / "missing.safetensors", tensors,
                 {"format": "advml.stegastamp/1", "settings": model.settings.model_dump_json(),
                  "image_shape": "[3, 32, 32]"})
    with pytest.raises(DataError, match="do not match"):
        load_stegastamp(tmp_path / "missing.safetensors")


# --- the shipped encoder on held-out real CIFAR-10 test images ---------------------------------------------
def test_shipped_encoder_recovers_secret_invisibly(shipped: ISSBA, test_images: torch.Tensor) -> None:
    assert SHIPPED.stat().st_size < 5 * 2**20
    acc = bit_accuracy(shipped.model, test_images, shipped.secret_bits)
    assert acc >= 0.95
    poisoned = shipped.trigger_for((3, 32, 32)).apply(test_images)
    assert float(psnr(test_images, poisoned).mean()) >= 27.0
    _, texts = shipped.decode(poisoned[:100])
    assert sum(t == "a" for t in texts) >= 90  # BCH-decoded string per image


def test_trigger_is_batched_and_sample_specific(shipped: ISSBA, test_images: torch.Tensor) -> None:
    trigger = shipped.trigger_for((3, 32, 32))
    assert isinstance(trigger, ISSBATrigger)
    x = test_images[:64]
    batched = trigger.apply(x)
    singles = torch.cat([trigger.apply(img[None]) for img in x[:4]])
    assert torch.allclose(batched[:4], singles, atol=1e-5)
    residual = batched - x
    assert not torch.allclose(residual[0], residual[1], atol=1e-3)  # differs across images
    assert torch.equal(trigger.apply(x), batched)  # deterministic
    assert residual_cosine(x, batched) < 0.5
    badnets = BadNets().trigger_for((3, 32, 32))
    black = torch.zeros_like(x)
    assert residual_cosine(black, badnets.apply(black)) == pytest.approx(1.0)  # the same stamp on every image
    assert residual_cosine(x, badnets.apply(x)) > 0.8  # m * (1 - x): the same 9 pixels, image-dependent values
    with pytest.raises(InputError, match="shape"):
        trigger.apply(torch.rand(2, 3, 16, 16))
    with pytest.raises(InputError):
        trigger.apply(x * 2)


def test_poison_contract(shipped: ISSBA, sample) -> None:
    poisoned = shipped.poison(sample.train, seed=0)
    n = len(sample.train)
    assert poisoned.poison_flags.sum() == round(0.1 * n) == len(poisoned.poison_indices)
    assert (poisoned.labels[poisoned.poison_indices] == 0).all()
    assert (sample.train.labels[poisoned.poison_indices] != 0).all()
    clean_idx = (~poisoned.poison_flags).nonzero().flatten()[:200]
    assert torch.equal(poisoned.get_batch(clean_idx)[0], sample.train.get_batch(clean_idx)[0])
    assert torch.equal(poisoned.labels[clean_idx], sample.train.labels[clean_idx])
    xp, _ = poisoned.get_batch(poisoned.poison_indices[:32])
    xc, _ = sample.train.get_batch(poisoned.poison_indices[:32])
    assert (xp - xc).abs().flatten(1).amax(1).min() > 0
    assert torch.equal(poisoned.poison_indices, shipped.poison(sample.train, seed=0).poison_indices)
    backdoor = shipped.backdoor_test_set(sample.test)
    assert len(backdoor) == int((sample.test.labels != 0).sum()) and (backdoor.labels == 0).all()
    # encoded once (the default) or per batch (precompute_mb=0): the same images
    assert poisoned.perturbed is not None and backdoor.perturbed is not None
    lazy = ISSBA(precompute_mb=0, model=shipped.model).poison(sample.train, seed=0)
    assert lazy.perturbed is None
    idx = poisoned.poison_indices[:16]
    assert torch.allclose(lazy.get_batch(idx)[0], poisoned.get_batch(idx)[0], atol=1e-5)
    clean, encoded = poisoned.poisoned_pairs(limit=8)
    assert torch.allclose(encoded, shipped.trigger_for(sample.train).apply(clean), atol=1e-5)


def test_figure(shipped: ISSBA, sample, tmp_path) -> None:
    figures = trigger_figure(shipped, sample, tmp_path / "issba.png", n=8)
    assert (tmp_path / "issba.png").stat().st_size > 1000 and figures["psnr"] >= 27


# --- settings and files -----------------------------------------------------------------------------------
def test_bad_settings_and_files(tmp_path, sample) -> None:
    with pytest.raises(ConfigError, match="no room"):
        ISSBA(stegastamp={"bits": 8})  # 'a' needs 8 data bits + a BCH code
    with pytest.raises(ConfigError, match="closest|unknown|extra|not permitted"):
        build_attack("issba", secret_size=20)
    with pytest.raises(ConfigError, match="not found"):
        ISSBA(encoder=str(tmp_path / "nope.safetensors")).load_encoder((3, 32, 32))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError):
        ISSBA(encoder=str(tmp_path / "bad.safetensors")).load_encoder((3, 32, 32))
    torch.manual_seed(0)
    save_stegastamp(tmp_path / "b30.safetensors", StegaStamp(StegaStampSettings(**{**TINY, "bits": 30}), (3, 32, 32)))
    with pytest.raises(ConfigError, match="30-bit"):
        ISSBA(encoder=str(tmp_path / "b30.safetensors")).load_encoder((3, 32, 32))
    with pytest.raises(ConfigError, match="shape"):
        ISSBA(encoder=str(SHIPPED)).load_encoder((3, 64, 64))
    with pytest.raises(ConfigError, match="no shipped ISSBA encoder"):
        ISSBA(stegastamp={"width": 8}).trigger_for((3, 32, 32))  # other settings: needs training data


def test_encoders_are_trained_once_and_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path))
    torch.set_num_threads(1)
    data = _tiny_data(40)
    attack = ISSBA(encoder="train", stegastamp={**TINY, "epochs": 1})
    poisoned = attack.poison(data, seed=0)
    assert attack.encoder_info["source"] == "cache" and len(poisoned.poison_indices) == 4
    files = list((tmp_path / "issba" / "3x32x32").glob("*/encoder.safetensors"))
    assert len(files) == 1

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(issba_module, "train_stegastamp", no_training)
    again = ISSBA(encoder="train", stegastamp={**TINY, "epochs": 1})
    again.poison(data, seed=0)
    assert again.encoder_info["path"] == str(files[0])
    x = data.get_batch(torch.arange(4))[0]
    assert torch.equal(again.trigger_for(data).apply(x), attack.trigger_for(data).apply(x))
