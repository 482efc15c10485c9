"""critical_lr: closed forms on quadratics (GD and Adam/GI-Adam first steps), next-step
directions against the optimizers' real steps, and "nothing changed" guarantees."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from catapult.critical_lr import CriticalLR, critical_lr, next_step_direction, probe_loss
from catapult.optim import GIAdam


class Point(torch.nn.Module):
    """theta itself is the model output; the 'target' of the batch is the matrix A."""

    def __init__(self, x):
        super().__init__()
        self.x = torch.nn.Parameter(torch.as_tensor(x, dtype=torch.float64).clone())

    def forward(self, inputs):
        return self.x


def quadratic(out, A):
    """L = 0.5 x^T A x"""
    return 0.5 * out @ A @ out


BATCH_INPUT = torch.zeros(1)


def _rise_window(L0, b, c, delta):
    """For L(lr) = L0 - b lr + c lr^2 / 2: (root of L = L0, root of L = L0 (1 + delta))."""
    return 2 * b / c, (b + math.sqrt(b * b + 2 * c * delta * L0)) / c


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.1, 0.01])
def test_gd_on_top_eigenvector_gives_two_over_lambda(delta):
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = np.array([10.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    A = torch.tensor(Q @ np.diag(lam) @ Q.T)
    model = Point(Q[:, 0] * 2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    res = critical_lr(model, quadratic, (BATCH_INPUT, A), opt, delta=delta)
    # L(lr) = L0 (1 - lr lambda)^2: rises above L0 at 2/lambda, above L0(1+delta) at
    # (1 + sqrt(1 + delta)) / lambda; the search ends between the two.
    assert 2 / 10.0 * (1 - 1e-9) <= res.lr <= (1 + math.sqrt(1 + delta)) / 10.0
    assert res.lr == res.upper and res.lower <= 2 / 10.0 * (1 + 1e-9)
    assert res.loss0 == pytest.approx(0.5 * 10.0 * 4.0)
    assert isinstance(res, CriticalLR)


def test_gd_generic_point_matches_quadratic_roots():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    A_np = Q @ np.diag([7.0, 2.0, 1.0, 0.3, 0.05]) @ Q.T
    x = rng.normal(size=5)
    model = Point(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    delta = 0.1
    res = critical_lr(model, quadratic, (BATCH_INPUT, torch.tensor(A_np)), opt, delta=delta)
    g = A_np @ x
    L0, b, c = 0.5 * x @ A_np @ x, g @ g, g @ A_np @ g      # L(lr) = L0 - b lr + c lr^2 / 2
    lo, hi = _rise_window(L0, b, c, delta)
    assert lo <= res.upper <= hi
    assert res.lower <= lo
    assert 2 / 7.0 <= lo           # other directions still descend at 2 / lambda_max


@pytest.mark.parametrize("variant", ["adam", "giadam", "giadam_no_vbc"])
def test_first_adam_step_closed_form(variant):
    # diagonal quadratic, first step: m_hat = g, v_hat = g^2 (Adam) or g^2 / (1 - b2)
    # (GI-Adam with v bias correction), so u = s * g / (|g| + eps') ~ s * sign(g)
    lam = np.array([50.0, 4.0, 1.0, 0.25])
    x = np.array([0.3, -1.0, 2.0, -0.5])
    A = torch.tensor(np.diag(lam))
    model = Point(x)
    b2 = 0.999
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1.0),
           "giadam": lambda p: GIAdam(p, lr=1.0),
           "giadam_no_vbc": lambda p: GIAdam(p, lr=1.0, v_bias_correction=False)}[variant](
        model.parameters())
    delta = 0.01
    res = critical_lr(model, quadratic, (BATCH_INPUT, A), opt, delta=delta)

    g = lam * x
    if variant == "giadam":      # sqrt(v_hat) = |g| / sqrt(1 - b2)
        u = g / (np.abs(g) / math.sqrt(1 - b2) + 1e-8)
    else:
        u = g / (np.abs(g) + 1e-8)
    L0, b, c = 0.5 * (lam * x * x).sum(), (lam * x * u).sum(), (lam * u * u).sum()
    lo, hi = _rise_window(L0, b, c, delta)
    assert lo <= res.upper <= hi
    # eps -> 0 closed form: u = s sign(g), L(lr) = 0.5 sum lam (|x| - s lr)^2,
    # root lr0 = 2 sum(lam |x|) / (s sum(lam))
    s = math.sqrt(1 - b2) if variant == "giadam" else 1.0
    sign_root = 2 * (lam * np.abs(x)).sum() / (s * lam.sum())
    assert lo == pytest.approx(sign_root, rel=1e-6)
    assert state_is_empty(opt)


def state_is_empty(opt):
    return all(len(s) == 0 for s in opt.state.values())


def test_rise_at_lr_start_and_cap_at_lr_max():
    A = torch.diag(torch.tensor([10.0, 1.0], dtype=torch.float64))
    model = Point([1.0, 1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    res = critical_lr(model, quadratic, (BATCH_INPUT, A), opt, lr_start=0.5)
    assert (res.lr, res.lower, res.upper, res.forward_passes) == (0.5, 0.0, 0.5, 2)
    res = critical_lr(model, quadratic, (BATCH_INPUT, A), opt, lr_start=1e-3, lr_max=0.05)
    assert (res.lr, res.lower, res.upper) == (0.05, 0.05, 0.05)
    assert res.forward_passes == 1 + 1 + 6        # 1e-3 .. 0.032, then 0.05
    with pytest.raises(ValueError, match="lr_start"):
        critical_lr(model, quadratic, (BATCH_INPUT, A), opt, lr_start=1.0, lr_max=0.5)


def test_forward_passes_are_counted():
    calls = []

    def counting_loss(out, A):
        calls.append(1)
        return quadratic(out, A)

    A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    model = Point([1.0, -2.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    res = critical_lr(model, counting_loss, (BATCH_INPUT, A), opt, delta=0.01)
    assert res.forward_passes == len(calls) > 10


def test_lr_mult_scales_the_group_direction():
    # two separable blocks; the sharp block (lambda = 8) has lr_mult 0.25, so its effective lr
    # is lr / 4 and GD on it goes unstable at base lr 2 / (0.25 * 8) = 1, not 2 / 8
    a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1e-3], dtype=torch.float64))

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, inputs):
            return 0.5 * 8.0 * self.a.square().sum() + 0.5 * 1.0 * self.b.square().sum()

    opt = torch.optim.SGD([{"params": [a], "lr_mult": 0.25}, {"params": [b]}], lr=0.0)
    res = critical_lr(Two(), lambda out, _: out, (BATCH_INPUT, None), opt, delta=0.01)
    assert 1.0 <= res.lr <= 1.0 * 1.01


# --------------------------------------------------------------------------------------------
# Next-step direction == what the optimizer's step really does
# --------------------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3),
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=0.1,
                                                  dampening=0.2),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.8, nesterov=True),
    "adam_l2_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.1, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.3),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-3, weight_decay=0.1),
    "radam_decoupled": lambda ps: torch.optim.RAdam(ps, lr=1e-3, weight_decay=0.1,
                                                    decoupled_weight_decay=True),
    "giadam": lambda ps: GIAdam(ps, lr=1e-3, weight_decay=0.2),
    "giadam_random_novbc": lambda ps: GIAdam(ps, lr=1e-3, v0="random", v_bias_correction=False),
    "giadam_maximize": lambda ps: GIAdam(ps, lr=1e-3, v0=2.0, maximize=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_direction_equals_real_step(name):
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    groups = [{"params": [w1]}, {"params": [w2], "lr_mult": 0.5}]
    opt = OPTIMIZERS[name](groups)
    base_lr = 1e-3
    for group in opt.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)
    for step in range(8):                     # RAdam: rho_t <= 5 early, > 5 from step 6
        grads = {w1: torch.randn(4, 3, dtype=torch.float64), w2: torch.randn(3, dtype=torch.float64)}
        predicted = dict((id(p), u) for p, u in next_step_direction(opt, grads))
        before = {id(p): p.detach().clone() for p in (w1, w2)}
        for p, g in grads.items():
            p.grad = g
        opt.step()
        for p in (w1, w2):
            moved = (before[id(p)] - p.detach()) / base_lr
            torch.testing.assert_close(predicted[id(p)], moved, rtol=1e-7, atol=1e-9,
                                       msg=f"{name}: step {step}")


def test_unsupported_optimizer_is_named():
    model = Point([1.0])
    opt = torch.optim.Adagrad(model.parameters())
    with pytest.raises(NotImplementedError, match="Adagrad"):
        critical_lr(model, quadratic, (BATCH_INPUT, torch.eye(1, dtype=torch.float64)), opt)


# --------------------------------------------------------------------------------------------
# Nothing changes
# --------------------------------------------------------------------------------------------
def _net():
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))


def _setup():
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam([{"params": model[0].parameters()},
                            {"params": model[4].parameters(), "lr_mult": 0.5},
                            {"params": model[1].parameters()}], lr=1e-2)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()   # stale grads present
    return model, opt, (x, y)


def test_nothing_changes():
    model, opt, batch = _setup()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()

    res = critical_lr(model, torch.nn.functional.cross_entropy, batch, opt, delta=0.05)
    assert 1e-4 < res.lr < 1e3 and res.forward_passes >= 3

    assert model.training
    for p, p0 in zip(model.parameters(), params):
        assert torch.equal(p, p0)
    for b, b0 in zip(model.buffers(), buffers):
        assert torch.equal(b, b0)
    for p, g0 in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g0)
    state = opt.state_dict()
    assert state["param_groups"] == opt_state["param_groups"]
    assert state["state"].keys() == opt_state["state"].keys()
    for k, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, opt_state["state"][k][key])
    assert torch.equal(torch.get_rng_state(), rng)
    drawn = torch.rand(5)

    # a run that never called critical_lr draws the same numbers
    _setup()
    assert torch.equal(torch.rand(5), drawn)


def test_trials_share_dropout_masks_so_result_is_reproducible():
    model, opt, batch = _setup()
    a = critical_lr(model, torch.nn.functional.cross_entropy, batch, opt)
    b = critical_lr(model, torch.nn.functional.cross_entropy, batch, opt)
    assert a == b


def test_fresh_optimizer_state_is_not_created():
    model = Point([1.0, 2.0])
    opt = torch.optim.Adam(model.parameters())
    critical_lr(model, quadratic, (BATCH_INPUT, torch.eye(2, dtype=torch.float64)), opt)
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}


def test_non_finite_initial_loss_is_an_error():
    model = Point([1.0, 2.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.x.detach().clone()
    with pytest.raises(ValueError, match="finite"):
        critical_lr(model, lambda out, _: out.sum() * float("nan"), (BATCH_INPUT, None), opt)
    with pytest.raises(ValueError, match="finite"):
        critical_lr(model, lambda out, _: out.sum() + float("inf"), (BATCH_INPUT, None), opt)
    assert torch.equal(model.x.detach(), before)


def test_probe_loss_leaves_buffers_and_rng():
    model, _, batch = _setup()
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    value = probe_loss(model, torch.nn.functional.cross_entropy, batch)
    assert math.isfinite(value)
    assert torch.equal(torch.get_rng_state(), rng)
    for b, b0 in zip(model.buffers(), buffers):
        assert torch.equal(b, b0)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("call", ["critical_lr", "probe_loss"])
def test_a_graph_the_caller_holds_survives(call, train):
    """BatchNorm saves its running statistics for backward: writing them in place (even to
    put them back) made ``loss.backward()`` after the call fail with "modified by an inplace
    operation". The truth: the same graph's gradient with no call in between."""
    model, opt, batch = _setup()
    model.train(train)
    loss_fn = torch.nn.functional.cross_entropy
    with torch.random.fork_rng(devices=[]):
        want = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), list(model.parameters()))
    loss = loss_fn(model(batch[0]), batch[1])
    versions = [t._version for t in (*model.parameters(), *model.buffers())]
    if call == "critical_lr":
        critical_lr(model, loss_fn, batch, opt)
    else:
        probe_loss(model, loss_fn, batch)
    assert [t._version for t in (*model.parameters(), *model.buffers())] == versions
    got = torch.autograd.grad(loss, list(model.parameters()))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_float32_ties_keep_the_search_going():
    # L = 1 + 0.5 x^2 at x = 0.01 in float32: a step of lr = 1e-4 changes L by 1e-8, below
    # float32 resolution at 1, so L(lr_start) == L0. That is no rise: the search must go on to
    # the true critical lr 2 (where (1 - lr)^2 crosses 1) instead of returning lr_start.
    model = Point([0.01])
    model.float()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    res = critical_lr(model, lambda out, _: 1.0 + 0.5 * (out ** 2).sum(), (BATCH_INPUT, None),
                      opt)
    assert res.lower <= 2.0 <= res.upper == res.lr       # (delta |L0| = 0.1 ends it at once)
    assert res.lower > 1.0


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.SGD(ps, lr=0.0), lambda ps: torch.optim.Adam(ps),
                                      lambda ps: GIAdam(ps, lr=0.1)], ids=["sgd", "adam", "gi_adam"])
