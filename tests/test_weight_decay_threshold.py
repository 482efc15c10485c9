"""Weight decay in the instability thresholds (issue: SGD's coupled L2 was left out of the
Hessian kind, AdamW's decoupled decay out of its threshold).

Truth: the optimizer itself, run on the quadratic ``L = 0.5 x^T A x`` with known eigenvalues from a
tiny start (the linear regime), its boundary of divergence found by bisection on the lr; and the
closed forms of linear stability:

* SGD, heavy ball ``mu`` (dampening 0), coupled L2 ``wd``: ``lr* = (2 + 2 mu) / (lambda_max + wd)``;
* Adam with coupled L2, ``P ~ eps`` (``eps`` large against ``sqrt(v)``, so ``P`` is fixed):
  ``lr* = (2 + 2 b1) eps / ((1 - b1)(lambda_max + wd))``;
* AdamW (decoupled), same ``P``: ``lr* = 2 (1 + b1) / ((1 - b1) lambda_max / eps + (1 + b1) wd)``;
* RAdam with ``beta2 = 0.5`` (``rho_inf = 3``: never rectified, EMA-momentum SGD): coupled as
  Adam's with ``P = 1``, decoupled as AdamW's.

catapult's ratio (:class:`catapult.SharpnessTracker`'s record: the loss's sharpness, or the
pre-conditioned one, over :func:`catapult.instability_threshold`) must be 1 at the measured boundary.
"""
from __future__ import annotations

import math

import pytest
import torch

import catapult
from catapult.engine import threshold as engine_threshold

A_EIGS = (10.0, 3.0, 1.0)
B1, EPS = 0.9, 1.0
X0 = 1e-6          # the start: gradients ~1e-5 against eps = 1 keep Adam's P fixed (linear regime)


