"""The engine's per-step extras beyond a bare PyTorch loop stay small (bench/RESULTS.md, "Engine
overhead"): inside a 3 ms minibatch step every call runs cold, at ~10x its hot time, so the loop
must not call torch's LRScheduler, the schedule twice, or the threshold rule at every step, and
the accuracy of a classifier's batch is four torch ops. Truth for the values: torch's
``LRScheduler`` through ``schedules.attach`` (what the loop used before), closed forms, and the
arg-max definition of accuracy."""
from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from catapult import engine, schedules
from catapult.engine import step_lr
from catapult.engine.step_lr import StepLRs, StepThresholds
from catapult.losses import accuracy


def _python_calls(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), Counter of (file, function) of every Python call it made)``, the
    file as its folder and name (``schedules/functions.py``); a C function's as ``("C", its name)``."""
    calls = Counter()

    def profile(frame, event, arg):
        if event == "call":
            calls["/".join(frame.f_code.co_filename.split("/")[-2:]), frame.f_code.co_name] += 1
        elif event == "c_call":
            calls["C", getattr(arg, "__name__", "?")] += 1

    sys.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return result, calls


def test_accuracy_of_a_classifier_batch_is_a_few_torch_calls_and_no_further_python_call():
    g = torch.Generator().manual_seed(0)
    outputs = torch.randint(0, 4, (128, 10), generator=g).float().requires_grad_()  # ties on purpose
    with torch.no_grad():
        outputs[3, 2] = float("nan")
    labels = torch.randint(0, 10, (128,), generator=g)
    truth = sum(int(row.argmax()) == int(y) for row, y in zip(outputs.detach(), labels)) / 128
    value, calls = _python_calls(accuracy, outputs, labels)
    assert value == truth
    # before: 12 Python calls (two no_grad contexts) and a detach, four reshapes, a .to() and a .long();
    # accuracy_counts holds the fast path (the hits and counted labels accuracy divides), and the labels'
    # minimum is the one torch call more: only a batch with a negative label counts its ignored (-100) ones
    assert {k for k in calls if k[0] != "C"} == {("catapult/losses.py", "accuracy"), ("catapult/losses.py", "accuracy_counts")}
    assert calls["C", "argmax"] == calls["C", "sum"] == calls["C", "min"] == 1
    assert sum(n for (where, name), n in calls.items() if where == "C" and name != "setprofile") <= 6
    assert outputs.grad is None and torch.is_grad_enabled()


def _config(optimizer: dict, schedule: dict, steps: int = 12) -> dict:
    return {"seed": 3, "data": {"name": "digits", "n_train": 64, "n_test": 16},
            "model": {"width": 8, "depth": 3}, "optimizer": optimizer, "schedule": schedule,
            "train": {"steps": steps, "batch_size": 16, "accuracy_failure": "off"}, "eval": {"sharpness_every": 0, "test_every": 0}}


@pytest.mark.parametrize("optimizer,schedule,distinct_lrs", [
    ({"name": "adam", "lr": 1e-3}, {"warmup_steps": 1, "lr_init": 1e-3}, 1),
    ({"name": "sgd", "lr": 0.05}, {"warmup_steps": 4}, 4),
])
def test_a_run_computes_each_lr_once_its_threshold_once_per_lr_and_no_torch_lr_scheduler(
        optimizer, schedule, distinct_lrs):
    config = _config(optimizer, schedule)
    engine.run(config, progress="none")  # lazy imports and first calls, outside the profile
    result, calls = _python_calls(engine.run, config, progress="none")
    steps = config["train"]["steps"]
    assert result.status == "finished" and len(result.metrics) == steps + 1
    assert not [k for k in calls if k[0] == "optim/lr_scheduler.py"]  # 200+ calls before
    assert calls["schedules/functions.py", "__call__"] == steps + 1  # 2 * steps + 1 before (the row's, the scheduler's)
    # one per distinct lr of the rows, and the summary's at lr_trgt (steps + 2 before)
    assert calls["curvature/instability.py", "instability_threshold"] == distinct_lrs + 1
    lr = optimizer["lr"]
    expected_lrs = [lr * min(1.0, (t + 1) / schedule["warmup_steps"]) for t in range(steps + 1)]
    assert [row["lr"] for row in result.metrics] == pytest.approx(expected_lrs, rel=1e-15, abs=0)
    factor = 38.0 if optimizer["name"] == "adam" else 2.0  # (2 + 2 b1) / (1 - b1), and GD's 2
    assert [row["threshold"] for row in result.metrics] == pytest.approx([factor / x for x in expected_lrs])


def _groups_lr(optimizer):
    return [float(g["lr"]) for g in optimizer.param_groups]


def _two_group_sgd(tensor_lr: bool = False):
    w, v = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    lr = (lambda: torch.tensor(9.0)) if tensor_lr else (lambda: 9.0)  # a tensor of its own per group
    return torch.optim.SGD([{"params": [w], "lr_mult": 1.0, "lr": lr()}, {"params": [v], "lr_mult": 0.3, "lr": lr()}])


