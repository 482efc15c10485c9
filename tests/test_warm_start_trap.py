"""A warm start lying wholly in an invariant subspace of the operator (a block the Hessian does not
couple to the rest) must not report that block's top as the sharpness: every solver entry point
mixes a seeded random part into ``init`` (catapult.curvature.start.mixed_start). Truth: the dense
eigendecomposition of block-diagonal quadratics, a net beside a block whose top is known exactly (the
case the batched-engine attack found on a GPT under Adam with coupled weight decay, made deterministic),
and cold solves of that GPT cell through the engine."""
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import start

pytestmark = pytest.mark.usefixtures("single_thread")


class Quadratic(nn.Module):
    """L(theta) = 0.5 theta^T A theta, A passed as the batch's targets."""

    def __init__(self, n):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(n, dtype=torch.float64))

    def forward(self, x):
        return self.theta


def quadratic_loss(theta, A):
    return 0.5 * theta @ A @ theta


def two_blocks(small_top=3.0, large_top=5.0, n_large=12, seed=0):
    """``A = diag(B_small, B_large)`` with no coupling: B_small = diag(small_top, 2, 1) on the first
    three coordinates, B_large a random rotation of a spectrum topped by ``large_top``."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n_large, n_large, generator=gen, dtype=torch.float64))
    spectrum = torch.linspace(0.1, large_top, n_large, dtype=torch.float64)
    A = torch.zeros(3 + n_large, 3 + n_large, dtype=torch.float64)
    A[:3, :3] = torch.diag(torch.tensor([small_top, 2.0, 1.0], dtype=torch.float64))
    A[3:, 3:] = Q @ torch.diag(spectrum) @ Q.T
    return A


def trapped_init(n):
    """The small block's top eigenvector: an exact eigenvector of ``A``, not the top one."""
    v = torch.zeros(n, dtype=torch.float64)
    v[0] = 1.0
    return v


@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_sharpness_warm_started_in_a_decoupled_block_finds_the_top(memory):
    A = two_blocks()
    top = float(torch.linalg.eigvalsh(A)[-1])
    torch.manual_seed(0)
    model = Quadratic(A.shape[0])
    est = catapult.sharpness(model, quadratic_loss, (None, A), init=trapped_init(A.shape[0]), memory=memory)
    # before the random part: 3.0 after one product, "converged" (the start is an exact eigenvector)
    assert est.converged
    assert est.value == pytest.approx(top, rel=1e-5)


def test_top_eigenpairs_and_preconditioned_sharpness_leave_the_block_too():
    A = two_blocks(seed=1)
    dense = torch.linalg.eigvalsh(A)
    torch.manual_seed(0)
    model = Quadratic(A.shape[0])
    eig = catapult.top_eigenpairs(model, quadratic_loss, (None, A), k=1, init=trapped_init(A.shape[0]))
    assert eig.values[0] == pytest.approx(float(dense[-1]), rel=1e-5)
    # Adam's first step: P = (1 - b1) (|g| + eps) with g = A theta; M = P^-1/2 A P^-1/2 keeps A's
    # blocks, and M's blocks scale as 1 / |theta| (Adam is invariant to A's scale): a large theta on
    # the small block puts its top far below the large block's
    with torch.no_grad():
        model.theta.copy_(torch.cat([torch.full((3,), 10.0, dtype=torch.float64),
                                     0.1 + 0.05 * torch.arange(A.shape[0] - 3, dtype=torch.float64)]))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    d = 1.0 / torch.sqrt(0.1 * ((A @ model.theta).detach().abs() + 1e-8))
    M = d[:, None] * A * d[None, :]
    small = torch.linalg.eigh(M[:3, :3])
    init = torch.cat([small.eigenvectors[:, -1], torch.zeros(A.shape[0] - 3, dtype=torch.float64)])
    top = float(torch.linalg.eigvalsh(M)[-1])
    assert float(small.eigenvalues[-1]) < 0.5 * top  # the start is an exact eigenvector, not the top one
    est = catapult.preconditioned_sharpness(model, quadratic_loss, (None, A), opt, init=init)
    assert est.value == pytest.approx(top, rel=1e-5)


def test_the_random_part_is_seeded_and_sized_by_tol():
    seeded_normal, start_vector, mixed_starts = start.seeded_normal, start.start_vector, start.mixed_starts
    v = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    r = seeded_normal(3, torch.float64, torch.device("cpu"), 7)
    got = start_vector(v, 3, torch.float64, torch.device("cpu"), 7, tol=1e-4)
    want = v / 5.0 + 100 * 1e-4 * r / torch.linalg.vector_norm(r)
    assert torch.allclose(got, want, rtol=0, atol=1e-15)
    assert torch.equal(got, start_vector(v, 3, torch.float64, torch.device("cpu"), 7, tol=1e-4))  # reproducible
    assert start.warm_start_weight(0.5) == start.WARM_START_MIX_MAX == 1.0
    # the batched engines' starts round as one solve's
    rows = torch.stack([v, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)])
    both = mixed_starts(rows, 7, [1e-4, 1e-2])
    assert torch.equal(both[1], start_vector(rows[1], 3, torch.float64, torch.device("cpu"), 7, tol=1e-2))
    assert start.mixed_start(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), 0.5).tolist() == [0.5, 1.0]


