"""Operators of tiny or huge norm (float64): the solvers run on ``2**-e A`` (exact) and report
``2**e`` times its eigenvalue. Before, norms of products below ~1e-154 underflowed (``beta = 0``:
"invariant", converged after 1-2 products on a wrong value) or lost digits to subnormal squares
(converged 1.7e-6 / 1.2e-8 off at 1e-160 with a bound of ~1e-15), and past ~1e154 overflowed (nan).
Truth: numpy's dense ``eigh`` of the scaled matrix."""
import math

import numpy as np
import pytest
import torch

from catapult.curvature.krylov import product_exponent, scaled_back
from catapult.curvature.lanczos import lanczos_top_eigenpair
from catapult.curvature.lean import lean_top_eigenpair

SOLVERS = [lanczos_top_eigenpair, lean_top_eigenpair]


def matrix_and_start():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    return B + B.T, torch.randn(12, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160])
def test_scaled_operator_matches_dense_eigh(solver, scale):
    A0, v0 = matrix_and_start()
    A = A0 * scale
    values, vectors = np.linalg.eigh(A.numpy())
    est = solver(lambda v: A @ v, v0.clone(), tol=1e-8, max_iter=100)
    assert est.converged
    assert abs(est.value / values[-1] - 1) <= 1e-12
    assert est.error_bound <= 1e-8
    assert abs(float(est.vector @ torch.as_tensor(vectors[:, -1]))) == pytest.approx(1.0, abs=1e-10)
    # the products spent are those of the unscaled problem
    ordinary = solver(lambda v: A0 @ v, v0.clone(), tol=1e-8, max_iter=100)
    assert est.matvecs == ordinary.matvecs


@pytest.mark.parametrize("solver, products", [(lanczos_top_eigenpair, 12), (lean_top_eigenpair, 24)])
def test_ordinary_product_counts_unchanged(solver, products):
    # the counts the solvers spent on this operator before the scaling (no work added in range)
    A0, v0 = matrix_and_start()
    est = solver(lambda v: A0 @ v, v0.clone(), tol=1e-8, max_iter=100)
    assert est.matvecs == products and est.converged
    assert est.value == pytest.approx(float(np.linalg.eigh(A0.numpy())[0][-1]), rel=1e-13, abs=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_power_of_two_scaling_is_exact(solver):
    # 2**-700 A: the same iteration, every number exactly 2**-700 times (the vector the same)
    A0, v0 = matrix_and_start()
    A = A0 * 2.0 ** -700
    ordinary = solver(lambda v: A0 @ v, v0.clone(), tol=1e-8, max_iter=100)
    tiny = solver(lambda v: A @ v, v0.clone(), tol=1e-8, max_iter=100)
    assert tiny.value == ordinary.value * 2.0 ** -700
    assert torch.equal(tiny.vector, ordinary.vector) and tiny.matvecs == ordinary.matvecs


@pytest.mark.parametrize("solver", SOLVERS)
def test_identity_reduce_takes_the_same_scale(solver):
    # the sharded path: the exponent from the ranks' largest entries, summed (one rank here)
    A0, v0 = matrix_and_start()
    A = A0 * 1e-200
    est = solver(lambda v: A @ v, v0.clone(), tol=1e-8, max_iter=100, reduce=lambda t: t)
    assert est.converged and abs(est.value / float(np.linalg.eigh(A.numpy())[0][-1]) - 1) <= 1e-12


def test_product_exponent_and_scaled_back():
    w = torch.tensor([1e-200, -3e-200], dtype=torch.float64)
    e = product_exponent(w)
    assert 0.5 <= float((w * 2.0 ** -e).abs().max()) < 1.0
    assert product_exponent(torch.tensor([float("nan"), 1e-200], dtype=torch.float64)) == 0
    assert product_exponent(torch.zeros(0)) == 0
    assert scaled_back(3.0, -1100) == 0.0 and scaled_back(3.0, 1100) == math.inf


@pytest.mark.parametrize("exponent", [531, -664])
def test_sharpness_of_a_scaled_loss_is_the_scaled_sharpness(exponent):
    # a loss times 2**k: every product exactly 2**k times (the same iteration); the coarse
    # start's difference check overflowed at 2**531 (nan: level skipped, 15 products for 10)
    from catapult.curvature.sharpness import sharpness
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    c = 2.0 ** exponent
    for memory in ("fast", "lean"):
        plain = sharpness(model, torch.nn.MSELoss(), (x, y), tol=1e-8, memory=memory)
        scaled = sharpness(model, lambda out, t: c * torch.nn.functional.mse_loss(out, t), (x, y), tol=1e-8,
                           memory=memory)
        assert scaled.converged and scaled.matvecs == plain.matvecs
        assert scaled.value == pytest.approx(c * plain.value, rel=1e-12, abs=0)


def test_batched_members_of_different_scales():
    # each member its own 2**-e (kept through the compaction after two members stop at 3 products)
    from catapult.curvature.lanczos import batched_lanczos
    A0, v0 = matrix_and_start()
    scales = [1e-200, 1.0, 1e160, 1e-160]
    A = torch.stack([A0 * c for c in scales])
    ests = batched_lanczos(lambda active, V: torch.einsum("kij,kj->ki", A[torch.as_tensor(active)], V),
                           v0.expand(4, -1).clone(), tol=[1e-8] * 4, max_iter=[3, 3, 100, 100])
    top = float(np.linalg.eigh(A0.numpy())[0][-1])
    for est, c in zip(ests[2:], scales[2:]):
        assert est.converged and est.matvecs == 12
        assert abs(est.value / float(np.linalg.eigh((A0 * c).numpy())[0][-1]) - 1) <= 1e-12
    # the stopped members: not converged, each 2**e times what its own scaled solve saw
    assert not ests[0].converged and ests[0].value / 1e-200 == pytest.approx(ests[1].value, rel=1e-12)
    assert ests[1].value < top


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160])
def test_top_k_of_a_scaled_operator(scale):
    # before: 1e-200 41% off, 1e-160 2.4e-10 off (tol 1e-8), both converged; 1e160 nan
    from catapult.curvature.top_k import lanczos_top_k
    A0, v0 = matrix_and_start()
    A = A0 * scale
    truth = np.linalg.eigh(A.numpy())[0][::-1][:3]
    est = lanczos_top_k(lambda v: A @ v, v0.clone(), 3, tol=1e-8)
    ordinary = lanczos_top_k(lambda v: A0 @ v, v0.clone(), 3, tol=1e-8)
    assert est.converged and est.matvecs == ordinary.matvecs == 12
    assert np.abs(np.array(est.values) / truth - 1).max() <= 1e-12
    assert est.scale == pytest.approx(ordinary.scale * scale, rel=1e-12, abs=0)


