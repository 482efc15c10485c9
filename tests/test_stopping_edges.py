"""``curvature.stopping``'s edges (mutation pass 14, a module no earlier pass mutated): the
invariance level is relative to the spectrum's largest magnitude seen, the most negative Ritz value's
too (an indefinite Hessian), and the error bound of a one-vector basis is its residual. Truth: the
docstrings' formulas, evaluated here by hand."""
from __future__ import annotations

import math

import numpy as np

from catapult.curvature.stopping import eigenvalue_error_bound, krylov_invariant


def test_the_invariance_level_scales_with_a_negative_end_larger_than_the_top():
    eps, ritz = 1e-16, np.array([-10.0, 1.0])    # |theta_min| = 10 > theta_max = 1
    level = 10 * eps * 10.0 * math.sqrt(2)       # 10 eps max(|theta_min|, |theta_max|) sqrt(m) = 1.41e-14
    assert krylov_invariant(0.5 * level, ritz, 100, eps)          # 7e-15: noise at this scale
    assert not krylov_invariant(2.0 * level, ritz, 100, eps)


def test_a_one_vector_basis_is_bounded_by_its_residual():
    # one Ritz pair: no other to estimate the gap from, so |beta s_1| itself
    assert eigenvalue_error_bound(0.25, np.array([4.0]), np.array([[1.0]])) == 0.25
