"""catapult.SharpnessTracker in a user's own loop, against independent truth: each record's value
is the top eigenvalue of a dense float64 matrix built from the formulas (the Hessian for SGD,
``M^1/2 H M^1/2`` for SGD with differing group lrs, ``P^-1/2 H P^-1/2`` of Adam's next step with
two param groups), its threshold the closed form of the step's lr, and the training run with the
tracker is bit for bit the run without it."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_gradient, dense_hessian

LOSS = nn.MSELoss()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _batch():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(12, 3, generator=gen, dtype=torch.float64),
            torch.randn(12, 2, generator=gen, dtype=torch.float64))


def _top(a) -> float:
    a = np.asarray(a)
    return float(np.linalg.eigvalsh((a + a.T) / 2)[-1])


def _train(model, opt, batch, steps, tracker=None, truth=None, scheduler=None):
    """The loop: backward, tracker, (truth at the same point), step."""
    truths = []
    for _ in range(steps):
        opt.zero_grad()
        LOSS(model(batch[0]), batch[1]).backward()
        if truth is not None and tracker.calls % tracker.every == 0:
            truths.append(truth(model, opt))
        if tracker is not None:
            tracker.step(batch)
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return truths


def test_sgd_records_are_the_dense_hessians_top_and_2_over_lr_under_a_warmup():
    batch = _batch()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = catapult.schedules.attach(opt, catapult.schedules.warmup(0.5, 6))
    tracker = catapult.SharpnessTracker(model, LOSS, opt, every=3, tol=1e-9, max_iter=200)
    truths = _train(model, opt, batch, 10, tracker, scheduler=scheduler,
                    truth=lambda m, o: (_top(dense_hessian(m, LOSS, batch)), o.param_groups[0]["lr"]))
    assert [r.step for r in tracker.history] == [0, 3, 6, 9]
    for record, (top, lr) in zip(tracker.history, truths, strict=True):
        assert record.kind == "hessian" and record.converged
        assert record.value == pytest.approx(top, rel=1e-8)
        assert record.lr == lr and record.threshold == pytest.approx(2 / lr, rel=1e-12)
        assert record.ratio == pytest.approx(top * lr / 2, rel=1e-8)


def test_training_with_the_tracker_is_bit_for_bit_the_training_without():
    batch = _batch()
    plain, tracked = _net(), _net()
    for model, use in ((plain, False), (tracked, True)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        tracker = catapult.SharpnessTracker(model, LOSS, opt, every=2) if use else None
        _train(model, opt, batch, 5, tracker)
    for a, b in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(a, b)


def test_adam_with_two_groups_records_the_lr_scaled_preconditioned_top():
    """P^-1/2 H P^-1/2 with each group's block times lr_i / lr_0 (the operator the first group's
    38 / lr_0 bounds), P from the formula of Adam's next step."""
    batch = _batch()
    model = _net()
    lrs = [1e-2, 2.5e-3]
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": lrs[0]},
                            {"params": model[2].parameters(), "lr": lrs[1]}])

    def truth(m, o):
        g = dense_gradient(m, LOSS, batch).numpy()
        P, scale, at = [], [], 0
        for i, p in enumerate(m.parameters()):
            group = o.param_groups[i // 2]
            (b1, b2), eps = group["betas"], group["eps"]
            state = o.state.get(p, {})
            t = float(state["step"]) if state else 0.0
            v = state["exp_avg_sq"].reshape(-1).numpy() if state else 0.0
            gp = g[at:at + p.numel()]
            at += p.numel()
            P.append((1 - b1 ** (t + 1)) * (np.sqrt((b2 * v + (1 - b2) * gp ** 2) / (1 - b2 ** (t + 1))) + eps))
            scale.append(np.full(p.numel(), group["lr"] / lrs[0]))
        d = np.sqrt(np.concatenate(scale) / np.concatenate(P))
        return _top(d[:, None] * dense_hessian(m, LOSS, batch).numpy() * d[None, :])

    tracker = catapult.SharpnessTracker(model, LOSS, opt, every=2, tol=1e-9, max_iter=200)
    truths = _train(model, opt, batch, 5, tracker, truth=truth)
    assert len(truths) == 3
    for record, top in zip(tracker.history, truths, strict=True):
        assert record.kind == "preconditioned" and record.converged
        assert record.value == pytest.approx(top, rel=1e-7)
        assert record.threshold == pytest.approx(38 / lrs[0], rel=1e-12)


def test_sgd_with_differing_group_lrs_records_the_lr_scaled_sharpness():
    batch = _batch()
    model = _net()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2},
                           {"params": model[2].parameters(), "lr": 0.05}])

    def truth(m, o):
        scale = np.concatenate([np.full(p.numel(), 1.0 if i < 2 else 0.25) for i, p in enumerate(m.parameters())])
        d = np.sqrt(scale)
        return _top(d[:, None] * dense_hessian(m, LOSS, batch).numpy() * d[None, :])

    tracker = catapult.SharpnessTracker(model, LOSS, opt, every=2, tol=1e-9, max_iter=200)
    truths = _train(model, opt, batch, 3, tracker, truth=truth)
    for record, top in zip(tracker.history, truths, strict=True):
        assert record.kind == "lr_scaled"
        assert record.value == pytest.approx(top, rel=1e-8)
        assert record.threshold == pytest.approx(2 / 0.2)


