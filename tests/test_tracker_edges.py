"""catapult.SharpnessTracker's rules that test_tracker's training loops do not reach (mutation
pass 15), each against independent truth: the dense float64 Hessian (or Gauss-Newton matrix) of
the parameters the step moves, the docstrings' rules for kinds, options and the saved state."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.arguments import MAX_STEPS
from catapult.curvature.tracker import SharpnessRecord
from dense_curvature import dense_ggn, dense_hessian

LOSS = nn.MSELoss()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _batch(n=12):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, generator=gen, dtype=torch.float64),
            torch.randn(n, 2, generator=gen, dtype=torch.float64))


def _top(a) -> float:
    a = np.asarray(a)
    return float(np.linalg.eigvalsh((a + a.T) / 2)[-1])


def _step(model, opt, batch):
    opt.zero_grad()
    LOSS(model(batch[0]), batch[1]).backward()
    opt.step()


def test_the_ratio_is_none_without_a_threshold_and_0_at_an_infinite_one():
    rec = dict(step=0, lr=None, kind="hessian", matvecs=3, converged=True)
    assert SharpnessRecord(value=4.0, threshold=None, **rec).ratio is None
    assert SharpnessRecord(value=math.nan, threshold=math.inf, **rec).ratio == 0.0
    assert SharpnessRecord(value=math.inf, threshold=math.inf, **rec).ratio == 0.0


def test_a_kind_given_is_measured_whatever_the_optimizer():
    """kind='hessian' beside Adam: lambda_max(H) of the dense Hessian, not the pre-conditioned one."""
    batch, model = _batch(), _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    record = catapult.SharpnessTracker(model, LOSS, opt, kind="hessian", tol=1e-9, max_iter=200).step(batch)
    assert record.kind == "hessian"
    assert record.value == pytest.approx(_top(dense_hessian(model, LOSS, batch)), rel=1e-8)


def test_radam_takes_the_preconditioned_kind():
    batch, model = _batch(), _net()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    tracker = catapult.SharpnessTracker(model, LOSS, opt, kind="preconditioned")
    for _ in range(6):          # torch RAdam's step 7 is rectified (b2 = 0.999: from t = 6 on)
        _step(model, opt, batch)
    record = tracker.step(batch)
    assert record.kind == "preconditioned" and math.isfinite(record.value)


@pytest.mark.parametrize("make, kwargs, words", [
    (lambda m: torch.optim.Adam(m.parameters()), {"kind": "lr_scaled"}, "does not fit Adam"),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, maximize=True), {}, "maximize"),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), {"every": MAX_STEPS + 1}, "every must be an integer"),
])
def test_what_the_rules_do_not_cover_is_refused_at_construction(make, kwargs, words):
    model = _net()
    with pytest.raises(ValueError, match=words):
        catapult.SharpnessTracker(model, LOSS, make(model), **kwargs)


def test_every_solver_option_of_sharpness_is_taken():
    """memory and curvature (beyond the seven the lr-scaled sharpness takes) reach the solve:
    memory='lean' gives the Hessian's top, curvature='ggn' the Gauss-Newton matrix's."""
    batch, model = _batch(), _net()
    lean = catapult.SharpnessTracker(model, LOSS, memory="lean", tol=1e-9, max_iter=200).step(batch)
    assert lean.value == pytest.approx(_top(dense_hessian(model, LOSS, batch)), rel=1e-7)
    ggn = catapult.SharpnessTracker(model, LOSS, curvature="ggn", tol=1e-9, max_iter=200).step(batch)
    assert ggn.value == pytest.approx(_top(dense_ggn(model, LOSS, batch)), rel=1e-7)


def test_the_lr_scaled_sharpness_names_the_options_it_does_not_take():
    batch, model = _batch(), _net()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2},
                           {"params": model[2].parameters(), "lr": 0.05}])
    tracker = catapult.SharpnessTracker(model, LOSS, opt, memory="lean")
    with pytest.raises(ValueError, match=r"takes no \['memory'\]"):
        tracker.step(batch)


def test_three_groups_two_of_them_alike_are_lr_scaled():
    batch, model = _batch(), _net()
    opt = torch.optim.SGD([{"params": [model[0].weight], "lr": 0.2}, {"params": [model[0].bias], "lr": 0.2},
                           {"params": model[2].parameters(), "lr": 0.05}])
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-9, max_iter=200).step(batch)
    n0 = sum(p.numel() for p in model[0].parameters())
    n = sum(p.numel() for p in model.parameters())
    d = np.sqrt(np.r_[np.ones(n0), np.full(n - n0, 0.25)])
    assert record.kind == "lr_scaled"
    assert record.value == pytest.approx(_top(d[:, None] * dense_hessian(model, LOSS, batch).numpy() * d), rel=1e-8)


def test_a_nan_measurement_starts_the_next_one_cold():
    """A diverged batch gives nan; the next measurement is the cold start's, product for product."""
    batch, model = _batch(), _net()
    tracker = catapult.SharpnessTracker(model, LOSS, tol=1e-9, max_iter=200)
    bad = (torch.full_like(batch[0], math.nan), batch[1])
    assert math.isnan(tracker.step(bad).value)
    after = tracker.step(batch)
    cold = catapult.SharpnessTracker(model, LOSS, tol=1e-9, max_iter=200).step(batch)
    assert (after.value, after.matvecs) == (cold.value, cold.matvecs)
    assert after.value == pytest.approx(_top(dense_hessian(model, LOSS, batch)), rel=1e-8)


