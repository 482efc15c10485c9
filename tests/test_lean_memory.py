"""memory="lean" sizes its micro-batches and Krylov basis from the problem (issue 16): the sizes
against hand computations, the activation estimate against a hand count, and lean = fast."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dense_curvature import dense_hessian

import catapult
from catapult.curvature import HessianOperator
from catapult.curvature.lean import activation_bytes, lean_sizes, lean_top_eigenpair
from catapult.curvature.sharpness import memory_setting


def mlp(n, hidden=32, seed=0):
    """4-hidden-3 tanh MLP in float64: P = 4*h + h + 3*h + 3 parameters; autograd saves the tanh
    output (h per sample; the second Linear's input is the same tensor) and the model output (3)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    batch = (torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64))
    return model, nn.MSELoss(), batch


def test_activation_estimate_matches_the_hand_count():
    for n in (3, 8, 20):  # below, at and above the 8-sample probe
        model, loss_fn, batch = mlp(n)
        # total: tanh output (32) + model output (3) per sample; largest: the tanh output
        assert activation_bytes(model, loss_fn, batch) == (n * (32 + 3) * 8, n * 32 * 8)


@pytest.mark.parametrize("n, expected", [
    # P = 259 * 8 = 2072 B, A = 280 n B, L = 256 n B; n < 256, so m' = m.
    # n = 20: A = 5600 -> m = 8 (700 <= P/2 = 1036; 1400 is not); T = 2072 + 5600 + 5120 = 12792;
    #         B = (3 T - 8 P - ceil(2.6 * 5600 / 8)) // P = (38376 - 16576 - 1820) // 2072 = 9
    (20, (3, 9)),
    # n = 40: A = 11200 -> m = 16 (700); T = 23512; (70536 - 16576 - 1820) // 2072 = 25 -> cap 10
    (40, (3, 10)),
])
def test_lean_sizes_match_the_hand_computation(n, expected, lean_chunks_small_batches):
    model, loss_fn, batch = mlp(n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory_setting("lean", batch, None, None, model, loss_fn) == expected
    # an explicit max_basis caps the sized basis; an explicit chunk_size wins
    assert memory_setting("lean", batch, 7, 2, model, loss_fn) == (7, min(2, expected[1]))
    assert memory_setting("fast", batch, None, None, model, loss_fn) == (None, 32)  # unchanged


def test_lean_warns_and_uses_the_minimum_when_3x_cannot_be_met(lean_chunks_small_batches):
    # n = 8: A = 2240, L = 2048 -> m = 4 (560); T = 6360;
    # (19080 - 16576 - ceil(2.6 * 560)) // 2072 = 1048 // 2072 = 0 < 3: not possible
    assert lean_sizes(2072, 2240, 2048, 8) == (4, 3, False)
    model, loss_fn, batch = mlp(8)
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        assert memory_setting("lean", batch, None, None, model, loss_fn) == (2, 3)


def test_lean_runs_a_tiny_model_as_one_chunk_with_the_same_answer(monkeypatch):
    """The relative rule alone (activations of a micro-batch <= P / 2) cut 64 samples of a
    50-parameter model into micro-batches of 2: 387 loss evaluations for 4 products (each product
    re-runs a forward per micro-batch). A micro-batch's activations are not cut below 1 MiB
    (lean.LEAN_MIN_CHUNK_BYTES): one chunk, a loss evaluation or two a product, the same value
    (to float64 rounding) and the same basis."""
    from catapult.curvature import lean

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    assert sum(p.numel() for p in model.parameters()) == 50
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 4, generator=gen, dtype=torch.float64),
             torch.randn(64, 2, generator=gen, dtype=torch.float64))
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        return nn.functional.mse_loss(out, y)

    # P = 400 B, A = 64 x (6 + 2 + 2) x 8 B = 5120 B
    assert activation_bytes(model, loss_fn, batch)[0] == 5120
    assert memory_setting("lean", batch, None, None, model, loss_fn) == (None, 10)
    calls[0] = 0
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=200, memory="lean")
    evaluations = calls[0]
    assert est.converged and evaluations <= 2 * est.matvecs + 10, (evaluations, est.matvecs)
    # against the dense Hessian, and against the relative rule's micro-batches (of 2)
    top = dense_eigenvalues(model, loss_fn, batch)[-1]
    assert abs(est.value - top) <= 1e-9 * abs(top)
    monkeypatch.setattr(lean, "LEAN_MIN_CHUNK_BYTES", 0)
    assert memory_setting("lean", batch, None, None, model, loss_fn) == (2, 10)
    calls[0] = 0
    chunked = catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=200, memory="lean")
    assert calls[0] > 10 * evaluations
    assert est.value == pytest.approx(chunked.value, rel=1e-12)


