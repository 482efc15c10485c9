"""Coarse start vectors (sub-batch and finite-difference levels) against dense float64 truth.

The truth is the dense Hessian of the loss as a function of the flat parameter vector
(``tests/dense_curvature.py``'s ``dense_hessian``), eigendecomposed by ``numpy.linalg.eigh``. A
coarse level only moves the start vector: the exact solve's promise (``error_bound`` >= the
actual relative error of the top eigenvalue, ``error_bound <= tol`` when converged) must hold
whatever the level did.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import HessianOperator
from catapult.curvature.hessian import math_attention
from catapult.curvature.coarse import (FINITE_DIFFERENCE, FINITE_DIFFERENCE_CONSISTENCY,
                                       FINITE_DIFFERENCE_COST, coarse_levels,
                                       coarse_start_vector, difference_consistency)
from catapult.losses import cross_entropy
from catapult.models import GPT
from dense_curvature import dense_hessian
from test_spectrum import small_problem


def tiny_gpt(seed=0, n=4):
    torch.manual_seed(seed)
    model = GPT(7, d_model=8, n_layers=1, n_heads=2, context=5).double()
    tokens = torch.randint(0, 7, (n, 6), generator=torch.Generator().manual_seed(seed))
    # the library's token cross-entropy takes (B, T, V) logits and (B, T) labels
    return model, cross_entropy, (tokens[:, :-1], tokens[:, 1:])


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-7), (torch.float32, 5e-3)])
def test_forward_difference_product_error(dtype, bound):
    model, loss_fn, batch = small_problem(seed=7)
    H = dense_hessian(model, loss_fn, batch).numpy()
    op = HessianOperator(model, loss_fn, batch, dtype=dtype)
    for seed in range(3):
        v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        exact = H @ v.numpy()
        approx = op.forward_difference(v.to(dtype)).double().numpy()
        # measured over 5 vectors: <= 2.8e-8 (float64, h = 1.5e-8), <= 7.9e-4 (float32, h = 3.5e-4)
        assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < bound
    assert op.matvecs == 0  # approximations are not counted as products
    assert torch.equal(op.forward_difference(torch.zeros(H.shape[0], dtype=dtype)),
                       torch.zeros(H.shape[0], dtype=dtype))


@pytest.mark.parametrize("problem", ["mlp", "gpt"])
def test_finite_difference_start_keeps_the_tol_promise(problem):
    # small batches get the finite-difference level under coarse="auto"; the reported bound
    # must cover the actual error at a loose and a tight tol, in float64 and float32
    for seed in range(3):
        model, loss_fn, batch = tiny_gpt(seed) if problem == "gpt" else small_problem(seed=20 + seed)
        with math_attention():  # the fused attention kernels have no double backward
            top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
        for tol, dtype in [(3e-2, torch.float32), (1e-2, torch.float64), (1e-3, torch.float64),
                           (1e-3, torch.float32)]:
            est = catapult.sharpness(model, loss_fn, batch, tol=tol, seed=seed, dtype=dtype)
            assert est.coarse_matvecs > 0
            assert est.coarse_cost == pytest.approx(FINITE_DIFFERENCE_COST * est.coarse_matvecs)
            assert est.converged and est.error_bound <= tol
            # float32: the bound covers the error up to the rounding of the float32 products
            slack = 1e-6 if dtype == torch.float32 else 0.0
            assert abs(est.value - top) / abs(top) <= est.error_bound + slack


def test_finite_difference_level_with_other_product_modes_and_chunks():
    model, loss_fn, batch = small_problem(n=24, seed=5)
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    levels = ((4, 1e-2), (FINITE_DIFFERENCE, 1e-2))  # a sub-batch level, then differences
    for kwargs in [{"hvp": "finite_difference"}, {"chunk_size": 5}, {"coarse": levels},
                   {"hvp": "forward_over_reverse"}, {"hvp": "forward_over_reverse", "coarse": levels},
                   {"coarse": levels[1]}]:  # one bare pair is one level
        est = catapult.sharpness(model, loss_fn, batch, tol=1e-8, **kwargs)
        assert est.converged and est.coarse_matvecs > 0
        assert est.value == pytest.approx(top, rel=1e-7)
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-8, coarse=None)
    assert cold.coarse_matvecs == 0 and cold.value == pytest.approx(top, rel=1e-7)
    warm = catapult.sharpness(model, loss_fn, batch, tol=1e-8, init=cold.vector)
    assert warm.coarse_matvecs == 0  # a given start vector skips the coarse levels


def test_finite_difference_level_finds_the_top_eigenvector():
    # the level alone (no exact solve) already points along the top eigenvector
    model, loss_fn, batch = small_problem(n=24, seed=3)
    H = dense_hessian(model, loss_fn, batch).numpy()
    u = np.linalg.eigh(H)[1][:, -1]
    v0 = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v, products, cost = coarse_start_vector(model, loss_fn, batch, v0, [(FINITE_DIFFERENCE, 1e-6)])
    assert products > 0 and cost == FINITE_DIFFERENCE_COST * products
    assert abs(float(v.numpy() @ u)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("tol", [1e-2, 3e-2])
def test_sub_batch_levels_at_a_loose_tol_keep_its_promise(tol):
    # under coarse="auto" the levels stop at the solve's own tol when it is looser than theirs;
    # the exact solve still certifies it (a tanh MLP on 300 samples, dense float64 Hessian)
    assert coarse_levels((torch.zeros(300, 4), torch.zeros(300)), "auto", tol) == [
        (FINITE_DIFFERENCE, tol), (18, tol), (75, tol)]
    for seed in range(3):
        model, loss_fn, batch = small_problem(n=300, seed=40 + seed)
        top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
        # the sub-batch levels themselves ("auto" runs them where its difference level is skipped)
        est = catapult.sharpness(model, loss_fn, batch, tol=tol, seed=seed, coarse=[(16, tol), (4, tol)])
        assert est.coarse_matvecs > 0 and est.converged and est.error_bound <= tol
        assert abs(est.value - top) / abs(top) <= est.error_bound


def test_coarse_levels_parse_and_refuse():
    x, y = torch.zeros(100, 3), torch.zeros(100)
    assert coarse_levels((x, y), "auto") == [(FINITE_DIFFERENCE, 3e-3)]
    assert coarse_levels(({"a": x}, y), "auto") == [(FINITE_DIFFERENCE, 3e-3)]  # 100 samples, nested or not
    assert coarse_levels((x, y), ((4, 1e-2), ("finite_difference", 2e-3))) == [
        (25, 1e-2), (FINITE_DIFFERENCE, 2e-3)]
    assert coarse_levels((x, y), None) == []
    assert coarse_levels((x, y), (4, 1e-2)) == [(25, 1e-2)]  # one bare pair is one level
    # the solve's tol loosens the auto levels only, never tightens them or explicit ones
    assert coarse_levels((x, y), "auto", 1e-4) == [(FINITE_DIFFERENCE, 3e-3)]
    assert coarse_levels((x, y), "auto", 5e-2) == [(FINITE_DIFFERENCE, 5e-2)]
    assert coarse_levels((x, y), (4, 1e-3), 5e-2) == [(25, 1e-3)]
    for bad in [((1, 1e-3),), (("fd", 1e-3),), ((True, 1e-3),), (("finite_difference", 0.0),),
                ((4, 1e-3, 2),), (4,)]:
        with pytest.raises(ValueError, match="coarse levels"):
            coarse_levels((x, y), bad)
    assert coarse_levels(({"a": x}, y), ((4, 1e-3),)) == [(25, 1e-3)]   # nested inputs sharing dim 0
    with pytest.raises(ValueError, match="sample dimension"):
        coarse_levels(({"a": 1.0}, y), ((4, 1e-3),))
    with pytest.raises(ValueError, match="coarse must be"):
        coarse_levels((x, y), "fine")


def test_finite_difference_level_is_skipped_across_kinks():
    # a ReLU MLP in float32 (step h = 3.5e-4): forward and backward differences disagree
    # (kinks; measured gap ~2e2), so the level is skipped after its two check gradients and the
    # solve is the cold one from the same random start
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    batch = (torch.randn(128, 32), torch.randint(0, 10, (128,)))
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, batch)
    v = torch.randn(op.numel, generator=torch.Generator().manual_seed(0))
    gap, _ = difference_consistency(op, v)
    assert gap > FINITE_DIFFERENCE_CONSISTENCY
    auto = catapult.sharpness(model, loss_fn, batch, tol=1e-3)
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-3, coarse=None)
    assert auto.coarse_matvecs == 2 and auto.matvecs == cold.matvecs
    assert auto.value == cold.value and auto.converged
    # smooth (tanh) losses pass the check, in float32 too
    smooth, loss_fn, batch = small_problem(seed=3)
    op = HessianOperator(smooth, loss_fn, batch, dtype=torch.float32)
    gap, _ = difference_consistency(op, torch.ones(op.numel))
    assert gap < FINITE_DIFFERENCE_CONSISTENCY


def test_sub_batch_levels_take_samples_from_all_of_a_sorted_batch():
    # The first n/16 samples of a batch sorted by source used features 0-1 only: their Hessian
    # is blind to features 2-3, which carry the top eigenvector, and the full solve started
    # orthogonal to it: 1.01 "converged" for a top eigenvalue of 9.07.
    torch.manual_seed(0)
    n = 512
    x = torch.zeros(n, 4, dtype=torch.float64)
    x[:n // 2, :2] = torch.randn(n // 2, 2, dtype=torch.float64)
    x[n // 2:, 2:] = 3 * torch.randn(n // 2, 2, dtype=torch.float64)
    batch = (x, torch.randn(n, 1, dtype=torch.float64))
    model = nn.Linear(4, 1, bias=False).double()
    top = float(np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1])
    assert top > 8
    assert coarse_levels(batch, "auto")[1][0] == 32  # a sub-batch level (where the difference level is skipped)
    est = catapult.sharpness(model, nn.MSELoss(), batch, coarse=[(16, 3e-3), (4, 3e-3)])
    assert est.converged and est.value == pytest.approx(top, rel=1e-6)


def test_difference_consistency_is_the_documented_relative_gap():
    # F(v) = A v + c v^2 (elementwise): F+ = A v + c v^2, F- = -F(-v) = A v - c v^2, so the gap
    # ||F+ - F-|| / ||(F+ + F-) / 2|| is 2 c ||v^2|| / ||A v||
    from types import SimpleNamespace

    A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    op = SimpleNamespace(forward_difference=lambda v: A @ v + 0.5 * v * v)
    v = torch.tensor([0.6, 0.8], dtype=torch.float64)
    gap, forward = difference_consistency(op, v)
    assert gap == pytest.approx(2 * 0.5 * float(torch.linalg.vector_norm(v * v))
                                / float(torch.linalg.vector_norm(A @ v)), rel=1e-12, abs=0)
    assert torch.allclose(forward, A @ v + 0.5 * v * v)


def test_a_sub_batch_level_that_does_not_converge_leaves_the_start_vector():
    # documented: a sub-batch level's vector is used when its solve converged
    model = nn.Linear(3, 1, bias=False)
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    v0 = torch.tensor([1.0, 2.0, 3.0])
    v, products, _ = coarse_start_vector(model, nn.MSELoss(), (x, torch.zeros(4, 1)), v0, [(2, 1e-12)],
                                         max_iter=2)
    assert products == 2 and torch.equal(v, v0)


def test_auto_levels_start_at_exactly_coarse_min_samples():
    # "at least COARSE_MIN_SAMPLES" samples get the sub-batch levels
    from catapult.curvature.coarse import COARSE_MIN_SAMPLES, SMALL_BATCH_LEVELS

    x, y = torch.zeros(COARSE_MIN_SAMPLES, 3), torch.zeros(COARSE_MIN_SAMPLES)
    assert coarse_levels((x, y), "auto") == [(FINITE_DIFFERENCE, 3e-3), (COARSE_MIN_SAMPLES // 16, 3e-3),
                                             (COARSE_MIN_SAMPLES // 4, 3e-3)]
    assert coarse_levels((x[:-1], y[:-1]), "auto") == list(SMALL_BATCH_LEVELS)


def test_a_sub_batch_level_coarser_than_the_batch_keeps_one_sample():
    # n // divisor is 0 for 8 samples at divisor 16: the level keeps one sample (mutation pass 6,
    # CO5: a level of 0 samples, ZeroDivisionError in sub_batch's stride); truth: the dense top
    assert coarse_levels((torch.zeros(8, 3), torch.zeros(8)), ((16, 1e-2),)) == [(1, 1e-2)]
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    top = float(np.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(), batch).numpy())[-1])
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-8, coarse=((16, 1e-2),))
    assert est.converged and est.value == pytest.approx(top, rel=1e-7)


def test_targets_without_the_inputs_sample_dimension_get_no_sub_batch_levels():
    # documented: sub-batch levels need inputs and targets sharing dim 0; 300 inputs beside 5
    # targets (a target that is no per-sample tensor) is no such batch (mutation pass 6, CO6: the
    # inputs' 300 alone gave sub-batches of 18 and 75 rows, slicing the 5 targets by the same stride)
    x, y = torch.zeros(300, 3), torch.zeros(5)
    assert coarse_levels((x, y), "auto") == [(FINITE_DIFFERENCE, 3e-3)]
    with pytest.raises(ValueError, match="sample dimension"):
        coarse_levels((x, y), ((4, 1e-3),))


def test_auto_tries_the_difference_level_first_on_a_large_batch():
    # stop 61: the finite-difference level first at 256 samples or more too (0.54-0.80x of the
    # sub-batch levels' CPU on a GPT, a tanh CNN and a float64 ReLU MLP; bench/bench_first_start.py);
    # the sub-batch levels run only where its kink check skips it. Before, "auto" took the sub-batch
    # levels alone there. Truth: the same calls with the levels given explicitly, and the dense top.
    from catapult.curvature.coarse import COARSE_LEVELS, SMALL_BATCH_LEVELS

    model, loss_fn, batch = small_problem(n=300, seed=41)
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    auto = catapult.sharpness(model, loss_fn, batch, tol=1e-6)
    difference = catapult.sharpness(model, loss_fn, batch, tol=1e-6, coarse=list(SMALL_BATCH_LEVELS))
    assert (auto.matvecs, auto.coarse_matvecs, auto.value) == (difference.matvecs, difference.coarse_matvecs,
                                                               difference.value)
    assert auto.coarse_cost == pytest.approx(FINITE_DIFFERENCE_COST * auto.coarse_matvecs)   # no sub-batch product
    assert auto.value == pytest.approx(top, rel=1e-6)
    # a float32 model holding nn.ReLU modules goes straight to the sub-batch levels (coarse.kink_guess:
    # the level's kink check would skip it after 2 gradients, +15% on issue 16's FCN)
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    batch = (torch.randn(512, 32), torch.randint(0, 10, (512,)))

    # the same network calling F.relu (no module to see): its graph, walked once at the operator's
    # build, holds ReluBackward0 (twice.KINKED_NODES), so the guess applies too: the sub-batch
    # levels' counts exactly (stop 62; before, the level was tried and skipped after 2 gradients)
    class Functional(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = nn.ModuleList(m for m in layers if isinstance(m, nn.Linear))

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = torch.nn.functional.relu(layer(x))
            return self.layers[-1](x)

    for net in (relu, Functional(relu)):
        auto = catapult.sharpness(net, nn.CrossEntropyLoss(), batch)
        sub = catapult.sharpness(net, nn.CrossEntropyLoss(), batch, coarse=list(COARSE_LEVELS))
        assert (auto.matvecs, auto.coarse_matvecs, auto.value, auto.coarse_cost) == \
            (sub.matvecs, sub.coarse_matvecs, sub.value, sub.coarse_cost), type(net).__name__


class _Calls(nn.Module):
    """A 4-8-3 MLP whose hidden activation is the function ``act``, called in the forward (no module)."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.act = nn.Linear(4, 8), nn.Linear(8, 3), act

    def forward(self, x):
        return self.b(self.act(self.a(x)))


