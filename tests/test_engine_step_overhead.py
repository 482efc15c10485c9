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

from catapult.losses import accuracy


def _python_calls(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), Counter of (file name, function) of every Python call it made)``;
    a call of a C function counts as ``("C", its name)``."""
    calls = Counter()

    def profile(frame, event, arg):
        if event == "call":
            calls[frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_name] += 1
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
    # before: 12 Python calls (two no_grad contexts) and a detach, four reshapes, a .to() and a .long()
    assert {k for k in calls if k[0] != "C"} == {("losses.py", "accuracy")}
    assert calls["C", "argmax"] == calls["C", "sum"] == 1
    assert sum(n for (where, name), n in calls.items() if where == "C" and name != "setprofile") <= 5
    assert outputs.grad is None and torch.is_grad_enabled()