def test_radam_switches_kind_when_its_next_step_is_rectified():
    """torch RAdam's step t is rectified once rho_t > 5: for b2 = 0.999 from t = 6 on."""
    batch = _batch()
    model = _net()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    tracker = catapult.SharpnessTracker(model, LOSS, opt)
    _train(model, opt, batch, 7, tracker)
    assert [r.kind for r in tracker.history] == ["hessian"] * 5 + ["preconditioned"] * 2


def test_a_resumed_tracker_records_what_an_uninterrupted_one_does():
    batch = _batch()
    runs = []
    for resume in (False, True):
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = catapult.SharpnessTracker(model, LOSS, opt, every=2)
        _train(model, opt, batch, 3, tracker)
        if resume:
            state = copy.deepcopy(tracker.state_dict())
            tracker = catapult.SharpnessTracker(model, LOSS, opt, every=2)
            tracker.load_state_dict(state)
        _train(model, opt, batch, 4, tracker)
        runs.append(tracker.history)
    assert runs[0] == runs[1] and [r.step for r in runs[0]] == [0, 2, 4, 6]


def test_the_warm_start_is_used_and_dropped_when_the_parameter_count_changes():
    batch = _batch()
    model = _net()
    tracker = catapult.SharpnessTracker(model, LOSS, tol=1e-6)
    first = tracker.step(batch)
    again = tracker.step(batch)                   # same point: the warm start is the eigenvector
    assert again.matvecs < first.matvecs
    assert first.threshold is None and first.lr is None
    model[0].bias.requires_grad_(False)           # 20 trainable entries less: a cold start, no error
    third = tracker.step(batch)
    assert third.value == pytest.approx(catapult.sharpness(model, LOSS, batch, tol=1e-6).value, rel=1e-9)


def test_threshold_is_inf_while_the_lr_is_0():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    record = catapult.SharpnessTracker(model, LOSS, opt).step(_batch())
    assert record.threshold == math.inf and record.ratio == 0.0


