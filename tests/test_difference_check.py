"""Finite-difference Hessian-vector products checked for kinks (catapult.curvature.difference).

The truth is the dense Hessian of a tiny ReLU MLP (autograd's, exact almost everywhere). One
hidden unit's pre-activation on one sample is put 5e-7 from its kink, so the first central step
(eps^(1/3) = 6.1e-6 in float64) crosses it and the difference is far off, while the next step
(h / 16) does not.
"""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.curvature import HessianOperator, difference
from dense_curvature import dense_hessian


def near_kink_mlp():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():  # unit 0 of sample 0 sits 5e-7 above its kink
        model[0].bias[0] = 5e-7 - model[0].weight[0] @ x[0]
    return model, torch.nn.MSELoss(), (x, y)


def crossing_direction(model):
    # along the first layer's weights of unit 0: moves the near-kink pre-activation most
    v = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    v[:3] = 1.0
    return v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_a_product_across_a_kink_is_retaken_at_a_smaller_step(monkeypatch):
    model, loss_fn, batch = near_kink_mlp()
    H = dense_hessian(model, loss_fn, batch)
    v = crossing_direction(model)
    exact = H @ v
    op = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    got = op(v)
    assert op.shrunk_steps >= 1 and op.difference_gap <= difference.MAX_GAP
    assert float(torch.linalg.vector_norm(got - exact)) <= 1e-7 * float(torch.linalg.vector_norm(exact))
    # what the check prevents: the first step's difference alone is far off
    monkeypatch.setattr(difference, "MAX_GAP", float("inf"))
    unchecked = HessianOperator(model, loss_fn, batch, hvp="finite_difference")(v)
    assert float(torch.linalg.vector_norm(unchecked - exact)) > 1e-2 * float(torch.linalg.vector_norm(exact))


def test_accumulate_takes_back_a_rejected_step():
    # accumulate adds the first step's forward difference into `out` before it can test it;
    # a rejected step must leave `out` as it was, so out + H v comes out right
    model, loss_fn, batch = near_kink_mlp()
    H = dense_hessian(model, loss_fn, batch)
    v = crossing_direction(model)
    for chunk in (None, 2):
        op = HessianOperator(model, loss_fn, batch, hvp="finite_difference", chunk_size=chunk)
        start = torch.linspace(-3.0, 5.0, op.numel, dtype=torch.float64)
        out = op.accumulate(v, start.clone())
        assert op.shrunk_steps >= 1
        want = start + H @ v
        assert float(torch.linalg.vector_norm(out - want)) <= 1e-7 * float(torch.linalg.vector_norm(H @ v))


def test_float32_relu_products_are_refused_not_wrong():
    # in float32 the steps that avoid the kinks are swamped by rounding: before the check this
    # MLP's sharpness came out 2.34 (fast) or 0.105 (lean) against the exact 0.830, "converged"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10)).float()
    batch = (torch.randn(128, 32, dtype=torch.float32), torch.randint(0, 10, (128,)))
    loss_fn = torch.nn.CrossEntropyLoss()
    for memory in ("fast", "lean"):
        with pytest.raises(ValueError, match="kinks of the loss"):
            catapult.sharpness(model, loss_fn, batch, hvp="finite_difference", coarse=None, memory=memory)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smooth_losses_pass_the_check_at_the_first_step(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)
    batch = (torch.randn(20, 6, dtype=dtype), torch.randint(0, 3, (20,)))
    loss_fn = torch.nn.CrossEntropyLoss()
    H = dense_hessian(model, loss_fn, batch)   # in float64
    op = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    for seed in range(5):
        v = torch.randn(op.numel, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        err = torch.linalg.vector_norm(op(v).double() - H @ v.double()) / torch.linalg.vector_norm(H @ v.double())
        assert float(err) <= (1e-9 if dtype == torch.float64 else 1e-4)
    assert op.shrunk_steps == 0 and op.difference_gap <= difference.MAX_GAP
    if dtype == torch.float64:  # in float32 the second difference is at the gradients' rounding
        assert op.difference_gap > 0


def test_the_gap_and_the_retries_are_the_operators_over_all_its_products():
    # mutation pass 21 (DP3, DP4): difference_gap is the largest gap of every product so far (not the last one's),
    # shrunk_steps the sum of every product's retries (not the last one's)
    model, loss_fn, batch = near_kink_mlp()
    v = crossing_direction(model)
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alone = {}
    for name, u in (("v", v), ("w", w)):
        op = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
        op(u)
        alone[name] = (op.difference_gap, op.shrunk_steps)
    assert alone["v"][0] != alone["w"][0] and alone["v"][1] >= 1
    first, last = sorted(("v", "w"), key=lambda name: -alone[name][0])   # the larger gap first
    both = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    both({"v": v, "w": w}[first])
    both({"v": v, "w": w}[last])
    assert both.difference_gap == alone[first][0]
    twice = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    twice(v)
    twice(v)
    assert twice.shrunk_steps == 2 * alone["v"][1]


def test_a_forward_difference_at_a_non_finite_loss_is_nan():
    # mutation pass 21 (DP5): a weight of inf makes the loss nan: the product is nan, not a zero that reads as flat
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, float("inf"))
    op = HessianOperator(model, torch.nn.MSELoss(), (torch.ones(3, 2), torch.ones(3, 1)), dtype=torch.float64)
    for v in (torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)):
        assert bool(op.forward_difference(v).isnan().all())