def _tanh_mse():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    return model, (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))


@pytest.mark.parametrize("exponent", [531, -664])
@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_difference_certificate_of_a_scaled_loss(exponent, memory):
    # finite-difference products of 2**k x MSE are 2**k times the plain ones (the same steps): the
    # certificate's bound is relative, so it is the plain one. Before: at 2**531 the gradient's norm
    # overflowed (rounding floor inf: error_bound inf, converged=False, one product more); at 2**-664
    # every norm underflowed (error_bound 0.0, a claim of exactness)
    from catapult.curvature.sharpness import sharpness
    model, batch = _tanh_mse()
    c = 2.0 ** exponent
    plain = sharpness(model, torch.nn.MSELoss(), batch, tol=1e-6, memory=memory, hvp="finite_difference")
    scaled = sharpness(model, lambda out, t: c * torch.nn.functional.mse_loss(out, t), batch, tol=1e-6,
                       memory=memory, hvp="finite_difference")
    assert scaled.value == pytest.approx(c * plain.value, rel=1e-12, abs=0)
    assert 0 < scaled.error_bound < math.inf
    assert scaled.error_bound == pytest.approx(plain.error_bound, rel=1e-6)
    assert scaled.residual == pytest.approx(plain.residual, rel=1e-6)
    assert scaled.converged == plain.converged and scaled.matvecs == plain.matvecs


@pytest.mark.parametrize("memory, value, bound, products",
                         [("fast", "0x1.7ecc2b29677f4p+1", 6.138369720269123e-07, 9),
                          ("lean", "0x1.7ecc2b296e74bp+1", 6.138369719664993e-07, 16)])
