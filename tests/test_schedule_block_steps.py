"""The public building blocks of the schedules take a step count as the schedules do
(``t`` an integer >= 0): ``polynomial_warmup_factor(-3, 4)`` was -0.5 (a negative lr from a
"fraction of the way to lr_target"), ``(2.5, 4)`` a factor of no step and ``True`` step 1's;
``decay_progress`` took ``t=nan`` as the peak, a negative ``start`` as a decay begun before step 0
and ``total_steps=-4`` as none at all. Truth: the closed forms ``min(1, ((t+1)/T)^k)`` and
``clip((t - start)/(total - 1 - start), 0, 1)``, and torch's LinearLR for the linear warmup."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catapult import schedules


@pytest.mark.parametrize("t", [-1, -3, 2.5, True, math.nan, "2", np.float64(1.0)])
def test_a_factor_of_no_step_is_refused(t):
    with pytest.raises((TypeError, ValueError), match="step t must be"):
        schedules.polynomial_warmup_factor(t, 4, 0.5)


@pytest.mark.parametrize("args", [(math.nan, 3, 8), (-5, 3, 8), (2.5, 3, 8), (5, -2, 8), (3, 3, -4),
                                  (3, 3, 0), (3, 1.5, 8)])
def test_a_progress_of_bad_steps_is_refused(args):
    with pytest.raises((TypeError, ValueError), match="step t must be|decay_progress"):
        schedules.decay_progress(*args)


@pytest.mark.parametrize("args, key", [((3, -1, 8), "start"), ((3, 3, 10 ** 9 + 1), "total_steps")])
def test_the_progress_bounds_are_a_start_from_0_and_at_most_max_steps(args, key):
    """Mutation pass 20 (SB3, SB5): start -1 (a decay begun a step before step 0) and total_steps one past
    arguments.MAX_STEPS are refused naming the argument; the bounds themselves are taken (start 0, total_steps
    MAX_STEPS: the closed form clip((t - start)/(total - 1 - start), 0, 1))."""
    from catapult.arguments import MAX_STEPS

    with pytest.raises(ValueError, match=f"decay_progress.*{key}"):
        schedules.decay_progress(*args)
    assert schedules.decay_progress(3, 0, 8) == 3 / 7
    assert schedules.decay_progress(5, 3, MAX_STEPS) == 2 / (MAX_STEPS - 4)


def test_the_closed_forms_on_steps():
    T, k = 7, 1.7
    for t in range(12):
        assert schedules.polynomial_warmup_factor(np.int64(t), T, k) == min(1.0, ((t + 1) / T) ** k)
        assert schedules.decay_progress(t, 3, 11) == min(1.0, max(0.0, (t - 3) / 7))
    # the linear warmup is torch's LinearLR from 1/T to 1 over T - 1 steps
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / T, end_factor=1.0, total_iters=T - 1)
    for t in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(schedules.polynomial_warmup_factor(t, T), rel=1e-12)
        opt.step()
        linear.step()


@pytest.mark.parametrize("t, T, k", [(100, 10, 400.0), (10 ** 6, 1, 60.0), (3, 1, 1024.0), (10 ** 9, 2, 40.0)])
def test_a_factor_past_the_warmup_is_1_for_any_power(t, T, k):
    """min(1, ((t + 1) / T)^k) is 1 once t + 1 >= T; the power was taken first, and ((t + 1) / T)^k
    past float's range raised a bare OverflowError (valid arguments: k finite > 0, t a step). The
    warmup itself, which reads the factor before its peak only, was right."""
    assert schedules.polynomial_warmup_factor(t, T, k) == 1.0
    assert schedules.polynomial_warmup_factor(T - 1, T, k) == 1.0
    if T > 1:   # before the peak: the power as it is (its underflow to 0 included)
        assert schedules.polynomial_warmup_factor(T - 2, T, k) == ((T - 1) / T) ** k
    assert schedules.warmup(1.0, T, power=k)(t) == 1.0