F = torch.nn.functional
# kinked at 0 (or at the clamp's bounds): a jump in the first derivative
_KINKED_CALLS = [F.relu, torch.relu, lambda h: h.clamp(min=0), lambda h: torch.clamp(h, -0.5, 0.5), torch.abs,
                 lambda h: torch.maximum(h, torch.zeros_like(h)), lambda h: torch.minimum(h, 0.1 * h), F.hardtanh,
                 F.relu6, F.leaky_relu, F.hardswish, F.hardsigmoid, lambda h: F.threshold(h, 0.1, 0.0),
                 F.hardshrink]
# smooth: no kink, and a softmax's max shift (a reduction whose derivative cancels)
_SMOOTH_CALLS = [torch.tanh, F.gelu, F.silu, F.softplus, lambda h: (h - h.max(dim=1, keepdim=True).values).softmax(1)]


@pytest.mark.parametrize("act", _KINKED_CALLS + _SMOOTH_CALLS)
def test_the_operator_sees_kinked_ops_called_in_the_forward(act):
    # stop 62: the operator's one graph walk (twice.graph_functions, at its build) marks a kinked op
    # called as a function, which the module scan (coarse.KINKED_ACTIVATIONS) does not see. Truth: the
    # ops' own kinks: a jump in the first derivative, a spike of the second difference ~ jump / step
    # against |f''| <= 1 for the smooth ones
    x = torch.linspace(-4, 4, 8001, dtype=torch.float64).unsqueeze(1).repeat(1, 8)
    y = act(x)[:, 0]
    second = (y[2:] - 2 * y[1:-1] + y[:-2]) / (x[1, 0] - x[0, 0]) ** 2
    kinked = bool(second.abs().max() > 20)
    assert kinked == any(act is k for k in _KINKED_CALLS)
    op = HessianOperator(_Calls(act), nn.MSELoss(), (torch.randn(6, 4), torch.randn(6, 3)))
    assert op.kinked is kinked