def test_difference_certificate_ordinary_scale_unchanged(memory, value, bound, products):
    # pinned from before the scale-safe norms on torch 2.13 (the same arithmetic in range). torch
    # 2.2.2 gives the same loss and gradient bits but its reductions round the certificate
    # differently: value 1 ulp off (lean), bound 2e-11 - 4e-11 relative; so within 2 ulps and 1e-10
    from catapult.curvature.sharpness import sharpness
    model, batch = _tanh_mse()
    est = sharpness(model, torch.nn.MSELoss(), batch, tol=1e-6, memory=memory, hvp="finite_difference")
    pinned = float.fromhex(value)
    assert abs(est.value - pinned) <= 2 * math.ulp(pinned)
    assert est.error_bound == pytest.approx(bound, rel=1e-10, abs=0)
    assert est.converged and est.matvecs == products


@pytest.mark.parametrize("dtype, exponent", [(torch.float32, 100), (torch.float32, -100),
                                             (torch.float64, 531), (torch.float64, -664)])
def test_kink_check_of_a_scaled_loss(dtype, exponent):
    # a ReLU MLP's products cross kinks: float32's steps are shrunk 3 times over 20 products. Every
    # gradient of 2**k x the loss is 2**k times, so the same gaps and retries. Before, the gaps' norms overflowed
    # (float32 2**100: nan, accepted) or underflowed (0 and 0: gap 0): no step shrunk, the kinks not seen
    from catapult.curvature import HessianOperator
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dtype)
    x, y = torch.randn(64, 3, dtype=dtype), torch.randn(64, 1, dtype=dtype)
    found = []
    for c in (1.0, 2.0 ** exponent):
        op = HessianOperator(model, lambda out, t, c=c: c * torch.nn.functional.mse_loss(out, t), (x, y),
                             hvp="finite_difference")
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            op(torch.randn(op.numel, generator=g, dtype=dtype))
        found.append((op.shrunk_steps, op.difference_gap))
    # (float64's smaller step crosses no kink here: its gaps, not its retries, are compared)
    assert found[0][1] > 0 and found[1] == found[0] and (found[0][0] > 0 or dtype == torch.float64)


@pytest.mark.parametrize("exponent", [-600, 600])
def test_start_vector_of_extreme_norm(exponent):
    # only v0's direction counts: 2**k v0 gives the same solve. Before, at 2**-600 (norm < ~1e-154: its
    # squares underflow) lanczos and lean refused it as "v0 must be finite and non-zero" and top_k's basis
    # was inf; at 2**600 all three divided by an infinite norm (a zero start)
    from catapult.curvature.top_k import lanczos_top_k
    A0, v0 = matrix_and_start()
    for solver in SOLVERS:
        plain = solver(lambda v: A0 @ v, v0.clone(), tol=1e-8, max_iter=100)
        scaled = solver(lambda v: A0 @ v, v0 * 2.0 ** exponent, tol=1e-8, max_iter=100)
        assert scaled.value == plain.value and scaled.matvecs == plain.matvecs and scaled.converged
    plain = lanczos_top_k(lambda v: A0 @ v, v0.clone(), 3, tol=1e-8)
    scaled = lanczos_top_k(lambda v: A0 @ v, v0 * 2.0 ** exponent, 3, tol=1e-8)
    assert scaled.values == plain.values and scaled.matvecs == plain.matvecs and scaled.converged


@pytest.mark.parametrize("exponent", [-80, 80])
def test_float32_operator_of_extreme_scale(exponent):
    # float32's squares overflow from 2**64 and underflow below 2**-63: product_exponent's float64 window
    # (2**+-100) left 2**-80 A at -1.73x the top, converged after 1 product, and 2**80 A nan
    from catapult.curvature.top_k import lanczos_top_k
    A0, v0 = matrix_and_start()
    A = (A0 * 2.0 ** exponent).float()
    top = float(np.linalg.eigh(A.double().numpy())[0][-1])
    for solver in SOLVERS:
        est = solver(lambda v: A @ v, v0.float(), tol=1e-4, max_iter=100)
        assert est.converged and abs(est.value / top - 1) <= 1e-5
    eig = lanczos_top_k(lambda v: A @ v, v0.float(), 2, tol=1e-4)
    assert eig.converged and abs(eig.values[0] / top - 1) <= 1e-5
