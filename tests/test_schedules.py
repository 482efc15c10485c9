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
    # optimizer's initial lr 1, 0.5 per step); ChainedScheduler halves f(t) * lr_mult = 0.5
    decay = [[0.5 ** (t - 4) if composite == "SequentialLR" else 0.25] for t in range(6, 10)]
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
    assert f(17) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_critical"):
        schedules.catapult_warmup(1.0, 10, -0.1)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.catapult_warmup(1.0, 10, 0.1, decay="cosine")


def test_a_catapult_warmup_that_peaks_at_the_last_step_uses_lr_target_there():
    # lr_critical 0.2, T = 4: the ramp 0.2 + t/4 reaches 1 at t* = 4, the last of 5 steps; the
    # decay has no room, so step 4 uses lr_target (it used lr_final: lr_target was never used)
    f = schedules.catapult_warmup(1.0, 4, 0.2, decay="cosine", total_steps=5, lr_final=0.0)
    assert f.peak_step == 4
    assert [f(t) for t in range(6)] == pytest.approx([0.2, 0.45, 0.7, 0.95, 1.0, 0.0])


# --------------------------------------------------------------------------------------------
# PersistentCatapultWarmup
# --------------------------------------------------------------------------------------------
def _mse(out, y):
    return 0.5 * ((out - y) ** 2).mean()


class TwoLayer(torch.nn.Module):
    """f(x) = V relu(U x / sqrt(d)) / sqrt(width): the catapult regime of wide networks."""

    def __init__(self, d, width, k):
        super().__init__()
        self.U = torch.nn.Parameter(torch.randn(width, d, dtype=torch.float64))
        self.V = torch.nn.Parameter(torch.randn(k, width, dtype=torch.float64))

    def forward(self, x):
        h = torch.relu(x @ self.U.T / self.U.shape[1] ** 0.5)
        return h @ self.V.T / self.V.shape[1] ** 0.5


def _catapult_problem(seed=0, width=256):
    torch.manual_seed(seed)
    x = torch.randn(64, 16, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (64,)), 4).double()
    return TwoLayer(16, width, 4), (x, y)


def _gd(model, batch, steps, *, lr=None, pcw=None):
    """Full-batch GD; returns (losses, lrs); stops at a non-finite or exploded loss."""
    opt = pcw.optimizer if pcw is not None else torch.optim.SGD(model.parameters(), lr=lr)
    losses, lrs = [], []
    for _ in range(steps):
        loss = _mse(model(batch[0]), batch[1])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e3 * losses[0]:
            break
        opt.zero_grad()
        loss.backward()
        lrs.append(pcw.step(batch, loss=loss) if pcw is not None else lr)
        opt.step()
    return losses, lrs


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids oversubscription slowdowns on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_persistent_warmup_reaches_target_where_constant_lr_diverges(one_thread):
    lr_target = 200.0                          # about 4x the critical lr at init (~52)
    losses, _ = _gd(*_catapult_problem(), 200, lr=lr_target)
    assert not (losses[-1] < 1e3 * losses[0]), "constant lr_target should diverge"
    assert len(losses) < 10

    model, batch = _catapult_problem()
    pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model,
                                             _mse, lr_target)
    losses, lrs = _gd(model, batch, 120, pcw=pcw)
    assert len(losses) == 120 and pcw.done and pcw.lr == lr_target
    assert lrs[0] < lr_target / 2              # starts near the critical lr ...
    assert max(lrs) == lr_target               # ... never above the target
    assert lrs[-1] == lr_target
    assert losses[-1] < 1e-2 * losses[0]       # and trains
    # searches happen only before the target is reached; their passes are all counted
    assert pcw.searches == len(pcw.history) >= 3
    assert pcw.forward_passes == sum(h["forward_passes"] for h in pcw.history)
    assert all(h["step"] < 60 for h in pcw.history)
    # warm-started re-searches: a few doublings instead of ~20 from lr_start = 1e-4
    assert pcw.forward_passes / pcw.searches < 12


