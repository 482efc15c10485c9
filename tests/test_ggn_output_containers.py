"""The Gauss-Newton matrix of a model whose outputs come in a UserDict (an HF ``ModelOutput``-like
mapping), a dict subclass or a dataclass, against the dense float64 ``J^T H_L J`` of its tensor:
torch's pytree, which the operator walked the outputs with, took such a container for a leaf, and
``curvature="ggn"`` was refused ("cannot see into"); the outputs are walked as the batches are
(``microbatch.tensor_leaves`` / ``with_tensors``), whole and in micro-batches."""
from __future__ import annotations

import dataclasses
from collections import UserDict

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_ggn


class Encoding(UserDict):
    pass


class Outputs(dict):
    pass


@dataclasses.dataclass
class Result:
    logits: torch.Tensor
    note: str = "kept"


WRAP = {
    "userdict": (lambda z: Encoding(logits=z, note="kept"), lambda out: out["logits"]),
    "dict_subclass": (lambda z: Outputs(logits=z, count=3), lambda out: out["logits"]),
    "dataclass": (lambda z: Result(z), lambda out: out.logits),
    "nested": (lambda z: (Encoding(inner=Result(z)), 1.5), lambda out: out[0]["inner"].logits * out[1]),
}


class Wrapped(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.net(x))


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("case", list(WRAP))
def test_ggn_of_a_wrapped_output_is_the_dense_one(case, chunk_size):
    wrap, read = WRAP[case]
    torch.manual_seed(0)
    model = Wrapped(wrap).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
    scale = 1.5 if case == "nested" else 1.0

    def loss_fn(out, labels):
        return nn.functional.cross_entropy(read(out), labels)

    def plain(z, labels):  # the same loss of the net's own output
        return nn.functional.cross_entropy(z * scale, labels)

    truth = np.linalg.eigvalsh(dense_ggn(model.net, plain, batch))[-1]
    est = catapult.sharpness(model, loss_fn, batch, curvature="ggn", tol=1e-10, max_iter=200, chunk_size=chunk_size)
    assert est.value == pytest.approx(truth, rel=1e-8)


class _Box:
    """An output of a class the walker cannot see into."""

    def __init__(self, t):
        self.t = t


class _Boxed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x):
        return _Box(self.lin(x))


def test_a_loss_that_reaches_the_parameters_through_an_opaque_output_is_refused_not_a_zero_g():
    # Mutation pass 22 (GN2): J is taken from the outputs it can see (none here): G came out 0
    from catapult.curvature.ggn import GaussNewtonOperator

    x, y = torch.ones(3, 2), torch.zeros(3, 1)
    with pytest.raises(ValueError, match="through an output it cannot see into \\(_Box"):
        GaussNewtonOperator(_Boxed(), lambda out, target: ((out.t - target) ** 2).mean(), (x, y))