def dense_eigenvalues(model, loss_fn, batch):
    """Eigenvalues (ascending) of the dense float64 Hessian (independent of the library's
    operators)."""
    return np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())


def test_lean_and_fast_agree_on_the_top_eigenvalue_within_tol(lean_chunks_small_batches):
    model, loss_fn, batch = mlp(8, seed=1)  # lean: 4 micro-batches, no Krylov basis
    tol = 1e-6
    fast = catapult.sharpness(model, loss_fn, batch, tol=tol, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the basis-free solver has no basis to fit: no warning
        lean = catapult.sharpness(model, loss_fn, batch, tol=tol, max_iter=1000, memory="lean")
    assert fast.converged and lean.converged
    assert lean.value == pytest.approx(fast.value, rel=tol)
    assert lean.residual <= tol and lean.error_bound == lean.residual
    # an explicit max_basis keeps the thick-restart solver with that basis (and its warning)
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        basis = catapult.sharpness(model, loss_fn, batch, tol=tol, max_iter=1000, memory="lean",
                                   max_basis=3)
    assert basis.converged and basis.value == pytest.approx(fast.value, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lean_keeps_the_promise_of_tol_against_the_dense_hessian(dtype):
    # the reported residual is computed (A y - theta y), not estimated, so some eigenvalue lies
    # within error_bound * |value| even though the basis-free recurrence loses orthogonality;
    # float32 at tol 1e-3 as in use. Against lambda_max it holds once the top eigenvalue has been
    # found, as for the fast solver: float32 seed 13 has lambda_1, lambda_2 = 1.50552, 1.50192
    # (0.24% apart) and both solvers stop on lambda_2 there at tol 1e-3 (residual 7.2e-4).
    for seed in range(4):
        model, loss_fn, batch = mlp(40, hidden=16, seed=10 + seed)
        eigs = dense_eigenvalues(model, loss_fn, batch)
        tight = dtype == torch.float64 and seed == 0
        for tol in (1e-2, 1e-3, 1e-8) if tight else (1e-2, 1e-3):
            est = catapult.sharpness(model, loss_fn, batch, tol=tol, memory="lean", dtype=dtype,
                                     seed=seed, max_iter=400, chunk_size=20)  # 2 micro-batches
            assert est.converged and est.residual <= tol
            nearest = float(np.min(np.abs(eigs - est.value)))
            assert nearest <= est.error_bound * abs(est.value) + 1e-6, (seed, tol)
            if dtype == torch.float64 or seed != 3:
                assert abs(est.value - eigs[-1]) <= est.error_bound * abs(est.value), (seed, tol)
            assert est.vector.dtype == dtype
            assert float(torch.linalg.vector_norm(est.vector.double())) == pytest.approx(1.0, abs=1e-5)


def test_lean_solver_certifies_its_residual_after_loss_of_orthogonality():
    # clustered top eigenvalues and a long recurrence in float32: the three-term basis loses
    # orthogonality (ghost Ritz values); the returned residual must still be the true one
    gen = torch.Generator().manual_seed(0)
    d = torch.cat([torch.tensor([10.0, 9.99, 9.9]), torch.rand(997, generator=gen) * 5])
    A = lambda v: d.to(v.dtype) * v  # noqa: E731
    v0 = torch.randn(1000, generator=gen)
    start = v0.clone()
    est = lean_top_eigenpair(A, v0, tol=1e-5, max_iter=2000)
    assert torch.equal(v0, start)  # overwrite=False leaves v0 alone
    true = float(torch.linalg.vector_norm(A(est.vector) - est.value * est.vector)) / est.value
    # abs=1e-7: `true` is itself a float32 residual of 1000 entries (~3e-6 here), rounded at ~1e-7 of ||A v||
    assert est.residual == pytest.approx(true, rel=1e-2, abs=1e-7)
    assert est.converged and true <= 1e-5 * 1.01
    assert abs(est.value - 10.0) <= est.error_bound * 10.0 + 1e-5
    # overwrite=True: v0's buffer receives the answer
    mine = start.clone()
    est2 = lean_top_eigenpair(A, mine, tol=1e-5, max_iter=2000, overwrite=True)
    assert est2.vector.data_ptr() == mine.data_ptr() and est2.value == pytest.approx(est.value)


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 30])
def test_accumulate_and_rebuilt_graph_equal_the_product(chunk_size):
    # out += H v by accumulation into .grad views, and retain_graph=False: the same product
    # as __call__ to float64 rounding; frozen parameters and the model's .grad untouched
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh(),
                          nn.Linear(3, 2)).double()
    model[2].weight.requires_grad_(False)
    batch = (torch.randn(23, 4, dtype=torch.float64), torch.randn(23, 2, dtype=torch.float64))
    ref = HessianOperator(model, nn.MSELoss(), batch)
    for retain in (True, False):
        op = HessianOperator(model, nn.MSELoss(), batch, chunk_size=chunk_size,
                             retain_graph=retain)
        assert op.loss == pytest.approx(ref.loss, rel=1e-14, abs=0)
        v = torch.randn(op.numel, dtype=torch.float64)
        exact = ref(v)
        out = torch.full_like(v, 3.0)
        op.accumulate(v, out)
        assert float(torch.linalg.vector_norm(out - 3.0 - exact)) <= 1e-13 * float(torch.linalg.vector_norm(exact))
        assert float(torch.linalg.vector_norm(op(v) - exact)) <= 1e-13 * float(torch.linalg.vector_norm(exact))
        assert torch.allclose(op.gradient(), ref.gradient(), rtol=1e-13, atol=1e-15)
        assert op.matvecs == 2
    assert all(p.grad is None for p in model.parameters())


