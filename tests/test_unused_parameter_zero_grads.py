"""A trainable parameter the loss never reaches is skipped by torch's step only while its ``.grad`` is
None. With a ``.grad`` of zeros -- ``optimizer.zero_grad(set_to_none=False)`` after a pass that reached
it, or gradients filled in by other code -- torch's Adam steps it (its count, its moments, the coupled
L2 ``wd theta`` in its gradient), and SGD decays it. The operators of the next step then hold its rows:
catapult reads each unreached parameter's ``.grad`` at the call (the engine and the tracker's pattern:
after ``backward``, before ``step``); before, it left every unreached parameter out (S: 49.86 for the
step's 590.27 below; SGD 3.42 for 50).

Truth: torch's own step (it moves the parameter and counts it), and the dense ``P^-1/2 (H + wd I)
P^-1/2`` over every parameter with ``P`` from torch's state and the loss's gradient plus ``wd theta``
(the unreached rows: ``wd / P``), or the dense ``H + W`` of SGD's groups, in NumPy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from dense_curvature import dense_gradient, dense_hessian
from test_unused_parameter_rows import LOSS, WithUnused

WD, LR = 0.01, 1e-3


def _trained(make, steps=10):
    """``steps`` updates in the ``zero_grad(set_to_none=False)`` pattern, every ``.grad`` starting as zeros
    (as after a pass that reached the unused module too), then this batch's ``backward``: the state the next
    ``step`` reads."""
    torch.manual_seed(0)
    model = WithUnused().double()
    with torch.no_grad():
        model.unused.bias.copy_(torch.tensor([0.01, -0.005]))   # rows wd / P ~ 1 / |theta|: above the body's
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 3, generator=gen, dtype=torch.float64), torch.randn(16, 1, generator=gen, dtype=torch.float64))
    opt = make(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        LOSS(model(batch[0]), batch[1]).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    LOSS(model(batch[0]), batch[1]).backward()
    return model, batch, opt


ADAM = {"adam": lambda model: torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WD),
        "radam": lambda model: torch.optim.RAdam(model.parameters(), lr=LR, weight_decay=WD)}


def _dense_adam_operator(model, batch, opt) -> np.ndarray:
    """``P^-1/2 (H + wd I) P^-1/2`` of torch Adam's next step over every parameter, from its state (RAdam's,
    rectified, every count alike: ``eps`` inside the correction, ``P = (1 - b1^t) (sqrt(v') + eps) / sqrt(1 - b2^t)``)."""
    params = list(model.parameters())
    (b1, b2), eps = opt.param_groups[0]["betas"], opt.param_groups[0]["eps"]
    theta = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    g = dense_gradient(model, LOSS, batch).numpy() + WD * theta
    v = np.concatenate([opt.state[p]["exp_avg_sq"].reshape(-1).numpy() for p in params])
    t = float(opt.state[params[0]]["step"]) + 1
    v_next = b2 * v + (1 - b2) * g ** 2
    if isinstance(opt, torch.optim.RAdam):
        P = (1 - b1 ** t) * (np.sqrt(v_next) + eps) / np.sqrt(1 - b2 ** t)
    else:
        P = (1 - b1 ** t) * (np.sqrt(v_next / (1 - b2 ** t)) + eps)
    H = dense_hessian(model, LOSS, batch).numpy()
    return (H + WD * np.eye(len(P))) / np.sqrt(P)[:, None] / np.sqrt(P)[None, :]


@pytest.mark.parametrize("name", sorted(ADAM))
def test_adam_steps_an_unreached_parameter_with_a_zero_grad_and_the_operator_holds_its_rows(name):
    model, batch, opt = _trained(ADAM[name])
    bias = model.unused.bias
    assert torch.equal(bias.grad, torch.zeros(2, dtype=torch.float64)) and float(opt.state[bias]["step"]) == 10
    truth = float(np.linalg.eigvalsh(_dense_adam_operator(model, batch, opt))[-1])
    got = catapult.preconditioned_sharpness(model, LOSS, batch, opt, tol=1e-12, max_iter=200)
    assert got.value == pytest.approx(truth, rel=1e-9)
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.value == pytest.approx(truth, rel=1e-9)
    # torch's step: the bias moves (decay and momentum), and is counted
    before = bias.detach().clone()
    opt.step()
    assert float(opt.state[bias]["step"]) == 11 and not torch.equal(bias.detach(), before)

    # the same state with the module's .grad None at the call (zero_grad's default): torch's step skips
    # it, and the operator is the body's
    model, batch, opt = _trained(ADAM[name])
    for p in model.unused.parameters():
        p.grad = None
    n_body = sum(p.numel() for p in model.body.parameters())
    body = float(np.linalg.eigvalsh(_dense_adam_operator(model, batch, opt)[:n_body, :n_body])[-1])
    got = catapult.preconditioned_sharpness(model, LOSS, batch, opt, tol=1e-12, max_iter=200)
    assert got.value == pytest.approx(body, rel=1e-9) and body < truth / 2
    before = model.unused.bias.detach().clone()
    opt.step()
    assert float(opt.state[model.unused.bias]["step"]) == 10 and torch.equal(model.unused.bias.detach(), before)


def test_sgd_decays_an_unreached_parameter_with_a_zero_grad_and_the_operator_holds_its_rows():
    def make(m):
        return torch.optim.SGD([{"params": m.body.parameters()}, {"params": m.unused.parameters(), "weight_decay": 50.0}],
                               lr=LR)
    model, batch, opt = _trained(make)
    H = dense_hessian(model, LOSS, batch).numpy()
    n_body = sum(p.numel() for p in model.body.parameters())
    W = np.diag([0.0] * n_body + [50.0] * (H.shape[0] - n_body))
    truth = float(np.linalg.eigvalsh(H + W)[-1])
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-12, max_iter=200).step(batch)
    assert record.value == pytest.approx(truth, rel=1e-9)                  # 50, not the body's 3.42
    top = catapult.top_eigenpairs(model, LOSS, batch, k=1, tol=1e-12, optimizer=opt, scale_by_group_lr=True)
    assert top.values[0] == pytest.approx(truth, rel=1e-9)
    before = model.unused.bias.detach().clone()
    opt.step()                                                              # torch decays it: theta (1 - lr 50)
    np.testing.assert_allclose(model.unused.bias.detach().numpy(), before.numpy() * (1 - LR * 50.0), rtol=1e-15, atol=0)