def test_the_state_before_any_call_loads_and_a_partial_state_is_refused_by_name():
    model = _net()
    fresh = catapult.SharpnessTracker(model, LOSS)
    state = fresh.state_dict()
    other = catapult.SharpnessTracker(model, LOSS)
    other.step(_batch())
    other.load_state_dict(state)
    assert (other.calls, other.vector, other.history) == (0, None, [])
    del state["count"]
    with pytest.raises(ValueError, match=r"lacks \['count'\]"):
        other.load_state_dict(state)


# An SGD that moves part of the model (h4's partial-step case, merged here: same helpers)
@pytest.mark.parametrize("groups", ["head only", "body at lr 0"])
def test_sgd_that_moves_part_of_the_model_records_the_moved_blocks_sharpness(groups):
    """SGD holding only the head (or the body in a group at lr 0), with every parameter trainable:
    the step x_head -= lr g_head is stable while lambda_max(H_head,head) < 2 / lr; the tracker
    recorded lambda_max(H) of the whole model (1.866 for 1.502 here), whose body block the step
    never moves."""
    batch, model = _batch(), _net()
    if groups == "head only":
        opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    else:
        opt = torch.optim.SGD([{"params": model[2].parameters(), "lr": 0.1},
                               {"params": model[0].parameters(), "lr": 0.0}])
    record = catapult.SharpnessTracker(model, LOSS, opt, tol=1e-10, max_iter=300).step(batch)
    n0 = sum(p.numel() for p in model[0].parameters())
    H = dense_hessian(model, LOSS, batch).numpy()
    assert record.kind == "lr_scaled" and record.threshold == pytest.approx(2 / 0.1)
    assert record.value == pytest.approx(_top(H[n0:, n0:]), rel=1e-8)
    assert _top(H) > 1.2 * record.value          # the whole model's top is another number


@pytest.mark.parametrize("first", ["frozen_body", "empty"])
def test_a_first_group_that_moves_nothing_trainable_is_not_the_reference(first):
    # fine-tuning a head: SGD([{body, lr 1e-3}, {head, lr 1e-2}]) with the body frozen by
    # requires_grad=False (or an empty first group at lr 1.0). Every trainable parameter steps at
    # 1e-2, so the record is the head block's Hessian top against 2 / 1e-2 ('hessian', lr 1e-2); the
    # first group was the reference: 'lr_scaled', 10x the top (100x for the empty group), lr 1e-3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=gen, dtype=torch.float64), torch.randn(12, 2, generator=gen, dtype=torch.float64))
    loss = nn.MSELoss()
    hessian = dense_hessian(model, loss, batch).numpy()[20:, 20:]   # the head's block (its 12 entries)
    top = float(np.linalg.eigvalsh((hessian + hessian.T) / 2)[-1])
    for p in model[0].parameters():
        p.requires_grad_(False)
    body = list(model[0].parameters()) if first == "frozen_body" else []
    sgd = torch.optim.SGD([{"params": body, "lr": 1e-3 if body else 1.0}, {"params": model[2].parameters(), "lr": 1e-2}])
    record = catapult.SharpnessTracker(model, loss, sgd, tol=1e-9, max_iter=200).step(batch)
    assert record.kind == "hessian" and record.lr == 1e-2 and record.converged
    assert record.value == pytest.approx(top, rel=1e-8)
    assert record.threshold == pytest.approx(200.0, rel=1e-12)


