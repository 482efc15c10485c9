"""Every Hessian-vector product mode against the dense float64 Hessian, on torch's own losses.

Regression for ``hvp="forward_over_reverse"`` with ``nn.MSELoss``: torch's forward-AD formula of
``mse_loss_backward`` (``reduction="mean"``) wrote in place into the efficient ZeroTensor tangent
of a target closed over by ``torch.func.jvp`` ("ZeroTensors are immutable",
pytorch/pytorch#123996); :func:`catapult.curvature.forward_ad.jvp_of_gradient` gives floating
targets a materialised zero tangent, and a target built inside the loss (``mse_onehot``) goes
through :class:`catapult.curvature.forward_ad.losses_for_forward_ad`, as does ``nn.HuberLoss``, which
has no forward-AD formula in torch. The truth is ``torch.autograd.functional.hessian`` of the
loss as a function of the flat parameter vector (row by row, reverse over reverse), and
``numpy.linalg.eigh`` of it.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult
from catapult.curvature import HVP_MODES, HessianOperator, preconditioned_sharpness, top_eigenpairs
from catapult.optim.thresholds import lr_scaled_sharpness


class WithUnused(nn.Module):
    """A tanh MLP with a parameter the forward never touches (its Hessian rows are zero)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.body(x)


def problem(kind: str):
    torch.manual_seed(0)
    n = 10
    x = torch.randn(n, 3, dtype=torch.float64)
    if kind == "unused":
        model = WithUnused().double()
    else:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    if kind == "cross_entropy":
        return model, nn.CrossEntropyLoss(), (x, torch.randint(0, 2, (n,)))
    if kind == "soft_cross_entropy":  # float (probability) targets
        return model, nn.CrossEntropyLoss(), (x, torch.softmax(torch.randn(n, 2, dtype=torch.float64), 1))
    if kind == "mse_onehot":  # float targets built inside the loss from integer labels
        return model, mse_onehot, (x, torch.randint(0, 2, (n,)))
    if kind == "huber":  # no forward-AD formula in torch; delta 0.5 puts residuals on both pieces
        return model, nn.HuberLoss(delta=0.5), (x, 2 * torch.randn(n, 2, dtype=torch.float64))
    return model, nn.MSELoss(), (x, torch.randn(n, 2, dtype=torch.float64))


def mse_onehot(out, labels):
    """``nn.MSELoss`` against one-hot vectors the loss builds itself: a target no ``jvp`` primal
    carries (pytorch/pytorch#123996 failed it under ``hvp="forward_over_reverse"``)."""
    return nn.MSELoss()(out, nn.functional.one_hot(labels, out.shape[-1]).to(out.dtype))


KINDS = ["mse", "cross_entropy", "soft_cross_entropy", "unused", "mse_onehot", "huber"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", HVP_MODES)
def test_hvp_matches_dense_hessian(kind, mode):
    model, loss_fn, batch = problem(kind)
    H = dense_hessian(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch, hvp=mode)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.numel, generator=gen, dtype=torch.float64)
        want = H @ v
        err = torch.linalg.vector_norm(op(v) - want) / torch.linalg.vector_norm(want)
        assert err <= 1e-10, (mode, kind, float(err))
    if kind == "unused":  # the unused parameter's rows and columns are zero
        assert torch.count_nonzero(H[-6:]) == 0 and torch.count_nonzero(H[:, -6:]) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", HVP_MODES)