def test_persistent_warmup_lr_mult_probe_and_state_dict():
    def make():
        model, batch = _catapult_problem(seed=1, width=64)
        opt = torch.optim.SGD([{"params": [model.U], "lr_mult": 0.5}, {"params": [model.V]}],
                              lr=0.0)
        return model, batch, opt, schedules.PersistentCatapultWarmup(opt, model, _mse, 150.0)

    def run(model, batch, opt, pcw, steps):
        for _ in range(steps):
            loss = _mse(model(batch[0]), batch[1])
            opt.zero_grad()
            loss.backward()
            lr = pcw.step(batch)               # no loss given: probed (counted)
            assert [g["lr"] for g in opt.param_groups] == [0.5 * lr, lr]
            opt.step()

    model, batch, opt, pcw = make()
    run(model, batch, opt, pcw, 6)
    probes = pcw.steps - 1                     # every call after the first probes the loss
    assert pcw.forward_passes == sum(h["forward_passes"] for h in pcw.history) + probes

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pcw": pcw.state_dict()},
               buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, batch2, opt2, pcw2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    pcw2.load_state_dict(ckpt["pcw"])
    assert pcw2.state_dict() == pcw.state_dict()
    run(model, batch, opt, pcw, 10)
    run(model2, batch2, opt2, pcw2, 10)
    assert pcw2.state_dict() == pcw.state_dict()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_persistent_warmup_bad_arguments():
    model, _ = _catapult_problem(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="lr_target"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 0.0)
    with pytest.raises(ValueError, match="lr_start"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, lr_start=2.0)
    with pytest.raises(TypeError, match="optimizer"):
        schedules.PersistentCatapultWarmup(model, opt, _mse, 1.0)
    with pytest.raises(KeyError, match="lr"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0).load_state_dict({})
    # progress saved under another target or delta is not silently mixed into this warmup
    saved = schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, delta=0.1).state_dict()
    for other, key in (({"lr_target": 2.0}, "lr_target"), ({"delta": 0.2}, "delta"), ({"lr_start": 1e-3}, "lr_start"),
                       ({"rtol": 0.05}, "rtol"), ({"warm_start": False}, "warm_start")):
        target = schedules.PersistentCatapultWarmup(opt, model, _mse, other.pop("lr_target", 1.0),
                                                    delta=other.pop("delta", 0.1), **other)
        with pytest.raises(ValueError, match=rf"saved with {key}="):
            target.load_state_dict(saved)
    assert {k: saved[k] for k in ("lr_start", "rtol", "warm_start")} == {"lr_start": 1e-4, "rtol": None, "warm_start": True}
    schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, delta=0.1).load_state_dict(saved)
    # the lr a state_dict sets on the groups is checked: never above the target, never negative
    for lr, error, words in ((5.0, ValueError, "above this warmup's lr_target"), (-5.0, ValueError, "must be > 0"),
                             ("x", TypeError, "must be a real number")):
        with pytest.raises(error, match=words):
            schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0).load_state_dict({**saved, "lr": lr})
    assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(TypeError, match="warm_start must be True or False"):
        schedules.PersistentCatapultWarmup(opt, model, _mse, 1.0, warm_start="no")
    pcw = schedules.PersistentCatapultWarmup(opt, model, _mse, 1e6)
    batch = _catapult_problem(width=8)[1]
    pcw.step(batch)
    with pytest.raises(TypeError, match="loss must be a scalar tensor or a number"):
        pcw.step(batch, loss="abc")
    with pytest.raises(ValueError, match=r"loss must be a scalar .* shape \(3,\)"):
        pcw.step(batch, loss=torch.ones(3))


class _Point(torch.nn.Module):
    def __init__(self, x):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(x, dtype=torch.float64))

    def forward(self, inputs):
        return self.x


def _quadratic(out, A):
    return 0.5 * out @ A @ out


