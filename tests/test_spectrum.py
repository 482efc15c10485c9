"""Spectrum, coarse start, lean memory and finite-difference HVPs against dense float64 truth.

The truth is the dense Hessian (``torch.autograd.functional.hessian`` of the loss as a function
of the flat parameter vector) or the dense Gauss-Newton matrix ``J^T H_L J`` (Jacobian and
output Hessian by ``torch.autograd.functional``) of small MLPs, eigendecomposed by
``numpy.linalg.eigh``.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dense_curvature import dense_adam_preconditioned, dense_ggn, dense_hessian

import catapult
from catapult.curvature import HessianOperator, GaussNewtonOperator
from catapult.curvature.spectrum import hutch_plus_plus, lanczos_quadrature, lanczos_top_k


def small_problem(n=24, seed=0, out=3, width=6):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, out)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randn(n, out, dtype=torch.float64)
    return model, nn.MSELoss(), (x, y)


def test_top_eigenpairs_hessian_matches_dense():
    model, loss_fn, batch = small_problem()
    H = dense_hessian(model, loss_fn, batch).numpy()
    w, V = np.linalg.eigh(H)
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=4, tol=1e-10, max_basis=16)
    assert eig.converged
    np.testing.assert_allclose(eig.values, w[::-1][:4], rtol=1e-8, atol=1e-10)
    for i in range(4):  # eigenvectors up to sign
        overlap = abs(float(eig.vectors[i].numpy() @ V[:, -1 - i]))
        assert overlap == pytest.approx(1.0, abs=1e-6)


def test_top_eigenpairs_ggn_matches_dense_and_operator_products():
    model, loss_fn, batch = small_problem(seed=1)
    G = dense_ggn(model, loss_fn, batch)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    op = GaussNewtonOperator(model, loss_fn, batch)
    np.testing.assert_allclose(op(v).numpy(), G @ v.numpy(), rtol=1e-10, atol=1e-12)
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-10, curvature="ggn")
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(G)[::-1][:3], rtol=1e-8)


def test_top_eigenpairs_restarts_with_a_small_basis():
    # max_basis 8 for k=3 forces thick restarts; the answer must not change
    model, loss_fn, batch = small_problem(seed=2)
    truth = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[::-1][:3]
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-9, max_basis=8,
                                  max_iter=400)
    assert eig.converged and eig.matvecs > 8
    np.testing.assert_allclose(eig.values, truth, rtol=1e-7)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_top_eigenpairs_past_the_rank_converge_on_the_zero_eigenvalues(dtype, atol):
    # a linear model on 20 inputs of 100 features, 2 outputs: H = I_2 (x) [X 1]^T [X 1] / 20 has
    # rank 40 of 202 and every eigenvalue twice. k = 60 asks for 20 zeros: the Krylov space from
    # one start vector is invariant after ~22 products, so the solver must go on from fresh
    # directions (it used to run to max_iter on rounding noise) and judge the zeros by their
    # absolute residual (a relative one never falls under tol)
    torch.manual_seed(0)
    model = nn.Linear(100, 2).double()
    x, y = torch.randn(20, 100, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), (x, y)).numpy())[::-1]
    assert np.sum(truth > 1e-10) == 40
    eig = catapult.top_eigenpairs(model, nn.MSELoss(), (x, y), k=60, dtype=dtype)
    assert eig.converged and eig.matvecs <= 80
    np.testing.assert_allclose(eig.values, truth[:60], rtol=0, atol=atol * truth[0])
    assert max(eig.residuals) <= 1e-3
    V = eig.vectors.double()
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(60), atol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), n=st.integers(3, 40), double=st.booleans())
def test_top_k_on_rank_deficient_operators_with_repeated_eigenvalues(data, n, double):
    # spectra a Hessian can have: low rank, zeros, eigenvalues repeated (I (x) A structure), scales
    # from 1e-2 to 1e2; any k, tol and basis size. Every returned value must lie within its
    # promised residual of a true eigenvalue (or within the floor 100 eps |lambda|_max), the top
    # one must be lambda_max, and the vectors orthonormal
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    rank = data.draw(st.integers(1, n))
    distinct = rng.normal(size=rank) * 10.0 ** rng.uniform(-2, 2)
    values = np.concatenate([np.repeat(distinct, rng.integers(1, 4, size=rank)), np.zeros(n)])[:n]
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    dtype = torch.float64 if double else torch.float32
    A = torch.tensor((Q * values) @ Q.T, dtype=dtype)
    truth = np.sort(np.linalg.eigvalsh(A.double().numpy()))[::-1]
    k = data.draw(st.integers(1, n))
    tol = 10.0 ** data.draw(st.floats(-6, -2))
    block = data.draw(st.integers(1, min(k, 3)))   # a block on a low-rank operator lost orthogonality
    max_basis = data.draw(st.one_of(st.none(), st.integers(k + block + 1, 2 * k + 4 + block)))
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(rng.normal(size=n), dtype=dtype), k, tol=tol,
                        max_iter=20 * n, max_basis=max_basis, block_size=block)
    floor = 100 * torch.finfo(dtype).eps * abs(truth).max()
    assert eig.converged
    for value in eig.values:
        assert min(abs(truth - value)) <= 1.01 * max(tol * abs(value), floor) + 1e-12 * abs(truth).max()
    assert abs(eig.values[0] - truth[0]) <= 1.01 * max(tol * abs(truth[0]), floor) + 1e-12 * abs(truth).max()
    V = eig.vectors.double()
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(k), atol=1e-3)


@pytest.mark.parametrize("n, rank, block, seed, k", [(8, 2, 3, 0, 6), (8, 5, 2, 10, 6), (10, 4, 3, 1, 8),
                                                      (10, 5, 2, 10, 8), (12, 5, 2, 14, 10), (19, 5, 2, 1, 16)])
def test_a_block_on_a_low_rank_operator_keeps_its_basis_orthonormal(n, rank, block, seed, k):
    # k past the rank, a block of 2 or 3: two residuals of a block came out nearly parallel
    # (6e-13 left of 2.2), the second's remainder was normalised with the rounding it still had
    # along the basis (3e-4 off orthogonal), and the basis lost orthogonality: top values 8e-2 .. 1.5
    # off, "converged", or an IndexError once it held more vectors than R^n has
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.uniform(0.5, 5, rank), np.zeros(n - rank)])
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    A = torch.tensor((Q * values) @ Q.T)
    eig = lanczos_top_k(lambda v: A @ v, torch.as_tensor(rng.standard_normal(n)), k, tol=1e-3,
                        block_size=block, seed=seed)
    assert eig.converged
    np.testing.assert_allclose(eig.values, np.sort(values)[::-1][:k], rtol=0, atol=1e-3 * values.max())
    V = eig.vectors
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(k), atol=1e-10)
    residual = torch.linalg.vector_norm(V @ A - torch.tensor(eig.values, dtype=A.dtype)[:, None] * V, dim=1).numpy()
    # the reported residuals, relative to |theta| (or, for the zeros, to the floor / tol)
    scale = np.maximum(np.abs(eig.values), 100 * np.finfo(np.float64).eps * values.max() / 1e-3)
    assert np.all(residual <= np.array(eig.residuals) * scale + 1e-13)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), n=st.integers(4, 60), block=st.integers(1, 4))
def test_block_lanczos_finds_every_copy_of_eigenvalues_repeated_up_to_its_block_size(data, n, block):
    # one start vector sees one copy of each eigenvalue; a block of b sees up to b: with every
    # multiplicity <= b the top k values are exactly the dense ones, copies included, with or
    # without thick restarts (max_basis), and the vectors orthonormal eigenvectors
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    distinct = np.cumsum(rng.uniform(0.05, 1.0, size=n))[::-1] * rng.choice([-1.0, 1.0])
    values = np.repeat(distinct, rng.integers(1, block + 1, size=n))[:n]
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = torch.tensor((Q * values) @ Q.T)
    truth = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1]
    k = data.draw(st.integers(1, n))
    block = min(block, k)  # a block of k finds k copies: all the top k asks for
    max_basis = data.draw(st.one_of(st.none(), st.integers(k + block + 1, 2 * k + 4 * block)))
    eig = lanczos_top_k(lambda v: A @ v, torch.tensor(rng.normal(size=n)), k, tol=1e-8,
                        max_iter=100 * n, max_basis=max_basis, block_size=block,
                        seed=data.draw(st.integers(0, 100)))
    assert eig.converged
    np.testing.assert_allclose(eig.values, truth[:k], rtol=0, atol=1e-6 * abs(truth).max())
    V = eig.vectors
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(k), atol=1e-6)
    residual = torch.linalg.vector_norm(V @ A - torch.tensor(eig.values)[:, None] * V, dim=1)
    assert float(residual.max()) <= 1e-6 * abs(truth).max()


def test_top_eigenpairs_of_a_linear_model_with_three_outputs_under_mse():
    # H = (2 / (N d)) I_3 (x) [X 1]^T [X 1]: every eigenvalue three times, in closed form
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).double()
    x = torch.randn(40, 6, dtype=torch.float64) * torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    batch = (x, torch.randn(40, 3, dtype=torch.float64))
    X1 = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    gram = np.sort(np.linalg.eigvalsh((X1.T @ X1).numpy() * 2 / (40 * 3)))[::-1]
    truth = np.repeat(gram, 3)
    eig = catapult.top_eigenpairs(model, torch.nn.MSELoss(), batch, k=7, tol=1e-8, block_size=3)
    np.testing.assert_allclose(eig.values, truth[:7], rtol=1e-7)
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match=rf"^top_eigenpairs block_size must be an integer in \[1, 2\]; got {bad!r}$"):
            catapult.top_eigenpairs(model, torch.nn.MSELoss(), batch, k=2, block_size=bad)
    # k is named for itself (not through the block it bounds), up to the 21 parameters; a bool
    # is not a count
    for bad in (0, -1, 22, 2.5, True):
        with pytest.raises(ValueError, match=rf"^top_eigenpairs k must be an integer in \[1, 21\]; got {bad!r}$"):
            catapult.top_eigenpairs(model, torch.nn.MSELoss(), batch, k=bad)


def test_preconditioned_top_eigenpairs_and_trace_match_dense_adam():
    model, loss_fn, batch = small_problem(seed=3, width=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    loss_fn(model(batch[0]), batch[1]).backward()
    opt.step()
    opt.zero_grad()
    # the next step's P from the formula (App. of the paper), independently of the library
    A = dense_adam_preconditioned(model, loss_fn, batch, opt)
    truth = np.linalg.eigvalsh(A)[::-1]
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=2, tol=1e-10, optimizer=opt)
    np.testing.assert_allclose(eig.values, truth[:2], rtol=1e-7)
    n = A.shape[0]
    trace = catapult.hessian_trace(model, loss_fn, batch, matvecs=3 * n, optimizer=opt)
    assert trace == pytest.approx(float(np.trace(A)), rel=1e-8)  # Q spans R^n: exact


def test_sgd_group_lr_top_eigenpairs_and_trace_are_of_m_half_h_m_half():
    # SGD with per-group lrs (a muP table's form): with scale_by_group_lr the operator is
    # M^1/2 H M^1/2, M = diag(lr_i / lr_0), the lr_scaled sharpness's; without it, H itself
    model, loss_fn, batch = small_problem(seed=5, width=3)
    first, second = model[0], model[2]
    opt = torch.optim.SGD([{"params": [first.weight], "lr": 0.1}, {"params": [first.bias], "lr": 0.4},
                           {"params": [second.weight, second.bias], "lr": 0.025}])
    m = np.concatenate([np.full(first.weight.numel(), 1.0), np.full(first.bias.numel(), 4.0),
                        np.full(second.weight.numel() + second.bias.numel(), 0.25)])
    H = dense_hessian(model, loss_fn, batch).numpy()
    A = np.sqrt(m)[:, None] * H * np.sqrt(m)[None, :]
    truth = np.linalg.eigvalsh(A)[::-1]
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-10, optimizer=opt,
                                  scale_by_group_lr=True)
    np.testing.assert_allclose(eig.values, truth[:3], rtol=1e-7)
    assert abs(truth[0] - np.linalg.eigvalsh(H)[-1]) > 1e-2 * truth[0]  # not H's spectrum
    n = H.shape[0]
    trace = catapult.hessian_trace(model, loss_fn, batch, matvecs=3 * n, optimizer=opt,
                                   scale_by_group_lr=True)
    assert trace == pytest.approx(float(np.trace(A)), rel=1e-8)  # Q spans R^n: exact
    assert float(np.trace(A)) == pytest.approx(float(m @ np.diag(H)), rel=1e-12)
    raw = catapult.top_eigenpairs(model, loss_fn, batch, k=2, tol=1e-10, optimizer=opt)
    np.testing.assert_allclose(raw.values, np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-7)


def test_hutch_plus_plus_is_exact_on_the_span_and_unbiased_enough():
    model, loss_fn, batch = small_problem(seed=4, width=3)
    H = dense_hessian(model, loss_fn, batch).numpy()
    n = H.shape[0]
    # matvecs >= n: the exact trace from the n unit-vector products (not 3n products, nor an
    # n x matvecs sketch: 10**9 once tried to allocate 154 GB)
    calls = []
    op = HessianOperator(model, loss_fn, batch)
    exact = hutch_plus_plus(lambda v: calls.append(1) or op(v), n, 10**9)
    assert exact == pytest.approx(float(np.trace(H)), rel=1e-12) and len(calls) == n
    assert catapult.hessian_trace(model, loss_fn, batch, matvecs=n) == pytest.approx(
        float(np.trace(H)), rel=1e-12)
    # Hutch++ is exact when its sketch (matvecs // 3 = 5 vectors) spans A's range: rank 4 here
    w, V = np.linalg.eigh(H)
    low = torch.as_tensor((V[:, -4:] * w[-4:]) @ V[:, -4:].T)
    assert 15 < n
    assert hutch_plus_plus(lambda v: low @ v, n, 15) == pytest.approx(float(w[-4:].sum()), rel=1e-9)
    A = torch.as_tensor(H)
    # few products: the mean over seeds is close to the truth (a biased estimator would not be)
    estimates = [hutch_plus_plus(lambda v: A @ v, n, 12, seed=s) for s in range(40)]
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - np.trace(H)) < 4 * spread + 1e-9


@pytest.mark.parametrize("call, message", [
    (lambda m, l, b: catapult.spectral_density(m, l, b, sigma=-1.0), "sigma must be"),
    (lambda m, l, b: catapult.spectral_density(m, l, b, sigma=float("nan")), "sigma must be"),
    (lambda m, l, b: catapult.spectral_density(m, l, b, grid_points=1), "^spectral_density grid_points must be an integer in \\[2, 1000000\\]; got 1$"),
    (lambda m, l, b: catapult.spectral_density(m, l, b, runs=True), r"^spectral_density runs must be an integer in \[1, 100000\]; got True$"),
    (lambda m, l, b: catapult.hessian_trace(m, l, b, matvecs=True), "^hessian_trace matvecs must be an integer >= 3; got True$"),
    # one product returned one pair where code indexing values[k - 1] expected k
    (lambda m, l, b: catapult.top_eigenpairs(m, l, b, k=2, max_iter=1), "max_iter=1 is below k=2"),
    (lambda m, l, b: catapult.sharpness(m, l, (b[0][:0], b[1][:0])), "batch is empty"),
    (lambda m, l, b: catapult.top_eigenpairs(m, l, (b[0][:0], b[1][:0])), "batch is empty"),
    (lambda m, l, b: catapult.hessian_trace(m, l, (b[0][:0], b[1][:0])), "batch is empty"),
])
def test_spectrum_arguments_are_checked_before_any_product(call, message):
    # a negative sigma drew a reversed grid and an empty batch reported a curvature of 0.0
    model, loss_fn, batch = small_problem(seed=6, width=3)
    with pytest.raises(ValueError, match=message):
        call(model, loss_fn, batch)


def test_lanczos_quadrature_reproduces_moments_and_density_integrates_to_one():
    model, loss_fn, batch = small_problem(seed=5)
    H = dense_hessian(model, loss_fn, batch).numpy()
    A = torch.as_tensor(H)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    nodes, weights = lanczos_quadrature(lambda u: A @ u, v, 6)
    u = v.numpy() / np.linalg.norm(v.numpy())
    for p in range(1, 12):  # Gauss quadrature with 6 nodes is exact to degree 11
        moment = u @ np.linalg.matrix_power(H, p) @ u
        assert float(weights @ nodes ** p) == pytest.approx(moment, rel=1e-7, abs=1e-10)
    dens = catapult.spectral_density(model, loss_fn, batch, runs=3, steps=10)
    integral = float(np.sum(dens.density) * (dens.grid[1] - dens.grid[0]))
    assert integral == pytest.approx(1.0, abs=1e-3)
    assert dens.nodes.max() == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-4)


def test_sharpness_error_bound_covers_the_actual_error():
    # tol 1e-2 stops early enough for a visible error; the reported bound must cover it
    for seed in range(4):
        model, loss_fn, batch = small_problem(seed=10 + seed)
        top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
        est = catapult.sharpness(model, loss_fn, batch, tol=1e-2, seed=seed)
        assert est.converged
        assert abs(est.value - top) / abs(top) <= est.error_bound


def test_coarse_start_lean_memory_and_distributed_flag_keep_the_answer():
    model, loss_fn, batch = small_problem(n=256, seed=6, width=3)
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-9)            # coarse="auto"
    assert est.coarse_matvecs > 0
    assert est.value == pytest.approx(top, rel=1e-10)
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-9, coarse=None)
    assert cold.coarse_matvecs == 0 and cold.value == pytest.approx(top, rel=1e-10)
    lean = catapult.sharpness(model, loss_fn, batch, tol=1e-9, memory="lean")
    assert lean.value == pytest.approx(top, rel=1e-10)
    with pytest.raises(ValueError, match="memory"):
        catapult.sharpness(model, loss_fn, batch, memory="small")
    with pytest.raises(ValueError, match="process group"):
        catapult.sharpness(model, loss_fn, batch, distributed=True)


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_finite_difference_hvp_error(dtype, bound):
    model, loss_fn, batch = small_problem(seed=7)
    H = dense_hessian(model, loss_fn, batch).numpy()
    v = torch.randn(H.shape[0], dtype=torch.float64)
    exact = H @ v.numpy()
    op = HessianOperator(model, loss_fn, batch, hvp="finite_difference", dtype=dtype)
    approx = op(v.to(dtype)).double().numpy()
    err = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    # measured over 5 vectors: <= 5.0e-11 (float64, h = 6.1e-6), <= 2.5e-5 (float32, h = 4.9e-3)
    assert err < bound
    if dtype == torch.float64:
        est = catapult.sharpness(model, loss_fn, batch, tol=1e-8, hvp="finite_difference",
                                 dtype=dtype)
        assert est.value == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-7)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 23])
def test_ggn_micro_batches_equal_the_whole_batch_product(loss, chunk_size):
    # G v = sum_k w_k J_k^T H_Lk J_k v over micro-batches: equal to the un-chunked product (and
    # to the dense J^T H_L J) to float64 rounding, for uneven chunks and both losses
    model, loss_fn, batch = small_problem(seed=8)
    if loss == "ce":
        loss_fn = nn.CrossEntropyLoss()
        batch = (batch[0], torch.randint(0, 3, (batch[0].shape[0],)))
    G = dense_ggn(model, loss_fn, batch)
    whole = GaussNewtonOperator(model, loss_fn, batch)
    chunked = GaussNewtonOperator(model, loss_fn, batch, chunk_size=chunk_size)
    assert chunked.chunks == -(-batch[0].shape[0] // chunk_size)
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-14, abs=0)
    for seed in range(3):
        v = torch.randn(G.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        a, b = whole(v), chunked(v)
        assert float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a)) < 1e-13
        np.testing.assert_allclose(b.numpy(), G @ v.numpy(), rtol=1e-10, atol=1e-12)
    # and through the spectrum API (memory="lean" micro-batches the GGN too)
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=2, tol=1e-10, curvature="ggn",
                                  chunk_size=chunk_size)
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(G)[::-1][:2], rtol=1e-8)


def test_ggn_micro_batches_refuse_what_the_hessian_refuses():
    model, loss_fn, batch = small_problem(seed=9)
    with pytest.raises(ValueError, match="neither a mean nor a sum"):
        GaussNewtonOperator(model, lambda o, t: ((o - t) ** 2).mean().sqrt(), batch, chunk_size=5)


@pytest.mark.parametrize("max_basis", [2, 5])
def test_bounded_basis_quadrature_matches_full_reorthogonalisation_and_dense(max_basis):
    # SLQ needs only T's coefficients: with a ring of 2 or 5 vectors (ghost copies of converged
    # outliers appear) the quadrature still reproduces u^T H^p u of the dense Hessian, and the
    # smoothed density equals the fully re-orthogonalised one
    model, loss_fn, batch = small_problem(n=40, seed=11, width=12)
    H = dense_hessian(model, loss_fn, batch).numpy()
    eigs, V = np.linalg.eigh(H)
    A = HessianOperator(model, loss_fn, batch)
    steps = 60  # long enough for lambda_max to converge and, without full re-orth., reappear
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = lanczos_quadrature(A, v, steps)
    part = lanczos_quadrature(A, v, steps, max_basis)
    c2 = (V.T @ (v.numpy() / np.linalg.norm(v.numpy()))) ** 2
    for p in (1, 2, 4, 8):
        exact = float(np.sum(c2 * eigs ** p))
        scale = float(np.sum(c2 * np.abs(eigs) ** p))
        for nodes, weights in (full, part):
            assert abs(float(weights @ nodes ** p) - exact) <= 1e-9 * scale
    def copies(nodes):
        return int(np.sum(np.abs(nodes - eigs[-1]) < 1e-6 * eigs[-1]))

    assert copies(full[0]) == 1 and copies(part[0]) == 2  # a ghost: orthogonality was lost
    assert part[0].max() == pytest.approx(eigs[-1], rel=1e-10)
    assert part[0].min() >= eigs[0] - 1e-9 * abs(eigs[-1])  # nodes stay inside the spectrum
    dens_full = catapult.spectral_density(model, loss_fn, batch, runs=2, steps=steps,
                                          max_basis=None, sigma=0.05)
    dens_part = catapult.spectral_density(model, loss_fn, batch, runs=2, steps=steps,
                                          max_basis=max_basis, sigma=0.05)
    grid = np.linspace(eigs[0] - 1, eigs[-1] + 1, 4000)
    smooth = [np.exp(-0.5 * ((grid[:, None] - d.nodes.ravel()) / 0.05) ** 2) @ d.weights.ravel()
              for d in (dens_full, dens_part)]
    l1 = np.sum(np.abs(smooth[0] - smooth[1])) * (grid[1] - grid[0]) / (2 * 0.05 * np.sqrt(2 * np.pi))
    assert l1 < 1e-6
    with pytest.raises(ValueError, match="max_basis"):
        lanczos_quadrature(A, v, steps, 1)


def test_hutch_plus_plus_spends_exactly_its_products_and_is_unbiased_when_they_do_not_split_in_three():
    """matvecs = 10 < n: s = 3 sketch vectors, 3 products for Q, and the remaining 10 - 6 = 4
    Hutchinson vectors, whose mean (a sum over 4, divided by 4) is unbiased for tr((I - QQ^T) A)."""
    n = 60
    A = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    A[0, 1] = A[1, 0] = 5.0
    calls = []
    estimates = []
    for seed in range(20):
        calls.clear()
        estimates.append(hutch_plus_plus(lambda v: calls.append(1) or A @ v, n, 10, seed=seed))
        assert len(calls) == 10
    truth = float(torch.trace(A))                                  # 1830
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * spread + 1e-9
    assert spread < 0.02 * truth                                   # a bias of 1/3 of the rest shows


def test_spectral_density_is_the_documented_gaussian_smoothing_of_its_nodes():
    """phi(x) = (1/runs) sum_rj w_rj N(x; theta_rj, sigma^2), default sigma = 1 % of the nodes'
    range, on grid_points points from min - 3 sigma to max + 3 sigma: re-derived in NumPy from the
    returned nodes and weights."""
    model, loss_fn, batch = small_problem(seed=5)
    dens = catapult.spectral_density(model, loss_fn, batch, runs=3, steps=10, grid_points=257)
    lo, hi = dens.nodes.min(), dens.nodes.max()
    sigma = 0.01 * (hi - lo)
    assert dens.sigma == pytest.approx(sigma, rel=1e-12, abs=0)
    grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, 257)
    np.testing.assert_allclose(dens.grid, grid, rtol=1e-12, atol=1e-12 * (hi - lo))
    gauss = np.exp(-((grid[:, None] - dens.nodes.ravel()[None, :]) / sigma) ** 2 / 2) / (
        sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dens.density, gauss @ dens.weights.ravel() / 3, rtol=1e-10,
                               atol=1e-12 * dens.density.max())


def test_a_quadrature_that_ends_early_pads_with_zero_weight():
    """H = (1/2) kron(I_2, diag(4, 1)) has 4 dimensions but 2 eigenvalues (2 and 0.5, twice
    each): 5 steps are capped at the dimension (4) and end after 2, and the 2 padded nodes carry
    no weight, so each run's weights still sum to 1 (a probability measure) and the two
    eigenvalues keep half the mass each."""
    model = torch.nn.Linear(2, 2, bias=False)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2))
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), batch, runs=3, steps=5)
    assert dens.nodes.shape == dens.weights.shape == (3, 4)   # runs x min(steps, n)
    np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(dens.weights[:, 2:], 0.0, atol=0)
    for value in (0.5, 2.0):
        mass = dens.weights[np.isclose(dens.nodes, value)].sum() / 3
        assert mass == pytest.approx(0.5, rel=1e-5)        # float32 model


def test_hutch_plus_plus_takes_n_from_the_split_and_refuses_one_that_disagrees():
    # with split vectors n had to be passed as well, and a wrong n was used as it was
    from types import SimpleNamespace

    A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    split = SimpleNamespace(dimension=3, reduce=None, localize=lambda v: v)   # one rank holding all of it
    assert hutch_plus_plus(lambda v: A @ v, None, 9, split=split) == pytest.approx(6.0, abs=1e-12)   # tr A
    with pytest.raises(ValueError, match="n = 4 is not the split vectors' whole length 3"):
        hutch_plus_plus(lambda v: A @ v, 4, 9, split=split)
    with pytest.raises(ValueError, match="^hutch_plus_plus n must be an integer >= 1; got None$"):
        hutch_plus_plus(lambda v: A @ v, None, 9)
    assert hutch_plus_plus(lambda v: A @ v, np.int64(3), 9) == pytest.approx(6.0, abs=1e-12)   # any integer type


def test_an_early_ending_quadrature_pads_with_its_own_last_node_so_the_grid_spans_the_eigenvalues():
    """H = diag(4, 1): every node, padded ones included, is 1 or 4, so the default sigma is 1% of
    4 - 1 and the grid starts at 1 - 3 sigma (padding with 0 put a node, and the grid, at 0)."""
    model = torch.nn.Linear(2, 1, bias=False)
    batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    dens = catapult.spectral_density(model, torch.nn.MSELoss(), batch, runs=2, steps=5)
    assert np.all(np.isclose(dens.nodes, 1.0, rtol=1e-5) | np.isclose(dens.nodes, 4.0, rtol=1e-5))
    assert dens.sigma == pytest.approx(0.03, rel=1e-5)
    assert dens.grid[0] == pytest.approx(1.0 - 0.09, rel=1e-5)
    assert dens.grid[-1] == pytest.approx(4.0 + 0.09, rel=1e-5)


def test_the_gauss_newton_matrix_of_a_loss_linear_in_the_outputs_is_zero():
    # H_L = 0 for L = sum(out * y), so G = J^T H_L J = 0 (while J^T J is not)
    model, _, (x, y) = small_problem(n=8)
    G = GaussNewtonOperator(model, lambda out, target: (out * target).sum(), (x, y))
    v = torch.randn(G.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(G(v), torch.zeros_like(v))


def test_sgd_holding_some_parameters_gives_the_spectrum_of_their_hessian_block():
    """P^-1 = 0 off the optimizer's parameters (they do not move): the operator is the dense
    Hessian's block of the last layer's weights and bias, zero elsewhere."""
    model, loss_fn, batch = small_problem(n=12, width=3)
    H = dense_hessian(model, loss_fn, batch).numpy()
    first = sum(p.numel() for p in model[0].parameters())
    block = H[first:, first:]
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    trace = catapult.hessian_trace(model, loss_fn, batch, optimizer=opt, matvecs=H.shape[0])  # exact: e_i
    assert trace == pytest.approx(np.trace(block), rel=1e-10)
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, optimizer=opt, tol=1e-10, block_size=3)
    np.testing.assert_allclose(eig.values, np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-8)  # 3 outputs: x3
