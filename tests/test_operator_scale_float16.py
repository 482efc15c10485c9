"""float16 operators: every solver (lanczos, lean, top-k, batched) on a 12x12 operator in float16 at
scales 2**-20 .. 2**12, and on a long float16 vector. float16's window (krylov.product_exponent) is
2**+-2; its squares overflow from 256. Before: the scale 2**-e of products below 2**-15 was no
float16 number (2**18: lean raised "value cannot be converted to type c10::Half without overflow",
batched_lanczos returned nan), and the norm of 300000 entries of 1 was inf (its chunked dot summed
float16 squares: the solvers refused a start of ones as "not finite"). Truth: numpy's eigh of the
float16 matrix (in float64); float16 products round at 1e-3, subnormal ones (below 2**-14) far more."""
import numpy as np
import pytest
import torch

from catapult.curvature.krylov import product_exponent, vector_norm
from catapult.curvature.lanczos import batched_lanczos, lanczos_top_eigenpair
from catapult.curvature.lean import lean_top_eigenpair
from catapult.curvature.top_k import lanczos_top_k


def float16_products():
    try:   # (a torch without float16 matrix products on the CPU: nothing to check)
        return bool(torch.isfinite(torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, dtype=torch.float16)).all())
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not float16_products(), reason="no float16 matrix products on this CPU build")


def solve_all(matvec, v0, tol):
    """(name, value, converged) of every solver on ``matvec`` from ``v0``."""
    out = []
    for solver in (lanczos_top_eigenpair, lean_top_eigenpair):
        est = solver(matvec, v0.clone(), tol=tol, max_iter=100)
        out.append((solver.__name__, est.value, est.converged))
    eig = lanczos_top_k(matvec, v0.clone(), 2, tol=tol, max_iter=100)
    out.append(("lanczos_top_k", eig.values[0], eig.converged))
    est = batched_lanczos(lambda active, W: torch.stack([matvec(w) for w in W]), v0.clone()[None], tol=[tol],
                          max_iter=[100])[0]
    out.append(("batched_lanczos", est.value, est.converged))
    return out


def test_every_solver_on_a_float16_operator():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    v0 = torch.randn(12, generator=g, dtype=torch.float64).half()
    # 2**-20: every product subnormal (a few bits), near but not to 1e-3; before, lean raised, batched nan
    for exponent, rel in ((-20, 2e-2), (-10, 5e-3), (0, 5e-3), (12, 5e-3)):
        A = ((B + B.T) * 2.0 ** exponent).half()
        top = float(np.linalg.eigh(A.double().numpy())[0][-1])
        for name, value, converged in solve_all(lambda v: A @ v, v0, tol=3e-2):
            assert abs(value / top - 1) <= rel, (exponent, name, value, top)


def test_a_long_float16_start_of_ones():
    n = 300000
    d = 0.9 + 0.1 * torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d[:3] = torch.tensor([2.0, 1.5, 1.2], dtype=torch.float64)
    D, ones = d.half(), torch.ones(n, dtype=torch.float16)
    assert float(vector_norm(ones)) == pytest.approx(n ** 0.5, rel=1e-3)
    for name, value, converged in solve_all(lambda v: D * v, ones, tol=1e-2):
        assert converged and value == pytest.approx(2.0, rel=1e-2), name


def test_float16_window_and_scales():
    # products with their top in [2**-2, 2**2) are used as they are; outside, 2**-e is a normal float16
    for top, e in ((0.25, 0), (3.9, 0), (4.0, 3), (0.2, -2), (2.0 ** -20, -14), (60000.0, 14)):
        assert product_exponent(torch.tensor([top, -top / 3], dtype=torch.float16)) == e, top
        assert float(torch.tensor(2.0 ** -e, dtype=torch.float16)) == 2.0 ** -e


@pytest.mark.parametrize("dtype, rel", [(torch.float16, 1e-3), (torch.bfloat16, 5e-3)])
def test_the_quadrature_of_a_half_precision_operator(dtype, rel):
    # its "invariant" test was beta <= 1e3 eps x the products' size: 0.98 for float16 (7.8 for bfloat16),
    # so every run ended after one step, a single node at the Rayleigh quotient. (The public spectrum
    # functions measure a half-precision model in float32; lanczos_quadrature takes any vector.)
    from catapult.curvature.spectrum import lanczos_quadrature
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    v = (torch.randint(0, 2, (12,), generator=g) * 2 - 1).double()
    A = ((B + B.T) * 2.0 ** -10).to(dtype)
    dense = A.double().numpy()
    values = np.linalg.eigh(dense)[0]
    radius = np.abs(values).max()
    nodes, weights = lanczos_quadrature(lambda x: A @ x, v.to(dtype), 12)
    assert len(nodes) == 12 and np.abs(np.sort(nodes) - values).max() <= 2 * rel * radius
    u = v.numpy() / np.linalg.norm(v.numpy())
    for p in range(4):
        moment = u @ np.linalg.matrix_power(dense / radius, p) @ u
        assert (weights * (nodes / radius) ** p).sum() == pytest.approx(moment, abs=rel), p


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hutch_plus_plus_of_a_half_precision_operator(dtype):
    # torch has no float16 / bfloat16 QR: Q = orth(A S) raised NotImplementedError ('"geqrf_cpu" not
    # implemented for 'Half''); now a float32 QR. Truth: the same probes in float32, numpy's trace
    from catapult.curvature.spectrum import hutch_plus_plus
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = (B + B.T).to(dtype)
    assert hutch_plus_plus(lambda x: A @ x, 12, 12, dtype=dtype) == pytest.approx(np.trace(A.double().numpy()),
                                                                                  rel=1e-3)
    single = hutch_plus_plus(lambda x: A.float() @ x, 12, 9, dtype=torch.float32)
    assert hutch_plus_plus(lambda x: A @ x, 12, 9, dtype=dtype) == pytest.approx(single, rel=3e-2)


def test_a_float16_norm_is_a_float16_number_over_the_ranks():
    # (mutation pass 18, KS17, KS18) the float32 sums of squares come back as a float16 0-d tensor (the
    # vector's dtype, as torch's own norms), and with reduce they are summed over the ranks first: two
    # ranks holding equal parts (an all-reduce of a sum is 2 t) give sqrt(2) times one part's norm
    x = torch.full((3 * 2**16 + 5,), 0.5, dtype=torch.float16)     # squares sum to 49153.25: float16 sums overflow
    truth = float(np.sqrt(np.sum(np.full(x.numel(), 0.25))))
    for reduce, factor in ((None, 1.0), (lambda t: 2 * t, np.sqrt(2.0))):
        norm = vector_norm(x, reduce)
        assert norm.dtype == torch.float16 and norm.dim() == 0
        assert float(norm) == float(torch.tensor(factor * truth, dtype=torch.float16))
