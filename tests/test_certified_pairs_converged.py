"""certified_pairs' ``converged`` (mutation pass 13): every pair within ``tol``, not any one. Truth:
diag(4, 1) whose products carry an error 1e-3 along the other coordinate at every step (so the
step check sees none): each pair's bound is its residual, 1e-3 relative to 4 and to 1."""
from __future__ import annotations

import torch

from catapult.curvature.certify import certified_pairs
from catapult.curvature.top_k import Eigenpairs


class _Differences:
    mode, step_factor = "finite_difference", 1.0

    def __call__(self, v):
        return torch.tensor([4.0, 1.0], dtype=torch.float64) * v + 1e-3 * v.flip(0)


def test_one_pair_past_tol_leaves_the_pairs_unconverged():
    eig = Eigenpairs([4.0, 1.0], torch.eye(2, dtype=torch.float64), 5, True, [0.0, 0.0])
    out = certified_pairs(_Differences(), eig, tol=5e-4)
    assert [round(r, 8) for r in out.residuals] == [0.00025, 0.001] and out.converged is False
    assert certified_pairs(_Differences(), eig, tol=2e-3).converged is True