def test_a_wrong_kink_guess_costs_no_accuracy():
    # a smooth float32 loss whose forward calls a clamp that never binds (|h| < 30 here): guessed
    # kinked, so "auto" drops the difference level and starts at the sub-batch levels (the explicit
    # levels' counts exactly; before stop 62 it ran the difference level, which its check passes);
    # the answer is the exact solve's all the same. Truth: the dense float64 Hessian's top eigenvalue.
    from catapult.curvature.coarse import COARSE_LEVELS

    model = _Calls(lambda h: torch.tanh(h).clamp(-30.0, 30.0))
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 4, generator=gen), torch.randn(300, 3, generator=gen)
    loss_fn = nn.MSELoss()
    top = np.linalg.eigvalsh(dense_hessian(_double(model), loss_fn, (x.double(), y.double())).numpy())[-1]
    auto = catapult.sharpness(model, loss_fn, (x, y), tol=1e-4)
    sub = catapult.sharpness(model, loss_fn, (x, y), tol=1e-4, coarse=list(COARSE_LEVELS))
    assert (auto.matvecs, auto.coarse_matvecs, auto.value) == (sub.matvecs, sub.coarse_matvecs, sub.value)
    assert auto.converged and abs(auto.value - top) <= max(auto.error_bound, 1e-5) * abs(top)
    # the same model without the clamp: the difference level runs (its check passes), same answer
    plain = _Calls(torch.tanh)
    smooth = catapult.sharpness(plain, loss_fn, (x, y), tol=1e-4)
    assert smooth.coarse_matvecs != sub.coarse_matvecs
    assert abs(smooth.value - top) <= max(smooth.error_bound, 1e-5) * abs(top)


