"""Schedules: closed-form values at key steps, argument errors, attach() with lr_mult groups."""
from __future__ import annotations

import io
import math
import pickle
import warnings

import pytest
import torch

from catapult import schedules
from catapult.schedules import attach, warmup


# --------------------------------------------------------------------------------------------
# warmup(): closed forms
# --------------------------------------------------------------------------------------------
def test_linear_warmup_then_constant():
    f = warmup(1.0, 10)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(8) == pytest.approx(0.9)
    assert f(9) == 1.0
    assert f(10_000) == 1.0
    # monotone and never above the target
    values = [f(t) for t in range(30)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert max(values) == 1.0


def test_polynomial_warmup_with_lr_init():
    f = warmup(1.0, 4, lr_init=0.1, power=2.0)
    assert f(0) == pytest.approx(0.1 + 0.9 * (1 / 4) ** 2)
    assert f(1) == pytest.approx(0.1 + 0.9 * (2 / 4) ** 2)
    assert f(2) == pytest.approx(0.1 + 0.9 * (3 / 4) ** 2)
    assert f(3) == 1.0


def test_one_warmup_step_is_constant():
    f = warmup(0.3, 1)
    assert [f(t) for t in range(5)] == [0.3] * 5
    f = warmup(0.3, 1, lr_init=0.1, power=3.0, decay="constant", total_steps=50)
    assert [f(t) for t in (0, 1, 49, 100)] == [0.3] * 4


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_default_final_is_tenth(decay):
    # peak at t = T - 1 = 4, last step t = total_steps - 1 = 14, s = (t - 4) / 10
    f = warmup(1.0, 5, decay=decay, total_steps=15)
    assert f(0) == pytest.approx(0.2)
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.55)            # midpoint: same for cosine and linear
    assert f(14) == pytest.approx(0.1)
    assert f(99) == pytest.approx(0.1)
    s = 0.2                                        # t = 6
    expected = {"cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s)),
                "linear": 1.0 + (0.1 - 1.0) * s}[decay]
    assert f(6) == pytest.approx(expected)


def test_cosine_decay_explicit_final_and_no_warmup():
    f = warmup(2.0, 1, decay="cosine", total_steps=101, lr_final=0.0)
    assert f(0) == pytest.approx(2.0)
    assert f(25) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert f(50) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.0, abs=1e-15)


def test_building_blocks():
    assert schedules.polynomial_warmup_factor(0, 4, 1.0) == 0.25
    assert schedules.polynomial_warmup_factor(10, 4, 1.0) == 1.0
    assert schedules.decay_progress(3, 3, 14) == 0.0
    assert schedules.decay_progress(8, 3, 14) == 0.5  # span 14 - 1 - 3 = 10
    assert schedules.decay_progress(20, 3, 14) == 1.0
    assert schedules.cosine_decay(0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert schedules.linear_decay(0.25, 1.0, 0.0) == pytest.approx(0.75)


def test_schedule_is_picklable_and_pure():
    f = warmup(1.0, 10, decay="cosine", total_steps=100)
    g = pickle.loads(pickle.dumps(f))
    assert [g(t) for t in range(0, 100, 7)] == [f(t) for t in range(0, 100, 7)]
    assert f(5) == f(5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_target=1.0, warmup_steps=0), "warmup_steps"),
    (dict(lr_target=1.0, warmup_steps=2.5), "warmup_steps"),
    (dict(lr_target=-1.0, warmup_steps=2), "lr_target"),
    (dict(lr_target=float("nan"), warmup_steps=2), "lr_target"),
    (dict(lr_target=1.0, warmup_steps=2, lr_init=-0.1), "lr_init"),
    (dict(lr_target=1.0, warmup_steps=2, power=0.0), "power"),
    (dict(lr_target=1.0, warmup_steps=2, decay="exp", total_steps=10), "decay"),
    (dict(lr_target=1.0, warmup_steps=2, decay="cosine"), "total_steps"),
    (dict(lr_target=1.0, warmup_steps=10, decay="linear", total_steps=10), "total_steps"),
    (dict(lr_target=1.0, warmup_steps=2, lr_final=0.1), "lr_final"),
    (dict(lr_target=1.0, warmup_steps=2, decay="cosine", total_steps=10, lr_final=-1),
     "lr_final"),
    (dict(lr_target=True, warmup_steps=2), "lr_target"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        warmup(**kwargs)


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="step"):
        warmup(1.0, 3)(-1)


# --------------------------------------------------------------------------------------------
# attach(): per-group multipliers, order of application, state_dict
# --------------------------------------------------------------------------------------------
def _two_group_sgd(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 123.0},                  # no lr_mult -> 1
        {"params": model[1].parameters(), "lr": 123.0, "lr_mult": 0.25},
    ], lr=123.0)
    return model, opt


def _train_step(model, opt, sched, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    sched.step()


def test_attach_sets_lr_times_mult_before_each_step():
    f = warmup(0.4, 4, decay="linear", total_steps=8, lr_final=0.0)
    model, opt = _two_group_sgd()
    sched = attach(opt, f)
    x = torch.randn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no "scheduler before optimizer" warnings
        for t in range(10):
            assert opt.param_groups[0]["lr"] == pytest.approx(f(t))
            assert opt.param_groups[1]["lr"] == pytest.approx(0.25 * f(t))
            # the update really uses that lr: p_new = p - lr * grad for plain SGD
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            model(x).square().mean().backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            sched.step()
            mults = [1.0, 1.0, 0.25, 0.25]
            for p, p0, g, m in zip(model.parameters(), before, grads, mults):
                torch.testing.assert_close(p.detach(), p0 - f(t) * m * g)
    assert sched.get_last_lr() == pytest.approx([f(10), 0.25 * f(10)])


def test_attach_state_dict_round_trip():
    f = warmup(1.0, 5, decay="cosine", total_steps=20)
    x = torch.randn(5, 3)
    model, opt = _two_group_sgd()
    sched = attach(opt, f)
    for _ in range(3):
        _train_step(model, opt, sched, x)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model2, opt2 = _two_group_sgd(seed=1)
    sched2 = attach(opt2, f)                 # fresh: groups at f(0)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.last_epoch == 3
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([f(3), 0.25 * f(3)])
    for _ in range(4):
        _train_step(model, opt, sched, x)
        _train_step(model2, opt2, sched2, x)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_attach_rejects_bad_input():
    _, opt = _two_group_sgd()
    with pytest.raises(TypeError, match="callable"):
        attach(opt, 0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        attach("sgd", warmup(1.0, 2))
    with pytest.raises(ValueError, match="lr=nan"):
        attach(opt, lambda t: float("nan"))
