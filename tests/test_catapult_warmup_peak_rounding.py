"""A catapult warmup's peak step is decided by its ramp reaching lr_target, not by the ramp's last
rounding. ``lr(t) = min(lr_trgt, lr_c + lr_trgt t / T)`` (algorithms.md) reaches lr_trgt at
``t* = ceil(T (1 - lr_c / lr_trgt))``; the float ramp can land one ulp short there (7.7 * 41 / 41
is 7.699999999999999), and the peak and the whole decay after it ran a step late. Truth: exact
rational arithmetic on the decimal values the user wrote (fractions.Fraction of the strings)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

from catapult.schedules import catapult_warmup


def _truth(lr_target: str, lr_critical: str, T: int, total: int, lr_final: str, t: int) -> Fraction:
    """The linear-decay catapult warmup at step ``t`` in exact arithmetic."""
    target, critical, final = Fraction(lr_target), Fraction(lr_critical), Fraction(lr_final)
    peak = math.ceil((target - critical) * T / target)
    if t < peak:
        return critical + target * t / T
    s = min(Fraction(1), Fraction(t - peak, total - 1 - peak))
    return (1 - s) * target + s * final


@pytest.mark.parametrize("lr_target, lr_critical, T", [("7.7", "0", 41), ("0.1", "0.01", 10), ("0.3", "0.03", 20), ("0.3", "0.1", 3)])
def test_the_peak_and_the_decay_after_it_are_the_exact_ones(lr_target, lr_critical, T):
    # S: the first three peaked a step late (42 for 41, 10 for 9, 19 for 18): step 42 used 7.7 for
    # 7.5547 (2% high), and every decay step was one step behind; (0.3, 0.1, 3) was right
    total = T + 54
    f = catapult_warmup(float(lr_target), T, float(lr_critical), decay="linear", total_steps=total, lr_final=0.0)
    assert f.peak_step == math.ceil((Fraction(lr_target) - Fraction(lr_critical)) * T / Fraction(lr_target))
    for t in range(total + 2):
        truth = float(_truth(lr_target, lr_critical, T, total, "0", t))
        assert f(t) == pytest.approx(truth, rel=1e-14, abs=0), t   # a few roundings of the ramp and the decay


def test_a_ramp_that_has_not_reached_the_target_stays_below_it():
    # the other side: 0.25 + t / 10 is 0.95 at t = 7, below the target by far more than a rounding
    f = catapult_warmup(1.0, 10, 0.25)
    assert f.peak_step == 8 and f(7) == pytest.approx(0.95, rel=1e-15, abs=0) and f(8) == 1.0


def test_a_ramp_short_of_the_target_by_more_than_peak_ulps_is_not_the_peak():
    # (mutation pass 23) PEAK_ULPS bounds the rounding forgiven: lr_c = 2^-20 - 2^-48, T = 2^20: the
    # ramp at T - 1 is 1 - 2^-48 exactly (16 ulps of 1.0 short, a true shortfall, no rounding), so the
    # peak is T = ceil(T (1 - lr_c)) and step T - 1 keeps the ramp's value
    from catapult.schedules.functions import PEAK_ULPS

    T, critical = 2 ** 20, 2.0 ** -20 - 2.0 ** -48
    assert PEAK_ULPS < 16
    f = catapult_warmup(1.0, T, critical)
    assert f.peak_step == math.ceil((1 - Fraction(critical)) * T) == T
    assert f(T - 1) == 1 - 2.0 ** -48
    assert f(T) == 1.0
