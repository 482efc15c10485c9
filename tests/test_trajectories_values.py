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


def test_the_sharpness_axis_is_clipped_to_the_data_and_the_final_threshold_not_the_first():
    # Mutation pass 22c (TR8): 2/lr starts at 200 in the warmup; the y-range is (min/2, max*8)
    # over the sharpness 3 and the final threshold 2/0.5 = 4: (1.5, 32), not up to 200 * 8
    rows = [{"step": t, "train_loss": 1.0, "sharpness": 3.0, "lr": lr} for t, lr in enumerate([0.01, 0.1, 0.5])]
    fig = plot_run(rows)
    assert list(_dashed(fig)[0].get_ydata()) == [200.0, 20.0, 4.0]
    assert tuple(fig.axes[1].get_ylim()) == (1.5, 32.0)


def test_spectrum_lines_fade_in_eigenvalue_order_eig_10_last():
    # Mutation pass 22c (TR7): eig_1 .. eig_10 in number order (eig_10 is not second); line i of 10 has
    # alpha 1 - 0.6 (i - 1) / 9, eig_i's values 11 - i here
    rows = [{"step": t, "train_loss": 1.0, "sharpness": 3.0, **{f"eig_{i}": float(11 - i) for i in range(1, 11)}}
            for t in range(3)]
    ax, = [a for a in plot_run(rows).axes if a.get_title().startswith("(c)")]
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [line.get_ydata()[0] for line in lines] == [float(11 - i) for i in range(1, 11)]
    for i, line in enumerate(lines, start=1):
        assert line.get_alpha() == max(1.0 - 0.6 * (i - 1) / 9, 0.3)


def test_only_a_diverged_run_is_crossed_at_its_last_loss_a_collapsed_one_is_not():
    # Mutation pass 22c (TR10): the x marks divergence; a collapsed run (constant outputs) trained on
    rows = [{"step": t, "train_loss": 1.0 / (t + 1), "sharpness": 3.0, "lr": 0.5} for t in range(3)]

    def crosses(status):
        return [(list(line.get_xdata()), list(line.get_ydata())) for line in plot_run(rows, status=status).axes[0].get_lines()
                if line.get_marker() == "x"]

    assert crosses("diverged") == [([2], [1.0 / 3])]
    assert crosses("collapsed") == [] and crosses("converged") == []
