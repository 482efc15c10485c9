"""Tests for catapult.curvature against exact dense Hessians of small models."""
from __future__ import annotations

import copy

import numpy as np

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_gradient, dense_hessian
from rounding import assert_within_rounding, both_sides

from catapult.curvature import (
    HessianOperator,
    instability_threshold,
    lanczos_top_eigenpair,
    preconditioned_sharpness,
    sharpness,
)

MODES = ["double_backprop", "forward_over_reverse"]


# Losses written here (not imported) so these tests depend only on the module under test.
def mse(outputs, labels):
    """0.5 * mean over (batch x outputs) against one-hot labels."""
    return 0.5 * ((outputs - F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)) ** 2).mean()


def cross_entropy(outputs, labels):
    return F.cross_entropy(outputs, labels)


def tiny_mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    x = torch.randn(16, 4, dtype=dtype)
    y = torch.randint(0, 3, (16,))
    return model, (x, y)


class Quadratic(nn.Module):
    """L(theta) = 0.5 theta^T A theta, with A passed as the 'targets' of the batch."""

    def __init__(self, n):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return self.theta


def quadratic_loss(theta, A):
    return 0.5 * theta @ A @ theta


def spectrum_matrix(eigenvalues, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen,
                                       dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T


# ---------------------------------------------------------------------------- sharpness


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss_fn", [mse, cross_entropy], ids=["mse", "ce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_sharpness_matches_dense_hessian(mode, loss_fn, dtype):
    model, batch = tiny_mlp()
    H = dense_hessian(model, loss_fn, batch)
    exact = torch.linalg.eigvalsh(H)[-1].item()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    est = sharpness(model, loss_fn, batch, tol=tol, dtype=dtype, hvp=mode)
    assert est.converged and est.residual <= tol
    assert est.value == pytest.approx(exact, rel=1e-4 if dtype == torch.float32 else 1e-9)
    assert est.vector.dtype == dtype and est.vector.shape == (H.shape[0],)
    # The vector is an eigenvector of the exact Hessian: ||H v - lambda v|| small.
    v = est.vector.double()
    assert torch.linalg.vector_norm(H @ v - exact * v).item() <= 1e-2 * exact


def test_fp32_model_evaluated_in_fp64():
    model, batch = tiny_mlp()
    H = dense_hessian(model, mse, batch)
    est = sharpness(model, mse, batch, tol=1e-11, dtype=torch.float64)
    assert est.value == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)
    assert next(model.parameters()).dtype == torch.float32


def test_default_tol_gives_accurate_value():
    model, batch = tiny_mlp(seed=1)
    H = dense_hessian(model, mse, batch)
    exact = torch.linalg.eigvalsh(H)[-1].item()
    est = sharpness(model, mse, batch, dtype=torch.float64)  # tol = 1e-3 on the residual
    assert est.converged
    assert est.value == pytest.approx(exact, rel=1e-3)


def test_quadratic_largest_algebraic_not_largest_magnitude():
    A = spectrum_matrix([-9.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.5, 5.0])
    model = Quadratic(8)
    est = sharpness(model, quadratic_loss, (torch.zeros(1), A), tol=1e-10, dtype=torch.float64)
    assert est.value == pytest.approx(5.0, rel=1e-10)
    assert est.converged


def test_lanczos_thick_restart_reaches_tight_tolerance():
    eigenvalues = torch.linspace(0.0, 1.0, 200, dtype=torch.float64) ** 3
    eigenvalues[-1] = 1.05  # small relative gap: needs many iterations
    A = spectrum_matrix(eigenvalues.tolist(), seed=3)
    v0 = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=1e-10, max_iter=500, max_basis=200)
    small = lanczos_top_eigenpair(lambda v: A @ v, v0, tol=1e-10, max_iter=500, max_basis=6)
    assert full.converged and small.converged
    assert full.value == pytest.approx(1.05, rel=1e-12)
    assert small.value == pytest.approx(1.05, rel=1e-12)
    assert small.matvecs > full.matvecs  # restarts cost iterations but still converge
    assert torch.linalg.vector_norm(A @ small.vector - 1.05 * small.vector) < 1e-9


def test_lanczos_invariant_subspace_stops_early():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 7.0], dtype=torch.float64))
    est = lanczos_top_eigenpair(lambda v: A @ v, torch.ones(4, dtype=torch.float64),
                                tol=1e-14, max_iter=50)
    assert est.converged and est.matvecs <= 4
    assert est.value == pytest.approx(7.0, rel=1e-12)


