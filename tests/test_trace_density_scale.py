"""Hutch++ (``hessian_trace``) and stochastic Lanczos quadrature (``spectral_density``) of operators of
extreme scale: a 12x12 matrix times 1e-200 / 1e160 (float64) and 2**+-80 (float32), and 2**k x an MSE
loss through the public API (k = 531, -664; also sharded by FSDP2, where the probes' Gram matrix squares
the products). Truth: numpy's trace and eigh (the quadrature's nodes after n steps are the eigenvalues,
its moments ``v^T A^p v / ||v||^2``). Before, the quadrature's norms were plain sums of squares: at 1e-200
and 2**-80 a run ended after one step, a single node at the Rayleigh quotient ("invariant"); at 1e160,
2**80 and 2**531 it raised "product 1 ... is not finite"; sharded, the trace raised (LinAlgError at
2**531, IndexError at 2**-664)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import catapult
from catapult.curvature.spectrum import hutch_plus_plus, lanczos_quadrature
from dense_curvature import dense_hessian


def integral(f, x):
    """The trapezoid rule (numpy < 2 has no np.trapezoid)."""
    return float(((f[1:] + f[:-1]) / 2 * np.diff(x)).sum())


def matrix_and_probe():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    return B + B.T, (torch.randint(0, 2, (12,), generator=g) * 2 - 1).double()


@pytest.mark.parametrize("dtype, scale, rel", [(torch.float64, 1e-200, 1e-12), (torch.float64, 1e160, 1e-12),
                                               (torch.float32, 2.0 ** -80, 1e-5), (torch.float32, 2.0 ** 80, 1e-5)])
def test_quadrature_and_trace_of_a_scaled_matrix(dtype, scale, rel):
    A0, v = matrix_and_probe()
    A = (A0 * scale).to(dtype)
    dense = A.double().numpy()
    values = np.linalg.eigh(dense)[0]
    radius = np.abs(values).max()
    nodes, weights = lanczos_quadrature(lambda x: A @ x, v.to(dtype), 12)
    assert len(nodes) == 12 and np.abs(np.sort(nodes) - values).max() <= rel * radius
    u = v.numpy() / np.linalg.norm(v.numpy())
    for p in range(4):   # the moments u^T A^p u (exact for p < 24): in units of radius**p
        moment = u @ np.linalg.matrix_power(dense / radius, p) @ u
        assert (weights * (nodes / radius) ** p).sum() == pytest.approx(moment, abs=rel), p
    # Hutch++: exact from n products; from 9, the plain operator's estimate times the scale
    assert hutch_plus_plus(lambda x: A @ x, 12, 12, dtype=dtype) == pytest.approx(np.trace(dense), rel=rel, abs=0)
    plain = hutch_plus_plus(lambda x: A0.to(dtype) @ x, 12, 9, dtype=dtype)
    assert hutch_plus_plus(lambda x: A @ x, 12, 9, dtype=dtype) == pytest.approx(plain * scale, rel=10 * rel, abs=0)


@pytest.mark.parametrize("exponent", [531, -664])
def test_trace_and_density_of_a_scaled_loss(exponent):
    # 2**k x the loss: every product exactly 2**k times, so the same runs; nodes 2**k times the plain ones
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    batch = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))
    values = np.linalg.eigh(dense_hessian(model, torch.nn.MSELoss(), batch).numpy())[0]
    n, c = len(values), 2.0 ** exponent
    loss = lambda out, t: c * F.mse_loss(out, t)   # noqa: E731
    assert catapult.hessian_trace(model, loss, batch, matvecs=n) / c == pytest.approx(values.sum(), rel=1e-12)
    plain_trace = catapult.hessian_trace(model, torch.nn.MSELoss(), batch, matvecs=9)
    assert catapult.hessian_trace(model, loss, batch, matvecs=9) / c == pytest.approx(plain_trace, rel=1e-12)
    plain = catapult.spectral_density(model, torch.nn.MSELoss(), batch, runs=3, steps=n, max_basis=None)
    dens = catapult.spectral_density(model, loss, batch, runs=3, steps=n, max_basis=None)
    assert dens.matvecs == plain.matvecs == 3 * n
    for run in dens.nodes:   # the support: every eigenvalue, 2**k times
        np.testing.assert_allclose(np.sort(run) / c, values, rtol=0, atol=1e-12 * np.abs(values).max())
    np.testing.assert_allclose(dens.weights, plain.weights, rtol=0, atol=1e-12)
    assert dens.sigma / c == pytest.approx(plain.sigma, rel=1e-12, abs=0)
    # the density is the plain one in units of c: the same mass and mean
    assert integral(dens.density, dens.grid) == pytest.approx(integral(plain.density, plain.grid), rel=1e-9)
    assert (integral(dens.density * dens.grid, dens.grid) / c
            == pytest.approx(integral(plain.density * plain.grid, plain.grid), rel=1e-9))


def test_preconditioned_trace_and_density_of_a_scaled_loss():
    # Adam's P^-1/2 H P^-1/2 under 2**k x the loss, Adam's state from two plain steps: P's g^2 underflows at
    # 2**-664 (P ~ the plain state's), so the operator is ~1e-198. Truth: the dense pre-conditioned Hessian
    from dense_curvature import dense_adam_preconditioned
    for exponent in (-664, 200):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
        batch = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            F.mse_loss(model(batch[0]), batch[1]).backward()
            opt.step()
        c = 2.0 ** exponent
        loss = lambda out, t, c=c: c * F.mse_loss(out, t)   # noqa: E731
        dense = dense_adam_preconditioned(model, loss, batch, opt)
        values = np.linalg.eigh(dense)[0]
        n, radius = len(values), np.abs(values).max()
        est = catapult.preconditioned_sharpness(model, loss, batch, opt, tol=1e-8)
        assert est.converged and est.value == pytest.approx(values[-1], rel=1e-10, abs=0), exponent
        assert catapult.hessian_trace(model, loss, batch, matvecs=n, optimizer=opt) == pytest.approx(
            np.trace(dense), rel=1e-10, abs=0), exponent
        dens = catapult.spectral_density(model, loss, batch, runs=1, steps=n, max_basis=None, optimizer=opt)
        assert dens.matvecs == n, exponent   # before, at 2**-664: one step, one node
        np.testing.assert_allclose(np.sort(dens.nodes[0]), values, rtol=0, atol=1e-12 * radius)


def test_quadrature_of_a_start_of_extreme_scale_over_ranks():
    # (mutation pass 19's SL3, of pass 18) the start's norm with reduce (one rank's part; the sum over
    # one rank is itself) is scale-safe: v x 1e-170 squares to 1e-340 (0 in float64), and the run is
    # v's (SL3 divided by that 0: a start of inf)
    A, v = matrix_and_probe()
    one_rank = lambda t: t   # noqa: E731
    nodes, weights = lanczos_quadrature(lambda x: A @ x, v, 12, reduce=one_rank)
    tiny_nodes, tiny_weights = lanczos_quadrature(lambda x: A @ x, v * 1e-170, 12, reduce=one_rank)
    np.testing.assert_allclose(tiny_nodes, nodes, rtol=1e-12, atol=0)
    np.testing.assert_allclose(tiny_weights, weights, rtol=1e-12, atol=0)
    assert np.sort(nodes) == pytest.approx(np.linalg.eigh(A.numpy())[0], rel=1e-10, abs=1e-10)
