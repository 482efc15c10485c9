"""Mutation pass 17 (krylov.product_exponent's window and bounds): the window of no scaling is
half-open, ``[2**-w, 2**w)`` (w = 100 for float64, 21 for float32); a float64 operator whose
entries are subnormal (2**-1040: a first product's largest entry below 2**-1022) is solved on
``2**1000 A`` (the exponent bounded by +-1000: ``2**1073`` overflows) and scaled back. Truth:
NumPy's eigh of the same matrix."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catapult.curvature.krylov import product_exponent
from catapult.curvature.lanczos import lanczos_top_eigenpair
from catapult.curvature.lean import lean_top_eigenpair
from test_operator_scale import matrix_and_start

SOLVERS = (lanczos_top_eigenpair, lean_top_eigenpair)


@pytest.mark.parametrize("dtype, window", [(torch.float64, 100), (torch.float32, 21)])
def test_the_window_of_no_scaling_is_half_open(dtype, window):
    def e(x):
        return product_exponent(torch.tensor([x, -x / 3], dtype=dtype))
    assert e(2.0 ** window) == window + 1 and e(2.0 ** -window) == 0
    assert e(2.0 ** window * (1 - 2.0 ** -20)) == 0 and e(2.0 ** -window * (1 - 2.0 ** -20)) == -window


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_subnormal_float64_operator(solver):
    A0, v0 = matrix_and_start()
    A = torch.from_numpy(np.ldexp(A0.numpy(), -1040))   # (torch 2.2.2's ldexp of an int exponent tensor: 0)
    assert 0 < float(A.abs().max()) < np.finfo(np.float64).tiny
    top = math.ldexp(float(np.linalg.eigh(np.ldexp(A.numpy(), 1040))[0][-1]), -1040)
    est = solver(lambda v: A @ v, v0.clone(), tol=1e-8, max_iter=100)
    assert est.converged and abs(est.value / top - 1) <= 1e-6


def test_scaled_norm_where_squares_are_subnormal_overflow_or_the_scale_leaves_float32():
    """``scaled_norm`` takes ``vector_norm`` as is only where the norm lies in ``tiny**0.25 ..
    max**0.25`` (2**19 entries ~2**-520: the norm ~2**-511 is a normal float64, their squares are
    subnormal, 1.6e-14 lost; the sum's order, set by the thread count, moves the last bits: 2e-15), scales the largest entry into ``[0.5, 1)`` (1024 float32 entries of
    2**70: at 2**59 their squares' sum still overflows float32), and bounds the exponent by the
    dtype's (a subnormal float32 vector scaled by 2**139, inf in float32)."""
    from catapult.curvature.krylov import scaled_norm

    g = np.random.default_rng(0)
    small = np.ldexp(g.uniform(0.5, 1.0, 2 ** 19), -520)
    truth = math.ldexp(float(np.linalg.norm(np.ldexp(small, 520))), -520)
    assert scaled_norm(torch.tensor(small)) == pytest.approx(truth, rel=2e-15, abs=0)
    assert scaled_norm(torch.full((1024,), 2.0 ** 70, dtype=torch.float32)) == 2.0 ** 75
    tiny = torch.tensor([2.0 ** -140, 2.0 ** -141], dtype=torch.float32)
    assert scaled_norm(tiny) == pytest.approx(2.0 ** -140 * math.sqrt(1.25), rel=1e-6, abs=0)
