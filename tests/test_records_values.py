"""engine.records by hand: warmup_summary's target step and critical lr, summarize's derived
scalars, and metrics.csv's integer columns read back as ints."""
from __future__ import annotations

import math
from types import SimpleNamespace

from catapult import config as C
from catapult.engine.records import json_safe, read_metrics, summarize, warmup_summary, write_metrics
from catapult.engine.step import new_row


def _config(**train):
    return C.validate({"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 8, "depth": 2},
                       "train": {"steps": 4, **train}, "schedule": {"warmup": "linear", "warmup_steps": 2}})


def test_the_target_lr_is_reached_at_the_first_step_whose_lr_equals_it():
    config = _config()
    rows = [new_row(t, lr, 1.0) for t, lr in enumerate([0.25, 0.5, 1.0, 1.0])]
    rule = SimpleNamespace(info={}, persistent=None)
    assert warmup_summary(config, rows, 1.0, rule)["lr_target_reached_at"] == 2
    rows[1]["lr"] = 1.0 * (1 - 1e-12)   # a schedule's rounding of the target: reached
    assert warmup_summary(config, rows, 1.0, rule)["lr_target_reached_at"] == 1
    rows = [new_row(t, lr, 1.0) for t, lr in enumerate([0.25, 0.5, 0.9])]
    assert warmup_summary(config, rows, 1.0, rule)["lr_target_reached_at"] is None



def test_a_long_linear_warmups_last_ramp_step_is_not_read_as_reached():  # Mutation pass 24 (RC4)
    # lr_t = t / 2048 (exact in binary) for t <= 2048: step 2047 runs at 1 - 4.9e-4 of the target, which
    # a looser tolerance (1e-3) read as reached; the first step whose lr is the target is 2048
    T = 2048
    rows = [new_row(t, min(t, T) / T, 1.0) for t in range(T + 3)]
    assert rows[T - 1]["lr"] == 1 - 1 / T and rows[T]["lr"] == 1.0
    rule = SimpleNamespace(info={}, persistent=None)
    assert warmup_summary(_config(), rows, 1.0, rule)["lr_target_reached_at"] == T

def test_persistent_warmups_critical_lr_is_the_first_searchs_upper_bracket():
    history = [{"lower": 0.1, "upper": 0.125}, {"lower": 0.2, "upper": 0.3}]
    rule = SimpleNamespace(info={}, persistent=SimpleNamespace(searches=2, forward_passes=17, history=history))
    out = warmup_summary(_config(), [new_row(0, 0.1, 1.0)], 1.0, rule)
    assert (out["lr_critical"], out["lr_critical_lower"], out["lr_critical_upper"]) == (0.125, 0.1, 0.125)
    assert (out["searches"], out["search_forward_passes"]) == (2, 17)


def _summary(metrics, **kw):
    args = dict(status="finished", diverged_at=None, lambda_0=8.0, lr_trgt=0.25, threshold_target=8.0, n_params=3,
                device="cpu", sharpness_kind="hessian", matvecs_total=0, measurements=0, unconverged=0, wall_time=0.0)
    args.update(kw)
    return summarize(_config(accuracy_failure="off"), metrics, **args)


def test_summary_scalars_by_hand():
    metrics = []
    for t, loss in enumerate([None, 3.0, 2.0, 1.0]):  # step 0 logged before any loss (an evaluation row)
        row = new_row(t, 0.25, 8.0)
        row.update(train_loss=loss, train_accuracy=0.5)
        metrics.append(row)
    s = _summary(metrics)
    assert s["lr_target_times_lambda_0"] == 2.0           # 0.25 x 8
    assert s["initial_train_loss"] == 3.0                 # the first logged loss
    assert s["steps_completed"] == 4
    s = _summary(metrics, status="diverged", diverged_at=3)
    assert (s["status"], s["steps_completed"], s["diverged_at"]) == ("diverged", 3, 3)
    assert s["final_train_accuracy"] == 0.5  # a finite last loss: its outputs counted
    # a last loss that is not finite: the accuracy of its outputs (argmax of nan) is no result
    for bad in (math.nan, math.inf):
        metrics[-1].update(train_loss=bad, train_accuracy=0.1)
        assert _summary(metrics, status="diverged", diverged_at=3)["final_train_accuracy"] is None


def test_metrics_csv_reads_its_integer_columns_back_as_ints_and_json_safe_drops_inf(tmp_path):
    row = new_row(7, 0.5, 4.0)
    row.update(train_loss=1.5, sharpness=3.0, sharpness_matvecs=12)
    write_metrics([row], tmp_path / "m.csv")
    (back,) = read_metrics(tmp_path / "m.csv")
    assert back["step"] == 7 and type(back["step"]) is int
    assert back["sharpness_matvecs"] == 12 and type(back["sharpness_matvecs"]) is int
    assert back["train_loss"] == 1.5 and back["test_loss"] is None
    assert json_safe({"a": [math.inf, -math.inf, math.nan, 1.0], "b": (2.0, math.inf)}) == \
        {"a": [None, None, None, 1.0], "b": [2.0, None]}
