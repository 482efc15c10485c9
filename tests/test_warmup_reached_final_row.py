"""``lr_target_reached_at`` is the first step whose *update* used lr_trgt: the last metrics row (the
final one after the last update, or the one a run diverged at) takes no step, so its lr, the
schedule's at ``t = steps``, was never applied. Before, a 6-step run under a linear warmup over 7
steps read "reached at step 6" although its updates 0..5 all ran below lr_trgt."""
from __future__ import annotations

from types import SimpleNamespace

from catapult import config as C
from catapult.engine import run
from catapult.engine.records import warmup_summary
from catapult.engine.step import new_row


def _run(warmup_steps: int, steps: int = 6):
    return run({"name": "reach", "data": {"name": "digits", "n_train": 64, "n_test": 16},
                "model": {"width": 8, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.5},
                "schedule": {"warmup": "linear", "warmup_steps": warmup_steps},
                "train": {"steps": steps}, "eval": {"sharpness_every": 0, "test_every": 0}}, progress="none")


def _first_update_at_target(result) -> int | None:
    steps = result.summary["steps_completed"]          # updates 0 .. steps - 1 were taken
    used = [r["lr"] for r in result.metrics if r["step"] < steps]
    return next((t for t, lr in enumerate(used) if lr == result.summary["lr_target"]), None)


def test_a_target_first_logged_on_the_final_row_was_never_reached():
    result = _run(warmup_steps=7)
    lrs = [r["lr"] for r in result.metrics]
    assert len(lrs) == 7 and lrs[-1] == 0.5 and max(lrs[:-1]) < 0.5   # lr(6) = 0.5 * 7/7, after the last update
    assert _first_update_at_target(result) is None
    assert result.summary["lr_target_reached_at"] is None
    # one step shorter a warmup: the last update (step 5) used the target
    result = _run(warmup_steps=6)
    assert _first_update_at_target(result) == 5
    assert result.summary["lr_target_reached_at"] == 5


def test_the_row_a_run_diverged_at_took_no_step_either():
    config = C.validate({"data": {"name": "digits", "n_train": 32, "n_test": 16}, "model": {"width": 8, "depth": 2},
                         "train": {"steps": 10}, "schedule": {"warmup": "linear", "warmup_steps": 4}})
    rule = SimpleNamespace(info={}, persistent=None)
    # diverged at step 3: rows 0..3, updates 0..2 at 0.25, 0.5, 0.75; row 3's 1.0 never applied
    rows = [new_row(t, lr, 1.0) for t, lr in enumerate([0.25, 0.5, 0.75, 1.0])]
    assert warmup_summary(config, rows, 1.0, rule)["lr_target_reached_at"] is None
    rows.append(new_row(4, 1.0, 1.0))
    assert warmup_summary(config, rows, 1.0, rule)["lr_target_reached_at"] == 3
