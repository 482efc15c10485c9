"""The demo's Fig. 1 figure stays readable: catapults marked, a diverging run clipped with a
marker, "sharpness not measured" said when it was not, and a run's figure names the operator its
sharpness kind measures."""
from __future__ import annotations

import math

import pytest

from catapult.engine import loop, run
from catapult.engine.sharpness_rule import RADAM_KIND
from catapult.engine.trajectories import LOSS_CLIP_FACTOR, loss_axis_top, plot_run, plot_trajectories


def _catapult_run():
    rows = []
    for t in range(40):
        loss = 1.0 / (1 + t) if t < 20 else (5.0 if t in (20, 21) else 0.02)
        sharp = 10.0 if t <= 20 else 4.0
        rows.append({"step": t, "train_loss": loss, "sharpness": sharp if t % 2 == 0 else None,
                     "lr": 0.1, "threshold": 20.0})
    return rows


def _diverging_run():
    return [{"step": t, "train_loss": 1.0 * 10 ** (t / 2), "sharpness": None, "lr": 0.1, "threshold": 20.0}
            for t in range(14)] + [{"step": 14, "train_loss": math.inf, "sharpness": None, "lr": 0.1,
                                    "threshold": 20.0}]


def _markers(ax, marker):
    return [line for line in ax.get_lines() if line.get_marker() == marker]


def test_diverging_run_is_clipped_and_catapults_are_marked():
    runs = {"T=64": _catapult_run(), "T=1": _diverging_run()}
    fig = plot_trajectories(runs, statuses={"T=64": "finished", "T=1": "diverged"})
    ax_loss, ax_sharp = fig.axes
    top = loss_axis_top(runs)
    assert top == LOSS_CLIP_FACTOR * 1.0 * 1.5  # 1e6 would flatten the other curve
    assert ax_loss.get_ylim()[1] == top
    assert _markers(ax_loss, "^")  # clipped points of the diverging run, on the top edge
    assert len(_markers(ax_loss, "o")) == 1 and len(_markers(ax_sharp, "o")) == 1  # the catapult
    assert "catapult" in ax_loss.get_title() and "clipped" in ax_loss.get_title()
    labels = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert "T=1 (diverged), sharpness not measured" in labels


def test_no_sharpness_is_said_in_the_panel():
    fig = plot_trajectories({"run": _diverging_run()[:5]})
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert any("sharpness not measured" in t for t in texts)


def test_a_run_that_logged_its_spectrum_gets_a_third_panel(tmp_path):
    # eval.spectrum_top_k / eval.trace_matvecs columns: eig_1 .. eig_k and hessian_trace, on the
    # sharpness cadence (empty between); eigenvalues may be negative, so the axis is linear
    rows = _catapult_run()
    for row in rows:
        measured = row["sharpness"] is not None
        row.update({"eig_1": row["sharpness"], "eig_2": 0.5 * row["sharpness"] if measured else None,
                    "eig_3": -1.0 if measured else None, "hessian_trace": 30.0 if measured else None})
    fig = plot_trajectories({"run": rows}, tmp_path / "t.png")
    ax_loss, ax_sharp, ax_spec, ax_trace = fig.axes
    assert "top 3 eigenvalues" in ax_spec.get_title() and ax_spec.get_yscale() == "linear"
    drawn = [list(line.get_ydata()) for line in ax_spec.get_lines()]
    assert drawn == [[10.0] * 11 + [4.0] * 9, [5.0] * 11 + [2.0] * 9, [-1.0] * 20]
    assert [list(line.get_ydata()) for line in ax_trace.get_lines()] == [[30.0] * 20]
    assert "trace" in ax_trace.get_ylabel() and (tmp_path / "t.png").stat().st_size > 0
    # without those columns: the two panels as before
    assert len(plot_trajectories({"run": _catapult_run()}).axes) == 2


def test_the_spectrum_panel_of_a_preconditioned_run_names_its_operator():
    # under eval.sharpness_kind preconditioned (Adam) eig_i and hessian_trace are those of
    # P^-1/2 H P^-1/2 (README): the panel called them eigenvalues and trace of H
    rows = _catapult_run()
    for row in rows:
        measured = row["sharpness"] is not None
        row.update({"eig_1": row["sharpness"], "hessian_trace": 30.0 if measured else None})
    _, _, ax_spec, ax_trace = plot_trajectories({"run": rows}, preconditioned=True).axes
    assert "P^{-1/2} H P^{-1/2}" in ax_spec.get_ylabel() and "P^{-1/2} H P^{-1/2}" in ax_trace.get_ylabel()
    assert "Hessian" not in ax_trace.get_ylabel()
    _, _, ax_spec, ax_trace = plot_trajectories({"run": rows}).axes  # SGD's: the Hessian's
    assert ax_spec.get_ylabel() == "eigenvalue of H" and "Hessian trace" in ax_trace.get_ylabel()


