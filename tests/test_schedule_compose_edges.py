"""attach()'s scheduler where it is not constructed and stepped alone: first in a SequentialLR
(which sets the groups back to their initial_lr before its first scheduler's first step) and
beside a param group added after it. Against closed forms: fn(t) * lr_mult."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.optim import lr_scheduler

from catapult.schedules import attach, warmup

F = warmup(1.0, 4)   # 0.25, 0.5, 0.75, 1, 1, ...


def _opt(mults=(1.0, 0.25)):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in mults]
    return torch.optim.SGD([{"params": [p], "lr_mult": m} for p, m in zip(params, mults)], lr=1.0)


def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append([float(g["lr"]) for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_first_in_a_sequential_lr_the_warmup_is_fn_times_lr_mult():
    # SequentialLR([attach(opt, F), ExponentialLR]): before the milestone, F(t) * lr_mult. Its
    # start set the groups to their initial_lr (1.0) and the scheduler took 1.0 / F(0) for another
    # scheduler's factor: the warmup rose to 4.0 and both groups had the same lr.
    opt = _opt()
    seq = lr_scheduler.SequentialLR(opt, [attach(opt, F), lr_scheduler.ExponentialLR(opt, gamma=0.5)],
                                    milestones=[6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's own step(0) deprecation warning
        got = _lrs(opt, seq, 9)
    want = [[F(t) * m for m in (1.0, 0.25)] for t in range(6)]
    np.testing.assert_allclose(got[:6], want, rtol=1e-12, atol=0)
    # after the milestone, torch's ExponentialLR from the groups' initial_lr (1.0), as documented
    np.testing.assert_allclose(got[6:], [[0.5 ** k] * 2 for k in range(3)], rtol=1e-12, atol=0)


def test_a_group_added_after_attach_is_scheduled_with_its_lr_mult():
    # opt.add_param_group after attach: the new group gets F(t) * its lr_mult like the others
    # (the factors were one short: torch's step refused the scheduler's shorter list, and a torch
    # whose step does not check left the new group at its own lr)
    opt = _opt()
    sched = attach(opt, F)
    _lrs(opt, sched, 2)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "lr_mult": 0.5})
    got = _lrs(opt, sched, 4)
    want = [[F(t) * m for m in (1.0, 0.25, 0.5)] for t in range(2, 6)]
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-12, atol=0)
    assert got[0][:2] == want[0][:2]   # (the new group holds its own lr until the next step)


def test_a_group_added_under_a_chained_decay_composes():
    # ChainedScheduler([attach, ExponentialLR(0.5)]) and a group added after 3 steps: the old
    # groups keep F(t) * m * 0.5^t, the new one F(t) * m * 0.5^(steps since it came)
    opt = _opt()
    chain = lr_scheduler.ChainedScheduler([attach(opt, F), lr_scheduler.ExponentialLR(opt, gamma=0.5)])
    _lrs(opt, chain, 3)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "lr_mult": 0.5, "lr": 0.0})
    got = _lrs(opt, chain, 4)
    want = [[F(t) * 0.5 ** t, F(t) * 0.25 * 0.5 ** t, F(t) * 0.5 * 0.5 ** (t - 3)] for t in range(4, 7)]
    np.testing.assert_allclose(got[1:], want, rtol=1e-12, atol=0)


def test_a_factor_applied_while_the_schedules_lr_is_0_is_not_seen():
    # warmup from 0: a hand edit of the lr at step 0 (0 -> 0.5) has no ratio to the 0 this
    # scheduler set (the docstring: 'not seen'); the lrs go on as fn(t) * lr_mult (a ratio over 0
    # was a ZeroDivisionError)
    opt = _opt()
    def fn(t):
        return min(t, 4) / 4

    sched = attach(opt, fn)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    for group in opt.param_groups:
        group["lr"] = 0.5
    got = _lrs(opt, sched, 4)
    np.testing.assert_allclose(got[1:], [[fn(t) * m for m in (1.0, 0.25)] for t in range(1, 4)], rtol=1e-12, atol=0)


def test_a_hand_over_by_step_epoch_starts_afresh_without_the_factors_before_it():
    # ChainedScheduler([attach, ExponentialLR(0.5)]) for 3 steps, then step(0) (what SequentialLR
    # does at a milestone): fn(0) * lr_mult, and the plain steps after it fn(t) * lr_mult with no
    # factor from before the hand-over (the docstring: 'starts afresh')
    opt = _opt()
    sched = attach(opt, F)
    chain = lr_scheduler.ChainedScheduler([sched, lr_scheduler.ExponentialLR(opt, gamma=0.5)])
    _lrs(opt, chain, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's step(epoch) deprecation warning
        sched.step(0)
    got = _lrs(opt, sched, 3)
    np.testing.assert_allclose(got, [[F(t) * m for m in (1.0, 0.25)] for t in range(3)], rtol=1e-12, atol=0)


def test_a_state_saved_before_the_factors_existed_loads_with_none():
    # a checkpoint of an older catapult (no 'factors' key), loaded into a scheduler that has run
    # beside a decay: no factor was applied when it was saved, so the factors are 1
    opt = _opt()
    sched = attach(opt, F)
    chain = lr_scheduler.ChainedScheduler([sched, lr_scheduler.ExponentialLR(opt, gamma=0.5)])
    _lrs(opt, chain, 3)
    assert sched.factors != [1.0, 1.0]
    old = {k: v for k, v in sched.state_dict().items() if k != "factors"}
    sched.load_state_dict(old)
    assert sched.factors == [1.0, 1.0]
