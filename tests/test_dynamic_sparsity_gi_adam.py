"""The optimizer state of a weight RigL grows, against a NumPy re-derivation of three steps of a
one-layer least-squares model: Adam's moments of a grown entry restart at 0 (RigL's reference
code); GI-Adam's second moment restarts at ``init(g)`` of the dense gradient RigL grew it by, as
GI-Adam starts every entry (a zero ``v`` gave it Adam's large first step)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.optim import GIAdam
from catapult.sparsity import MaskedLinear, MaskUpdater

W0 = np.array([[0.5, -0.2, 0.0], [0.0, 0.8, 0.0]])
M0 = np.array([[True, True, False], [False, True, False]])
X = np.array([[1.0, -2.0, 0.5], [0.3, 1.0, -1.5], [2.0, 0.1, 1.0], [-0.7, 0.4, 2.5]])
Y = np.array([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5], [2.0, -1.0]])
LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-8


def _dense_grad(w):
    """dL/d(W ⊙ M) of L = sum((X W^T - Y)^2) / (2 n)."""
    return (X @ w.T - Y).T @ X / len(X)


def _numpy_run(v0, v_bias_correction):
    """Steps t = 0, 1, 2 with a RigL update after t = 1 (k = 1: drop the smallest |w| active,
    grow the largest |dense grad| inactive); v0 None is Adam."""
    w, mask = W0 * M0, M0.copy()
    m, v = np.zeros_like(w), None
    for t in range(3):
        dense = _dense_grad(w)
        g = dense * mask
        if v is None:
            v = np.zeros_like(w) if v0 is None else v0 * g * g
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        v_hat = v / (1 - B2 ** (t + 1)) if v_bias_correction else v
        w = w - LR * (m / (1 - B1 ** (t + 1))) / (np.sqrt(v_hat) + EPS)
        w = w * mask
        if t == 1:
            active = np.flatnonzero(mask)
            drop = active[np.argmin(np.abs(w.ravel()[active]))]
            inactive = np.flatnonzero(~mask.ravel() | (np.arange(w.size) == drop))
            grow = inactive[np.argmax(np.abs(dense.ravel()[inactive]))]
            assert grow != drop
            grown = np.zeros(w.size, bool)
            grown[grow] = True
            grown = grown.reshape(w.shape)
            mask = mask.copy()
            mask.ravel()[drop], mask.ravel()[grow] = False, True
            w = w * mask
            m = m * mask
            v = v * mask
            if v0 is not None:
                v[grown] = v0 * dense[grown] ** 2  # GI-Adam's start of a fresh entry
            at_growth = dense
    return w, m, v, grown, at_growth


def _torch_run(optimizer_of, steps=3):
    layer = MaskedLinear(3, 2, bias=False).double()
    layer.set_mask(torch.tensor(M0))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W0))
    optimizer = optimizer_of([layer.weight])
    updater = MaskUpdater(torch.nn.Sequential(layer), "rigl", update_every=1, end_step=100, drop_fraction=0.5)
    x, y, weights = torch.tensor(X), torch.tensor(Y), []
    for t in range(steps):
        optimizer.zero_grad()
        ((layer(x) - y) ** 2).sum().div(2 * len(x)).backward()
        optimizer.step()
        weights.append(layer.weight.detach().numpy().copy())
        changed = updater.step(t, optimizer)
        assert changed == (t == 1)  # t = 1: fraction 0.25 (1 + cos(pi / 100)) of 3 active -> k = 1
    return layer, optimizer.state[layer.weight], weights


@pytest.mark.parametrize("v0, v_bias_correction", [("grad", True), ("grad", False), (2.0, True)])
def test_a_grown_weight_starts_gi_adams_second_moment_from_its_dense_gradient(v0, v_bias_correction):
    w, m, v, grown, _ = _numpy_run(1.0 if v0 == "grad" else v0, v_bias_correction)
    layer, state, _ = _torch_run(lambda ps: GIAdam(ps, lr=LR, betas=(B1, B2), eps=EPS, v0=v0,
                                                v_bias_correction=v_bias_correction))
    assert torch.equal(layer.mask, torch.tensor(w != 0) | torch.tensor(grown))
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(layer.weight.detach().numpy(), w, rtol=1e-12, atol=1e-300)
    # the grown weight's first step is GI-Adam-sized: far below Adam's lr (1 - b1) / sqrt(1 - b2)
    assert 0 < abs(w[grown][0]) < 0.5 * LR


def test_adams_moments_of_a_grown_weight_restart_at_zero():
    w, m, v, grown, _ = _numpy_run(None, True)
    layer, state, _ = _torch_run(lambda ps: torch.optim.Adam(ps, lr=LR, betas=(B1, B2), eps=EPS))
    for key, expected in (("exp_avg_sq", v), ("exp_avg", m)):
        np.testing.assert_allclose(state[key].numpy(), expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(layer.weight.detach().numpy(), w, rtol=1e-12, atol=1e-300)


def test_gi_adams_random_v0_restarts_a_grown_entry_positive_with_the_norm_of_its_g_squared():
    # one grown entry: its v_0 = r ||g^2|| / ||r|| is g^2 itself, g its dense gradient at growth
    runs = [_torch_run(lambda ps: GIAdam(ps, lr=LR, betas=(B1, B2), eps=EPS, v0="random", seed=3), steps=2)
            for _ in range(2)]
    (layer, state, weights), (_, again, _) = runs
    assert torch.equal(state["exp_avg_sq"], again["exp_avg_sq"])  # seeded
    grown = (layer.mask & ~torch.tensor(M0)).numpy()
    dense = _dense_grad(weights[0])  # at the weights the growth step's gradient was taken
    v, m = state["exp_avg_sq"].numpy(), state["exp_avg"].numpy()
    assert grown.sum() == 1
    np.testing.assert_allclose(v[grown], dense[grown] ** 2, rtol=1e-12)
    assert m[grown] == 0 and bool((v[layer.mask.numpy()] > 0).all())
