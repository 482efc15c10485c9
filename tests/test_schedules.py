"""Schedules: closed-form values at key steps, argument errors, attach() with lr_mult groups."""
from __future__ import annotations

import io
import math
import pickle
import warnings

import pytest
import torch
from rounding import assert_within_rounding, both_sides

from catapult import schedules
from catapult.schedules import attach, warmup
from warmup_problems import catapult_problem as _catapult_problem
from warmup_problems import half_mse as _mse
from warmup_problems import two_group_sgd as _two_group_sgd


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
    # step counts past catapult.arguments.MAX_STEPS (10**9), as train.steps: 1e26 was accepted
    (dict(lr_target=1.0, warmup_steps=10 ** 9 + 1), r"^warmup_steps must be an integer in \[1, 1000000000\]"),
    (dict(lr_target=1.0, warmup_steps=2, decay="cosine", total_steps=10 ** 26), r"^total_steps must be an integer in \[1, 1000000000\]"),
    (dict(lr_target=1.0, warmup_steps=2, total_steps=10 ** 26), r"^total_steps must be an integer in \[1, 1000000000\]"),
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
            assert opt.param_groups[0]["lr"] == pytest.approx(f(t), abs=0)
            assert opt.param_groups[1]["lr"] == pytest.approx(0.25 * f(t), abs=0)
            # the update really uses that lr: p_new = p - lr * grad for plain SGD
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            model(x).square().mean().backward()
            grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            sched.step()
            mults = [1.0, 1.0, 0.25, 0.25]
            for p, p0, g, m in zip(model.parameters(), before, grads, mults):
                # p0 - lr g: the lr (f(t) m) cast, its product with g and the difference, 3 roundings a side
                assert_within_rounding(p.detach(), p0 - f(t) * m * g,
                                       both_sides(3, p0.abs() + f(t) * m * g.abs(), torch.float32))
    assert sched.get_last_lr() == pytest.approx([f(10), 0.25 * f(10)], abs=0)


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


def test_attach_resumes_from_the_schedulers_state_alone_as_lambda_lr_does():
    """A fresh optimizer (its state not loaded: a new optimizer, or only the scheduler saved) took its lr,
    fn(0) * lr_mult, over the saved one for another scheduler's factor, fn(0) / fn(t), for good: a warmup to
    1.0 resumed at step 4 of 8 ran at 0.2 for ever (0.15, 0.175, 0.2, 0.2, ...). torch's LambdaLR resumes at
    fn(t) from its state alone; the truth is fn(t) * lr_mult, and so with either load order when both are."""
    f = warmup(1.0, 8)
    x = torch.randn(5, 3)
    model, opt = _two_group_sgd()
    sched = attach(opt, f)
    for _ in range(4):
        _train_step(model, opt, sched, x)
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    lambda_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(lambda_opt, f)
    for _ in range(4):
        lambda_opt.step()
        lambda_lr.step()
    lambda_saved = lambda_lr.state_dict()
    for order in ("scheduler only", "optimizer first", "scheduler first"):
        model2, opt2 = _two_group_sgd(seed=1)
        sched2 = attach(opt2, f)
        if order == "optimizer first":
            opt2.load_state_dict(saved_opt)
        sched2.load_state_dict(saved)
        if order == "scheduler first":
            opt2.load_state_dict(saved_opt)
        lambda_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)   # torch's own, resumed alone
        lambda_lr = torch.optim.lr_scheduler.LambdaLR(lambda_opt, f)
        lambda_lr.load_state_dict(lambda_saved)
        for t in range(5, 11):
            _train_step(model2, opt2, sched2, x)
            lambda_opt.step()
            lambda_lr.step()
            assert [g["lr"] for g in opt2.param_groups] == pytest.approx([f(t), 0.25 * f(t)], rel=1e-12), (order, t)
            assert lambda_opt.param_groups[0]["lr"] == pytest.approx(f(t), rel=1e-12)