def _double(model):
    import copy

    return copy.deepcopy(model).double()


def test_the_kink_guess_drops_only_a_leading_difference_level():
    # (mutation pass 19, SC20) kink_guess takes out the finite-difference level only where it leads
    # and sub-batch levels follow: levels that do not start with it, or it alone, stay as given
    # (SC20 dropped any first level of a kinked model)
    from catapult.curvature.coarse import kink_guess

    relu = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    for levels in ([(16, 3e-3), (4, 3e-3)], [(4, 1e-2), (FINITE_DIFFERENCE, 3e-3)], [(FINITE_DIFFERENCE, 3e-3)]):
        assert kink_guess(levels, relu, torch.float32) == levels
        assert kink_guess(levels, nn.Tanh(), torch.float32, graph=True) == levels
    assert kink_guess([(FINITE_DIFFERENCE, 3e-3), (4, 1e-2)], relu, torch.float32) == [(4, 1e-2)]


def test_a_kinked_union_keeps_a_lone_difference_level():
    # (mutation pass 19, KN10) across ranks, a kink guess drops the difference level only where
    # sub-batch levels follow: a small union's lone difference level stays (KN10 left no level)
    from catapult.curvature import distributed as dist_ops
    from catapult.curvature.coarse_ranks import union_levels

    x, y = torch.zeros(100, 3), torch.zeros(100)
    with dist_ops.single_process_group():
        assert union_levels((x, y), "auto", 1e-3, kinked=True) == [(FINITE_DIFFERENCE, 3e-3)]
        # explicit levels as given (a divisor of 4: 25 samples)
        assert union_levels((x, y), [(4, 1e-2), (FINITE_DIFFERENCE, 3e-3)], 1e-3, kinked=True) == \
            [(25, 1e-2), (FINITE_DIFFERENCE, 3e-3)]


