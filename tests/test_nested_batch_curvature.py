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

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from catapult.curvature.coarse import COARSE_LEVELS, coarse_levels, sub_batch
from dense_curvature import dense_ggn, dense_hessian
from gloo_ranks import on_ranks
from torch_features import FSDP2

N = 320            # >= COARSE_MIN_SAMPLES: the sub-batch levels
SHARDS = (200, 120)


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


class LabelsInside(nn.Module):
    """HF style with the labels inside the input dict and the loss in the output (targets None)."""

    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, batch):
        return {"loss": ((self.core(torch.cat([batch["a"], batch["b"]], 1)) - batch["labels"]) ** 2).sum()}


def output_loss(out, _):
    return out["loss"]


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
    if name == "labels_in_inputs_sum":
        return LabelsInside(core), output_loss, ({"a": x[:, :2], "b": x[:, 2:], "labels": y}, None), sum_loss
    assert name == "dict_targets_sum"
    return core, dict_target_sum_loss, (x, {"y": y}), sum_loss


CASES = ["dict_inputs_mean", "pair_inputs_sum", "dict_targets_sum", "labels_in_inputs_sum"]


def test_coarse_levels_and_sub_batches_of_a_nested_batch_are_the_tensor_batchs():
    _, x, y = data()
    want = coarse_levels((x, y), "auto")
    assert [m for m, _ in want] == ["finite_difference"] + [N // d for d, _ in COARSE_LEVELS]
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
    chunked = catapult.sharpness(model, loss_fn, batch, tol=1e-9, max_iter=300, chunk_size=64)
    assert chunked.value == pytest.approx(top, rel=1e-10)   # labels_in_inputs_sum: was refused (targets None)
    lean = catapult.sharpness(model, loss_fn, batch, tol=1e-9, max_iter=600, memory="lean")
    assert lean.value == pytest.approx(top, rel=1e-10)
    assert lean.coarse_matvecs == catapult.sharpness(core, tensor_loss, (x, y), tol=1e-9, max_iter=600,
                                                     memory="lean").coarse_matvecs


def measure(model, loss_fn, batch, opt, **kw):
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "sharpness": catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=300, **kw).value,
        "lean": catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=1000, memory="lean", **kw).value,
        "ggn": catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=300, curvature="ggn", **kw).value,
        "preconditioned": catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-10, **kw).value,
        "top3": catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-10, **kw).values,
        "trace": catapult.hessian_trace(model, loss_fn, batch, matvecs=n_params, **kw),   # the exact diagonal
        "density": catapult.spectral_density(model, loss_fn, batch, runs=2, steps=10, **kw).density.tolist(),
        "critical_lr": catapult.critical_lr(model, loss_fn, batch, torch.optim.SGD(model.parameters(), lr=0.1),
                                            lr_start=1e-4, **kw).lr,
        "tracker": catapult.SharpnessTracker(model, loss_fn, None, tol=1e-10, **kw).step(batch).value,
    }


def adam(core, x, y):
    opt = torch.optim.Adam(core.parameters(), lr=1e-2)
    nn.functional.mse_loss(core(x), y).backward()
    opt.step()
    opt.zero_grad()
    return opt


def shard_measures(rank, world, name):
    lo, hi = sum(SHARDS[:rank]), sum(SHARDS[:rank + 1])
    core, x, y = data()
    opt = adam(core, x, y)      # the same full-batch step on every rank
    model, loss_fn, batch, _ = case(name, core, x[lo:hi], y[lo:hi])
    return measure(model, loss_fn, batch, opt, distributed=True)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("name", CASES)
def test_two_gloo_ranks_on_nested_shards_equal_one_process_on_the_union(name):
    """dict_targets_sum was silently wrong before (a mean taken for the sum: 566 for 1070), and so
    was labels_in_inputs_sum (targets None: 'cannot tell', a mean taken) once nested inputs were
    taken; nested inputs were refused ("needs the batch's inputs to be a tensor")."""
    ranks = on_ranks(shard_measures, name)
    core, x, y = data()
    opt = adam(core, x, y)
    model, loss_fn, batch, tensor_loss = case(name, core, x, y)
    single = measure(model, loss_fn, batch, opt)
    dense = np.linalg.eigvalsh(dense_hessian(core, tensor_loss, (x, y)).numpy())[::-1]
    assert single["sharpness"] == pytest.approx(dense[0], rel=1e-9)
    np.testing.assert_allclose(single["top3"], dense[:3], rtol=1e-9)
    assert single["trace"] == pytest.approx(dense.sum(), rel=1e-9)
    if name != "labels_in_inputs_sum":   # (there the model's output is the loss: another Gauss-Newton split)
        assert single["ggn"] == pytest.approx(np.linalg.eigvalsh(dense_ggn(core, tensor_loss, (x, y)))[-1], rel=1e-9)
    for got in ranks:
        for key in ("sharpness", "lean", "ggn", "preconditioned", "trace", "critical_lr", "tracker"):
            assert got[key] == pytest.approx(single[key], rel=1e-6), key
        np.testing.assert_allclose(got["top3"], single["top3"], rtol=1e-6)
        np.testing.assert_allclose(got["density"], single["density"], rtol=1e-6, atol=1e-9 * max(single["density"]))


class DictOut(nn.Module):
    """HF style out: ``{"logits": ...}``; nested inputs (a dict) or a tensor in."""

    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, batch):
        x = torch.cat([batch["a"], batch["b"]], 1) if isinstance(batch, dict) else batch
        return {"logits": self.core(x)}


def logits_sum_loss(out, t):
    return ((out["logits"] - t["y"]) ** 2).sum()


def fsdp_batch(which, x, y):
    inputs = {"a": x[:, :2], "b": x[:, 2:]} if which == "dict_inputs" else x
    return inputs, {"y": y}


def fsdp_sharpness(rank, world, which):
    from torch.distributed.fsdp import fully_shard

    core, x, y = data()
    lo, hi = sum(SHARDS[:rank]), sum(SHARDS[:rank + 1])
    model = DictOut(core)
    fully_shard(model.core.l1)
    fully_shard(model)
    return catapult.sharpness(model, logits_sum_loss, fsdp_batch(which, x[lo:hi], y[lo:hi]), tol=1e-10,
                              distributed=True).value


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@FSDP2
@pytest.mark.parametrize("which", ["dict_inputs", "tensor_inputs"])
def test_two_fsdp_ranks_with_dict_outputs_and_targets_equal_one_process_on_the_union(which):
    """A model sharded by FSDP2 tells a mean from a sum from its output's rows: dict outputs and
    targets were 'cannot tell', so a sum loss was taken for a mean (tensor inputs: silently wrong);
    dict inputs were refused."""
    core, x, y = data()
    top = float(torch.linalg.eigvalsh(dense_hessian(core, sum_loss, (x, y)))[-1])
    for value in on_ranks(fsdp_sharpness, which):
        assert value == pytest.approx(top, rel=1e-8)   # float64 central differences of FSDP's gradient