def test_lean_preconditioned_sharpness_equals_the_fast_one(lean_chunks_small_batches):
    model, loss_fn, batch = mlp(24, hidden=8, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn(model(batch[0]), batch[1]).backward()
    opt.step()
    opt.zero_grad()
    fast = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-9, max_iter=500)
    lean = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-9, max_iter=500,
                                             memory="lean")
    assert fast.converged and lean.converged and lean.residual <= 1e-9
    assert lean.value == pytest.approx(fast.value, rel=1e-8)


def test_finite_difference_accumulate_and_lean_keep_tol():
    # FD products accumulated through .grad (one shifted parameter copy) equal the FD __call__
    # to rounding, and lean + FD in float32 at tol 1e-3 stays within its bound of lambda_max
    # (FD error of H v measured <= 2.5e-5 relative in float32, far below tol)
    model, loss_fn, batch = mlp(40, hidden=16, seed=11)
    for chunk in (None, 7):
        op = HessianOperator(model, loss_fn, batch, hvp="finite_difference", chunk_size=chunk)
        v = torch.randn(op.numel, dtype=torch.float64)
        out = torch.zeros_like(v)
        op.accumulate(v, out)
        ref = op(v)
        assert float(torch.linalg.vector_norm(out - ref)) <= 1e-8 * float(torch.linalg.vector_norm(ref))
    eigs = dense_eigenvalues(model, loss_fn, batch)
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-3, memory="lean",
                             hvp="finite_difference", dtype=torch.float32, max_iter=400)
    assert est.converged and abs(est.value - eigs[-1]) <= (est.error_bound + 1e-4) * abs(est.value)
    assert all(p.grad is None for p in model.parameters())


