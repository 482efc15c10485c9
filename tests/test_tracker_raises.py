"""catapult.SharpnessTracker when a measurement cannot be made or raises: refused before any
product (counted by a loss_fn that counts its calls), and a raise leaves the tracker as it was
(call count, warm start, history), so calling again measures the same step. Truth: the dense
float64 Hessian of the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian

LOSS = nn.MSELoss()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _batch(n=10):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=gen, dtype=torch.float64),
            torch.randn(n, 2, generator=gen, dtype=torch.float64))


class CountingLoss:
    """MSE that counts its calls and raises while ``fail`` is set (a closure that raises)."""

    def __init__(self):
        self.calls, self.fail = 0, False

    def __call__(self, out, y):
        self.calls += 1
        if self.fail:
            raise RuntimeError("the loss raised")
        return LOSS(out, y)


@pytest.mark.parametrize("make, kind", [
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "hessian"),
    (lambda m: torch.optim.Adam(m.parameters(), lr=0.1), "hessian"),
    (lambda m: torch.optim.RAdam(m.parameters(), lr=0.1), "auto"),   # un-rectified: the Hessian's kind
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "auto"),
])
def test_an_optimizer_of_another_model_is_refused_by_name(make, kind):
    """Its step moves none of the model: kind='hessian' (given, or RAdam's first steps) recorded
    lambda_max(H) beside the other model's threshold."""
    model, other = _net(), _net()
    with pytest.raises(ValueError, match="holds none of the model's trainable parameters"):
        catapult.SharpnessTracker(model, LOSS, make(other), kind=kind)


def test_an_optimizer_that_no_longer_holds_the_model_is_refused_before_any_product():
    """The model's parameters replaced after construction (a re-initialization by assignment)."""
    model, loss = _net(), CountingLoss()
    tracker = catapult.SharpnessTracker(model, loss, torch.optim.SGD(model.parameters(), lr=0.1), kind="hessian")
    for layer in (model[0], model[2]):
        layer.weight = nn.Parameter(layer.weight.detach().clone())
        layer.bias = nn.Parameter(layer.bias.detach().clone())
    with pytest.raises(ValueError, match="holds none of the model's trainable parameters"):
        tracker.step(_batch())
    assert loss.calls == 0 and tracker.calls == 0 and tracker.history == []


@pytest.mark.parametrize("kind", ["auto", "hessian", "lr_scaled"])
def test_groups_whose_thresholds_differ_are_refused_before_any_product(kind):
    model, loss = _net(), CountingLoss()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "momentum": 0.9},
                           {"params": model[2].parameters(), "lr": 0.05}], lr=0.1)
    tracker = catapult.SharpnessTracker(model, loss, opt, kind=kind)
    with pytest.raises(ValueError, match="momentum=0.0 and param group 0 momentum=0.9"):
        tracker.step(_batch())
    assert loss.calls == 0 and tracker.calls == 0


def test_a_measurement_that_raises_leaves_the_tracker_as_it_was():
    """every=2: calls 0 (measured), 1 (not), 2 raises -> still 2 calls, one record, the same warm
    start; the retry measures step 2 (the dense Hessian's top), and the cadence goes on from it."""
    batch, model, loss = _batch(), _net(), CountingLoss()
    top = float(np.linalg.eigvalsh(dense_hessian(model, LOSS, batch))[-1])
    tracker = catapult.SharpnessTracker(model, loss, torch.optim.SGD(model.parameters(), lr=0.1), every=2,
                                        tol=1e-10, max_iter=200)
    assert tracker.step(batch).step == 0 and tracker.step(batch) is None
    vector = tracker.vector.clone()
    loss.fail = True
    with pytest.raises(RuntimeError, match="the loss raised"):
        tracker.step(batch)
    assert tracker.calls == 2 and len(tracker.history) == 1 and torch.equal(tracker.vector, vector)
    assert tracker.state_dict()["calls"] == 2
    loss.fail = False
    record = tracker.step(batch)
    assert record.step == 2 and record.value == pytest.approx(top, rel=1e-8)
    assert [tracker.step(batch) is None, tracker.step(batch).step] == [True, 4]
    assert [r.step for r in tracker.history] == [0, 2, 4]


def test_an_optimizer_of_part_of_the_model_is_measured():
    """Mutation pass 17 (TK2): an optimizer that holds some of the model's trainable parameters
    (the head only: the body is not moved) is not refused; the record's value is the top of the
    dense float64 Hessian's head block (the lr-scaled operator, M = 0 on the body)."""
    from dense_curvature import dense_hessian

    model = _net()
    record = catapult.SharpnessTracker(model, LOSS, torch.optim.SGD(model[2].parameters(), lr=0.1),
                                       tol=1e-10).step(_batch())
    H = dense_hessian(model, LOSS, _batch())
    head = sum(p.numel() for p in model[0].parameters())
    assert record.kind == "lr_scaled"
    assert record.value == pytest.approx(float(torch.linalg.eigvalsh(H[head:, head:]).max()), rel=1e-8)