@pytest.mark.parametrize("composite", ["SequentialLR", "ChainedScheduler"])
def test_attach_inside_torch_composite_schedulers_resumes_as_uninterrupted(composite):
    # the lr after the milestone is ExponentialLR's; loading the attached scheduler's state
    # set it back to fn(t) * lr_mult (SequentialLR: twice the lr for the rest of the run)
    f = warmup(1.0, 4)
    x = torch.randn(5, 3)

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD([{"params": model.parameters(), "lr_mult": 0.5}], lr=1.0)
        first = attach(opt, f)
        second = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
        if composite == "SequentialLR":
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [first, second], milestones=[4])
        else:
            sched = torch.optim.lr_scheduler.ChainedScheduler([first, second])
        return model, opt, sched

    def run(model, opt, sched, steps):
        lrs = []
        for _ in range(steps):
            lrs.append([g["lr"] for g in opt.param_groups])
            _train_step(model, opt, sched, x)
        return lrs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # SequentialLR's own step(0) deprecation warning
        model, opt, sched = make()
        want = run(model, opt, sched, 10)
        model2, opt2, sched2 = make()
        run(model2, opt2, sched2, 6)
        buf = io.BytesIO()
        torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(),
                    "sched": sched2.state_dict()}, buf)
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=True)
        model3, opt3, sched3 = make()       # the documented order: scheduler, optimizer, counters
        model3.load_state_dict(ckpt["model"])
        opt3.load_state_dict(ckpt["opt"])
        sched3.load_state_dict(ckpt["sched"])
        got = run(model3, opt3, sched3, 4)
    # closed forms after the warmup: SequentialLR hands over to ExponentialLR (from the
    # optimizer's initial lr 1, 0.5 per step); ChainedScheduler composes, f(t) * lr_mult * 0.5^t
    # (it halved f(t) * lr_mult = 0.5 once, 0.25 for ever: no decay)
    decay = [[0.5 ** (t - 4) if composite == "SequentialLR" else f(t) * 0.5 * 0.5 ** t] for t in range(6, 10)]
    assert want[6:] == decay
    assert got == want[6:]
    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)
    assert sched3.get_last_lr() == sched.get_last_lr()


