"""RAdam whose parameters are at different step counts (torch counts each parameter's steps
apart: a parameter without a gradient on some steps lags): catapult.SharpnessTracker's record
and preconditioned_sharpness against a NumPy re-derivation of torch RAdam's next step per
parameter -- its own t, its group's beta2, its own rectification r_t -- on the dense float64
Hessian; a step rectified for some parameters only is refused before any product."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_gradient, dense_hessian

LOSS = nn.MSELoss()


def _setup(lag: int, beta2_second: float, steps: int = 10):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(10, 3, generator=gen, dtype=torch.float64),
             torch.randn(10, 2, generator=gen, dtype=torch.float64))
    opt = torch.optim.RAdam([{"params": model[0].parameters()},
                             {"params": model[2].parameters(), "betas": (0.9, beta2_second), "lr": 0.02}], lr=0.01)
    for k in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        if k < lag:                     # the second layer gets no gradient: torch skips its step
            for p in model[2].parameters():
                p.grad = None
        opt.step()
    return model, batch, opt


def radam_next_step_scales(opt, g, alpha: float = 1.0):
    """Per parameter entry, torch RAdam's rectified next-step scale
    ``S = alpha lr r_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt(v') + eps))`` (each parameter at its own
    t = state step + 1, its group's beta2, ``v'`` after the gradient ``g``) and its group's
    ``alpha lr wd``, as two flat NumPy vectors."""
    scales, decay, offset = [], [], 0
    for group in opt.param_groups:
        b1, b2 = group["betas"]
        for p in group["params"]:
            n, state = p.numel(), opt.state[p]
            t = float(state["step"]) + 1
            v = b2 * state["exp_avg_sq"].numpy().reshape(-1) + (1 - b2) * g[offset:offset + n] ** 2
            rho_inf = 2 / (1 - b2) - 1
            rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            assert rho > 5
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            scales.append(alpha * group["lr"] * r * np.sqrt(1 - b2 ** t) / ((1 - b1 ** t) * (np.sqrt(v) + group["eps"])))
            decay.append(np.full(n, alpha * group["lr"] * group["weight_decay"]))
            offset += n
    return np.concatenate(scales), np.concatenate(decay)


def _true_ratio(model, batch, opt) -> float:
    """lambda_max(S H) (1 - b1) / (2 + 2 b1): torch RAdam's rectified step applies
    S = lr r_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt(v') + eps)) to the EMA momentum, each parameter
    at its own t = state step + 1 (heavy ball at lr (1 - b1) S: stable while that is < 1)."""
    H = dense_hessian(model, LOSS, batch).numpy()
    g = dense_gradient(model, LOSS, batch).numpy()
    s = np.sqrt(radam_next_step_scales(opt, g)[0])
    b1 = opt.param_groups[0]["betas"][0]
    return float(np.linalg.eigvalsh(s[:, None] * H * s[None, :])[-1]) * (1 - b1) / (2 + 2 * b1)


@pytest.mark.parametrize("lag, beta2_second", [(4, 0.999), (0, 0.99), (4, 0.99), (0, 0.999)])
def test_each_parameter_is_scaled_by_its_own_rectification(lag, beta2_second):
    """(4, 0.999): the second layer 4 steps behind (r_7 where the threshold takes r_11); (0, 0.99):
    its group's beta2 differs; (0, 0.999): alike, the case that was already right."""
    model, batch, opt = _setup(lag, beta2_second)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    assert record.kind == "preconditioned"
    assert record.ratio == pytest.approx(_true_ratio(model, batch, opt), rel=1e-7)
    est = catapult.preconditioned_sharpness(model, LOSS, batch, opt, scale_by_group_lr=True, tol=1e-10, max_iter=300)
    assert est.value / catapult.instability_threshold(opt) == pytest.approx(record.ratio, rel=1e-7)


class CountingLoss:
    def __init__(self):
        self.calls = 0

    def __call__(self, out, y):
        self.calls += 1
        return LOSS(out, y)


def test_a_step_rectified_for_some_parameters_only_is_refused_before_any_product():
    """After 8 steps with the second layer 4 behind: the first layer's step 9 is rectified, the
    second's step 5 is not (momentum SGD there): no single sharpness bounds that step."""
    model, batch, opt = _setup(lag=4, beta2_second=0.999, steps=8)
    loss = CountingLoss()
    tracker = catapult.SharpnessTracker(model, loss, opt)
    with pytest.raises(ValueError, match=r"un-rectified for parameter 2 \(its own step 5\) and rectified at step 9"):
        tracker.step(batch)
    assert loss.calls == 0 and tracker.calls == 0
    with pytest.raises(ValueError, match="no single sharpness bounds it"):
        catapult.preconditioned_sharpness(model, LOSS, batch, opt)


def test_the_refusal_comes_before_any_product_also_after_zero_grad():
    """The same lagging RAdam, the tracker called after ``opt.zero_grad()`` (every ``.grad`` None, as
    a loop that measures before its next backward leaves them): each parameter has its step counts,
    so none is taken for an unused one, and the step is refused before the loss is called once."""
    model, batch, opt = _setup(lag=4, beta2_second=0.999, steps=8)
    opt.zero_grad()
    loss = CountingLoss()
    tracker = catapult.SharpnessTracker(model, loss, opt)
    with pytest.raises(ValueError, match=r"un-rectified for parameter 2 \(its own step 5\) and rectified at step 9"):
        tracker.step(batch)
    assert loss.calls == 0 and tracker.calls == 0


def _rho(t: int, b2: float) -> float:
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)


@pytest.mark.parametrize("steps", [4, 5])
def test_the_record_is_of_the_next_step_at_the_rectification_edge(steps):
    """One group, beta2 0.999, ``steps`` steps taken: the record bounds step ``steps + 1``, which torch
    RAdam rectifies where ``rho_t > 5`` (re-derived here: step 5 is not, step 6 is): after 4 steps the
    whole Hessian's record, after 5 the pre-conditioned one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(10, 3, generator=gen, dtype=torch.float64),
             torch.randn(10, 2, generator=gen, dtype=torch.float64))
    opt = torch.optim.RAdam(model.parameters(), lr=0.01, betas=(0.9, 0.999))
    for _ in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    assert _rho(5, 0.999) <= 5 < _rho(6, 0.999)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    assert record.kind == ("preconditioned" if _rho(steps + 1, 0.999) > 5 else "hessian")