class _Pooled(nn.Module):
    """A 2-channel 3x3 convolution of a 2-channel 1d, 2d or 3d input (8 wide), ``pool`` called on it, then a linear."""

    def __init__(self, dims, pool):
        super().__init__()
        torch.manual_seed(4)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.dims, self.conv, self.pool, self.out = dims, conv(2, 2, 3, padding=1), pool, nn.LazyLinear(3)

    def forward(self, x):
        return self.out(self.pool(torch.tanh(self.conv(x))).flatten(1))


# max-pooling in every form torch has (a kink where a window's largest entry changes); average pooling is smooth
_MAX_POOLS = [(1, lambda h: F.max_pool1d(h, 2)), (1, lambda h: F.max_pool1d(h, 2, return_indices=True)[0]),
              (2, lambda h: F.max_pool2d(h, 2)), (2, nn.MaxPool2d(3, stride=2, padding=1)),
              (2, lambda h: F.max_pool2d(h, 2, return_indices=True)[0]), (3, lambda h: F.max_pool3d(h, 2)),
              (1, lambda h: F.adaptive_max_pool1d(h, 3)), (2, nn.AdaptiveMaxPool2d(3)), (3, nn.AdaptiveMaxPool3d(2)),
              (2, lambda h: F.fractional_max_pool2d(h, 2, output_size=4, _random_samples=torch.full((1, 2, 2), 0.5))),
              (3, lambda h: F.fractional_max_pool3d(h, 2, output_size=4, _random_samples=torch.full((1, 2, 3), 0.5)))]
