"""The ISSBA secret: a string turned into a fixed-length bit vector protected by a BCH code (bchlib).

advml's layout of the `bits` bits: the string's UTF-8 bytes NUL-padded to `data_bytes` (MSB first), then the
`m * t` BCH parity bits of bchlib's default primitive polynomial for m (MSB first, without bchlib's byte
padding), then zeros up to `bits`. advml's 32x32 default is 20 bits as BackdoorBox's CIFAR demo: 'a' (8 bits)
+ BCH(m = 5, t = 2) (10 bits) + 2 zeros, which corrects any 2 flipped bits of the 18.

The ISSBA / StegaStamp code's packet (`encode_image.py`: `bchlib.BCH(137, 5)`, `data = secret + ' ' * (7 -
len(secret))`, `packet = data + ecc`, 4 zeros appended) is `SecretCode.issba()`: the secret SPACE-padded to 7
bytes (56 bits), the parity of BCH(primitive polynomial 137 = x^7 + x^3 + 1, t = 5) as bchlib's 5 whole bytes
(35 parity bits + 5 zero bits), then 4 zeros = 100 bits. (`SecretCode(100, data_bytes=7, ecc_m=7, ecc_t=5)` is
advml's layout with the same sizes: NUL padding, bchlib's default polynomial for m = 7, 9 trailing zeros.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor

from advml.errors import ConfigError, InputError


def _bch(m: int, t: int, prim_poly: int | None = None):
    try:
        import bchlib
    except ImportError:  # pragma: no cover - bchlib is a dependency
        raise ConfigError("the ISSBA secret needs the 'bchlib' package: pip install bchlib") from None
    return bchlib.BCH(t, prim_poly=prim_poly) if prim_poly is not None else bchlib.BCH(t, m=m)


def choose_code(bits: int, data_bits: int) -> tuple[int, int]:
    """(m, t) of the strongest BCH code (largest t, then smallest m) with data + parity <= bits and
    data + parity <= 2^m - 1 (bchlib supports m in 5..15)."""
    best: tuple[int, int] | None = None
    for m in range(5, 16):
        t = min((bits - data_bits) // m, ((2 ** m - 1) - data_bits) // m)
        if t >= 1 and (best is None or t > best[1]):
            best = (m, t)
    if best is None:
        raise ConfigError(f"{bits} bits leave no room for a BCH code on {data_bits} data bits "
                          f"(need at least {data_bits + 5}); raise `bits` or shorten the secret")
    return best


def _to_bits(data: bytes, n: int) -> list[int]:
    return [(data[i // 8] >> (7 - i % 8)) & 1 for i in range(n)]


def _to_bytes(bits: list[int], nbytes: int) -> bytearray:
    out = bytearray(nbytes)
    for i, b in enumerate(bits):
        out[i // 8] |= int(b) << (7 - i % 8)
    return out


@dataclass(frozen=True)
class SecretCode:
    """A string <-> `bits` bits with BCH error correction; `encode`/`decode` are the two directions."""

    bits: int
    data_bytes: int | None = None  # None: the length of the string being encoded
    ecc_m: int | None = None  # None: chosen by `choose_code`
    ecc_t: int | None = None
    pad: bytes = b"\0"  # the byte that pads the data to data_bytes (ISSBA: a space)
    prim_poly: int | None = None  # the BCH primitive polynomial; None: bchlib's default for m (ISSBA: 137)
    whole_bytes: bool = False  # parity as bchlib's whole ECC bytes (ISSBA's data + ecc packet), else m * t bits
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def issba(cls) -> SecretCode:
        """The ISSBA / StegaStamp packet: 7 space-padded bytes + BCH(137, 5) as 5 bytes + 4 zeros = 100 bits."""
        return cls(100, data_bytes=7, ecc_m=7, ecc_t=5, pad=b" ", prim_poly=137, whole_bytes=True)

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ConfigError(f"secret bit length must be >= 1, got {self.bits}")
        if len(self.pad) != 1:
            raise ConfigError(f"the padding must be one byte, got {self.pad!r}")
        if self.prim_poly is not None and (self.ecc_m is None or self.prim_poly.bit_length() - 1 != self.ecc_m):
            raise ConfigError(f"prim_poly {self.prim_poly} needs ecc_m = its degree {self.prim_poly.bit_length() - 1}")
        if (self.ecc_m is None) != (self.ecc_t is None):
            raise ConfigError("give both ecc_m and ecc_t, or neither")
        if self.ecc_m is not None and not (5 <= self.ecc_m <= 15 and cast(int, self.ecc_t) >= 1):
            raise ConfigError(f"BCH needs 5 <= m <= 15 and t >= 1, got m={self.ecc_m} t={self.ecc_t}")

    def layout(self, nbytes: int) -> tuple[int, int, int]:
        """(data bits, m, t) for a secret of `nbytes` bytes."""
        nbytes = self.data_bytes if self.data_bytes is not None else nbytes
        data_bits = 8 * nbytes
        m, t = (self.ecc_m, cast(int, self.ecc_t)) if self.ecc_m is not None else choose_code(self.bits, data_bits)
        if data_bits + m * t > 2 ** m - 1 or data_bits + self.parity_bits(m, t) > self.bits:
            raise ConfigError(f"{nbytes} data bytes + BCH(m={m}, t={t}) parity = {data_bits + self.parity_bits(m, t)} "
                              f"bits do not fit {self.bits} bits (nor a codeword of {2 ** m - 1}); raise `bits` or "
                              "shorten the secret")
        return data_bits, m, t

    def parity_bits(self, m: int, t: int) -> int:
        """Bits the parity takes in the vector: m * t, or bchlib's whole ECC bytes with `whole_bytes`."""
        return 8 * ((m * t + 7) // 8) if self.whole_bytes else m * t

    def _code(self, m: int, t: int):
        if (m, t) not in self._cache:
            self._cache[(m, t)] = _bch(m, t, self.prim_poly)
        return self._cache[(m, t)]

    def encode(self, text: str) -> Tensor:
        """The float (bits,) 0/1 vector of `text`."""
        if not isinstance(text, str) or not text:
            raise ConfigError("the secret must be a non-empty string")
        data = text.encode("utf-8")
        if self.data_bytes is not None:
            if len(data) > self.data_bytes:
                raise ConfigError(f"secret {text!r} is {len(data)} bytes, more than data_bytes={self.data_bytes}")
            data = data.ljust(self.data_bytes, self.pad)
        data_bits, m, t = self.layout(len(data))
        ecc = self._code(m, t).encode(data)
        out = _to_bits(data, data_bits) + _to_bits(ecc, self.parity_bits(m, t))
        return torch.tensor(out + [0] * (self.bits - len(out)), dtype=torch.float32)

    def decode(self, bits: Tensor, nbytes: int) -> tuple[str | None, int]:
        """(text, corrected bit errors) from one (bits,) vector of 0/1 values or probabilities (thresholded
        at 0.5) of a secret of `nbytes` bytes; (None, -1) when there are more errors than the code corrects."""
        if not isinstance(bits, Tensor) or bits.ndim != 1 or bits.numel() != self.bits:
            raise InputError(f"expected a ({self.bits},) bit vector, got "
                             f"{tuple(bits.shape) if isinstance(bits, Tensor) else type(bits).__name__}")
        data_bits, m, t = self.layout(nbytes)
        hard = (bits.detach().float().cpu() > 0.5).int().tolist()
        data = _to_bytes(hard[:data_bits], data_bits // 8)
        ecc = _to_bytes(hard[data_bits:data_bits + m * t], (m * t + 7) // 8)  # bchlib ignores the padding bits
        code = self._code(m, t)
        nerr = code.decode(data, ecc)
        if nerr < 0:
            return None, -1
        code.correct(data, ecc)
        try:
            return bytes(data).rstrip(self.pad).decode("utf-8"), nerr
        except UnicodeDecodeError:
            return None, -1
