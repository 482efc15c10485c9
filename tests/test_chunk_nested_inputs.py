"""``chunk_size`` (micro-batched products) on a batch whose inputs or targets are nested: an
HF-style ``{"input_ids", "attention_mask"}`` dict with a flag, a tuple of two input tensors, dict
targets. Before, every such batch was refused ("chunk_size needs the batch's inputs and targets to
be tensors"), though the products are as exact there. Truth: dense float64 Hessians and
Gauss-Newton matrices of the whole batch (tests/dense_curvature.py is for tensor batches: the
loss is built here over the flat parameters with torch.func)."""
from __future__ import annotations

import copy
import dataclasses
from collections import UserDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import catapult
from catapult.curvature.microbatch import map_tensors, sample_count, split_batch


class TokenModel(nn.Module):
    """HF style: a dict in (ids, mask and a flag that is not a tensor), a dict out."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.out = nn.Linear(3, 7)

    def forward(self, batch):
        assert batch["scale_by_mask"] is True
        h = torch.tanh(self.emb(batch["input_ids"])) * batch["attention_mask"][..., None]
        return {"logits": self.out(h)}


def token_loss(outputs, targets):
    logits = outputs["logits"].flatten(0, 1)
    per_token = F.cross_entropy(logits, targets["labels"].flatten(), reduction="none")
    return (per_token * targets["weight"].flatten()).mean()


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

    def forward(self, xs):
        a, b = xs
        return torch.tanh(self.a(a)) * self.b(b)


def sum_mse(out, y):
    return ((out - y) ** 2).sum()


def _token_batch(n=23):
    gen = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 7, (n, 4), generator=gen),
              "attention_mask": (torch.rand(n, 4, generator=gen) > 0.2).double(),
              "scale_by_mask": True}
    targets = {"labels": torch.randint(0, 7, (n, 4), generator=gen),
               "weight": torch.rand(n, 4, generator=gen, dtype=torch.float64)}
    return inputs, targets


def _two_batch(n=23):
    gen = torch.Generator().manual_seed(1)
    return ((torch.randn(n, 3, generator=gen, dtype=torch.float64),
             torch.randn(n, 4, generator=gen, dtype=torch.float64)),
            torch.randn(n, 2, generator=gen, dtype=torch.float64))


def _flat(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def params(flat):
        return {n: c.view(s) for n, c, s in zip(names, torch.split(flat, [s.numel() for s in shapes]), shapes)}
    return theta, params


def dense_hessian(model, loss_fn, batch):
    theta, params = _flat(model)
    return torch.autograd.functional.hessian(
        lambda flat: loss_fn(functional_call(model, params(flat), (batch[0],)), batch[1]), theta).numpy()


def dense_ggn(model, loss_fn, batch):
    theta, params = _flat(model)
    out0 = functional_call(model, params(theta), (batch[0],)).detach()
    J = torch.autograd.functional.jacobian(
        lambda flat: functional_call(model, params(flat), (batch[0],)).reshape(-1), theta)
    HL = torch.autograd.functional.hessian(lambda o: loss_fn(o.view(out0.shape), batch[1]), out0.reshape(-1))
    return (J.T @ HL @ J).numpy()


def _eigs(a):
    return np.linalg.eigvalsh((a + a.T) / 2)[::-1]


def _models():
    torch.manual_seed(0)
    return [(TokenModel().double(), token_loss, _token_batch()), (TwoInputs().double(), sum_mse, _two_batch())]


@pytest.mark.parametrize("which", [0, 1], ids=["hf_dict_mean", "tuple_sum"])
@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse", "finite_difference"])
def test_chunked_sharpness_of_nested_batches_is_the_dense_top(which, hvp):
    model, loss_fn, batch = _models()[which]
    top = _eigs(dense_hessian(model, loss_fn, batch))[0]
    est = catapult.sharpness(model, loss_fn, batch, chunk_size=5, hvp=hvp, tol=1e-9, max_iter=300)
    assert est.value == pytest.approx(top, rel=1e-7 if hvp == "finite_difference" else 1e-9)


def test_chunked_top_k_trace_and_ggn_of_nested_batches():
    model, loss_fn, batch = _models()[0]
    dense = _eigs(dense_hessian(model, loss_fn, batch))
    eig = catapult.top_eigenpairs(model, loss_fn, batch, k=3, chunk_size=6, tol=1e-9, max_iter=400)
    np.testing.assert_allclose(eig.values, dense[:3], rtol=1e-8)
    n = sum(p.numel() for p in model.parameters())
    assert catapult.hessian_trace(model, loss_fn, batch, matvecs=n, chunk_size=6) == pytest.approx(dense.sum(), rel=1e-9)
    model, loss_fn, batch = _models()[1]
    ggn = catapult.sharpness(model, loss_fn, batch, curvature="ggn", chunk_size=4, tol=1e-9, max_iter=300)
    assert ggn.value == pytest.approx(_eigs(dense_ggn(model, loss_fn, batch))[0], rel=1e-9)


def test_chunked_preconditioned_sharpness_of_a_dict_batch_matches_the_whole_batch():
    model, loss_fn, batch = _models()[0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    whole = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-10, max_iter=300)
    chunked = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, chunk_size=5, tol=1e-10, max_iter=300)
    assert chunked.value == pytest.approx(whole.value, rel=1e-9)


def test_leaves_with_different_sample_counts_are_refused_by_name():
    model, loss_fn, (inputs, targets) = _models()[0]
    inputs = {**inputs, "attention_mask": inputs["attention_mask"][:-1]}
    with pytest.raises(ValueError, match=r"different sample counts.*\['attention_mask'\] has 22"):
        catapult.sharpness(model, loss_fn, (inputs, targets), chunk_size=5)
    model, loss_fn, (xs, y) = _models()[1]
    with pytest.raises(ValueError, match="inputs have 23 samples .* but targets have 22"):
        catapult.sharpness(model, loss_fn, (xs, y[:-1]), chunk_size=5)
    # inputs without a sample dimension are refused; targets without one (a 0-d target, None with the
    # labels inside the inputs) go whole to every micro-batch (tests/test_nested_batch_curvature.py)
    with pytest.raises(ValueError, match="sample dimension"):
        catapult.sharpness(model, loss_fn, ((xs[0][0, 0], xs[1][0, 0]), y), chunk_size=5)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert catapult.sharpness(model, loss_fn, (xs, one), chunk_size=5, tol=1e-9, max_iter=300).value == pytest.approx(
        catapult.sharpness(model, loss_fn, (xs, one), tol=1e-9, max_iter=300).value, rel=1e-9)


def test_lean_memory_cuts_a_dict_batch_into_micro_batches():
    """memory='lean' sized micro-batches from a tensor batch only: a dict batch of 5,000 samples ran
    whole (chunk_size None), however large. (5,000: its activations pass lean's 1 MiB floor,
    LEAN_MIN_CHUNK_BYTES, below which a batch is one chunk.)"""
    from catapult.curvature.sharpness import memory_setting

    torch.manual_seed(0)
    model = TokenModel().double()
    batch = _token_batch(5000)
    chunk, _ = memory_setting("lean", batch, None, None, model, token_loss)
    assert chunk is not None and 1 <= chunk < 5000      # the products on those pieces: tests above


class Encoding(UserDict):
    """Like an HF ``BatchEncoding``: a ``UserDict``, not a dict."""


class TaggedDict(dict):
    """A dict subclass torch's pytree does not know (it took it for one leaf)."""

    tag = "mine"