def test_chunked_hvp_matches_dense_hessian(kind, mode):
    """Micro-batches run the same product modes chunk by chunk (their own jvp call)."""
    model, loss_fn, batch = problem(kind)
    H = dense_hessian(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch, hvp=mode, chunk_size=4)
    assert op.chunks == 3
    v = torch.randn(op.numel, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = H @ v
    for got in (op(v), op.accumulate(v, torch.zeros_like(v))):
        assert torch.linalg.vector_norm(got - want) <= 1e-10 * torch.linalg.vector_norm(want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", HVP_MODES)
def test_sharpness_matches_dense_top_eigenvalue(kind, mode):
    model, loss_fn, batch = problem(kind)
    top = float(np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1])
    est = catapult.sharpness(model, loss_fn, batch, hvp=mode, tol=1e-8, max_iter=200)
    assert est.converged
    assert abs(est.value - top) <= 1e-9 * abs(top), (mode, kind, est.value, top)


def test_float32_model_with_float64_dtype_forward_over_reverse():
    """The colleague's report: a float32 model measured with ``dtype=torch.float64``."""
    model, loss_fn, batch = problem("mse")
    batch32 = (batch[0].float(), batch[1].float())
    model32 = copy.deepcopy(model).float()
    # the truth at the float32 parameters and data, which float64 represents exactly
    exact = (batch32[0].double(), batch32[1].double())
    top = float(np.linalg.eigvalsh(dense_hessian(copy.deepcopy(model32).double(), loss_fn,
                                                 exact).numpy())[-1])
    est = catapult.sharpness(model32, loss_fn, batch32, hvp="forward_over_reverse",
                             dtype=torch.float64, tol=1e-8, max_iter=200)
    assert abs(est.value - top) <= 1e-9 * abs(top)


def test_jvp_of_gradient_with_mse_loss_against_closed_form():
    """``L(w) = mean((X w - t)^2)`` has ``H = 2 X^T X / n`` for every ``w``."""
    from catapult.curvature.forward_ad import jvp_of_gradient

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(5, generator=gen, dtype=torch.float64)
    w, v = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    loss = lambda p, x, y: nn.functional.mse_loss(x @ p["w"], y)  # noqa: E731
    g, hv = jvp_of_gradient(torch.func.grad(loss), {"w": w}, {"w": v}, X, t)
    torch.testing.assert_close(hv["w"], 2 * X.T @ (X @ v) / 5, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g["w"], 2 * X.T @ (X @ w - t) / 5, rtol=1e-12, atol=1e-12)


def test_preconditioned_sharpness_forward_over_reverse():
    """Adam's first step: ``P = (1 - b1) (|g| + eps)``; truth ``eig(P^-1/2 H P^-1/2)``."""
    model, loss_fn, batch = problem("mse")
    H = dense_hessian(model, loss_fn, batch)
    params = list(model.parameters())
    g = torch.cat([t.reshape(-1) for t in
                   torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)])
    opt = torch.optim.Adam(params, lr=0.01)
    b1, eps = opt.param_groups[0]["betas"][0], opt.param_groups[0]["eps"]
    d = ((1 - b1) * (g.abs() + eps)).rsqrt()
    top = float(np.linalg.eigvalsh((d[:, None] * H * d[None, :]).numpy())[-1])
    est = preconditioned_sharpness(model, loss_fn, batch, opt, hvp="forward_over_reverse",
                                   tol=1e-8, max_iter=200)
    assert abs(est.value - top) <= 1e-8 * abs(top), (est.value, top)


def test_top_eigenpairs_forward_over_reverse():
    model, loss_fn, batch = problem("mse")
    want = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[::-1][:3]
    eig = top_eigenpairs(model, loss_fn, batch, k=3, hvp="forward_over_reverse", tol=1e-8)
    np.testing.assert_allclose(eig.values, want, rtol=1e-8)


def test_lr_scaled_sharpness_forward_over_reverse():
    """One param group: ``M = I``, the sharpness itself."""
    model, loss_fn, batch = problem("mse")
    top = float(np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = lr_scaled_sharpness(model, loss_fn, batch, opt, hvp="forward_over_reverse",
                              tol=1e-8, max_iter=200)
    assert abs(est.value - top) <= 1e-9 * abs(top)


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("mode", ["double_backprop", "forward_over_reverse"])
def test_stacked_hessian_with_mse_loss(mode, chunk_size):
    """The batched engine's products (``vmap`` over members of the same jvp) with
    ``nn.MSELoss``: member ``m``'s block equals its own dense Hessian times ``v_m``."""
    from catapult.sweep.batched_model import StackedHessian, StackedModel

    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double())
    _, loss_fn, (x, y) = problem("mse")
    stacked = StackedModel(members, loss_fn)
    op = StackedHessian(stacked, [0, 1], x, y, torch.float64, hvp=mode, chunk_size=chunk_size)
    V = torch.randn(2, 26, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = op.matvec([0, 1], V)
    for m, model in enumerate(members):
        want = dense_hessian(model, loss_fn, (x, y)) @ V[m]
        assert torch.linalg.vector_norm(got[m] - want) <= 1e-10 * torch.linalg.vector_norm(want)


@pytest.mark.parametrize("mode", ["auto", "double_backprop"])
def test_products_take_torch_22s_materialised_zeros(mode, monkeypatch):
    # torch 2.2's autograd.grad(materialize_grads=True) gave an unused leaf zeros that require grad
    # (newer torch: only under create_graph): the chunked product's in-place sum into its output's
    # views raised "A view was created in no_grad mode and is being modified inplace". Emulated here.
    grad = torch.autograd.grad

    def grad_of_torch_22(outputs, inputs, *args, materialize_grads=False, **kwargs):
        if not materialize_grads:
            return grad(outputs, inputs, *args, **kwargs)
        kwargs["allow_unused"] = True
        got = grad(outputs, inputs, *args, **kwargs)
        return tuple(g if g is not None else torch.zeros_like(i, requires_grad=True) for g, i in zip(got, inputs))

    monkeypatch.setattr(torch.autograd, "grad", grad_of_torch_22)
    model, loss_fn, batch = problem("unused")
    H = dense_hessian(model, loss_fn, batch)
    for chunk_size in (4, None):
        op = HessianOperator(model, loss_fn, batch, hvp=mode, chunk_size=chunk_size)
        v = torch.randn(op.numel, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        got = op(v)
        assert not got.requires_grad
        assert torch.linalg.vector_norm(got - H @ v) <= 1e-10 * torch.linalg.vector_norm(H @ v)
    truth = float(torch.linalg.eigvalsh(H)[-1])   # and Lanczos on those products (2.2: add_'s alpha refused)
    assert catapult.sharpness(model, loss_fn, batch, hvp=mode, tol=1e-10, max_iter=200).value == pytest.approx(truth, rel=1e-8)
