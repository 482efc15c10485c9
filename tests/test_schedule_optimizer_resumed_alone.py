"""An optimizer resumed from its state_dict beside a fresh ``attach`` scheduler (the scheduler's own
state not loaded) runs the schedule afresh, as torch's LambdaLR does, and never above it. The loaded
group's lr (the saved step's) was taken for another scheduler's factor over the fresh scheduler's
fn(0): warmup(0.1, 10) ran at fn(t) * 0.1 / 0.01, up to 1.0, 10x its target, for good. Truth:
torch's LambdaLR with ``lambda t: fn(t) / lr`` in the same resume, and the closed form fn(t)."""
from __future__ import annotations

import io
import warnings

import torch
from torch.optim import lr_scheduler

from catapult.schedules import attach, warmup

F = warmup(0.1, 10)


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


def _lrs(opt, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.param_groups[0]["params"][0].grad = torch.ones(2)
        opt.step()
        scheduler.step()
    return out


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_an_optimizer_resumed_beside_a_fresh_scheduler_runs_the_schedule_afresh():
    got = {}
    for name, make in (("attach", lambda o: attach(o, F)), ("lambda", lambda o: lr_scheduler.LambdaLR(o, lambda t: F(t) / 0.1))):
        opt = _opt()
        _lrs(opt, make(opt), 20)
        saved = _saved(opt.state_dict())
        resumed = _opt()
        scheduler = make(resumed)
        resumed.load_state_dict(saved)   # (the scheduler's state is not loaded: it starts again)
        got[name] = _lrs(resumed, scheduler, 12)
    # the first step uses the loaded lr, then the schedule from its start: 0.02, 0.03, ..., 0.1
    assert got["attach"][0] == 0.1 and got["attach"][1:] == [F(t) for t in range(1, 12)]
    assert got["attach"] == got["lambda"]
    # with the scheduler's state loaded too the decays it composed are kept: in the documented order
    # (tests/test_schedule_compose.py) and loaded scheduler first, below, the optimizer's groups then new
    _loaded_scheduler_first_keeps_the_factors()


def _loaded_scheduler_first_keeps_the_factors():
    def make():
        opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                               {"params": [torch.nn.Parameter(torch.zeros(2))], "lr_mult": 0.25}], lr=0.1)
        return opt, lr_scheduler.ChainedScheduler([attach(opt, F), lr_scheduler.ExponentialLR(opt, gamma=0.8)])

    def lrs(opt, chain, steps):
        out = []
        for _ in range(steps):
            out.append([g["lr"] for g in opt.param_groups])
            for g in opt.param_groups:
                g["params"][0].grad = torch.ones(2)
            opt.step()
            chain.step()
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt, chain = make()
        want = lrs(opt, chain, 14)
        opt2, chain2 = make()
        lrs(opt2, chain2, 6)
        saved = _saved({"opt": opt2.state_dict(), "sched": chain2.state_dict()})
        opt3, chain3 = make()
        chain3.load_state_dict(saved["sched"])
        opt3.load_state_dict(saved["opt"])
        assert lrs(opt3, chain3, 8) == want[6:]
    for t, row in enumerate(want):
        for lr, mult in zip(row, (1.0, 0.25)):
            assert abs(lr - F(t) * mult * 0.8 ** t) <= 1e-15 * F(t), (t, row)   # a few roundings of the product


def test_the_schedulers_state_holds_nothing_of_the_optimizer():
    # (mutation pass 23) as LambdaLR's: no group dict, no parameter; the groups it saw are its own
    # bookkeeping (a saved state that held them pickled every parameter beside the schedule)
    opt = _opt()
    scheduler = attach(opt, F)
    _lrs(opt, scheduler, 3)
    state = scheduler.state_dict()
    ours = lr_scheduler.LambdaLR(_opt(), lambda t: 1.0).state_dict()

    def tensors(value):
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensors(v) for v in value)
        return 0

    assert tensors(state) == tensors(ours) == 0
    assert not any(isinstance(v, (list, tuple)) and any(isinstance(g, dict) and "params" in g for g in v)
                   for v in state.values())