@pytest.mark.parametrize("optimizer, model, kind, operator, sharpness", [
    ({"name": "sgd", "lr": 0.5}, {}, "hessian", "eigenvalue of H", "lambda_{max}(H)"),
    ({"name": "adam", "lr": 1e-3}, {}, "preconditioned", "P^{-1/2} H P^{-1/2}", "lambda_{max}(P^{-1}H)"),
    # muP SGD: per-group learning rates, so the sharpness and spectrum are of M^1/2 H M^1/2
    ({"name": "sgd", "lr": 0.5}, {"parametrization": "mup", "base_width": 2}, "lr_scaled",
     "M^{1/2} H M^{1/2}", "lambda_{max}(M H)"),
    # RAdam: the Hessian's while un-rectified, then the pre-conditioned one
    ({"name": "radam", "lr": 1e-3}, {}, RADAM_KIND, "once rectified", "once rectified"),
])
def test_a_runs_figure_names_the_operator_its_kind_measures(optimizer, model, kind, operator, sharpness,
                                                            tmp_path, monkeypatch):
    # lr-scaled (muP SGD) and RAdam runs were labelled "of H" in panels (b) and (c)
    drawn = {}

    def keep(metrics, path=None, **kwargs):
        drawn["figure"], drawn["kind"] = plot_run(metrics, path, **kwargs), kwargs.get("kind")
        return drawn["figure"]

    monkeypatch.setattr(loop, "plot_run", keep)
    config = dict(name="kinds", seed=0, data=dict(name="digits", n_train=32, n_test=16),
                  model=dict(name="mlp", width=4, depth=2, **model), loss="mse", optimizer=optimizer,
                  train=dict(steps=4), eval=dict(sharpness_every=2, spectrum_top_k=1, test_every=4))
    run(config, out_dir=tmp_path / "run")
    assert drawn["kind"] == kind
    _, ax_sharp, ax_spec = drawn["figure"].axes
    assert sharpness in ax_sharp.get_ylabel() and operator in ax_spec.get_ylabel()


def test_the_spectrum_panel_crosses_out_eigenvalues_whose_solve_did_not_converge():
    # eig_converged 0 rows were drawn like any other: a reader of trajectories.png could not
    # tell which eig_i were approximate
    rows = [dict(step=t, lr=0.1, threshold=20.0, train_loss=1.0, sharpness=5.0 + t, eig_1=5.0 + t, eig_2=2.0 + t,
                 eig_converged=mark) for t, mark in enumerate([1, 0, 1, None])]
    rows[3].update(sharpness=None, eig_1=None, eig_2=None)   # a row without a solve
    ax_spec = plot_run(rows).axes[2]
    crossed = [line for line in ax_spec.get_lines() if line.get_marker() == "x"]
    assert len(crossed) == 1
    assert sorted(zip(crossed[0].get_xdata(), crossed[0].get_ydata())) == [(1, 3.0), (1, 6.0)]
    assert "x: not converged" in ax_spec.get_title()
    for row in rows:
        row["eig_converged"] = None if row["eig_1"] is None else 1
    ax_spec = plot_run(rows).axes[2]
    assert not [line for line in ax_spec.get_lines() if line.get_marker() == "x"]
    assert "not converged" not in ax_spec.get_title()


def test_the_sharpness_panels_cross_out_values_whose_solve_did_not_converge():
    # sharpness_converged 0 rows were drawn like any other in trajectories.png's panel (b) and in the
    # report's cell trajectories: the edge-of-stability picture could not tell which were approximate
    from catapult.plots.phase import plot_cell_trajectories

    rows = [dict(step=t, lr=0.1, threshold=20.0, train_loss=1.0, test_accuracy=None, sharpness=5.0 + t,
                 sharpness_converged=mark) for t, mark in enumerate([1, 0, 1, None, 0])]
    rows[3].update(sharpness=None)   # a row without a solve
    rows[4].update(sharpness=float("nan"))   # nothing to draw on a log axis
    for ax in (plot_run(rows).axes[1], plot_cell_trajectories({"run": rows}).axes[-1]):
        crossed = [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert len(crossed) == 1 and list(zip(crossed[0].get_xdata(), crossed[0].get_ydata())) == [(1, 6.0)]
        assert "x: not converged" in ax.get_title()
    for row in rows:
        row["sharpness_converged"] = None if row["sharpness"] is None else 1
    for ax in (plot_run(rows).axes[1], plot_cell_trajectories({"run": rows}).axes[-1]):
        assert not [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert "not converged" not in ax.get_title()
