"""Interval estimates and paired tests of success rates: transfer tables, bench reports and D-BR's model
selection share them."""

from __future__ import annotations

import math

from advml.errors import ConfigError


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: str, b: str, z: float = 1.96) -> dict[str, float]:
    """Success of b minus success of a on the same images (outcome strings of 0/1): the difference, its Wald
    interval for paired proportions and the exact two-sided McNemar p-value (binomial on discordant pairs)."""
    if len(a) != len(b) or not a or set(a + b) - {"0", "1"}:
        raise ConfigError("paired outcomes must be equal-length, non-empty strings of 0 and 1")
    n = len(a)
    gain = sum(x == "0" and y == "1" for x, y in zip(a, b))  # b succeeds where a fails
    loss = sum(x == "1" and y == "0" for x, y in zip(a, b))
    diff = (gain - loss) / n
    half = z * math.sqrt(max(gain + loss - (gain - loss) ** 2 / n, 0.0)) / n
    k, m = min(gain, loss), gain + loss
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "gain": gain, "loss": loss, "p_mcnemar": p}
