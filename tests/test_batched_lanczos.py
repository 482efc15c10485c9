"""Batched Lanczos (:func:`catapult.sweep.ensemble.batched_lanczos`), the ensemble executor's
sharpness solver: each member equals single-member Lanczos and the dense truth, a non-finite
member leaves the others alone, and a member's bits depend neither on its row in the batch nor
on what else shares it (what makes a resumed ensemble sweep store the same bits)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catapult.curvature import lanczos_top_eigenpair
from catapult.sweep.ensemble import batched_lanczos
from dense_curvature import long_float32_diagonal


@pytest.mark.parametrize("n, max_basis", [(12, 20), (60, 8)])
def test_batched_lanczos_equals_single_lanczos_and_dense_truth(n, max_basis):
    rng = np.random.default_rng(0)
    mats, v0 = [], []
    for k in range(4):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        eig = np.sort(rng.standard_normal(n))
        eig[-1] = 3.0 + k  # a gap, so the top pair is well defined
        mats.append(torch.tensor((q * eig) @ q.T, dtype=torch.float64))
        v0.append(torch.tensor(rng.standard_normal(n)))
    A = torch.stack(mats)
    V0 = torch.stack(v0)
    tol = [1e-8, 1e-4, 1e-6, 1e-10]
    max_iter = [200, 200, 7, 200]

    def matvec(active, V):
        return torch.bmm(A[torch.as_tensor(active)], V[:, :, None]).squeeze(2)

    batched = batched_lanczos(matvec, V0, tol=tol, max_iter=max_iter, max_basis=max_basis)
    for k in range(4):
        single = lanczos_top_eigenpair(lambda v: A[k] @ v, V0[k], tol=tol[k], max_iter=max_iter[k],
                                       max_basis=max_basis)
        assert batched[k].matvecs == single.matvecs
        assert batched[k].converged == single.converged
        assert batched[k].value == pytest.approx(single.value, rel=1e-10)
        assert torch.allclose(batched[k].vector.abs(), single.vector.abs(), atol=1e-8)
        if single.converged:
            assert batched[k].value == pytest.approx(np.linalg.eigvalsh(A[k].numpy())[-1], rel=1e-6)
    assert not batched[2].converged and batched[2].matvecs == 7


def test_a_members_batched_lanczos_bits_do_not_depend_on_its_row_in_the_chunk():
    # MKL's dot and gemv round by the data's alignment (AVX-512): n = 1210 float32 puts row 3 of
    # a chunk at an address 8 bytes off a 64-byte line, and a resumed ensemble sweep (the member
    # alone, at row 0) stored a sharpness 1e-8 off the uninterrupted sweep's
    gen = torch.Generator().manual_seed(0)
    n, m = 1210, 6
    factors = torch.randn(m, 40, n, generator=gen)
    v0 = torch.randn(m, n, generator=gen)

    def matvec(active, V):   # each member's own low-rank PSD operator F^T F, row by row
        return torch.stack([factors[k].T @ (factors[k] @ v) for k, v in zip(active, V)])

    together = batched_lanczos(matvec, v0, tol=[1e-6] * m, max_iter=[30] * m, max_basis=8)
    for k in (1, 3, 5):
        alone = batched_lanczos(lambda active, V: matvec([k], V), v0[k:k + 1], tol=[1e-6], max_iter=[30],
                                max_basis=8)[0]
        assert alone.value == together[k].value and alone.matvecs == together[k].matvecs
        assert torch.equal(alone.vector, together[k].vector)



def test_batched_lanczos_nonfinite_member_leaves_the_others_unchanged():
    # a member whose product turns nan at its 3rd matvec stops with value nan; the rows of the
    # stopped members ride along (uncompacted while more than half still iterate) without
    # changing the others' iterations
    rng = np.random.default_rng(1)
    n, m = 30, 7
    mats = []
    for k in range(m):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        eig = np.sort(rng.standard_normal(n))
        eig[-1] = 4.0 + k
        mats.append(torch.tensor((q * eig) @ q.T, dtype=torch.float64))
    A = torch.stack(mats)
    V0 = torch.tensor(rng.standard_normal((m, n)))
    tol = [1e-9, 1e-3, 1e-9, 1e-2, 1e-9, 1e-9, 1e-6]
    calls = {"n": 0}

    def matvec(active, V):
        calls["n"] += 1
        out = torch.bmm(A[torch.as_tensor(active)], V[:, :, None]).squeeze(2)
        if calls["n"] >= 3 and 0 in list(active):
            out[list(active).index(0)] = float("nan")
        return out

    batched = batched_lanczos(matvec, V0, tol=tol, max_iter=[200] * m, max_basis=10)
    assert math.isnan(batched[0].value) and not batched[0].converged and batched[0].matvecs == 3
    for k in range(1, m):
        single = lanczos_top_eigenpair(lambda v: A[k] @ v, V0[k], tol=tol[k], max_iter=200, max_basis=10)
        assert batched[k].matvecs == single.matvecs
        assert batched[k].value == pytest.approx(single.value, rel=1e-10)
        assert torch.allclose(batched[k].vector.abs(), single.vector.abs(), atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_lanczos_gives_a_member_the_same_bits_whatever_shares_its_batch(dtype):
    # the re-orthogonalisation ran as bmm over the batch, whose rounding depends on the batch
    # (a batch of 1 takes another kernel): an ensemble sweep's sharpness then changed with its
    # chunks and after a resume (2e-7 in float32)
    torch.manual_seed(0)
    n, m = 300, 6
    A = []
    for _ in range(m):
        X = torch.randn(n, 20, dtype=dtype)
        A.append(X @ X.T / 20 + torch.diag(torch.rand(n, dtype=dtype)))
    A = torch.stack(A)

    def matvec(members):
        return lambda active, V: torch.stack([A[members[int(a)]] @ V[i] for i, a in enumerate(active)])

    v0 = torch.randn(m, n, dtype=dtype)
    full = batched_lanczos(matvec(list(range(m))), v0, tol=[1e-3] * m, max_iter=[30] * m)
    for sub in ([0], [0, 1], [3, 1, 5]):
        part = batched_lanczos(matvec(sub), v0[sub], tol=[1e-3] * len(sub), max_iter=[30] * len(sub))
        for i, k in enumerate(sub):
            assert part[i].value == full[k].value and torch.equal(part[i].vector, full[k].vector)
            assert part[i].matvecs == full[k].matvecs


def test_a_float32_member_over_four_million_entries_is_accurate_to_rounding(single_thread):
    # one-pass float32 sums over the row: the start's norm 7.7e-5 off unit length put the value
    # 1.6e-4 off, and alpha and the Gram-Schmidt coefficients 3.2e-6 more, all with an
    # error_bound of 9.5e-7, converged; in chunks 4.6e-7, as the single solver
    d, v0 = long_float32_diagonal()
    (est,) = batched_lanczos(lambda active, V: V * d, v0[None], tol=[1e-6], max_iter=[100], max_basis=8)
    assert est.converged
    assert abs(est.value - 1.0) <= min(est.error_bound, 1e-6)
