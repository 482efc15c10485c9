"""Models with shared weights: one submodule reachable by two paths (``self.c = self.a``) and one
Parameter used by two modules. Every public call must leave the model holding its own Parameter
and buffer objects (torch's ``functional_call`` put detached copies in a shared submodule's
slots, so the optimizer no longer held the model's weights), and the answers must be the dense
float64 Hessian's and Gauss-Newton matrix's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import catapult
from dense_curvature import dense_ggn, dense_hessian


class SharedBlock(nn.Module):
    """A Linear and a BatchNorm each applied twice, by two paths (``c`` is ``a``, ``bn2`` is ``bn``)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)
        self.c, self.bn2 = self.a, self.bn

    def forward(self, x):
        return self.b(torch.tanh(self.bn2(self.c(torch.tanh(self.bn(self.a(x)))))))


class SharedWeight(nn.Module):
    """One Parameter under two names: ``w2`` is ``a.weight``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.w2 = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(F.linear(torch.tanh(self.a(x)), self.w2)))


def _problem(cls):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = cls().double()
    return model, (torch.randn(12, 4, generator=g, dtype=torch.float64),
                   torch.randint(0, 3, (12,), generator=g))


CALLS = {
    "sharpness": lambda m, b, o: catapult.sharpness(m, F.cross_entropy, b, max_iter=4),
    "finite_difference": lambda m, b, o: catapult.sharpness(m, F.cross_entropy, b, max_iter=4,
                                                            hvp="finite_difference"),
    "forward_over_reverse": lambda m, b, o: catapult.sharpness(m, F.cross_entropy, b, max_iter=4,
                                                               hvp="forward_over_reverse"),
    "lean": lambda m, b, o: catapult.sharpness(m, F.cross_entropy, b, max_iter=4, memory="lean"),
    "ggn": lambda m, b, o: catapult.sharpness(m, F.cross_entropy, b, max_iter=4, curvature="ggn"),
    "preconditioned": lambda m, b, o: catapult.preconditioned_sharpness(m, F.cross_entropy, b, o,
                                                                        max_iter=4),
    "top_eigenpairs": lambda m, b, o: catapult.top_eigenpairs(m, F.cross_entropy, b, k=2, max_iter=6),
    "hessian_trace": lambda m, b, o: catapult.hessian_trace(m, F.cross_entropy, b, matvecs=6),
    "spectral_density": lambda m, b, o: catapult.spectral_density(m, F.cross_entropy, b, runs=1, steps=4),
    "critical_lr": lambda m, b, o: catapult.critical_lr(m, F.cross_entropy, b, o),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_submodule_at_two_paths_keeps_its_own_parameters_and_buffers(call):
    model, batch = _problem(SharedBlock)
    model.eval()  # memory="lean" cuts the batch, which a train-mode BatchNorm refuses
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    held = [*model.parameters(), *model.buffers()]
    CALLS[call](model, batch, optimizer)
    now = [*model.parameters(), *model.buffers()]
    assert len(now) == len(held) and all(a is b for a, b in zip(now, held))
    assert model.c.weight is optimizer.param_groups[0]["params"][0]


@pytest.mark.parametrize("cls", [SharedBlock, SharedWeight])
def test_shared_weights_match_the_dense_matrices_call_after_call(cls):
    model, batch = _problem(cls)
    H = dense_hessian(model, F.cross_entropy, batch)
    top_h = np.linalg.eigvalsh(H.numpy())[::-1]
    top_g = np.linalg.eigvalsh(dense_ggn(model, F.cross_entropy, batch))[-1]
    for _ in range(2):  # the second round sees the model the first left
        est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8, max_iter=200)
        ggn = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8, max_iter=200, curvature="ggn")
        eig = catapult.top_eigenpairs(model, F.cross_entropy, batch, k=3, tol=1e-8)
        trace = catapult.hessian_trace(model, F.cross_entropy, batch, matvecs=10_000)
        assert est.value == pytest.approx(top_h[0], rel=1e-8)
        assert ggn.value == pytest.approx(top_g, rel=1e-8)
        assert eig.values == pytest.approx(top_h[:3].tolist(), rel=1e-6)
        assert trace == pytest.approx(float(H.trace()), rel=1e-10)