def test_a_zero_step_returns_at_once_saying_so(make_opt):
    # at the minimum of L = x.x / 2 the gradient is 0, so the step is u = 0 (SGD: g; Adam's first: m_hat = 0):
    # L(theta - lr u) = L0 at every lr. It spent 1 + 65 forwards doubling lr_start 64 times and warned that
    # "the loss still falls" (it never moves); under lr_max it returned lr_max without a word
    model = Point([0.0, 0.0])
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    opt = make_opt(model.parameters())
    state = copy.deepcopy(opt.state_dict())
    for lr_max, expected, said in ((1.0, 1.0, r"1 \(lr_max\)"), (None, math.inf, r"inf \(no lr_max\)")):
        forwards.clear()
        with pytest.warns(RuntimeWarning, match=r"the optimizer's next step is zero .* no lr changes the loss, so "
                                                r"none is critical; returning lr = lower = upper = " + said) as record:
            res = critical_lr(model, quadratic, (BATCH_INPUT, torch.eye(2, dtype=torch.float64)), opt, lr_max=lr_max)
        assert [w.filename for w in record] == [__file__]
        assert (res.lr, res.lower, res.upper, res.loss0) == (expected, expected, expected, 0.0)
        assert res.forward_passes == 1 and len(forwards) == 1
        assert torch.equal(model.x, torch.zeros(2, dtype=torch.float64)) and model.x.grad is None
        assert opt.state_dict() == state and len(opt.state) == 0