def test_groups_after_the_reference_keep_their_lr_ratio():
    # SGD([{first layer, lr 0}, {head weight, lr 0.1}, {head bias, lr 0.05}]): the reference is the
    # head weight's group, and the bias group behind it still steps at half its lr:
    # M = diag(0 (first layer), 1 (head weight), 0.5 (head bias)); the top of M^1/2 H M^1/2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=gen, dtype=torch.float64), torch.randn(12, 2, generator=gen, dtype=torch.float64))
    loss = nn.MSELoss()
    hessian = dense_hessian(model, loss, batch).numpy()
    d = np.sqrt(np.array([0.0] * 20 + [1.0] * 10 + [0.5] * 2))
    scaled = d[:, None] * hessian * d[None, :]
    top = float(np.linalg.eigvalsh((scaled + scaled.T) / 2)[-1])
    sgd = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": [model[2].weight], "lr": 0.1},
                           {"params": [model[2].bias], "lr": 0.05}])
    record = catapult.SharpnessTracker(model, loss, sgd, tol=1e-9, max_iter=200).step(batch)
    assert record.kind == "lr_scaled" and record.lr == 0.1 and record.converged
    assert record.value == pytest.approx(top, rel=1e-8)
    assert record.threshold == pytest.approx(20.0, rel=1e-12)


def _record(**change):
    return {"step": 0, "value": 4.0, "threshold": 20.0, "lr": 0.1, "kind": "hessian", "matvecs": 3,
            "converged": True, **change}


@pytest.mark.parametrize("change, words", [
    ({"history": [_record(kind="auto")]}, r"history\[0\] kind must be one of"),          # no measurement's kind
    ({"history": [_record(converged="yes")]}, r"history\[0\] converged must be True or False"),
    ({"history": [_record(threshold="20")]}, r"history\[0\] threshold must be None or a real number"),
    ({"history": [_record(lr=math.inf)]}, r"history\[0\] lr must be None or a real number"),
    ({"history": [_record(step=-1)]}, r"history\[0\]"),
    ({"history": [_record(matvecs=2.5)]}, r"history\[0\]"),
    ({"history": [_record(value=True)]}, r"history\[0\] value must be a real number"),
    ({"vector": torch.ones(3, dtype=torch.float64)}, r"vector must be .* of count \(32\) entries"),
    ({"vector": torch.zeros(32, dtype=torch.float64)}, r"vector must be None or a finite, non-zero"),
])
def test_load_state_dict_refuses_each_field_that_is_not_a_records(change, words):
    # each check of SharpnessTracker.load_state_dict on its own (a record's kind, converged,
    # threshold, lr, step, matvecs, value; a vector of another length; a zero vector of the count)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=gen, dtype=torch.float64), torch.randn(12, 2, generator=gen, dtype=torch.float64))
    tracker = catapult.SharpnessTracker(model, nn.MSELoss())
    tracker.step(batch)
    state = tracker.state_dict()
    other = catapult.SharpnessTracker(model, nn.MSELoss())
    with pytest.raises(ValueError, match=words):
        other.load_state_dict({**state, **change})
    assert other.calls == 0 and other.vector is None and other.history == []


def test_load_state_dict_refuses_a_list_and_takes_a_tuple_history():
    model = nn.Linear(2, 1)
    tracker = catapult.SharpnessTracker(model, nn.MSELoss())
    with pytest.raises(ValueError, match="the state must be a dict as state_dict\\(\\) returns, got list"):
        tracker.load_state_dict([("calls", 0)])
    tracker.load_state_dict({"calls": 1, "vector": None, "count": None, "history": (_record(),)})
    assert tracker.calls == 1 and tracker.history[0].value == 4.0