@pytest.mark.parametrize("schedule", [
    schedules.warmup(0.7, 5, lr_init=0.1, decay="cosine", total_steps=20, lr_final=0.01),
    schedules.warmup(0.7, 3, power=2.0, decay="linear", total_steps=20),
    schedules.catapult_warmup(0.9, 6, 0.2, decay="cosine", total_steps=20),
    lambda t: 0.01 * (t % 4),  # not one of the pure schedule classes: called once per step
])
def test_step_lrs_set_what_torch_lr_scheduler_sets_at_every_step(schedule, monkeypatch):
    monkeypatch.setattr(StepLRs, "CHUNK", 7)  # the table grows in several chunks, and stops at `last`
    reference, ours = _two_group_sgd(), _two_group_sgd()
    scheduler = schedules.attach(reference, schedule)
    lrs = StepLRs(ours, schedule, last=20)
    assert _groups_lr(ours) == _groups_lr(reference)
    for t in range(20):
        reference.step()
        scheduler.step()
        assert lrs.apply(t + 1) == lrs.at(t + 1) == float(schedule(t + 1))
        assert _groups_lr(ours) == _groups_lr(reference), t
    assert len(lrs._table) <= 7 and lrs.at(3) == float(schedule(3))  # one chunk held; a step behind it still answers


def test_step_lrs_fill_a_tensor_lr_in_place_as_the_scheduler_does():
    reference, ours = _two_group_sgd(tensor_lr=True), _two_group_sgd(tensor_lr=True)
    tensors = [g["lr"] for g in ours.param_groups]
    scheduler = schedules.attach(reference, schedules.warmup(0.5, 4))
    lrs = StepLRs(ours, schedules.warmup(0.5, 4), last=6)
    for t in range(6):
        assert [g["lr"] for g in ours.param_groups] == tensors  # the same tensors, refilled
        assert _groups_lr(ours) == _groups_lr(reference) == pytest.approx(
            [0.5 * min(1, (t + 1) / 4) * m for m in (1.0, 0.3)], rel=1e-7)  # float32 tensors
        reference.step()
        scheduler.step()
        lrs.apply(t + 1)


class _TurnsNegative:
    """A schedule that turns negative at step 5."""

    def __call__(self, t):
        return 0.1 if t < 5 else -0.1


def test_a_refused_lr_is_raised_at_its_own_step_even_from_a_table_computed_ahead(monkeypatch):
    monkeypatch.setattr(step_lr, "PURE_SCHEDULES", (_TurnsNegative,))
    lrs = StepLRs(_two_group_sgd(), _TurnsNegative(), last=50)
    assert lrs.pure and [lrs.apply(t) for t in range(1, 5)] == [0.1] * 4
    with pytest.raises(ValueError, match=r"schedule returned lr=-0.1 at step 5; expected a finite value >= 0"):
        lrs.apply(5)
    reference = _two_group_sgd()
    scheduler = schedules.attach(reference, _TurnsNegative())
    for _ in range(4):
        reference.step()
        scheduler.step()
    reference.step()
    with pytest.raises(ValueError, match=r"schedule returned lr=-0.1 at step 5"):  # where the scheduler raised
        scheduler.step()
    with pytest.raises(TypeError, match="schedule returned 'x' at step 0"):
        StepLRs(_two_group_sgd(), lambda t: "x", last=3)


def test_step_thresholds_equal_the_threshold_rule_and_follow_the_step_for_radam():
    w = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([w], lr=0.01, betas=(0.8, 0.99))
    thresholds = StepThresholds(adam)
    for lr in (0.01, 0.01, 0.02, 0.01):
        adam.param_groups[0]["lr"] = lr
        assert thresholds(lr, 7) == pytest.approx((2 + 2 * 0.8) / ((1 - 0.8) * lr), rel=1e-12)
    radam = torch.optim.RAdam([w], lr=0.01)
    thresholds = StepThresholds(radam)
    from catapult.optim.thresholds import radam_threshold

    values = [thresholds(0.01, t) for t in (0, 10)]
    assert values == [float(radam_threshold(0.01, (0.9, 0.999), t + 1)[1]) for t in (0, 10)]
    assert values[0] != values[1]  # un-rectified at torch's step 1, rectified at step 11


def test_a_minibatch_is_the_documented_slice_of_its_epochs_permutation_without_a_copy_of_the_indices_per_step():
    from catapult.engine import BatchStream

    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    stream = BatchStream(x, y, batch_size=6, seed=5)  # 3 batches an epoch, 2 rows dropped
    g = torch.Generator().manual_seed(5)
    perms = [torch.randperm(20, generator=g) for _ in range(3)]
    for t in range(9):
        (xb, yb), calls = _python_calls(stream.batch, t)
        idx = perms[t // 3][(t % 3) * 6:(t % 3 + 1) * 6]
        assert torch.equal(yb, idx) and torch.equal(xb, x[idx])
        if t % 3:  # inside an epoch: a slice and two gathers; before, a .to(device) of the indices each step
            assert ("C", "to") not in calls and ("C", "randperm") not in calls
