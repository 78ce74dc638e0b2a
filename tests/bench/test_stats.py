"""Interval estimates and paired tests, against hand computations."""

import pytest

from advml.errors import ConfigError
from advml.stats import paired_difference, wilson


def test_wilson_interval_by_hand():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0


def test_paired_difference_by_hand():
    # 10 images: b wins on 8 where a fails, loses on 2; McNemar exact p = 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10
    a, b = "0" * 8 + "11", "1" * 8 + "00"
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx(0.6) and (d["gain"], d["loss"]) == (8, 2)
    assert d["p_mcnemar"] == pytest.approx(112 / 1024)
    half = 1.96 * (10 - 36 / 10) ** 0.5 / 10  # Wald: sqrt(n01 + n10 - (n01 - n10)^2 / n) / n
    assert (d["lo"], d["hi"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert paired_difference("0101", "0101")["p_mcnemar"] == 1.0  # no discordant pair
    with pytest.raises(ConfigError, match="equal-length"):
        paired_difference("01", "011")