def test_attach_rejects_bad_input():
    _, opt = _two_group_sgd()
    with pytest.raises(TypeError, match="callable"):
        attach(opt, 0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        attach("sgd", warmup(1.0, 2))
    with pytest.raises(ValueError, match="lr=nan"):
        attach(opt, lambda t: float("nan"))
    with pytest.raises(TypeError, match="schedule returned None at step 0"):
        attach(opt, lambda t: None)


@pytest.mark.parametrize("mult", [float("nan"), -1.0, "a", None])
def test_a_bad_lr_mult_is_named_not_turned_into_a_nan_or_negative_lr(mult):
    # the schedules, the warmups and the critical-lr search multiplied the group's lr by it
    from catapult import critical_lr

    model, batch = _catapult_problem(width=8)
    params = list(model.parameters())
    groups = [{"params": params[:1]}, {"params": params[1:], "lr_mult": mult}]
    with pytest.raises(ValueError, match=r"param group 1: lr_mult must be a finite number >= 0"):
        attach(torch.optim.SGD(groups, lr=0.1), warmup(1.0, 2))
    with pytest.raises(ValueError, match=r"param group 1: lr_mult"):
        schedules.PersistentCatapultWarmup(torch.optim.SGD(groups, lr=0.1), model, _mse, 1.0).step(batch)
    with pytest.raises(ValueError, match=r"param group 1: lr_mult"):
        critical_lr(model, _mse, batch, torch.optim.SGD(groups, lr=0.1))


# --------------------------------------------------------------------------------------------
# catapult_warmup()
# --------------------------------------------------------------------------------------------
def test_catapult_warmup_closed_form():
    f = schedules.catapult_warmup(1.0, 10, 0.25)
    for t in range(20):
        assert f(t) == pytest.approx(min(1.0, 0.25 + t / 10))
    assert f(0) == 0.25 and f(7) == pytest.approx(0.95) and f(8) == 1.0
    assert f.peak_step == 8                      # ceil(10 * (1 - 0.25))
    # saves ~ T * lr_c / lr_target = 2.5 steps against warmup from 0 (which peaks at t = 9)
    assert warmup(1.0, 10)(8) < 1.0
    # target below the critical lr: target from the first step
    g = schedules.catapult_warmup(0.1, 50, 0.3)
    assert [g(t) for t in (0, 1, 100)] == [0.1, 0.1, 0.1]


def test_catapult_warmup_accepts_result_and_decays():
    from catapult.critical_lr import CriticalLR

    res = CriticalLR(lr=0.25, lower=0.2, upper=0.25, forward_passes=12, loss0=1.0)
    f = schedules.catapult_warmup(1.0, 10, res, decay="linear", total_steps=18, lr_final=0.0)
    assert f(0) == 0.25
    assert f(8) == 1.0                           # peak at t* = 8, decay over t = 8 .. 17
    assert f(11) == pytest.approx(1.0 - 3 / 9)
    assert f(17) == pytest.approx(0.0, abs=0)
    with pytest.raises(ValueError, match="lr_critical"):
        schedules.catapult_warmup(1.0, 10, -0.1)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.catapult_warmup(1.0, 10, 0.1, decay="cosine")


def test_a_catapult_warmup_that_peaks_at_the_last_step_uses_lr_target_there():
    # lr_critical 0.2, T = 4: the ramp 0.2 + t/4 reaches 1 at t* = 4, the last of 5 steps; the
    # decay has no room, so step 4 uses lr_target (it used lr_final: lr_target was never used)
    f = schedules.catapult_warmup(1.0, 4, 0.2, decay="cosine", total_steps=5, lr_final=0.0)
    assert f.peak_step == 4
    assert [f(t) for t in range(6)] == pytest.approx([0.2, 0.45, 0.7, 0.95, 1.0, 0.0], abs=0)


def test_attach_warns_when_it_replaces_differing_group_lrs():
    """The schedule sets absolute lrs; hand-set group lrs without lr_mult are lost, and said so."""
    from catapult.schedules import PersistentCatapultWarmup

    def optimizer(**extra):
        a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        return torch.optim.SGD([{"params": [a], "lr": 1e-3, **extra},
                                {"params": [b], "lr": 1e-4, **extra}])

    opt = optimizer()
    with pytest.warns(UserWarning, match="lrs differ \\(0.001, 0.0001\\).*lr_mult") as record:
        attach(opt, warmup(1.0, 4))
    assert record[0].filename == __file__      # the caller's line, not catapult's (once per call site)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]   # replaced, as warned
    with pytest.warns(UserWarning, match="PersistentCatapultWarmup: the param groups' lrs differ"):
        PersistentCatapultWarmup(optimizer(), torch.nn.Linear(1, 1), torch.nn.MSELoss(), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach(optimizer(lr_mult=1.0), warmup(1.0, 4))           # ratios given: no warning
        same = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                                {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)
        attach(same, warmup(1.0, 4))                              # equal lrs: nothing lost


@pytest.mark.parametrize("build, match", [
    (lambda: schedules.WarmupSchedule(1.0, 4, decay="cosine"), "needs total_steps"),
    (lambda: schedules.WarmupSchedule(1.0, 4, decay="cos", total_steps=9), "decay must be"),
    (lambda: schedules.WarmupSchedule(-1.0, 4), "^WarmupSchedule lr_target must be a finite number >= 0; got -1.0$"),
    (lambda: schedules.WarmupSchedule(1.0, 0), "^warmup_steps must be an integer in \\[1, 1000000000\\]; got 0$"),
    (lambda: schedules.CatapultWarmupSchedule(1.0, 0, 0.5), "^warmup_steps must be an integer in \\[1, 1000000000\\]; got 0$"),
    (lambda: schedules.CatapultWarmupSchedule(1.0, 4, float("nan")),
     "^CatapultWarmupSchedule lr_critical must be a finite number >= 0; got nan$"),
])
def test_the_public_schedule_classes_check_their_fields_as_the_factories_do(build, match):
    # built directly, these crashed at a later step (TypeError on None - 1, KeyError 'cos',
    # ZeroDivisionError) or returned lrs -0.25, -0.5, ... and a warmup over 0 steps
    with pytest.raises(ValueError, match=match):
        build()
    # a linear decay built directly gets the factory's default lr_final = lr_target / 10
    direct = schedules.WarmupSchedule(1.0, 4, decay="linear", total_steps=9)
    assert direct == warmup(1.0, 4, decay="linear", total_steps=9) and direct.lr_final == 0.1


@pytest.mark.parametrize("lr_target, lr_final", [(1.0, None), (1.0, 0.05), (1.0, 1e-5), (0.3, None),
                                                 (0.3, 0.05), (3e-4, 1e-9)])
def test_the_last_step_uses_lr_final_exactly(lr_target, lr_final):
    # the docstring's closed form: step total_steps - 1 (and any after it) uses lr_final; the
    # linear decay gave 0.09999999999999998 for 0.1 and 9.99999999995449e-06 for 1e-5, and the
    # cosine one peaked at 0.30000000000000004 for lr_target 0.3
    for f in (warmup(lr_target, 3, decay="linear", total_steps=10, lr_final=lr_final),
              schedules.catapult_warmup(lr_target, 3, lr_target / 3, decay="linear", total_steps=10,
                                        lr_final=lr_final),
              warmup(lr_target, 3, decay="cosine", total_steps=10, lr_final=lr_final)):
        want = lr_target / 10 if lr_final is None else lr_final
        assert f(9) == f(12) == want
        assert f(2) == lr_target          # the peak, exactly, at step warmup_steps - 1


def test_step_counts_past_the_bound_are_refused_everywhere_a_schedule_takes_them():
    # 10**9 itself is a schedule; one more step is refused by the factories, the classes and the building block
    assert warmup(1.0, 10 ** 9)(0) == 1e-9
    assert warmup(1.0, 4, decay="linear", total_steps=10 ** 9)(10 ** 9 - 1) == pytest.approx(0.1)
    for build in (lambda: schedules.catapult_warmup(1.0, 10 ** 9 + 1, 0.5),
                  lambda: schedules.CatapultWarmupSchedule(1.0, 4, 0.5, decay="cosine", total_steps=2 ** 63),
                  lambda: schedules.polynomial_warmup_factor(0, 10 ** 12)):
        with pytest.raises(ValueError, match=r"in \[1, 1000000000\]"):
            build()