class Pair(tuple):
    """A tuple subclass that is no namedtuple."""


@dataclasses.dataclass
class Features:
    a: torch.Tensor
    b: torch.Tensor
    note: str = "kept"


class FeatureInputs(TwoInputs):
    def forward(self, xs):
        if isinstance(xs, Features):
            xs = (xs.a, xs.b)
        elif isinstance(xs, (dict, UserDict)):
            xs = (xs["a"], xs["b"])
        return super().forward(xs)


def _wrapped(which):
    """``(model, loss_fn, batch)``: two inputs in a container of kind ``which``."""
    torch.manual_seed(0)
    (a, b), y = _two_batch()
    xs = {"user_dict": Encoding(a=a, b=b), "dict_subclass": TaggedDict(a=a, b=b), "tuple_subclass": Pair((a, b)),
          "dataclass": Features(a, b)}[which]
    return FeatureInputs().double(), sum_mse, (xs, y)


#: (a namedtuple, which torch's pytree knows, was cut right before: not here)
KINDS = ["user_dict", "dict_subclass", "tuple_subclass", "dataclass"]


@pytest.mark.parametrize("which", KINDS)
def test_chunks_of_mappings_subclasses_and_dataclasses_are_the_dense_top(which):
    """Samples were counted inside a dict subclass, a tuple subclass, but torch's pytree cut them
    as one leaf (each micro-batch got the whole of it: refused as 'fails on a micro-batch', a
    StopIteration under memory='lean'); a UserDict (HF BatchEncoding) and a dataclass were refused."""
    model, loss_fn, batch = _wrapped(which)
    top = _eigs(dense_hessian(model, loss_fn, batch))[0]
    est = catapult.sharpness(model, loss_fn, batch, chunk_size=5, tol=1e-9, max_iter=300)
    assert est.value == pytest.approx(top, rel=1e-9)
    pieces, _ = split_batch(model, lambda p, x, y: loss_fn(functional_call(model, p, (x,)), y),
                            dict(model.named_parameters()), *batch, 5, torch.float64)
    assert len(pieces) == 5 and all(type(x) is type(batch[0]) for x, _, _ in pieces)
    assert sum(sample_count(x) for x, _, _ in pieces) == 23


@pytest.mark.parametrize("which", ["dict_subclass", "tuple_subclass"])   # (the others ran whole)
def test_lean_cuts_subclassed_containers(which, lean_chunks_small_batches):
    model, loss_fn, batch = _wrapped(which)
    top = _eigs(dense_hessian(model, loss_fn, batch))[0]
    assert catapult.sharpness(model, loss_fn, batch, memory="lean", tol=1e-9, max_iter=300).value == pytest.approx(top, rel=1e-8)


@pytest.mark.parametrize("which", KINDS)
def test_dtype_casts_the_tensors_of_every_container(which):
    """dtype=float64 on a float32 model: the inputs in a dict subclass, UserDict, tuple subclass or
    dataclass stayed float32 (refused as a model that 'meets tensors of two dtypes')."""
    model, loss_fn, batch = _wrapped(which)
    single = map_tensors(lambda t: t.float() if t.is_floating_point() else t, batch)
    model = model.float()
    truth = (copy.deepcopy(model).double(), map_tensors(lambda t: t.double() if t.is_floating_point() else t, single))
    top = _eigs(dense_hessian(truth[0], loss_fn, truth[1]))[0]
    est = catapult.sharpness(model, loss_fn, single, dtype=torch.float64, tol=1e-9, max_iter=300)
    assert est.value == pytest.approx(top, rel=1e-9)
    assert type(single[0]) is type(batch[0])
