"""The values the run figure draws (:mod:`catapult.engine.trajectories`), read back from its lines:
the instability threshold ``2 / lr_t`` where a run logs only its lr (none at lr 0), and which rows
count as an unconverged solve."""
from __future__ import annotations

from catapult.engine.trajectories import plot_run, unconverged_points


def _dashed(fig):
    return [line for line in fig.axes[1].get_lines() if line.get_linestyle() == "--"]


def test_a_run_without_a_threshold_column_draws_2_over_its_lr_and_skips_lr_0():
    # Mutation pass 22 (TR2, TR3): a linear warmup from lr_init 0 logs lr 0 at step 0
    rows = [{"step": t, "train_loss": 1.0 / (t + 1), "sharpness": 3.0, "lr": lr}
            for t, lr in enumerate([0.0, 0.25, 0.5, 0.5])]
    dashed, = _dashed(plot_run(rows))
    assert list(dashed.get_xdata()) == [1, 2, 3]
    assert list(dashed.get_ydata()) == [8.0, 4.0, 4.0]


def test_only_a_row_whose_solve_is_marked_unconverged_is_crossed_out():
    # Mutation pass 22 (TR6): a row without the mark (an engine that does not log it) is no unconverged solve
    rows = [{"step": 0, "sharpness": 3.0}, {"step": 1, "sharpness": 4.0, "sharpness_converged": None},
            {"step": 2, "sharpness": 5.0, "sharpness_converged": 0}]
    assert unconverged_points(rows, "sharpness", "sharpness_converged") == [(2, 5.0)]