def test_a_zero_gradient_with_momentum_still_moves_and_is_searched():
    # g = 0 but a momentum buffer b = (1, 0): u = 0.5 b, and L = |lr u|^2 / 2 > L0 = 0 at lr_start already
    model = Point([0.0, 0.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.5)
    opt.state[model.x]["momentum_buffer"] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = critical_lr(model, quadratic, (BATCH_INPUT, torch.eye(2, dtype=torch.float64)), opt, lr_start=0.25)
    assert (res.lr, res.lower, res.upper, res.forward_passes) == (0.25, 0.0, 0.25, 2)


def test_a_loss_that_never_rises_returns_the_largest_lr_tried():
    # L = -(x1 + x2) falls along u = (-1, -1) at every lr: 64 doublings of lr_start = 1/4 run out at 2^62,
    # and lr is that lower end (upper = inf); the warning said "returning upper = inf" and nothing of lr
    model = Point([0.0, 0.0])
    with pytest.warns(RuntimeWarning, match=r"not risen above L0 by lr = 4.61169e\+18, 64 doublings of lr_start "
                                            r"\(no lr_max\); returning lr = lower = 4.61169e\+18, the largest lr "
                                            r"tried \(not a critical lr\), and upper = inf"):
        res = critical_lr(model, lambda out, _: -out.sum(), (BATCH_INPUT, None),
                          torch.optim.SGD(model.parameters(), lr=0.0), lr_start=0.25)
    assert (res.lr, res.lower, res.upper) == (2.0 ** 62, 2.0 ** 62, math.inf)
    assert res.forward_passes == 1 + 1 + 64


def _diag_problem():
    """GD on L(w) = ((2 w1 - 1)^2 + w2^2) / 2 from w = 0: u = (-2, 0), L(lr) = (4 lr - 1)^2 / 2,
    which rises above L0 = 1/2 exactly for lr > lr* = 2/4; every trial lr is dyadic, so every
    loss below is exact in float32."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    return model, batch, torch.optim.SGD(model.parameters(), lr=0.1)


def test_the_delta_tolerance_uses_the_magnitude_of_a_negative_loss():
    """Stop once L(upper) <= L0 + delta |L0|. With L shifted by -1, L0 = -1/2 and the tolerance
    is -0.45: from [0.5, 1] the bisection visits 0.75, 0.625, 0.5625, 0.53125, 0.515625 (losses
    1, 0.125, -0.219, -0.367, -0.436, all above -0.45) and stops at 0.5078125 (-0.468), the
    same lr as for the unshifted loss (L0 = 1/2, tolerance 0.55)."""
    model, batch, opt = _diag_problem()
    mse = torch.nn.MSELoss()
    res = critical_lr(model, lambda out, y: mse(out, y) - 1.0, batch, opt, lr_start=1 / 64)
    assert (res.loss0, res.lower, res.lr) == (-0.5, 0.5, 0.5078125)
    # L0 + 7 doublings (1/64 ... 1) + 6 bisections
    assert res.forward_passes == 1 + 7 + 6


def test_rtol_bounds_the_distance_from_above_relative_to_the_exact_critical_lr():
    """lr* = 0.5 exactly and every bisection keeps lower = 0.5, so upper = 0.5 + 0.5 / 2^k. With
    rtol = 0.06 (delta large enough not to matter) the bound (upper - lr*) / lr* <= rtol first
    holds at k = 5: upper = 0.515625 (k = 4, 0.53125, is 6.25 % above lr*)."""
    model, batch, opt = _diag_problem()
    res = critical_lr(model, torch.nn.MSELoss(), batch, opt, lr_start=1 / 64, delta=10.0, rtol=0.06)
    assert (res.lower, res.lr) == (0.5, 0.515625)
    assert (res.lr - 0.5) / 0.5 <= 0.06


def test_doubling_is_capped_at_lr_max_when_it_is_not_a_power_of_two_times_lr_start():
    """lr_start = 0.15, lr_max = 0.4, lr* = 0.5: trials 0.15, 0.3 and min(0.6, 0.4) = 0.4 all
    lower the loss, so lr_c = lower = upper = lr_max after 1 + 3 forward passes; no trial lr
    (0.6) beyond lr_max is tried or returned."""
    model, batch, opt = _diag_problem()
    res = critical_lr(model, torch.nn.MSELoss(), batch, opt, lr_start=0.15, lr_max=0.4)
    assert (res.lr, res.lower, res.upper, res.forward_passes) == (0.4, 0.4, 0.4, 4)


def _cpu_mse_differentiates(dtype) -> bool:
    x = torch.zeros(2, dtype=dtype, requires_grad=True)
    try:
        torch.nn.functional.mse_loss(x, torch.ones(2, dtype=dtype)).backward()
    except RuntimeError:    # torch 2.2: '"mse_cpu" not implemented for 'BFloat16'' (and Half's backward)
        return False
    return True


#: the half-precision tests train CPU models under MSE, which torch 2.2 cannot differentiate there
HALF_MSE = pytest.mark.skipif(
    not all(_cpu_mse_differentiates(d) for d in (torch.float16, torch.bfloat16)),
    reason="this torch has no CPU mse_loss kernel (forward or backward) for float16/bfloat16 (torch 2.2)")


@HALF_MSE
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_warned_about(dtype):
    # trial steps below bfloat16's resolution move nothing and its rounded loss reads noise as a
    # rise: one GI-Adam step gave 2e-4 where the float64 model's critical lr is 4.9, silently
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    batch = (torch.randn(16, 4), torch.randn(16, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # float32: no warning
        critical_lr(model, torch.nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    model = model.to(dtype)
    with pytest.warns(UserWarning, match=rf"critical_lr: parameters in {str(dtype)[6:]}: trial steps below"):
        critical_lr(model, torch.nn.MSELoss(), tuple(t.to(dtype) for t in batch),
                    torch.optim.SGD(model.parameters(), lr=0.1))


@HALF_MSE
def test_warnings_point_at_the_callers_line_so_each_call_site_is_warned():
    # the decorators' wrapper was the location of every critical_lr warning: under the default
    # filter (once per location) a second call site, e.g. another half-precision model, went unwarned
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).to(torch.float16)
    batch = (torch.randn(8, 2, dtype=torch.float16), torch.randn(8, 1, dtype=torch.float16))
    with pytest.warns(UserWarning, match="parameters in float16") as record:
        critical_lr(model, torch.nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    assert [w.filename for w in record] == [__file__]
    flat = torch.nn.Linear(2, 1)
    loss = lambda out, _: -out.sum()                                       # noqa: E731 (never rises)
    with pytest.warns(RuntimeWarning, match="doublings") as record:
        critical_lr(flat, loss, (torch.randn(4, 2), None), torch.optim.SGD(flat.parameters(), lr=0.1))
    assert [w.filename for w in record] == [__file__]
    from catapult.schedules import PersistentCatapultWarmup                 # and through the warmup
    pcw = PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model, torch.nn.MSELoss(), 1.0)
    with pytest.warns(UserWarning, match="parameters in float16") as record:
        pcw.step(batch)
    assert [w.filename for w in record] == [__file__]


def test_groups_with_different_lrs_and_no_lr_mult_are_warned_about():
    # a group frozen at lr 0 beside one at lr 1: the trials moved both by the same lr, silently.
    # L = 2 a^2 + b^2 / 2 from (1, 1): a alone rises past lr 1/2 (the optimizer's real step, 2 / 4),
    # a and b together past 2 (4^2 + 1) / (4^3 + 1) = 0.523
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.ones((), dtype=torch.float64)), torch.nn.Parameter(
                torch.ones((), dtype=torch.float64))

        def forward(self, _):
            return torch.stack([self.a, self.b])

    def loss(out, _):
        return 2 * out[0] ** 2 + 0.5 * out[1] ** 2

    model = Two()
    frozen = torch.optim.SGD([{"params": [model.a], "lr": 1.0}, {"params": [model.b], "lr": 0.0}])
    with pytest.warns(UserWarning, match=r"lrs differ \(1, 0\) but none sets 'lr_mult'") as record:
        res = critical_lr(model, loss, (BATCH_INPUT, None), frozen, rtol=1e-9)
    assert [w.filename for w in record] == [__file__]
    assert res.upper == pytest.approx(2 * 17 / 65, rel=1e-8)       # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_mult = torch.optim.SGD([{"params": [model.a], "lr": 1.0, "lr_mult": 1.0},
                                     {"params": [model.b], "lr": 0.0, "lr_mult": 0.0}])
        assert critical_lr(model, loss, (BATCH_INPUT, None), with_mult, rtol=1e-9).upper == pytest.approx(0.5)
        same = torch.optim.SGD([{"params": [model.a]}, {"params": [model.b]}], lr=0.3)
        critical_lr(model, loss, (BATCH_INPUT, None), same)
        model.b.requires_grad_(False)                   # frozen by requires_grad: not moved, lr moot
        critical_lr(model, loss, (BATCH_INPUT, None), frozen)
        model.b.requires_grad_(True)
    from catapult.schedules import PersistentCatapultWarmup       # warned once, when it is built
    with pytest.warns(UserWarning, match="PersistentCatapultWarmup: the param groups' lrs differ"):
        pcw = PersistentCatapultWarmup(frozen, model, loss, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pcw.step((BATCH_INPUT, None))


@HALF_MSE
def test_a_non_finite_float16_adam_step_names_float16_not_eps_zero():
    # eps = 1e-8 is 0 in float16 and so is (1 - b2) g^2 for |g| < 7.7e-3: the first Adam step divides
    # by 0 there (torch's own step too); the error blamed "Adam with eps = 0", which was not set
    from catapult.critical_lr import NonFiniteStepError
    model = torch.nn.Linear(2, 1, bias=False).to(torch.float16)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0]]))
    batch = (torch.tensor([[1.0, 0.002]], dtype=torch.float16), torch.ones(1, 1, dtype=torch.float16))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)                 # eps = 1e-8
    twin = copy.deepcopy(model)
    torch.nn.functional.mse_loss(twin(batch[0]), batch[1]).backward()
    torch.optim.Adam(twin.parameters(), lr=0.1).step()
    assert not torch.isfinite(twin.weight).all()                        # the real step: inf
    with pytest.warns(UserWarning, match="float16"):
        with pytest.raises(NonFiniteStepError, match=r"1 non-finite entries \(in float16 an eps and a \(1 - b2\) g\^2"):
            critical_lr(model, torch.nn.MSELoss(), batch, opt)


def test_a_one_element_loss_of_shape_1_is_searched_as_its_scalar():
    # mutation pass 21 (CP5): a loss of numel 1 is a scalar here (a shape-(1,) loss was refused when 0-d was asked)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    batch = (torch.randn(8, 2), torch.randn(8, 1))
    mse = torch.nn.MSELoss()
    scalar = critical_lr(model, mse, batch, torch.optim.SGD(model.parameters(), lr=0.1))
    shaped = critical_lr(model, lambda out, y: mse(out, y).reshape(1), batch,
                       torch.optim.SGD(model.parameters(), lr=0.1))
    assert shaped == scalar and scalar.forward_passes > 0
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor, got shape \(1, 2\)"):
        critical_lr(model, lambda out, y: mse(out, y).expand(1, 2), batch,
                    torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_loss_that_never_rises_below_an_unreached_lr_max_does_not_say_there_is_none():
    # the warning said "(no lr_max)" for a search capped at lr_max = 1e30, which 64 doublings of 1/4
    # (2^62 = 4.6e18) do not reach
    model = Point([0.0, 0.0])
    with pytest.warns(RuntimeWarning, match=r"64 doublings of lr_start \(lr_max 1e\+30 not reached\); returning "
                                            r"lr = lower = 4.61169e\+18"):
        res = critical_lr(model, lambda out, _: -out.sum(), (BATCH_INPUT, None),
                          torch.optim.SGD(model.parameters(), lr=0.0), lr_start=0.25, lr_max=1e30)
    assert (res.lr, res.lower, res.upper) == (2.0 ** 62, 2.0 ** 62, math.inf)
