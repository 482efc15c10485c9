"""Micro-batches (``chunk_size``) of a token mean that leaves -100 targets out (``F.cross_entropy``): the
pieces are weighted by their counted targets, as ``distributed=True`` weighs the ranks, and a piece whose
targets are all -100 is left out. Before, such a batch with -100 unevenly across the pieces was refused as
'neither a mean nor a sum over samples' (the pieces weighted by their samples), though the whole batch
was measured. Truth: the dense float64 Hessian of the whole batch's loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import catapult
from dense_curvature import dense_hessian


def _problem(tokens: bool):
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    if tokens:   # (samples, tokens) labels, padded unevenly; the loss flattens the tokens
        x = torch.randn(6, 2, 3, dtype=torch.float64)
        y = torch.tensor([[0, 1], [2, -100], [-100, -100], [3, -100], [1, 2], [0, -100]])
        return model, lambda out, t: F.cross_entropy(out.reshape(-1, 4), t.reshape(-1)), x, y
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.tensor([0, -100, -100, -100, 1, 2, 3, 1])   # rows 2, 3: a piece of 2 holding -100 alone
    return model, F.cross_entropy, x, y


@pytest.mark.parametrize("tokens", [False, True], ids=["labels", "token_labels"])
@pytest.mark.parametrize("chunk_size", [2, 3, 4])
def test_micro_batches_of_a_token_mean_with_ignored_targets_give_the_whole_batchs_sharpness(tokens, chunk_size):
    model, loss_fn, x, y = _problem(tokens)
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    # tol 1e-10 on 16 parameters: Lanczos converges to the float64 eigenvalue's rounding (~1e-15 relative)
    got = catapult.sharpness(model, loss_fn, (x, y), tol=1e-10, chunk_size=chunk_size)
    assert got.value == pytest.approx(top, rel=1e-8)
    assert got.value == pytest.approx(catapult.sharpness(model, loss_fn, (x, y), tol=1e-10).value, rel=1e-8)


def _masked_token_mean(out, y):
    """A token mean written by hand: the counted targets' terms over their count (0 / 0 on a piece whose
    targets are all -100, whose gradient is nan, where F.cross_entropy's is 0)."""
    keep = y != -100
    return (F.cross_entropy(out, y.clamp(min=0), reduction="none") * keep).sum() / keep.sum()


@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse"])
def test_a_piece_whose_targets_are_all_ignored_is_left_out_of_the_products(hvp):
    # rows 2, 3 (the second piece of 2) hold -100 alone: weight 0, and that piece's nan gradient kept as a
    # piece gave nan products (0 x nan) (mutation pass 27, MB2); left out, the whole batch's sharpness
    model, _, x, y = _problem(False)
    top = np.linalg.eigvalsh(dense_hessian(model, _masked_token_mean, (x, y)).numpy())[-1]
    got = catapult.sharpness(model, _masked_token_mean, (x, y), tol=1e-10, chunk_size=2, hvp=hvp)
    assert got.value == pytest.approx(top, rel=1e-8)


@pytest.mark.parametrize("chunk_size", [3, 5])   # counted shares 5/9, 4/9 and 8/9, 1/9; by samples half and 5/6
def test_a_batch_where_every_sample_holds_an_ignored_token_is_weighted_by_its_counted_targets(chunk_size):
    # no sample's tokens all count (2, 1, 2, 1, 2, 1 of 3): the -100 test asks a sample with some counted
    # target, not one whose targets all count (mutation pass 27, SR1: such a batch was then told by its
    # samples, and refused as neither a mean nor a sum)
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    y = torch.tensor([[0, 1, -100], [2, -100, -100], [-100, 3, 1], [3, -100, -100], [1, 2, -100], [0, -100, -100]])

    def loss_fn(out, t):
        return F.cross_entropy(out.reshape(-1, 4), t.reshape(-1))
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    got = catapult.sharpness(model, loss_fn, (x, y), tol=1e-10, chunk_size=chunk_size)
    assert got.value == pytest.approx(top, rel=1e-8)