def test_a_zero_vectors_product_is_zero():
    # mutation pass 21 (DP10): ||v|| = 0 returns before the step h / ||v|| (inf; the shifted parameters were nan)
    model, loss_fn, batch = near_kink_mlp()
    op = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    assert op(torch.zeros(op.numel, dtype=torch.float64)).abs().max() == 0
    start = torch.linspace(-3.0, 5.0, op.numel, dtype=torch.float64)
    assert torch.equal(op.accumulate(torch.zeros(op.numel, dtype=torch.float64), start.clone()), start)


def test_the_difference_rounding_is_eps_times_the_scaled_gradient_over_the_first_step():
    # mutation pass 21 (DP7, DP8): eps ||scale * g|| / h, h = eps^(1/3) (float64: eps = 2^-52); g by autograd
    model, loss_fn, batch = near_kink_mlp()
    op = HessianOperator(model, loss_fn, batch, hvp="finite_difference")
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(model(batch[0]), batch[1]),
                                                             list(model.parameters()))])
    scale = torch.linspace(0.5, 4.0, op.numel, dtype=torch.float64)
    eps = 2.0 ** -52
    for s, want in ((None, g), (scale, scale * g)):
        got = op.difference_rounding() if s is None else op.difference_rounding(s)
        assert got == pytest.approx(eps * float(torch.linalg.vector_norm(want)) / eps ** (1 / 3), rel=1e-12)


def test_the_kink_bound_and_the_rounding_level_are_the_measured_constants():
    # Mutation pass 22 (DF1, DF3): a gap of 0.15 (above MAX_GAP 0.1, below the ReLU kinks' 0.28) is
    # taken again at a 16 times smaller step; a second difference within 64 ulps of ||g|| is rounding
    from catapult.curvature.difference import checked_difference, relative_gap, rounding_level

    steps = []

    def product_at(h):
        steps.append(h)
        gap = 0.15 if len(steps) == 1 else 0.05
        return gap, (lambda accepted: h if accepted else None)

    product, gap, retries = checked_difference(product_at, 1.0)
    assert (product, gap, retries, steps) == (1.0 / 16, 0.05, 1, [1.0, 1.0 / 16])
    eps = 2.0 ** -52
    assert rounding_level(eps, 2.0) == 128 * eps
    assert relative_gap(60 * eps, 1e-10, noise=rounding_level(eps, 1.0)) == 0.0


def test_a_difference_that_is_not_finite_is_accepted_as_a_diverged_models_nan():
    # Mutation pass 22 (DF4, DF5): either norm not finite is a nan gap, and a nan gap is accepted at
    # the first step (the solvers report the nan), not retried into an UnreliableDifferenceError
    import math

    from catapult.curvature.difference import checked_difference, relative_gap

    assert math.isnan(relative_gap(math.inf, 1.0)) and math.isnan(relative_gap(1.0, math.nan))
    calls = []

    def product_at(h):
        calls.append(h)
        return math.nan, (lambda accepted: "nan product" if accepted else None)

    assert checked_difference(product_at, 1e-3)[::2] == ("nan product", 0) and calls == [1e-3]


def test_checked_difference_tries_three_steps_each_sixteen_times_smaller():
    """STEPS = 3 at h, h/16, h/256: a pass at the third step is taken, three failures are refused
    naming the three gaps (mutation pass 22b, DF2: STEPS = 2 refused the product h/256 passes)."""
    from catapult.curvature.difference import UnreliableDifferenceError, checked_difference
    def fake(gaps, steps):
        def product_at(h):
            steps.append(h)
            return gaps[len(steps) - 1], lambda accepted: ("product", h) if accepted else None
        return product_at
    steps = []
    assert checked_difference(fake([0.5, 0.5, 0.0], steps), 1.0) == (("product", 1 / 256), 0.0, 2)
    assert steps == [1.0, 1 / 16, 1 / 256]
    steps = []
    with pytest.raises(UnreliableDifferenceError, match=r"differ by 0\.5, 0\.6, 0\.7 of the product at the steps 1 \.\. 0\.0039"):
        checked_difference(fake([0.5, 0.6, 0.7, 0.0], steps), 1.0)
    assert steps == [1.0, 1 / 16, 1 / 256]


def test_scaled_step_multiplies_the_step_factor_it_finds():
    """Nested: factor 2 inside factor 3 is 6, and each block restores what it found (mutation pass
    22b, DF10: the inner block set 2, dropping the outer 3)."""
    from catapult.curvature.difference import scaled_step
    class Differences:
        step_factor = 1.0
    op = Differences()
    with scaled_step(op, 3.0):
        with scaled_step(op, 2.0):
            assert op.step_factor == 6.0
        assert op.step_factor == 3.0
    assert op.step_factor == 1.0


def test_relative_gap_above_the_noise_is_the_plain_ratio():
    """second > noise: second / first, the noise not added to the first (mutation pass 22b, DF11:
    0.5 / (1 + 0.25) = 0.4 for the true 0.5)."""
    from catapult.curvature.difference import relative_gap
    assert relative_gap(0.5, 1.0, noise=0.25) == 0.5
    assert relative_gap(0.25, 1.0, noise=0.25) == 0.0
