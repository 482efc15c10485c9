"""Whether a loss is a mean or a sum over samples (``chunk_size``, lean's micro-batches) at any
scale of the loss: the losses were compared to an absolute floor of 1e-30, so a genuine loss
below it (2**-300 x MSE) was refused as 'cannot tell whether loss_fn is a mean or a sum'.
Truth: the dense float64 Hessian's top eigenvalue, times 2**k."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature.microbatch import reduction_kind
from dense_curvature import dense_hessian


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    return model, (torch.randn(8, 3, generator=gen, dtype=torch.float64),
                   torch.randn(8, 2, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("exponent", [-300, 300])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("split", ["chunk_size", "lean"])
def test_micro_batches_of_a_scaled_loss(exponent, reduction, split, lean_chunks_small_batches):
    model, batch = _model_and_batch()
    c = 2.0 ** exponent

    def loss_fn(out, y):
        return c * nn.functional.mse_loss(out, y, reduction=reduction)

    top = float(torch.linalg.eigvalsh(dense_hessian(model, nn.MSELoss(reduction=reduction), batch))[-1])
    options = dict(chunk_size=3) if split == "chunk_size" else dict(memory="lean")
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-10, **options)
    assert est.value == pytest.approx(c * top, rel=1e-8)


@pytest.mark.parametrize("exponent", [-300, -120, 0, 300])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("nearby", [True, False])
def test_reduction_kind_of_a_scaled_loss(exponent, reduction, nearby):
    # without the nudged retry too (FSDP2's halves): the losses' own scale, not 1e-30
    c = 2.0 ** exponent
    loss_at = lambda p, x, y: c * nn.functional.mse_loss(x * p["w"], y, reduction=reduction)
    x, y = torch.arange(1.0, 6.0, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    pieces = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert reduction_kind(loss_at, {"w": torch.tensor(0.5, dtype=torch.float64)}, x, y, pieces, torch.float64,
                          nearby=nearby)[1] == reduction


def test_an_exact_fit_that_is_only_rounding_cannot_tell_without_the_retry():
    # FSDP2's halves (no nudged retry): losses at rounding level that are neither a mean nor a sum
    # of the whole's (an exact fit) cannot tell (the rank follows the others), as before; above
    # rtol x 1e-30 apart they are neither (refused), as before
    x = torch.zeros(5)
    pieces = [(x[:3], x[:3]), (x[3:], x[3:])]
    for losses, kind in (({3: 1.3e-42, 2: 4.0e-43, 5: 2.9e-42}, "both"), ({3: 1.3e-33, 2: 4.0e-34, 5: 2.9e-33}, None)):
        loss_at = lambda p, x, y: torch.tensor(losses[len(x)], dtype=torch.float64)
        assert reduction_kind(loss_at, {}, x, x, pieces, torch.float64, nearby=False)[1] == kind


class LossInside(nn.Module):
    """HF style: the labels in, the scalar loss out (no sample rows: FSDP2's check runs the halves)."""

    def __init__(self, core, scale, reduction):
        super().__init__()
        self.core, self.scale, self.reduction = core, scale, reduction

    def forward(self, batch):
        return self.scale * nn.functional.mse_loss(self.core(batch["x"]), batch["labels"], reduction=self.reduction)


@pytest.mark.parametrize("exponent", [-300, 0, 300])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sharded_halves_of_a_scaled_scalar_loss(exponent, reduction):
    # before: at 2**-300 'both' (cannot tell) on the rank, and a mean was taken for a sum loss (its
    # sharpness 1/2 the union's on 2 ranks)
    from catapult.curvature.distributed import single_process_group
    from catapult.curvature.shard_reduction import sharded_shard_reduction
    core, (x, y) = _model_and_batch()
    with single_process_group():
        kind = sharded_shard_reduction(LossInside(core, 2.0 ** exponent, reduction), lambda out, _: out,
                                       ({"x": x, "labels": y}, None))
        with torch.no_grad():
            fitted = core(x)   # an exact fit: 0 or rounding here, told at parameters nudged 1% (was None)
        fit = sharded_shard_reduction(LossInside(core, 2.0 ** exponent, reduction), lambda out, _: out,
                                      ({"x": x, "labels": fitted}, None))
    assert kind == reduction and fit == reduction


@pytest.mark.parametrize("exponent", [-300, 0, 300])
def test_sharded_halves_of_a_scaled_root_mean_square_are_neither(exponent):
    # before: at 2**-300 the halves' losses (~1e-91) fell below the rounding floor of 1e-30: 'both'
    # (cannot tell), the rank followed the others and a mean was taken
    from catapult.curvature.distributed import single_process_group
    from catapult.curvature.shard_reduction import sharded_shard_reduction
    core, (x, y) = _model_and_batch()
    model = LossInside(core, 2.0 ** exponent, "mean")
    model.forward = lambda batch: model.scale * ((core(batch["x"]) - batch["labels"]) ** 2).mean().sqrt()
    with single_process_group(), pytest.raises(ValueError, match="neither a mean nor a sum"):
        sharded_shard_reduction(model, lambda out, _: out, ({"x": x, "labels": y}, None))


def test_a_root_mean_square_is_neither_at_any_scale():
    loss_at = lambda p, x, y: 2.0 ** -300 * ((x * p["w"] - y) ** 2).mean().sqrt()
    x, y = torch.arange(1.0, 6.0, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    pieces = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert reduction_kind(loss_at, {"w": torch.tensor(0.5, dtype=torch.float64)}, x, y, pieces,
                          torch.float64)[1] is None


def test_one_kind_within_the_rounding_floor_alone_is_still_neither():
    # (mutation pass 18, MB3) without the retry only 'both within rtol x 1e-30' is an exact fit's
    # rounding: a whole 2.5e-39 whose pieces' mean is 2e-39 (20% apart) and sum 4e-39 is neither,
    # not a mean (float64's rtol 1e-9 x 1e-30 holds the mean's 5e-40 gap, not the sum's 1.5e-39)
    x = torch.zeros(5)
    pieces = [(x[:3], x[:3]), (x[3:], x[3:])]
    losses = {3: 2.0e-39, 2: 2.0e-39, 5: 2.5e-39}
    loss_at = lambda p, x, y: torch.tensor(losses[len(x)], dtype=torch.float64)
    assert reduction_kind(loss_at, {}, x, x, pieces, torch.float64, nearby=False)[1] is None


def test_a_loss_that_is_zero_everywhere_is_both():
    # (mutation pass 18, MB7) 0 here and at the nudged parameters: a mean and a sum of zeros, 'both'
    # (a strict comparison took 0 <= 0 for a miss: neither)
    loss_at = lambda p, x, y: (x * p["w"] * 0.0).sum()
    x = torch.arange(1.0, 6.0, dtype=torch.float64)
    pieces = [(x[:3], x[:3]), (x[3:], x[3:])]
    for nearby in (True, False):
        assert reduction_kind(loss_at, {"w": torch.tensor(0.5, dtype=torch.float64)}, x, x, pieces,
                              torch.float64, nearby=nearby)[1] == "both"


@pytest.mark.parametrize("whole, pieces_loss", [(1.0, 1.0201), (1.0201, 1.0)])
def test_the_comparison_is_relative_to_the_larger_of_the_two(whole, pieces_loss):
    # (mutation pass 18, MB6) float16's rtol is 2% (400 eps = 0.39, capped): |1 - 1.0201| = 0.0201 is within
    # 2% of 1.0201, the larger, whichever side holds it (relative to the whole alone it was a miss one way)
    x = torch.zeros(5)
    pieces = [(x[:3], x[:3]), (x[3:], x[3:])]
    losses = {3: pieces_loss, 2: pieces_loss, 5: whole}
    loss_at = lambda p, x, y: torch.tensor(losses[len(x)], dtype=torch.float64)
    assert reduction_kind(loss_at, {}, x, x, pieces, torch.float16, nearby=False)[1] == "mean"


def test_nudged_parameters_move_each_by_its_size_plus_the_scale_from_a_seed_of_0():
    """Each floating parameter moves by ``scale (mean|p| + scale) z``, ``z`` the next standard normal
    draws of a CPU generator seeded 0 (in the parameters' order): a zero parameter (a zero-initialized
    readout) moves by ``scale**2 z`` too; the global RNG is left alone, and the parameters come back
    bit for bit."""
    from catapult.curvature.shard_reduction import nudged_parameters

    model = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.5, -1.5], dtype=torch.float64))
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(7)
    state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(0)
    want = [b + 1e-2 * (float(b.abs().mean()) + 1e-2) * torch.randn(b.shape, generator=gen, dtype=b.dtype)
            for b in before]
    with nudged_parameters(model):
        inside = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(p, w) for p, w in zip(inside, want))
    assert not torch.equal(inside[0], before[0])   # the zero weight moved
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
