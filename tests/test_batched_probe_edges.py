"""StackedModel's probe forward (mutation pass 13): what its docstrings promise beyond finding a
functional convolution. It leaves the global generators as they were even where the model draws
random numbers in its forward (as a user's noise layer does in eval mode too); it runs once per
model; every method that runs a ``vmap`` probes first (``outputs``, the collapse rule's, included);
and ``pad_lone=False`` (two members do not fit) stays False whatever the probe finds."""
from __future__ import annotations

import torch

from catapult.losses import get_loss
from catapult.sweep.batched_model import StackedModel
from test_sweep_batched_lone import _FunctionalConv


class _Noisy(torch.nn.Module):
    """A user's model adding noise to its input at every forward, eval mode included."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(10, 64))

    def forward(self, x):
        return (x + torch.randn_like(x)) @ self.w.T


def test_the_probe_leaves_the_generators_as_they_were_where_the_model_draws():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    stacked = StackedModel([_Noisy()], get_loss("mse"))
    state = torch.get_rng_state()
    stacked.probe(x)
    assert torch.equal(torch.get_rng_state(), state)   # before: one draw of x's size later
    assert stacked.pad_lone is False and stacked.widest_activation(x) == 10   # its one output, per row
    assert torch.equal(torch.get_rng_state(), state)


class _Counted(_FunctionalConv):
    """:class:`_FunctionalConv` recording the rows of each forward's input (the probe's: one)."""

    def __init__(self, out_features):
        super().__init__(out_features)
        self.rows = []

    def forward(self, x):
        self.rows.append(x.reshape(-1, 64).shape[0])
        return super().forward(x)


def _batch():
    torch.manual_seed(0)
    return torch.randn(4, 64), torch.randn(4, 10)


def test_the_probe_runs_once_per_model():
    x, y = _batch()
    model = _Counted(10)
    stacked = StackedModel([model], get_loss("mse"))
    for _ in range(3):
        stacked.loss_and_grads(x, y, True)
    stacked.evaluate([0], x, y)
    assert stacked.pad_lone and model.rows.count(1) == 1, model.rows   # before: a probe forward per call


def test_the_collapse_rules_outputs_probe_first():
    x, y = _batch()
    stacked = StackedModel([_FunctionalConv(10)], get_loss("mse"))
    out = stacked.outputs([0], x, y)   # the first vmap of this model: a lone member beside its copy
    assert stacked.pad_lone and out.shape == (1, 4, 10)


def test_pad_lone_false_stays_false_after_the_probe_forward():
    x, y = _batch()
    stacked = StackedModel([_FunctionalConv(10)], get_loss("mse"), pad_lone=False)
    assert stacked.widest_activation(x) > 0
    stacked.loss_and_grads(x, y, False)
    assert stacked.pad_lone is False and stacked.padded_count(1) == 1
