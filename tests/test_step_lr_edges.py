"""``engine.step_lr.StepLRs`` beyond the loop's own pattern of calls (mutation pass 11): the table
of a pure schedule computed ahead must give each step its own value, refusals at the step they
belong to, and a step behind or past the table the schedule's value, checked. Truth: the
schedule's own values, torch's LRScheduler through ``schedules.attach``, and the documented
refusals of ``checked_lr``."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from catapult import schedules
from catapult.engine import step_lr
from catapult.engine.step_lr import StepLRs


def _sgd(*mults):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in mults]
    return torch.optim.SGD([{"params": [p], "lr_mult": m} for p, m in zip(params, mults)], lr=1.0)


class _Refuses:
    """A schedule ``0.01 * (t + 1)``, except ``bad`` at the steps in ``at``."""

    def __init__(self, bad, at):
        self.bad, self.at = bad, set(at)

    def __call__(self, t):
        return self.bad if t in self.at else 0.01 * (t + 1)


@pytest.mark.parametrize("bad,error", [(math.nan, ValueError), (-1.0, ValueError), ("x", TypeError)])
def test_a_step_refused_inside_a_chunk_is_raised_there_and_later_steps_keep_their_own_lr(bad, error, monkeypatch):
    monkeypatch.setattr(step_lr, "PURE_SCHEDULES", (_Refuses,))
    schedule = _Refuses(bad, at=[5])
    lrs = StepLRs(_sgd(1.0), schedule, last=12)
    assert lrs.pure
    assert [lrs.apply(t) for t in range(1, 5)] == pytest.approx([0.01 * (t + 1) for t in range(1, 5)], rel=1e-15, abs=0)
    with pytest.raises(error, match="at step 5"):
        lrs.apply(5)
    # the steps after a refused one are their own (a chunk that skipped step 5 shifted them by one)
    assert [lrs.at(t) for t in range(6, 13)] == [0.01 * (t + 1) for t in range(6, 13)]


def test_a_step_behind_the_table_is_the_schedules_value_checked(monkeypatch):
    monkeypatch.setattr(step_lr, "PURE_SCHEDULES", (_Refuses,))
    lrs = StepLRs(_sgd(1.0), _Refuses(-1.0, at=[1]), last=10)  # the first chunk ends before step 1
    assert lrs.at(2) == 0.03 and lrs.at(0) == 0.01  # step 0 now behind the chunk that starts at 2
    with pytest.raises(ValueError, match="lr=-1.0 at step 1"):
        lrs.at(1)


def test_a_step_past_last_is_the_schedules_value():
    schedule = schedules.warmup(0.8, 4)
    lrs = StepLRs(_sgd(1.0), schedule, last=2)
    assert [lrs.at(t) for t in (0, 1, 2, 5, 9)] == [0.2, 0.4, 0.6000000000000001, 0.8, 0.8]
    assert [lrs.at(t) for t in (0, 1, 2, 5, 9)] == [float(schedule(t)) for t in (0, 1, 2, 5, 9)]


def test_another_schedule_is_called_once_per_step_and_its_step_0_value_is_set():
    calls = []

    def schedule(t):
        calls.append(t)
        return 0.5 / (t + 1)

    optimizer = _sgd(1.0, 0.2)
    lrs = StepLRs(optimizer, schedule, last=5)
    assert not lrs.pure and [g["lr"] for g in optimizer.param_groups] == [0.5, 0.1]
    for t in range(5):
        assert lrs.at(t) == 0.5 / (t + 1)
        lrs.apply(t + 1)
    assert calls == [0, 1, 2, 3, 4, 5]


def test_construction_warns_as_attach_does_when_the_groups_own_lrs_would_be_replaced():
    w, v = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.01}])
    with pytest.warns(UserWarning) as ours:
        StepLRs(optimizer, schedules.warmup(1.0, 2), last=3)
    optimizer = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.01}])
    with pytest.warns(UserWarning) as theirs:
        schedules.attach(optimizer, schedules.warmup(1.0, 2))
    assert str(ours[0].message) == str(theirs[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # groups with lr_mult: nothing to warn about
        StepLRs(_sgd(1.0, 0.5), schedules.warmup(1.0, 2), last=3)


def test_a_bad_lr_mult_names_its_own_group():
    optimizer = _sgd(1.0, 0.5, math.nan)
    with pytest.raises(ValueError, match="param group 2: lr_mult must be a finite number >= 0, got nan"):
        StepLRs(optimizer, schedules.warmup(1.0, 2), last=3)


def test_a_tensor_lr_is_filled_in_place():
    # mutation pass 21 (SL6): a group whose lr is a tensor (GI-Adam's, a compiled step's) keeps that tensor, filled
    # with lr_t (warmup(1.0, 4): 0.25 at step 0, 0.75 at step 2); the mutant put a float in its place
    w = torch.nn.Parameter(torch.zeros(1))
    lr = torch.tensor(0.5)
    opt = torch.optim.Adam([w], lr=lr, foreach=False)
    lrs = StepLRs(opt, schedules.warmup(1.0, 4), last=5)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.25
    assert lrs.apply(2) == 0.75 and opt.param_groups[0]["lr"] is lr and float(lr) == 0.75


def test_radams_row_threshold_follows_the_step_at_one_lr():
    # mutation pass 21 (SL7): RAdam's threshold depends on the step (un-rectified 38 / lr until step 5, then
    # 38 / (r_t lr)); the mutant kept step 0's 380 for every later row at the same lr
    from catapult.engine.sharpness_rule import threshold

    opt = torch.optim.RAdam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    thresholds = step_lr.StepThresholds(opt)
    got = [thresholds(0.1, t) for t in (0, 6, 10)]
    assert got == [threshold(opt, step=t) for t in (0, 6, 10)] and len(set(got)) == 3
    assert got[0] == pytest.approx(380.0, rel=1e-12)