def test_not_converged_when_max_iter_too_small():
    model, batch = tiny_mlp()
    est = sharpness(model, mse, batch, tol=1e-12, max_iter=3, dtype=torch.float64)
    assert not est.converged
    assert est.matvecs == 3
    assert est.residual > 1e-12


def test_warm_start_uses_fewer_matvecs():
    model, batch = tiny_mlp(seed=2, dtype=torch.float64)
    first = sharpness(model, mse, batch, tol=1e-10)
    # One small gradient-descent step moves the Hessian a little.
    loss = mse(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= 0.01 * g
    cold = sharpness(model, mse, batch, tol=1e-4, seed=1, coarse=None)  # a random start
    warm = sharpness(model, mse, batch, tol=1e-4, init=first.vector)
    assert cold.converged and warm.converged
    assert warm.value == pytest.approx(cold.value, rel=1e-6)
    assert warm.matvecs * 2 <= cold.matvecs


def test_modes_agree_and_calls_are_reproducible():
    model, batch = tiny_mlp(seed=3)
    a = sharpness(model, cross_entropy, batch, hvp="double_backprop")
    b = sharpness(model, cross_entropy, batch, hvp="double_backprop")
    c = sharpness(model, cross_entropy, batch, hvp="forward_over_reverse")
    assert a.value == b.value and torch.equal(a.vector, b.vector)
    assert c.value == pytest.approx(a.value, rel=1e-5)


class Regularised(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                                 nn.Linear(8, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.net(x))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [None, torch.float64], ids=["native", "fp64"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_model_optimizer_and_rng_untouched(mode, dtype, train):
    torch.manual_seed(0)
    model = Regularised().train(train)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    mse(model(x), y).backward()  # leaves .grad set, BatchNorm stats moved
    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()

    est = sharpness(model, mse, (x, y), tol=1e-4, dtype=dtype, hvp=mode)

    assert est.converged and np.isfinite(est.value)
    assert model.training == train
    assert torch.equal(torch.get_rng_state(), rng)
    for p, p0, g0 in zip(model.parameters(), params, grads):
        assert p.dtype == torch.float32 and torch.equal(p, p0)
        assert (p.grad is None) == (g0 is None) and (g0 is None or torch.equal(p.grad, g0))
    for b, b0 in zip(model.buffers(), buffers):
        assert torch.equal(b, b0)
    # The vector covers exactly the trainable parameters (the frozen Linear is excluded).
    assert est.vector.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_dropout_mask_fixed_within_a_call():
    """In train mode each HVP must see the same dropout mask, or the operator is not symmetric
    and the two HVP modes (one forward vs one per HVP) would disagree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    a = sharpness(model, mse, (x, y), tol=1e-10, hvp="double_backprop", seed=5)
    b = sharpness(model, mse, (x, y), tol=1e-10, hvp="forward_over_reverse", seed=5)
    c = sharpness(model, mse, (x, y), tol=1e-10, hvp="double_backprop", seed=6)
    assert a.converged and b.converged
    assert b.value == pytest.approx(a.value, rel=1e-9)
    assert c.value != pytest.approx(a.value, rel=1e-6)  # another seed, another mask
    # ... and it equals the exact Hessian for that mask: reproduce the mask by seeding.
    with torch.random.fork_rng():
        torch.manual_seed(5)
        H = dense_hessian(model, mse, (x, y))
    assert a.value == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)


def test_hessian_operator_matches_dense():
    model, batch = tiny_mlp(dtype=torch.float64)
    H, g = dense_hessian(model, cross_entropy, batch), dense_gradient(model, cross_entropy, batch)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for mode in MODES:
        op = HessianOperator(model, cross_entropy, batch, hvp=mode)
        torch.testing.assert_close(op(v), H @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.gradient(), g, rtol=1e-10, atol=1e-12)


def test_non_finite_loss_is_a_result_not_a_crash():
    model, batch = tiny_mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    est = sharpness(model, mse, batch)
    assert np.isnan(est.value) and not est.converged


def test_bad_arguments_are_named():
    model, batch = tiny_mlp()
    with pytest.raises(ValueError, match="init has 5 elements"):
        sharpness(model, mse, batch, init=torch.ones(5))
    with pytest.raises(ValueError, match="hvp must be one of"):
        sharpness(model, mse, batch, hvp="finite_differences")
    with pytest.raises(ValueError, match="dtype"):
        sharpness(model, mse, batch, dtype=torch.float16)
    with pytest.raises(ValueError, match="tol"):
        sharpness(model, mse, batch, tol=0)
    with pytest.raises(ValueError, match="batch must be a pair"):
        sharpness(model, mse, batch[0])
    with pytest.raises(ValueError, match=r"^sharpness max_iter must be an integer in \[1, 100000\]; got True$"):
        sharpness(model, mse, batch, max_iter=True)
    with pytest.raises(ValueError, match=r"HessianOperator seed must be an integer in \[-2\*\*63, 2\*\*64\); got 'a'"):
        sharpness(model, mse, batch, seed="a")


# ---------------------------------------------------------------------------- pre-conditioned


def _random_v0_numpy(g, model, seed):
    """GI-Adam's v0="random" control re-derived per parameter: r_i ~ U[0,1) from a CPU
    generator seeded with seed + i (i = parameter index), scaled to the norm of g_i^2."""
    out, offset = [], 0
    for i, p in enumerate(model.parameters()):
        n = p.numel()
        g2 = g[offset:offset + n] ** 2
        offset += n
        r = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed + i),
                       dtype=torch.float64).reshape(-1).numpy()
        out.append(r * np.linalg.norm(g2) / np.linalg.norm(r))
    return np.concatenate(out)


def dense_preconditioned(model, loss_fn, batch, optimizer, gi_adam=False, gi_v0=1.0):
    """lambda_max(P^-1/2 (H + wd I) P^-1/2) re-derived in NumPy from the optimizer state.

    ``gi_v0``: a number a (v_0 = a g^2) or ``"random"`` (see ``_random_v0_numpy``)."""
    H, g = dense_hessian(model, loss_fn, batch), dense_gradient(model, loss_fn, batch)
    H, g = H.numpy(), g.numpy().copy()
    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()]).numpy()
    group = optimizer.param_groups[0]
    b1, b2 = group["betas"]
    eps, wd = group["eps"], group["weight_decay"]
    l2 = isinstance(optimizer, torch.optim.Adam) and not group.get("decoupled_weight_decay", False)  # torch 2.2: no key
    if l2:
        g = g + wd * theta
    state = [optimizer.state.get(p, {}) for p in model.parameters()]
    if state[0]:
        t = float(state[0]["step"])
        v = np.concatenate([s["exp_avg_sq"].double().reshape(-1).numpy() for s in state])
    else:
        t = 0.0
        if gi_adam and gi_v0 == "random":
            v = _random_v0_numpy(g, model, group.get("seed", 0))
        else:
            v = gi_v0 * g ** 2 if gi_adam else np.zeros_like(g)
    v_next = b2 * v + (1 - b2) * g ** 2
    if group.get("amsgrad") and state[0]:
        v_max = np.concatenate([s["max_exp_avg_sq"].double().reshape(-1).numpy() for s in state])
        v_next = np.maximum(v_max, v_next)
    vc = (1 - b2 ** (t + 1)) if group.get("v_bias_correction", True) else 1.0
    P = (1 - b1 ** (t + 1)) * (np.sqrt(v_next / vc) + eps)
    Hc = H + wd * np.eye(len(g)) if l2 else H
    D = np.diag(P ** -0.5)
    return np.linalg.eigvalsh(D @ Hc @ D)[-1]


def adam_steps(model, loss_fn, batch, optimizer, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("kind", ["adam", "adamw", "adam_l2", "adam_amsgrad"])
def test_preconditioned_sharpness_matches_dense(kind, steps):
    model, batch = tiny_mlp(seed=4, dtype=torch.float64)
    opt = {
        "adam": lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-6),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, betas=(0.8, 0.99)),
        "adam_l2": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
        "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    }[kind](model.parameters())
    adam_steps(model, mse, batch, opt, steps)
    state_before = copy.deepcopy(opt.state_dict())
    params_before = [p.detach().clone() for p in model.parameters()]

    est = preconditioned_sharpness(model, mse, batch, opt, tol=1e-10)

    exact = dense_preconditioned(model, mse, batch, opt)
    assert est.converged
    assert est.value == pytest.approx(exact, rel=1e-8)
    after = opt.state_dict()
    assert after["param_groups"] == state_before["param_groups"]
    for k, s in state_before["state"].items():
        for key, val in s.items():
            assert torch.equal(after["state"][k][key], val)
    assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), params_before))


def test_preconditioned_sharpness_fp32_model_with_fp64_solve_and_threshold():
    model, batch = tiny_mlp(seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    adam_steps(model, mse, batch, opt, 2)
    est = preconditioned_sharpness(model, mse, batch, opt, tol=1e-9, dtype=torch.float64)
    assert est.value == pytest.approx(dense_preconditioned(model, mse, batch, opt), rel=1e-7)
    assert instability_threshold(opt) == pytest.approx(38.0 / 0.01)


def test_preconditioned_scale_by_group_lr():
    model, batch = tiny_mlp(seed=6, dtype=torch.float64)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = torch.optim.Adam([{"params": first, "lr": 0.01}, {"params": second, "lr": 0.0025}])
    plain = preconditioned_sharpness(model, mse, batch, opt, tol=1e-10)
    scaled = preconditioned_sharpness(model, mse, batch, opt, tol=1e-10, scale_by_group_lr=True)
    H, g = dense_hessian(model, mse, batch), dense_gradient(model, mse, batch)
    P = (1 - 0.9) * (np.sqrt(g.numpy() ** 2) + 1e-8)
    n0 = sum(p.numel() for p in first)
    ratio = np.ones_like(P)
    ratio[n0:] = 0.25
    D = np.diag(np.sqrt(ratio / P))
    assert scaled.value == pytest.approx(np.linalg.eigvalsh(D @ H.numpy() @ D)[-1], rel=1e-8)
    assert scaled.value < plain.value



def test_preconditioned_scale_by_group_lr_at_a_schedule_lr_of_zero():
    # the last step of a cosine decay to lr_final=0 sets every group's lr to 0: lr_i / lr_0 was
    # a ZeroDivisionError; the groups' lr_mult ratios (what the schedule scales them by) stand in
    model, batch = tiny_mlp(seed=6, dtype=torch.float64)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = torch.optim.Adam([{"params": first, "lr": 0.0, "lr_mult": 1.0},
                            {"params": second, "lr": 0.0, "lr_mult": 0.25}])
    scaled = preconditioned_sharpness(model, mse, batch, opt, tol=1e-10, scale_by_group_lr=True)
    H, g = dense_hessian(model, mse, batch), dense_gradient(model, mse, batch)
    P = (1 - 0.9) * (np.sqrt(g.numpy() ** 2) + 1e-8)
    ratio = np.ones_like(P)
    ratio[sum(p.numel() for p in first):] = 0.25
    D = np.diag(np.sqrt(ratio / P))
    assert scaled.value == pytest.approx(np.linalg.eigvalsh(D @ H.numpy() @ D)[-1], rel=1e-8)

def test_preconditioned_rejects_other_optimizers():
    model, batch = tiny_mlp()
    with pytest.raises(TypeError, match="SGD"):
        preconditioned_sharpness(model, mse, batch, torch.optim.SGD(model.parameters(), lr=0.1))


def _gi_adam(params, **kwargs):
    # (was a skip on TypeError, "GIAdam not implemented yet": a GIAdam refusing v0= or
    # v_bias_correction= then passed as skipped)
    from catapult.optim import GIAdam
    return GIAdam(params, **kwargs)


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("v_bias_correction", [True, False])
@pytest.mark.parametrize("v0", ["grad", 4.0, "random"])
def test_preconditioned_sharpness_gi_adam(steps, v_bias_correction, v0):
    model, batch = tiny_mlp(seed=7, dtype=torch.float64)
    kwargs = dict(lr=0.01, v_bias_correction=v_bias_correction)
    if v0 != "grad":
        kwargs["v0"] = v0
    if v0 == "random":
        kwargs["seed"] = 11
    opt = _gi_adam(model.parameters(), **kwargs)
    adam_steps(model, mse, batch, opt, steps)
    est = preconditioned_sharpness(model, mse, batch, opt, tol=1e-10)
    exact = dense_preconditioned(model, mse, batch, opt, gi_adam=True,
                                 gi_v0=1.0 if v0 == "grad" else v0)
    assert est.value == pytest.approx(exact, rel=1e-8)
    if steps == 0:
        assert not opt.state  # nothing created


# ---------------------------------------------------------------------------- micro-batches


def sum_mse(outputs, labels):
    """A per-sample *sum* loss: chunks combine with weight 1."""
    return 0.5 * ((outputs - F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)) ** 2).sum()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss_fn", [cross_entropy, sum_mse], ids=["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [1, 5, 8])
def test_chunked_hvp_matches_dense(mode, loss_fn, chunk_size):
    model, batch = tiny_mlp(dtype=torch.float64)
    H, g = dense_hessian(model, loss_fn, batch), dense_gradient(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch, hvp=mode, chunk_size=chunk_size)
    assert op.chunks == -(-16 // chunk_size)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op(v), H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        loss = float(loss_fn(model(batch[0]), batch[1]))
    assert op.loss == pytest.approx(loss, rel=1e-12, abs=0)


def test_chunk_size_at_least_the_batch_is_one_chunk():
    model, batch = tiny_mlp()
    assert HessianOperator(model, mse, batch, chunk_size=16).chunks == 1
    assert HessianOperator(model, mse, batch, chunk_size=1000).chunks == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_chunked_sharpness_matches_dense_and_unchunked(dtype):
    model, batch = tiny_mlp(dtype=dtype)
    H = dense_hessian(model, mse, batch)
    exact = float(torch.linalg.eigvalsh(H)[-1])
    whole = sharpness(model, mse, batch, tol=1e-6, max_iter=200)
    chunked = sharpness(model, mse, batch, tol=1e-6, max_iter=200, chunk_size=6)
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    assert chunked.value == pytest.approx(exact, rel=rel)
    assert chunked.value == pytest.approx(whole.value, rel=rel)


def test_chunked_preconditioned_sharpness_matches_unchunked():
    model, batch = tiny_mlp(dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        mse(model(batch[0]), batch[1]).backward()
        opt.step()
    whole = preconditioned_sharpness(model, mse, batch, opt, tol=1e-8, max_iter=300)
    chunked = preconditioned_sharpness(model, mse, batch, opt, tol=1e-8, max_iter=300,
                                       chunk_size=3)
    assert chunked.value == pytest.approx(whole.value, rel=1e-9)


def test_chunking_refuses_what_it_cannot_split_exactly(lean_chunks_small_batches):
    model, batch = tiny_mlp()

    def rms(outputs, labels):  # not additive over samples
        return mse(outputs, labels).sqrt()

    with pytest.raises(ValueError, match="^chunk_size: loss_fn is neither a mean nor a sum over samples"):
        HessianOperator(model, rms, batch, chunk_size=4)
    # micro-batches the caller did not ask for: the message names the setting that chose them
    with pytest.raises(ValueError, match=r"^memory='lean' \(micro-batches of \d+\): loss_fn is neither a mean "
                                         r"nor a sum .* use memory='fast'$"):
        sharpness(model, rms, batch, memory="lean")
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=rf"^HessianOperator chunk_size must be None or an integer >= 1; got {bad!r}$"):
            sharpness(model, mse, batch, chunk_size=bad)
    with pytest.raises(ValueError, match="targets have 15"):
        HessianOperator(model, mse, (batch[0], batch[1][:15]), chunk_size=4)
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="'1' is a BatchNorm in train mode"):
        HessianOperator(bn, mse, batch, chunk_size=4)
    HessianOperator(bn.eval(), mse, batch, chunk_size=4)  # eval mode: samples are independent
    drop = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="'1' is a Dropout in train mode"):
        HessianOperator(drop, mse, batch, chunk_size=4)


def test_krylov_basis_restart_in_place_equals_explicit_combination():
    from catapult.curvature import KrylovBasis as _KrylovBasis

    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(7, 50, generator=gen, dtype=torch.float64)
    C = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    basis = _KrylovBasis(Q[0], block=2)
    for row in Q:
        basis.append(row)
    basis.restart(C, columns=8)  # slices that do not divide n
    assert basis.size == 3 and len(basis.blocks) == 2
    for i in range(3):   # a length-7 combination and its sum into place: 8 roundings a side
        assert_within_rounding(basis.row(i), C[:, i] @ Q, both_sides(8, C[:, i].abs() @ Q.abs(), torch.float64))
    basis.append(Q[6])
    assert torch.equal(basis.last(), Q[6])   # a copy
