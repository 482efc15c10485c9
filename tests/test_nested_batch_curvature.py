"""Nested batches (an HF-style dict of inputs, a two-input model's pair, dict targets) in the
curvature paths beyond ``chunk_size`` (tests/test_chunk_nested_inputs.py): the default coarse-to-
fine start and ``distributed=True``. Before, a dict batch of >= 256 samples silently got the
finite-difference coarse level instead of the sub-batch levels a tensor batch gets, explicit
sub-batch levels were refused, every ``distributed=True`` call with nested inputs was refused, and
tensor inputs with dict targets under a *sum* loss on 2 ranks were weighted as a mean (a sharpness
of 566 for 1070: silently wrong). Truth: dense float64 Hessians of the same model on the
equivalent tensor batch (the models below only re-pack their input), and one process on the
union of the shards."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature.coarse import COARSE_LEVELS, coarse_levels, sub_batch
from dense_curvature import dense_hessian

N = 320            # >= COARSE_MIN_SAMPLES: the sub-batch levels


class Core(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class DictInputs(nn.Module):
    """HF style: ``{"a", "b", "scale"}`` in, the core's output of their concatenation out."""

    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, batch):
        return self.core(torch.cat([batch["a"], batch["b"]], 1) * batch["scale"])


class PairInputs(nn.Module):
    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, xs):
        return self.core(torch.cat(xs, 1))


def sum_loss(out, y):
    return ((out - y) ** 2).sum()


def dict_target_sum_loss(out, t):
    return ((out - t["y"]) ** 2).sum()


def data():
    torch.manual_seed(0)
    core = Core().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(N, 2, generator=gen, dtype=torch.float64)
    return core, x, y


def case(name, core, x, y):
    """``(model, loss_fn, nested batch, tensor loss_fn)``: the nested batch's loss is the tensor
    loss_fn of ``core`` on ``(x, y)``."""
    if name == "dict_inputs_mean":
        return DictInputs(core), nn.MSELoss(), ({"a": x[:, :2], "b": x[:, 2:], "scale": 1.0}, y), nn.MSELoss()
    if name == "pair_inputs_sum":
        return PairInputs(core), sum_loss, ((x[:, :3], x[:, 3:]), y), sum_loss
    assert name == "dict_targets_sum"
    return core, dict_target_sum_loss, (x, {"y": y}), sum_loss


CASES = ["dict_inputs_mean", "pair_inputs_sum", "dict_targets_sum"]


def test_coarse_levels_and_sub_batches_of_a_nested_batch_are_the_tensor_batchs():
    _, x, y = data()
    want = coarse_levels((x, y), "auto")
    assert [m for m, _ in want] == [N // d for d, _ in COARSE_LEVELS]
    for name in CASES:
        model, _, batch, _ = case(name, *data())
        assert coarse_levels(batch, "auto") == want, name
        assert coarse_levels(batch, ((4, 1e-3),)) == [(N // 4, 1e-3)], name   # was refused
    # every 16th row, in every tensor of the nested inputs and targets (a flag goes whole)
    sub_x, sub_y = sub_batch(x, y, 20)
    nested_x, nested_y = sub_batch({"a": x[:, :2], "b": x[:, 2:], "scale": 1.0}, {"y": y}, 20)
    assert torch.equal(torch.cat([nested_x["a"], nested_x["b"]], 1), sub_x) and nested_x["scale"] == 1.0
    assert torch.equal(nested_y["y"], sub_y) and torch.equal(sub_x, x[::16])
    # targets with another sample count than the inputs get no sub-batch levels, nested or not
    assert coarse_levels(({"a": x}, {"y": y[:5]}), "auto") == coarse_levels((x, y[:5]), "auto")


@pytest.mark.parametrize("name", CASES)
def test_default_coarse_start_of_a_nested_batch_is_the_tensor_batchs(name):
    core, x, y = data()
    model, loss_fn, batch, tensor_loss = case(name, core, x, y)
    top = float(torch.linalg.eigvalsh(dense_hessian(core, tensor_loss, (x, y)))[-1])
    tensor = catapult.sharpness(core, tensor_loss, (x, y), tol=1e-9, max_iter=300)
    nested = catapult.sharpness(model, loss_fn, batch, tol=1e-9, max_iter=300)
    assert tensor.value == pytest.approx(top, rel=1e-10)
    assert nested.value == pytest.approx(top, rel=1e-10)
    # the same levels (sub-batches, not the finite-difference level), so the same products
    assert (nested.coarse_matvecs, nested.matvecs) == (tensor.coarse_matvecs, tensor.matvecs)
    lean = catapult.sharpness(model, loss_fn, batch, tol=1e-9, max_iter=600, memory="lean")
    assert lean.value == pytest.approx(top, rel=1e-10)
    assert lean.coarse_matvecs == catapult.sharpness(core, tensor_loss, (x, y), tol=1e-9, max_iter=600,
                                                     memory="lean").coarse_matvecs
