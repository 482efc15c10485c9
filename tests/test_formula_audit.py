"""Issue 14's formula audit: per-group lr thresholds (lr-scaled sharpness), RAdam's
un-rectified first steps, critical_lr's bracket tolerance -- each against a closed form."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.critical_lr import critical_lr
from catapult.optim.thresholds import (group_lr_multipliers, lr_scaled_sharpness, radam_rectified,
                                       radam_threshold)


def _exact_hessian(model, loss_fn, batch):
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(flat):
        named = {n: c.reshape(params[n].shape) for n, c in zip(names, torch.split(flat, sizes))}
        return loss_fn(torch.func.functional_call(model, named, (batch[0],)), batch[1])

    return torch.func.hessian(loss_of)(flat0)


def test_lr_scaled_sharpness_is_the_top_eigenvalue_of_m_half_h_m_half():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    batch = (torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64))
    loss_fn = torch.nn.MSELoss()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = torch.optim.SGD([{"params": first, "lr": 0.1, "lr_mult": 1.0},
                           {"params": second, "lr": 0.4, "lr_mult": 4.0}], lr=0.1)
    H = _exact_hessian(model, loss_fn, batch)
    m = group_lr_multipliers(opt, list(model.parameters()))
    assert m.tolist() == [1.0] * 24 + [4.0] * 15
    root = m.sqrt()
    truth = float(torch.linalg.eigvalsh(root[:, None] * H * root[None, :])[-1])
    est = lr_scaled_sharpness(model, loss_fn, batch, opt, tol=1e-10, max_iter=200)
    assert est.value == pytest.approx(truth, rel=1e-8)
    raw = float(torch.linalg.eigvalsh(H)[-1])
    assert truth > 1.5 * raw  # the raw sharpness would misplace the edge here


def test_a_parameter_no_group_holds_has_multiplier_zero_in_the_lr_scaled_sharpness():
    """GD never moves a parameter outside the optimizer: its row of M is 0, so the lr-scaled
    sharpness is lambda_max of H restricted to the optimized parameters (M = diag(1, 0))."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    batch = (torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64))
    loss_fn = torch.nn.MSELoss()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)         # model[2] is not optimized
    m = group_lr_multipliers(opt, list(model.parameters()))
    assert m.tolist() == [1.0] * 24 + [0.0] * 15
    H = _exact_hessian(model, loss_fn, batch)
    truth = float(torch.linalg.eigvalsh(H[:24, :24])[-1])
    assert float(torch.linalg.eigvalsh(H)[-1]) > 1.2 * truth      # the frozen block would matter
    est = lr_scaled_sharpness(model, loss_fn, batch, opt, tol=1e-10, max_iter=200)
    assert est.value == pytest.approx(truth, rel=1e-8)


def test_gd_with_group_lrs_is_stable_exactly_below_two_over_the_lr_scaled_sharpness():
    # L(a, b) = 0.5 [a b] A [a b]^T, a at lr, b at 4 lr: the edge is lr * lambda_max(M A) = 2
    A = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    M = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    edge = 2.0 / float(torch.linalg.eigvals(M @ A).real.max())
    assert edge < 2.0 / float(torch.linalg.eigvalsh(A)[-1])

    def final_norm(lr):
        a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = torch.optim.SGD([{"params": [a], "lr": lr}, {"params": [b], "lr": 4 * lr}], lr=lr)
        for _ in range(400):
            opt.zero_grad()
            theta = torch.cat([a, b])
            (0.5 * theta @ A @ theta).backward()
            opt.step()
        return float(torch.cat([a, b]).detach().norm())

    assert final_norm(0.98 * edge) < 1e-2 and final_norm(1.02 * edge) > 1e2


