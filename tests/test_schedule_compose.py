"""attach()'s scheduler composes with torch's chainable schedulers: the lr is
fn(t) * lr_mult * (the factors they applied), against closed forms. It set absolute lrs, so a
ChainedScheduler with ExponentialLR halved the lr once and never decayed after the warmup."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from catapult.schedules import attach, warmup

F = warmup(1.0, 4)   # 0.25, 0.5, 0.75, 1, 1, ...


def _opt(mults=(1.0, 0.25)):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in mults]
    return torch.optim.SGD([{"params": [p], "lr_mult": m} for p, m in zip(params, mults)], lr=1.0)


def _close(got, want):
    return np.allclose(np.array(got), np.array(want), rtol=1e-12, atol=0)


def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("order", ["attach first", "attach last"])
def test_chained_with_exponential_decay_is_the_product(order):
    opt = _opt()
    first = attach(opt, F)
    decay = lr_scheduler.ExponentialLR(opt, gamma=0.8)
    chain = lr_scheduler.ChainedScheduler([first, decay] if order == "attach first" else [decay, first])
    got = _lrs(opt, chain, 12)
    want = [[F(t) * m * 0.8 ** t for m in (1.0, 0.25)] for t in range(12)]
    assert _close(got, want), (got, want)
    assert got[11][0] < 0.1 * F(11)   # it decays after the warmup (was F(t) * 0.8 = 0.8 for ever)


def test_chained_with_step_and_multiplicative_decays():
    opt = _opt()
    chain = lr_scheduler.ChainedScheduler([attach(opt, F), lr_scheduler.StepLR(opt, step_size=3, gamma=0.1),
                                           lr_scheduler.MultiplicativeLR(opt, lambda t: 0.9)])
    got = _lrs(opt, chain, 10)
    want = [[F(t) * m * 0.1 ** (t // 3) * 0.9 ** t for m in (1.0, 0.25)] for t in range(10)]
    assert _close(got, want), (got, want)


def test_reduce_on_plateau_scales_the_schedule():
    opt = _opt((1.0,))
    sched = attach(opt, F)
    plateau = lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    lrs = []
    for t in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        plateau.step(1.0)   # no improvement after the first: halved at every step from the second
    # the plateau's cuts (after steps 1, 2, ...) are kept under the warmup's rise: F(t) * 0.5^(t-1)
    want = [F(0), F(1)] + [F(t) * 0.5 ** (t - 1) for t in range(2, 8)]
    assert lrs == pytest.approx(want, rel=1e-12, abs=0)


def test_alone_it_is_unchanged_a_hand_edit_is_kept_and_a_sequential_hand_over_starts_afresh():
    opt = _opt()
    sched = attach(opt, F)
    assert _lrs(opt, sched, 6) == [[F(t) * m for m in (1.0, 0.25)] for t in range(6)]
    for group in opt.param_groups:   # a hand cut of the lr now scales the schedule
        group["lr"] *= 0.1
    assert _close(_lrs(opt, sched, 2), [[F(t) * m * 0.1 for m in (1.0, 0.25)] for t in (6, 7)])

    # SequentialLR([ConstantLR, attach]): at the milestone step(0) is fn(0) * lr_mult, no factor
    # carried from the ConstantLR's 0.1
    opt = _opt()
    const = lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=3)
    seq = lr_scheduler.SequentialLR(opt, [const, attach(opt, F)], milestones=[3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch's own step(0) deprecation warning
        got = _lrs(opt, seq, 8)
    assert _close(got[3:], [[F(t) * m for m in (1.0, 0.25)] for t in range(5)]), got


def test_the_factors_survive_a_checkpoint():
    def make():
        opt = _opt()
        return opt, lr_scheduler.ChainedScheduler([attach(opt, F), lr_scheduler.ExponentialLR(opt, gamma=0.8)])

    opt, chain = make()
    want = _lrs(opt, chain, 10)
    opt2, chain2 = make()
    _lrs(opt2, chain2, 6)
    buf = io.BytesIO()
    torch.save({"opt": opt2.state_dict(), "sched": chain2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    opt3, chain3 = make()
    opt3.load_state_dict(ckpt["opt"])
    chain3.load_state_dict(ckpt["sched"])
    assert _lrs(opt3, chain3, 4) == want[6:]
    assert _close(want, [[F(t) * m * 0.8 ** t for m in (1.0, 0.25)] for t in range(10)])