def test_lean_top_eigenpairs_keeps_its_sized_basis(monkeypatch):
    # the README's promise: top_eigenpairs under "lean" keeps the basis lean sizes (here 10
    # vectors), or restart_floor(k, block) = 3 k + block where that is more; it used to widen it to
    # 2k + 10, then kept k + block + 1, which restarted after every product (the test below)
    from catapult.curvature import krylov
    from catapult.curvature.top_k import restart_floor

    model, loss_fn, batch = mlp(32, seed=2)  # lean still splits 32 samples into micro-batches of 2
    _, lean_basis = memory_setting("lean", batch, None, None, model, loss_fn)
    peak = {"size": 0}
    append = krylov.KrylovBasis.append

    def counted(self, q):
        append(self, q)
        peak["size"] = max(peak["size"], self.size)
    monkeypatch.setattr(krylov.KrylovBasis, "append", counted)
    truth = dense_eigenvalues(model, loss_fn, batch)[::-1][:5]
    assert (restart_floor(5, 1), restart_floor(9, 2)) == (16, 29)
    for k, block, want in ((5, 1, max(lean_basis, 16)), (9, 2, max(lean_basis, 29))):
        peak["size"] = 0
        eig = catapult.top_eigenpairs(model, loss_fn, batch, k=k, tol=1e-8, max_iter=3000,
                                      memory="lean", block_size=block)
        # a basis of blocks of 2 from a restart of 14 fills to 28 of its 29
        assert eig.converged and want - block < peak["size"] <= want
        np.testing.assert_allclose(eig.values[:5], truth, rtol=1e-7)


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(32), nn.Dropout(0.3)], ids=["batchnorm", "dropout"])
def test_lean_names_itself_when_its_micro_batches_meet_a_train_mode_layer(layer, lean_chunks_small_batches):
    """memory="lean" chose the micro-batches, yet the refusal told the user to "use
    chunk_size=None" -- what they had done. It now names memory='lean' and memory='fast', and
    "fast" on the same model in train mode works."""
    plain, loss_fn, batch = mlp(64)
    chunk_size, _ = memory_setting("lean", batch, None, None, plain, loss_fn)
    assert chunk_size is not None and chunk_size < 64  # lean splits this batch
    model = nn.Sequential(plain[0], layer.double(), *plain[1:]).train()
    for call in (lambda: catapult.sharpness(model, loss_fn, batch, memory="lean"),
                 lambda: catapult.top_eigenpairs(model, loss_fn, batch, k=2, memory="lean")):
        with pytest.raises(ValueError, match=r"memory='lean' splits the batch .* module '1' .*"
                                             r"call model.eval\(\) or use memory='fast'"):
            call()
    assert np.isfinite(catapult.sharpness(model, loss_fn, batch, memory="fast").value)



def test_lean_top_k_keeps_room_for_its_restarts_and_converges():
    # memory="lean" kept its sized basis, at least k + 2 vectors: a 550-parameter tanh MLP is sized
    # 3, so the top 5 kept 7, restarted after every product and ran to max_iter 100 unconverged in
    # every seed (the 2,058-parameter one of bench/bench_lean_topk.py: 0 of 5). It now keeps
    # restart_floor(k) = 3 k + 1 vectors at least; the top 5 against the dense Hessian
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 10, generator=gen, dtype=torch.float64), torch.randint(0, 6, (32,), generator=gen))
    loss = nn.CrossEntropyLoss()
    assert memory_setting("lean", batch, None, None, model, loss)[1] == 3   # what lean sizes here
    dense = torch.linalg.eigvalsh(dense_hessian(model, loss, batch)).flip(0)[:5].tolist()
    for seed in range(3):
        eig = catapult.top_eigenpairs(model, loss, batch, k=5, tol=1e-3, max_iter=100, memory="lean", seed=seed)
        assert eig.converged and eig.matvecs < 100
        assert eig.values == pytest.approx(dense, rel=1e-3)
    from catapult.curvature.top_k import restart_floor

    assert restart_floor(5) == 16