class Quadratic(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.x = torch.nn.Parameter(torch.full((n,), X0, dtype=torch.float64))

    def forward(self, inputs):
        return self.x + 0 * inputs.sum()


def quadratic_loss(a: torch.Tensor):
    return lambda x, _: 0.5 * x @ a @ x


BATCH = (torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def build(name: str, params, lr: float, wd: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(B1, 0.999), eps=EPS, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(B1, 0.999), eps=EPS, weight_decay=wd)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=(B1, 0.5), weight_decay=wd)
    if name == "radam-decoupled":
        return torch.optim.RAdam(params, lr=lr, betas=(B1, 0.5), weight_decay=wd, decoupled_weight_decay=True)
    raise AssertionError(name)


def closed_form(name: str, lam: float, wd: float) -> float:
    if name == "sgd":
        return 2.0 / (lam + wd)
    if name == "sgd-momentum":
        return (2.0 + 2.0 * 0.9) / (lam + wd)
    if name in ("adam", "radam"):   # radam: P = 1 (un-rectified), eps plays no part
        return (2.0 + 2.0 * B1) * EPS / ((1.0 - B1) * (lam + wd))
    if name in ("adamw", "radam-decoupled"):
        return 2.0 * (1.0 + B1) / ((1.0 - B1) * lam / EPS + (1.0 + B1) * wd)
    raise AssertionError(name)


def settle(model, opt, a: torch.Tensor) -> None:
    """100 steps at a vanishing lr: Adam's and the momentum's bias corrections ``1 - b1^t`` near 1,
    ``x`` where it was (the first steps' corrected momentum is plain GD at ``lr``, whose transient
    reached the 1000-fold growth below the steady step's edge)."""
    lrs = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 1e-12
    for _ in range(100):
        for p in model.parameters():
            p.grad = None
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        g, offset = a @ flat, 0
        for p in model.parameters():
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        opt.step()
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr


def closed_ratio(name: str, lam: float, wd: float, lr: float) -> float:
    """The sharpness each kind measures over its threshold, from the closed forms (1 at lr*): the
    loss's sharpness over the threshold less the decay's curvature, but Adam's coupled L2, which
    its pre-conditioned operator ``P^-1 (H + wd I)`` holds."""
    if name.startswith("sgd"):
        mu = 0.9 if name == "sgd-momentum" else 0.0
        return lam / ((2.0 + 2.0 * mu) / lr - wd)
    if name == "adam":
        return (lam + wd) / EPS / ((2.0 + 2.0 * B1) / ((1.0 - B1) * lr))
    if name == "radam":     # un-rectified: the Hessian's kind, P = 1
        return lam / ((2.0 + 2.0 * B1) / ((1.0 - B1) * lr) - wd)
    curvature = lam if name == "radam-decoupled" else lam / EPS
    return curvature / ((1.0 + B1) * (2.0 - lr * wd) / ((1.0 - B1) * lr))


def run(model, opt, a: torch.Tensor, steps: int) -> bool:
    """Whether ``steps`` steps of ``opt`` on ``0.5 x^T A x`` (after :func:`settle`) diverge: the
    norm grows over the second half (stopped once it has grown 1000-fold: still linear, P unchanged)."""
    settle(model, opt, a)
    x = model.x
    half = None
    for t in range(steps):
        x.grad = a @ x.detach()
        opt.step()
        norm = float(x.detach().norm())
        if not math.isfinite(norm) or norm > 1e3 * X0:
            return True
        if t == steps // 2:
            half = norm
    return float(x.detach().norm()) > half


def measured_boundary(name: str, a: torch.Tensor, wd: float, guess: float, steps: int = 800) -> float:
    lo, hi = 0.6 * guess, 1.6 * guess
    for _ in range(10):
        mid = math.sqrt(lo * hi)
        model = Quadratic(a.shape[0])
        if run(model, build(name, model.parameters(), mid, wd), a, steps):
            hi = mid
        else:
            lo = mid
    return math.sqrt(lo * hi)


def ratio_at(name: str, a: torch.Tensor, wd: float, lr: float) -> float:
    """The tracker's ratio for the optimizer's step at ``lr``, after :func:`settle` and 200 steps
    there (Adam's bias corrections settled: ``P = (1 - b1^t)(sqrt(v_hat) + eps) ~ eps``)."""
    model = Quadratic(a.shape[0])
    opt = build(name, model.parameters(), lr, wd)
    run(model, opt, a, 200)
    tracker = catapult.SharpnessTracker(model, quadratic_loss(a), opt, tol=1e-10, max_iter=50)
    record = tracker.step(BATCH)
    assert record.threshold == pytest.approx(engine_threshold(opt, step=300))  # the engine's rows: the same edge
    return record.ratio


NAMES = ("sgd", "sgd-momentum", "adam", "adamw", "radam", "radam-decoupled")


class Two(torch.nn.Module):
    """Two scalar parameters, each its own group's (the loss's quadratic form couples them)."""

    def __init__(self):
        super().__init__()
        self.u = torch.nn.Parameter(torch.tensor([X0], dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.tensor([X0], dtype=torch.float64))

    def forward(self, inputs):
        return torch.cat([self.u, self.v]) + 0 * inputs.sum()


@pytest.mark.parametrize("wd", [0.0, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_the_ratio_is_one_at_the_measured_boundary_of_divergence(name, wd):
    a = torch.diag(torch.tensor(A_EIGS, dtype=torch.float64))
    truth = closed_form(name, max(A_EIGS), wd)
    boundary = measured_boundary(name, a, wd, truth)
    assert boundary == pytest.approx(truth, rel=0.03)          # the optimizer follows the closed form
    assert ratio_at(name, a, wd, boundary) == pytest.approx(1.0, rel=0.03)
    below = ratio_at(name, a, wd, 0.8 * boundary)
    assert below == pytest.approx(closed_ratio(name, max(A_EIGS), wd, 0.8 * boundary), rel=0.03)


def test_sgd_groups_decaying_differently_hold_the_difference_in_the_operator():
    """SGD with a bias-like group at wd 0 and a weight group at wd 4, on a coupled quadratic: the
    step's curvature is ``A + W``, not ``A + wd_0 I``; the tracker measures the lr-scaled operator
    with ``W - wd_0`` in it, and its ratio is 1 at the measured boundary ``2 / lambda_max(A + W)``."""
    a = torch.tensor([[6.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    w = torch.diag(torch.tensor([4.0, 0.0], dtype=torch.float64))
    truth = 2.0 / float(torch.linalg.eigvalsh(a + w).max())

    def make(lr):
        model = Two()
        return model, torch.optim.SGD([{"params": [model.u], "weight_decay": 4.0},
                                       {"params": [model.v], "weight_decay": 0.0}], lr=lr)

    def diverges(lr):
        model, opt = make(lr)
        settle(model, opt, a)
        for t in range(800):
            x = torch.cat([model.u, model.v]).detach()
            g = a @ x
            model.u.grad, model.v.grad = g[:1].clone(), g[1:].clone()
            opt.step()
            norm = float(torch.cat([model.u, model.v]).detach().norm())
            if norm > 1e3 * X0:
                return True
            if t == 400:
                half = norm
        return norm > half

    lo, hi = 0.6 * truth, 1.6 * truth
    for _ in range(10):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if diverges(mid) else (mid, hi)
    boundary = math.sqrt(lo * hi)
    assert boundary == pytest.approx(truth, rel=0.02)
    model, opt = make(boundary)
    record = catapult.SharpnessTracker(model, quadratic_loss(a), opt, tol=1e-10).step(BATCH)
    assert record.kind == "lr_scaled"
    assert record.ratio == pytest.approx(1.0, rel=0.02)


def test_adamw_groups_decaying_differently_hold_the_difference_in_the_operator():
    """AdamW with a group at wd 0 beside one at wd 0.5: the pre-conditioned operator holds
    ``(1 + b1) / (1 - b1) (wd_i - wd_0)`` on the second group's rows; the ratio is 1 at the
    measured boundary (found by running AdamW with ``P ~ eps``)."""
    a = torch.tensor([[6.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    decays = (0.0, 0.5)

    def make(lr):
        model = Two()
        return model, torch.optim.AdamW([{"params": [model.u], "weight_decay": decays[0]},
                                         {"params": [model.v], "weight_decay": decays[1]}],
                                        lr=lr, betas=(B1, 0.999), eps=EPS)

    def advance(model, opt, steps):
        settle(model, opt, a)
        half = norm = None
        for t in range(steps):
            g = a @ torch.cat([model.u, model.v]).detach()
            model.u.grad, model.v.grad = g[:1].clone(), g[1:].clone()
            opt.step()
            norm = float(torch.cat([model.u, model.v]).detach().norm())
            if norm > 1e3 * X0:
                return True
            if t == steps // 2:
                half = norm
        return norm > half

    # truth: the characteristic root -1 of the step's linear map, lambda_max(A + c diag(wd)) = base
    c = (1.0 + B1) / (1.0 - B1)
    truth = None
    lo, hi = 0.01, 10.0
    for _ in range(60):  # lr where lambda_max(A / eps + c W) (1 - b1) lr / (1 + b1) = 2 - 0 (wd_0 = 0)
        mid = math.sqrt(lo * hi)
        lam = float(torch.linalg.eigvalsh(a / EPS + c * torch.diag(torch.tensor(decays, dtype=torch.float64))).max())
        (hi, lo) = (mid, lo) if lam * (1.0 - B1) * mid > 2.0 * (1.0 + B1) else (hi, mid)
    truth = math.sqrt(lo * hi)
    lo, hi = 0.6 * truth, 1.6 * truth
    for _ in range(10):
        mid = math.sqrt(lo * hi)
        model, opt = make(mid)
        lo, hi = (lo, mid) if advance(model, opt, 800) else (mid, hi)
    boundary = math.sqrt(lo * hi)
    assert boundary == pytest.approx(truth, rel=0.03)
    model, opt = make(boundary)
    advance(model, opt, 200)
    record = catapult.SharpnessTracker(model, quadratic_loss(a), opt, tol=1e-10).step(BATCH)
    assert record.kind == "preconditioned"
    assert record.ratio == pytest.approx(1.0, rel=0.03)


def test_a_decay_that_diverges_alone_has_threshold_zero_and_an_infinite_ratio():
    """``lr wd >= 2``: ``(1 - lr wd) <= -1`` diverges at any curvature; the threshold is 0 (not
    negative, which made the ratio negative) and the record's ratio ``inf`` (was ZeroDivisionError)."""
    model = Quadratic(3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, weight_decay=3.0)
    assert catapult.instability_threshold(opt) == 0.0
    a = torch.diag(torch.tensor(A_EIGS, dtype=torch.float64))
    assert catapult.SharpnessTracker(model, quadratic_loss(a), opt).step(BATCH).ratio == math.inf


def test_an_unknown_optimizer_with_weight_decay_is_refused_by_name():
    class Lion(torch.optim.Optimizer):   # betas, decoupled decay: not one the rules know
        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
            super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert catapult.instability_threshold(Lion(w, lr=0.1)) == pytest.approx(38.0 / 0.1)
    with pytest.raises(ValueError, match="Lion has weight_decay=0.1"):
        catapult.instability_threshold(Lion(w, lr=0.1, weight_decay=0.1))