@pytest.mark.parametrize("kwargs, error, words", [
    ({"kind": "top"}, ValueError, "kind must be one of"),
    ({"kind": "preconditioned"}, ValueError, "does not fit SGD"),
    ({"every": 0}, ValueError, "every must be an integer"),
    ({"init": None}, TypeError, "unknown solver option"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, error, words):
    model = _net()
    with pytest.raises(error, match=words):
        catapult.SharpnessTracker(model, LOSS, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_an_optimizer_without_a_rule_is_refused_by_name():
    model = _net()
    with pytest.raises(NotImplementedError, match="RMSprop"):
        catapult.SharpnessTracker(model, LOSS, torch.optim.RMSprop(model.parameters()))


def _block_top(hessian, rows) -> float:
    return _top(hessian[np.ix_(rows, rows)])


@pytest.mark.parametrize("held", ["frozen_group", "unheld"])
def test_sgd_leaves_out_what_its_step_does_not_move(held):
    """The second layer at lr 0, or held by no group: the step moves the first layer alone, whose
    Hessian block's top bounds it (the whole Hessian's, 5x larger here, was recorded as 'hessian')."""
    batch = _batch()
    model = _net()
    groups = [{"params": model[0].parameters(), "lr": 0.1}]
    if held == "frozen_group":
        groups.append({"params": model[2].parameters(), "lr": 0.0})
    record = catapult.SharpnessTracker(model, LOSS, torch.optim.SGD(groups), tol=1e-9, max_iter=200).step(batch)
    hessian = dense_hessian(model, LOSS, batch).numpy()
    assert _block_top(hessian, range(20)) < 0.5 * _top(hessian)
    assert record.kind == "lr_scaled" and record.converged
    assert record.value == pytest.approx(_block_top(hessian, range(20)), rel=1e-8)
    assert record.threshold == pytest.approx(20.0) and record.lr == 0.1


def test_a_first_group_at_lr_0_is_measured_against_the_group_that_moves():
    """A frozen first group (lr 0) beside a group at lr 0.1: the step is the second group's, so its
    block's top against 2 / 0.1 (SGD), and Adam's P^-1/2 H P^-1/2 on that block against 38 / lr
    (the threshold was inf, every ratio 0, whatever the second group did)."""
    batch = _batch()
    hessian = dense_hessian(_net(), LOSS, batch).numpy()
    second = range(20, 32)
    model = _net()
    sgd = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "lr": 0.1}])
    record = catapult.SharpnessTracker(model, LOSS, sgd, tol=1e-9, max_iter=200).step(batch)
    assert record.kind == "lr_scaled" and record.lr == 0.1
    assert record.value == pytest.approx(_block_top(hessian, second), rel=1e-8)
    assert record.threshold == pytest.approx(20.0) and record.ratio == pytest.approx(record.value / 20.0)

    model = _net()
    adam = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "lr": 1e-2}])
    g = dense_gradient(model, LOSS, batch).numpy()[20:]
    P = (1 - 0.9) * (np.sqrt((1 - 0.999) * g ** 2 / (1 - 0.999)) + 1e-8)     # Adam's first step
    d = 1 / np.sqrt(P)
    record = catapult.SharpnessTracker(model, LOSS, adam, tol=1e-9, max_iter=200).step(batch)
    assert record.kind == "preconditioned" and record.lr == 1e-2
    assert record.value == pytest.approx(_top(d[:, None] * hessian[20:, 20:] * d[None, :]), rel=1e-7)
    assert record.threshold == pytest.approx(38 / 1e-2, rel=1e-12)


@pytest.mark.parametrize("change, words", [
    ({"vector": [1.0, 2.0]}, "vector must be None or a finite, non-zero 1-D float tensor"),
    ({"vector": torch.zeros(3, dtype=torch.float64)}, r"vector must be .* of count \(32\) entries"),
    ({"vector": torch.full((32,), math.nan, dtype=torch.float64)}, "vector must be None or a finite"),
    ({"count": "32"}, "count must be None or an integer"),
    ({"history": None}, "history must be a list"),
    ({"history": [{"step": 0}]}, r"history\[0\] must be a dict of the fields"),
    ({"history": [{"step": 0, "value": "4", "threshold": None, "lr": None, "kind": "hessian",
                   "matvecs": 3, "converged": True}]}, r"history\[0\] value must be a real number"),
    ({"history": [{"step": 0, "value": 4.0, "threshold": None, "lr": None, "kind": "top",
                   "matvecs": 3, "converged": True}]}, r"history\[0\] kind must be one of"),
    ({"extra": 1}, r"unknown keys \['extra'\]"),
])
def test_load_state_dict_refuses_a_state_that_is_not_one_before_changing_anything(change, words):
    batch = _batch()
    model = _net()
    tracker = catapult.SharpnessTracker(model, LOSS)
    tracker.step(batch)
    state = copy.deepcopy(tracker.state_dict())
    other = catapult.SharpnessTracker(model, LOSS)
    with pytest.raises(ValueError, match=words):
        other.load_state_dict({**state, **change})
    assert other.calls == 0 and other.vector is None and other.history == []
    other.load_state_dict(state)
    assert other.step(batch) == tracker.step(batch)


@pytest.mark.parametrize("lr", [math.nan, -0.1, math.inf])
def test_an_lr_that_no_step_has_is_refused_by_group(lr):
    """A scheduler past its end or a hand-set group lr: nan and -0.1 were recorded with threshold
    inf (ratio 0); inf too."""
    model = _net()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.1}])
    tracker = catapult.SharpnessTracker(model, LOSS, opt)
    opt.param_groups[1]["lr"] = lr
    with pytest.raises(ValueError, match=rf"param group 1 has lr={lr!r}; .* finite lr >= 0"):
        tracker.step(_batch())


def test_a_model_without_trainable_parameters_is_named_under_sgd():
    """(the SGD rule's multipliers failed first, in torch's words: 'torch.cat(): expected a
    non-empty list of Tensors')"""
    model = _net().requires_grad_(False)
    tracker = catapult.SharpnessTracker(model, LOSS, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        tracker.step(_batch())