def test_lr_scaled_sharpness_takes_the_lrs_the_step_applies_not_stale_lr_mults():
    # groups built with lr_mult (1, 4) whose lrs were then set alike by hand: GD steps both at
    # lr, so M = I and the edge is 2 / lambda_max(A); lr_mult's M = diag(1, 4) was used instead
    A = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)

    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))

        def forward(self, x):
            return torch.cat([self.a, self.b]) + 0 * x.sum()

    def loss_fn(theta, _):
        return 0.5 * theta @ A @ theta

    def run(lr):
        model = Quadratic()
        opt = torch.optim.SGD([{"params": [model.a], "lr_mult": 1.0}, {"params": [model.b], "lr_mult": 4.0}],
                              lr=1.0)
        for group in opt.param_groups:      # a hand-written schedule, ignoring lr_mult
            group["lr"] = lr
        for _ in range(400):
            opt.zero_grad()
            loss_fn(model(torch.zeros(1)), None).backward()
            opt.step()
        return model, opt, float(torch.cat([model.a, model.b]).detach().norm())

    raw = float(torch.linalg.eigvalsh(A)[-1])
    edge = 2.0 / raw
    assert run(0.98 * edge)[2] < 1e-2 and run(1.02 * edge)[2] > 1e2     # the step's true edge
    model, opt, _ = run(0.5 * edge)
    batch = (torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert group_lr_multipliers(opt, [model.a, model.b]).tolist() == [1.0, 1.0]
    est = lr_scaled_sharpness(model, loss_fn, batch, opt, tol=1e-10, max_iter=50)
    assert est.value == pytest.approx(raw, rel=1e-8)
    # at lr 0 (a schedule there) the lr_mult ratios stand in for the lrs' ratios
    for group in opt.param_groups:
        group["lr"] = 0.0
    assert group_lr_multipliers(opt, [model.a, model.b]).tolist() == [1.0, 4.0]


def test_radam_first_steps_are_unpreconditioned_momentum_sgd():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    scales = torch.tensor([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    opt = torch.optim.RAdam([w], lr=1e-3, betas=(0.9, 0.999))
    m = torch.zeros_like(w)
    for t in range(1, 8):
        before = w.detach().clone()
        opt.zero_grad()
        (0.5 * (scales * w ** 2).sum()).backward()
        g = w.grad.detach().clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        sgd_like = before - 1e-3 * m / (1 - 0.9 ** t)
        assert torch.allclose(w.detach(), sgd_like, rtol=0, atol=1e-15) == (not radam_rectified(t, 0.999))
    kind, thr = radam_threshold(1e-3, (0.9, 0.999), 1)
    assert kind == "hessian" and thr == pytest.approx(38.0 / 1e-3)


def test_critical_lr_rtol_bounds_the_distance_to_the_one_step_critical_lr():
    # L(w) = mean((x w - y)^2) with Hessian diag(4, 1)*... from w = 0 and a gradient mixing both
    # eigen-directions: L(w - lr g) < L(w) exactly for lr < lr* = 2 g.g / g.H.g
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    model = torch.nn.Linear(2, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    H = 2 * x.T @ x / 2
    g = -(2 * x.T @ y / 2).reshape(-1)
    lr_star = float(2 * g @ g / (g @ H @ g))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = critical_lr(model, torch.nn.MSELoss(), (x, y), opt, lr_start=1 / 64)
    for rtol in (1e-2, 1e-5):
        res = critical_lr(model, torch.nn.MSELoss(), (x, y), opt, lr_start=1 / 64, rtol=rtol)
        assert res.lower <= lr_star <= res.upper == res.lr
        assert 0 <= (res.lr - lr_star) / lr_star <= rtol
    assert (plain.lr - lr_star) / lr_star > 1e-2  # the delta stop alone is looser
    with pytest.raises(ValueError, match="rtol"):
        critical_lr(model, torch.nn.MSELoss(), (x, y), opt, rtol=-1.0)


def test_engine_lr_scaled_kind_measures_the_lr_scaled_sharpness_and_is_sgd_only():
    from catapult import config as C
    from catapult.engine import run

    cfg = {"data": {"name": "digits", "n_train": 64, "n_test": 20},
           "model": {"width": 8, "depth": 3, "parametrization": "supar", "density": 0.5, "base_width": 4},
           "optimizer": {"lr": 0.05}, "train": {"steps": 1},
           "eval": {"sharpness_every": 1, "sharpness_kind": "lr_scaled", "sharpness_tol": 1e-6, "test_every": 0}}
    res = run(cfg, progress="none")
    raw = run({**cfg, "eval": {**cfg["eval"], "sharpness_kind": "hessian"}}, progress="none")
    assert res.summary["sharpness_kind"] == "lr_scaled"
    assert res.metrics[1]["sharpness"] != pytest.approx(raw.metrics[1]["sharpness"], rel=1e-3)
    with pytest.raises(C.ConfigError, match="eval.sharpness_kind"):
        C.validate({**cfg, "optimizer": {"name": "adam"}})


@pytest.mark.parametrize("call, match", [
    (lambda: radam_threshold(0.1, (0.9, 0.999), 0), "^t must be an integer >= 1; got 0$"),
    (lambda: radam_threshold(0.1, (0.9, 0.999), 2.5), "^t must be an integer >= 1; got 2.5$"),
    (lambda: radam_rectified(-1, 0.999), "^t must be an integer >= 1; got -1$"),
    (lambda: radam_rectified(3, 1.0), r"^radam_rho beta2 must be a finite number in \[0, 1\); got 1.0$"),
    (lambda: radam_threshold(0.0, (0.9, 0.999), 3), "lr must be a finite number > 0"),
])
def test_radam_thresholds_refuse_a_step_or_lr_that_is_none(call, match):
    # t = 0, beta2 = 1 and lr = 0 divided by zero; t = -1 said "not rectified" and t = 2.5 gave
    # a threshold, for steps that do not exist
    with pytest.raises(ValueError, match=match):
        call()
    # a group's 0-d tensor lr is a number: RAdam's step 1 threshold, (2 + 2 b1) / ((1 - b1) lr)
    assert radam_threshold(torch.tensor(0.5, dtype=torch.float64), (0.9, 0.999), 1) == ("hessian", pytest.approx(38 / 0.5))


def test_instability_threshold_of_a_rectified_radam_divides_by_r_t():
    # Before: catapult.instability_threshold(RAdam) was Adam's (2 + 2 b1) / ((1 - b1) lr) at every
    # step, 380 at lr 0.1, while a rectified step moves r_t times as far (r_6 = 0.026).
    # Now its next step's threshold, with r_t from torch.optim.RAdam's documented formula.
    import catapult

    lr, b1, b2 = 0.1, 0.9, 0.999
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = torch.optim.RAdam([w], lr=lr, betas=(b1, b2))
    rho_inf = 2 / (1 - b2) - 1
    base = (2 + 2 * b1) / ((1 - b1) * lr)
    for t in range(1, 12):                      # t: the step the threshold is for (1-based)
        rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        if rho_t > 5:
            r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            expected = base / r_t
        else:
            expected = base
        assert catapult.instability_threshold(opt) == pytest.approx(expected, rel=1e-12), t
        w.grad = torch.tensor([0.3, -0.1], dtype=torch.float64)
        opt.step()
    assert t == 11 and expected > 10 * base     # rectified steps were reached