_AVG_POOLS = [(1, lambda h: F.avg_pool1d(h, 2)), (2, nn.AvgPool2d(2)), (2, nn.AdaptiveAvgPool2d(3)),
              (3, lambda h: F.avg_pool3d(h, 2))]


@pytest.mark.parametrize("dims, pool", _MAX_POOLS + _AVG_POOLS)
def test_the_operator_sees_max_pooling(dims, pool):
    # the graph walk marks max-pooling kinked (before, only the elementwise ops of KINKED_NODES were):
    # a float32 difference step crossed its kinks on a max-pool CNN (bench/bench_first_start.py cnnmax: the
    # difference level skipped after 2 gradients, 0.244 s against 0.199 s for the sub-batch levels).
    # Truth: the op's own grad_fn in the loss's graph (a MaxPool node, none for average pooling)
    model, x = _Pooled(dims, pool), torch.randn(1, 2, *[8] * dims, generator=torch.Generator().manual_seed(6))
    names, stack = set(), [model(x).sum().grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    maxed = any("MaxPool" in name for name in names)
    assert maxed == any(pool is p for _, p in _MAX_POOLS)
    op = HessianOperator(model, nn.MSELoss(), (x, torch.randn(1, 3)))
    assert op.kinked is maxed


def test_auto_starts_a_max_pool_cnn_at_the_sub_batch_levels():
    # a float32 CNN with nn.MaxPool2d: coarse="auto" takes the sub-batch levels' counts exactly (before,
    # it tried the difference level, which its kink check skipped after 2 gradients: +23% CPU, bench cnnmax)
    from catapult.curvature.coarse import COARSE_LEVELS

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(2)
    batch = (torch.randn(256, 3, 8, 8, generator=gen), torch.randint(0, 10, (256,), generator=gen))
    auto = catapult.sharpness(net, nn.CrossEntropyLoss(), batch)
    sub = catapult.sharpness(net, nn.CrossEntropyLoss(), batch, coarse=list(COARSE_LEVELS))
    assert (auto.matvecs, auto.coarse_matvecs, auto.value, auto.coarse_cost) == \
        (sub.matvecs, sub.coarse_matvecs, sub.value, sub.coarse_cost)