@pytest.mark.parametrize("warm_start", [True, False])
def test_persistent_warmup_research_can_lower_the_lr(warm_start):
    # first batch: A = I (lr_c = 2); second batch: lower loss but curvature 10 (lr_c = 0.2).
    # A warm re-search starting at the old lower bound (~2) sees the loss rise at once and
    # must fall back to a search from lr_start.
    model = _Point([0.1, 1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pcw = schedules.PersistentCatapultWarmup(opt, model, _quadratic, 100.0, warm_start=warm_start)
    inputs = torch.zeros(1)
    lr = pcw.step((inputs, torch.eye(2, dtype=torch.float64)))
    assert 2.0 <= lr <= 1 + math.sqrt(1.1)
    sharp = torch.diag(torch.tensor([10.0, 0.0], dtype=torch.float64))
    lr = pcw.step((inputs, sharp))             # probe: 0.05 < 0.505 -> re-search
    assert 0.2 <= lr <= (1 + math.sqrt(1.1)) / 10
    assert pcw.searches == 2 and opt.param_groups[0]["lr"] == lr
    first, second = pcw.history
    assert pcw.forward_passes == first["forward_passes"] + second["forward_passes"] + 1
    if warm_start:      # 2 wasted passes (L0 and the rise at the warm start) before the fallback
        cold = schedules.PersistentCatapultWarmup(opt, model, _quadratic, 100.0, warm_start=False)
        cold.step((inputs, sharp))
        assert second["forward_passes"] == cold.history[0]["forward_passes"] + 2


def test_tensor_lr_is_filled_in_place_not_replaced():
    # torch.optim accepts lr as a tensor (for torch.compile / capturable steps, which keep
    # reading that tensor); the schedulers must update it in place, as torch's own ones do
    f = warmup(1.0, 4)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr_mult": 0.5}],
                          lr=torch.tensor(0.01))
    lr = opt.param_groups[0]["lr"]
    sched = attach(opt, f)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.5 * f(2))
    assert sched.get_last_lr()[0] is not lr and float(sched.get_last_lr()[0]) == float(lr)
    pcw = schedules.PersistentCatapultWarmup(opt, torch.nn.Linear(2, 1), torch.nn.MSELoss(),
                                             lr_target=1.0)
    pcw.load_state_dict({**pcw.state_dict(), "lr": 0.3})
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.15)


