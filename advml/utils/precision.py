"""Mixed precision: whether bfloat16 autocast + channels_last pays on a device, and the one switch for it.

`amp: auto` turns it on where the hardware has bf16 matrix units (CUDA with bf16, x86 CPUs with AMX-BF16 or
AVX512-BF16) and keeps float32 elsewhere; `amp: true|false` forces it. The decision is logged once per device.
"""

from __future__ import annotations

import functools
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import BeforeValidator
from torch import nn

from advml.errors import ConfigError

AmpSetting = Union[Literal["auto"], bool]
log = logging.getLogger("advml")


@dataclass(frozen=True)
class Precision:
    """What a model runs in: bf16 autocast on or off, channels_last or not, and why."""

    amp: bool
    channels_last: bool
    reason: str

    @property
    def dtype(self) -> str:
        """'bfloat16' or 'float32'."""
        return "bfloat16" if self.amp else "float32"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record (timing.json)."""
        return {**asdict(self), "dtype": self.dtype}


def cpu_bf16_units() -> list[str]:
    """The bf16 matrix instruction sets this CPU has (amx_bf16, avx512_bf16), as PyTorch detects them."""
    found = []
    probes = [("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")]
    for name, fn in probes:
        probe = getattr(torch.cpu, fn, None)
        try:
            if probe is not None and probe():
                found.append(name)
        except RuntimeError:  # a build without the probe's kernels
            pass
    if found and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return []  # oneDNN would emulate bf16: slower than float32
    return found


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(does bf16 autocast pay on `device`, a short reason)."""
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "cuda bf16" if ok else "this GPU has no bf16"
    if device.type == "cpu":
        units = cpu_bf16_units()
        return (True, "cpu " + "+".join(units)) if units else (False, "this CPU has no bf16 matrix units")
    return False, f"no bf16 autocast on {device.type}"


def parse_amp(value: Any) -> AmpSetting:
    """'auto', true/false (or their YAML spellings) -> the setting; anything else is a ConfigError."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "on", "off"}:
        return value.lower() in {"true", "yes", "on"}
    raise ConfigError(f"amp must be auto, true or false, got {value!r}")


AmpField = Annotated[AmpSetting, BeforeValidator(parse_amp)]  # a settings field: YAML spellings in, one error out


def resolve_precision(amp: AmpSetting, device: torch.device, model: nn.Module | None = None) -> Precision:
    """The precision `amp` means on `device` (for `model`: one not in float32, e.g. a float64 reference, keeps
    its own); the choice is logged once per (setting, device)."""
    amp = parse_amp(amp)
    dtypes = {p.dtype for p in model.parameters()} if model is not None else set()
    if dtypes - {torch.float32}:
        return Precision(False, False, f"the model is in {', '.join(sorted(str(d)[6:] for d in dtypes))}")
    ok, why = bf16_support(device)
    if amp == "auto":
        p = Precision(ok, ok, f"auto: {why}")
    else:
        p = Precision(bool(amp), bool(amp), f"forced {'on' if amp else 'off'} ({why})")
    _log_once(p, str(device))
    return p


@functools.lru_cache(maxsize=None)
def _log_once(p: Precision, device: str) -> None:
    log.info("advml: %s on %s%s (%s)", p.dtype, device, " + channels_last" if p.channels_last else "", p.reason)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 if it is in a lower precision (bf16/fp16); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[Any]:
    """bf16 autocast on `device` when enabled, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def set_precision(model: nn.Module, precision: Precision) -> nn.Module:
    """Run `model` (and any advml model inside it) in `precision`: memory format now, autocast at forward."""
    model.to(memory_format=torch.channels_last if precision.channels_last else torch.contiguous_format)
    for m in model.modules():
        if hasattr(m, "precision"):
            m.precision = precision  # type: ignore[assignment]  # torch types __setattr__ values as Tensor | Module
    return model
