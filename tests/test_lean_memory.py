"""memory="lean" sizes its micro-batches and Krylov basis from the problem (issue 16): the sizes
against hand computations, the activation estimate against a hand count, and lean = fast."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import catapult
from catapult.curvature.lean import activation_bytes, lean_sizes
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
def test_lean_sizes_match_the_hand_computation(n, expected):
    model, loss_fn, batch = mlp(n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory_setting("lean", batch, None, None, model, loss_fn) == expected
    # an explicit max_basis caps the sized basis; an explicit chunk_size wins
    assert memory_setting("lean", batch, 7, 2, model, loss_fn) == (7, min(2, expected[1]))
    assert memory_setting("fast", batch, None, None, model, loss_fn) == (None, 20)  # unchanged


def test_lean_warns_and_uses_the_minimum_when_3x_cannot_be_met():
    # n = 8: A = 2240, L = 2048 -> m = 4 (560); T = 6360;
    # (19080 - 16576 - ceil(2.6 * 560)) // 2072 = 1048 // 2072 = 0 < 3: not possible
    assert lean_sizes(2072, 2240, 2048, 8) == (4, 3, False)
    model, loss_fn, batch = mlp(8)
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        assert memory_setting("lean", batch, None, None, model, loss_fn) == (2, 3)


def test_lean_and_fast_agree_on_the_top_eigenvalue_within_tol():
    model, loss_fn, batch = mlp(8, seed=1)  # lean: 4 micro-batches, basis 3 (restarts)
    tol = 1e-6
    fast = catapult.sharpness(model, loss_fn, batch, tol=tol, max_iter=1000)
    with pytest.warns(RuntimeWarning):  # 3 vectors restart often: give it the products it needs
        lean = catapult.sharpness(model, loss_fn, batch, tol=tol, max_iter=1000, memory="lean")
    assert fast.converged and lean.converged
    assert lean.matvecs >= fast.matvecs  # the smaller basis pays in products, not accuracy
    assert lean.value == pytest.approx(fast.value, rel=tol)
    assert lean.residual <= tol