def _quadratic_warmup(lr_start=1 / 64):
    """``L(w) = ((2 w1 - 1)^2 + w2^2) / 2`` at ``w = 0`` (x = diag(2, 1), y = (1, 0), MSE) with a
    persistent warmup to 1.0 from ``lr_start``: ``(model, batch, pcw)``."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return model, batch, schedules.PersistentCatapultWarmup(opt, model, torch.nn.MSELoss(),
                                                            lr_target=1.0, lr_start=lr_start)


def test_persistent_warmup_searches_again_only_on_a_strictly_lower_loss():
    """Alg. 3 re-searches when L(theta_t) < L(theta*): an equal loss (a step too small to move a
    float32 loss, or no step at all) keeps the lr and spends no forward pass."""
    model, batch, pcw = _quadratic_warmup()
    lr = pcw.step(batch)
    assert pcw.loss_ref == 0.5 and pcw.searches == 1                 # L(0) = (1 + 0) / 2
    passes = pcw.forward_passes
    assert pcw.step(batch, loss=0.5) == lr                           # equal: no search
    assert pcw.step(batch) == lr                                     # probed, still 0.5
    assert pcw.searches == 1 and pcw.forward_passes == passes + 1    # only the probe
    pcw.step(batch, loss=0.25)                                       # lower: search again
    assert pcw.searches == 2


def test_persistent_warmup_moves_theta_star_and_warm_starts_from_the_last_lower():
    """L(w) = ((2 w1 - 1)^2 + w2^2) / 2 (x = diag(2, 1), y = (1, 0)): curvature 4 along the
    gradient, so lr_c = 2/4 and L(theta - lr u) = L0 exactly at lr = 0.5 (no rise), above it for
    larger lr. A re-search from a better point makes that point theta* (loss_ref = its loss), and
    with warm_start its doubling starts at the previous lower end, 0.5: trials 0.5 and 1.0 instead
    of 1/64 ... 1/2 and 1.0, five forward passes fewer than the first search."""
    model, batch, pcw = _quadratic_warmup()
    pcw.step(batch)
    first = pcw.history[0]
    assert (first["lower"], first["loss0"]) == (0.5, 0.5)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.25, 0.0]]))           # L = (2 * 0.25 - 1)^2 / 2 = 0.125
    pcw.step(batch)                                               # probed 0.125 < 0.5: search
    second = pcw.history[1]
    assert pcw.searches == 2 and pcw.loss_ref == second["loss0"] == 0.125
    assert (second["lower"], second["upper"]) == (first["lower"], first["upper"])
    assert second["forward_passes"] == first["forward_passes"] - 5
    pcw.step(batch, loss=0.3)                                     # below 0.5, above theta*'s 0.125
    assert pcw.searches == 2


def test_persistent_warmup_does_not_repeat_a_search_from_lr_start():
    """When the last search rose already at lr_start (lower = 0), the warm start would begin at
    lr_start itself: the re-search is the plain one, L0 plus one trial (2 forward passes) on
    L(w) = ((2 w1 - 1)^2 + w2^2) / 2, where every lr above 2/4 raises the loss -- not that search
    twice."""
    model, batch, pcw = _quadratic_warmup(lr_start=0.75)
    assert pcw.step(batch) == 0.75 and pcw.history[0]["lower"] == 0.0
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.25, 0.0]]))           # L = 0.125 < 0.5: re-search
    assert pcw.step(batch, loss=0.125) == 0.75
    assert pcw.searches == 2 and pcw.history[1]["forward_passes"] == 2


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


def test_numpy_scalars_are_numbers_for_attach_lr_mult_and_the_warmups_loss():
    # np.float32 / np.int64 (a schedule written with np.interp on float32 arrays, an lr_mult
    # from an int array, a loss read back with .numpy()) were refused as "not a number"
    import numpy as np

    ts = np.arange(5, dtype=np.float32)
    model, opt = _two_group_sgd()
    opt.param_groups[0]["lr_mult"] = np.int64(1)
    opt.param_groups[1]["lr_mult"] = np.float32(0.25)
    sched = attach(opt, lambda t: np.interp(np.float32(t), ts, ts / 10).astype(np.float32))
    for t in range(3):     # lr = t / 10 (float32's rounding of it) times each group's multiplier
        assert [g["lr"] for g in opt.param_groups] == [float(np.float32(t / 10)),
                                                       0.25 * float(np.float32(t / 10))]
        opt.step()
        sched.step()
    model, batch = _catapult_problem(width=8)
    pcw = schedules.PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model, _mse, 1.0)
    pcw.step(batch)
    loss = _mse(model(batch[0]), batch[1]).detach().numpy()[()]       # a NumPy float64 scalar
    pcw.step(batch, loss=np.float32(loss))
    assert pcw.steps == 2


@pytest.mark.parametrize("build, match", [
    (lambda: schedules.WarmupSchedule(1.0, 4, decay="cosine"), "needs total_steps"),
    (lambda: schedules.WarmupSchedule(1.0, 4, decay="cos", total_steps=9), "decay must be"),
    (lambda: schedules.WarmupSchedule(-1.0, 4), "lr_target must be >= 0"),
    (lambda: schedules.WarmupSchedule(1.0, 0), "warmup_steps must be >= 1"),
    (lambda: schedules.CatapultWarmupSchedule(1.0, 0, 0.5), "warmup_steps must be >= 1"),
    (lambda: schedules.CatapultWarmupSchedule(1.0, 4, float("nan")), "lr_critical must be finite"),
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


def test_persistent_warmup_takes_a_numpy_float32_loss():
    # loss=np.float32(...) (a loss kept in a numpy array) was refused: "loss must be a scalar tensor
    # or a number, got np.float32(0.25)"
    import numpy as np

    model, batch, pcw = _quadratic_warmup()
    pcw.step(batch)
    assert pcw.loss_ref == 0.5 and pcw.searches == 1
    pcw.step(batch, loss=np.float32(0.5))                              # equal: no search
    assert pcw.searches == 1
    pcw.step(batch, loss=np.float32(0.25))                             # lower: search again
    assert pcw.searches == 2
    with pytest.raises(TypeError, match="loss must be a scalar tensor or a number, got True"):
        pcw.step(batch, loss=True)