class WithBlock(nn.Module):
    """A tanh net and a vector ``b`` the loss sees only through ``0.5 s ||b||^2`` (:func:`block_loss`):
    the Hessian is ``diag(H_net, s I)``, ``b``'s block an invariant subspace whose top ``s`` is known
    exactly, as a GPT's attention key bias is under Adam's coupled weight decay (its block ``wd / P``)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.b = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.net(x), self.b


def block_loss(s):
    def loss_fn(outputs, y):
        out, b = outputs
        return nn.functional.mse_loss(out, y) + 0.5 * s * (b ** 2).sum()
    return loss_fn


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_a_warm_chain_follows_the_top_when_a_decoupled_blocks_top_falls_below_the_rest(memory, seed):
    # a user's loop, init=est.vector: while the block's top s is 1e8 times the net's, the solves' vectors
    # lie in the block to ~1e-8 (the start's part outside it, damped 1e8-fold per product); once s falls
    # to 1% of the net's top, a start without the random part has a residual of ~1e-6 there, passes the
    # test at once and reports s, converged, 99% low, on every seed and machine (a margin of 1e3 on tol,
    # not rounding noise: test_a_gpt_under_adam_with_coupled_weight_decay_is_tracked_warm_as_cold, which
    # this replaces, passed or failed with the rounding of the key bias's gradient, bench/RESULTS.md 2d)
    from dense_curvature import dense_hessian

    torch.manual_seed(seed)
    model = WithBlock().double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    net_top = float(torch.linalg.eigvalsh(dense_hessian(model.net, nn.MSELoss(), (x, y)))[-1])
    warm = None
    for s in (1e8 * net_top, 1e6 * net_top, 1e-2 * net_top):
        est = catapult.sharpness(model, block_loss(s), (x, y), init=warm, memory=memory)
        assert est.converged
        assert est.value == pytest.approx(max(s, net_top), rel=1e-4), s
        warm = est.vector


def test_the_engine_with_cold_starts_tracks_the_top_where_warm_starts_follow_their_own_eigenvalue():
    # the same GPT cell under coupled weight decay through catapult.engine.run: its top is made of
    # single weights the loss barely sees, nearly uncoupled, and warm starts followed the one they
    # sat on (rows 12 .. 19 of seed 0 were 2-14% below the row's cold eig_1); eval.sharpness_start:
    # cold measures each row from the run's own start vector
    from catapult import config as C
    from catapult.engine import run

    def rows(start):
        cfg = C.validate({
            "name": "trap", "dtype": "float64", "seed": 0,
            "data": {"name": "shakespeare", "tokenizer": "char", "context": 8, "n_train": 64, "n_test": 16},
            "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "parametrization": "mup", "base_width": 8},
            "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.001},
            "train": {"steps": 16, "batch_size": 8},
            "eval": {"sharpness_every": 1, "test_every": 0, "spectrum_top_k": 1, "sharpness_start": start}})
        return [r for r in run(cfg, progress="none").metrics if r.get("sharpness") is not None]

    def off(r):
        return abs(r["sharpness"] - r["eig_1"]) / r["eig_1"]

    # the case this setting is for: warm rows miss the top more often, and by more, than cold rows. How far
    # either misses is rounding noise (the key bias's wd / P block, RESULTS 2d), so the trajectory, and which
    # rows miss, change with the platform: warm 11.5% (rows 12-16) trained on the default attention kernel,
    # 1.9% (row 16 only) on the math kernel, cold none (the CPU of earlier sessions); on an AMD EPYC
    # (AVX-512) warm misses rows 12, 15, 16 (worst 5.6%) and cold row 12 by 0.23%: there the top, 788.75,
    # has a near-twin, 786.90, which both starts converge to (a residual stop says "an eigenvalue", not "the
    # top"; no Krylov stop can tell a twin the start barely holds). A 1e-3 bound on cold rows held on one CPU only
    warm = [off(r) for r in rows("warm")]
    cold = [off(r) for r in rows("cold")]
    assert max(warm) > 1e-3
    assert sum(o > 1e-3 for o in cold) < sum(o > 1e-3 for o in warm)
    assert max(cold) < max(warm)


def test_a_distributed_warm_start_mixes_its_random_part_to_the_solves_own_tol():
    # distributed=True (a replicated model): rank 0's init with the random part sized by this
    # solve's tol, v / ||v|| + min(100 tol, 1) r / ||r||, as without distributed
    # (mutation pass 6, WS15: the part sized at the default tol whatever the solve's)
    from catapult.curvature.distributed import single_process_group
    from catapult.curvature.sharpness import build_operator

    model = nn.Linear(3, 1, bias=False).double()
    batch = (torch.eye(3, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    v = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    r = start.seeded_normal(3, torch.float64, torch.device("cpu"), 5)
    for tol in (1e-6, 1e-3, 0.5):
        want = v / 5.0 + min(100 * tol, 1.0) * r / torch.linalg.vector_norm(r)
        with single_process_group():
            op = build_operator(model, nn.MSELoss(), batch, distributed=True)
            got = start.initial_vector(op, v, 5, distributed=True, tol=tol)
        assert torch.allclose(got, want, rtol=0, atol=1e-15), tol
        alone = start.initial_vector(build_operator(model, nn.MSELoss(), batch), v, 5, distributed=False, tol=tol)
        assert torch.allclose(alone, want, rtol=0, atol=1e-15), tol
