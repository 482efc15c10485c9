"""What the figures and tables of a sweep say is what the store holds (an audit of 2026-12-04):
transfer curves of ``c/lambda0`` learning rates average their seeds at the grid's ``c`` (each
seed's resolved lr is its own, so every point was one seed), a failed cell does not stop them,
the heatmap's best is a cell where every seed finished and its title names what it averages,
swept text with ``$`` is drawn as text, and a diverged cell exports no spectrum."""
from __future__ import annotations

import math

import pytest

from catapult import cli
from catapult.plots.phase import phase_grid, plot_cell_trajectories, plot_phase_diagram
from catapult.plots.transfer import optima, plot_transfer, transfer_curves, transfer_table
from catapult.sweep.store_export import last_spectrum
from tiny_run import tiny_config

CS = [1.0, 4.0, 16.0]
AXES = [{"key": "model.width", "values": [8, 16], "labels": ["8", "16"]},
        {"key": "optimizer.lr", "values": [f"{c:g}/lambda0" for c in CS], "labels": [f"{c:g}/λ0" for c in CS]},
        {"key": "seed", "values": [0, 1], "labels": ["0", "1"]}]


def _relative_cells():
    """Loss parabolas in log2(c), optimum at c = 4 for width 8 and c = 16 for width 16; each seed
    its own lambda_0 (so its own resolved lr); seed 1 is 0.02 worse everywhere."""
    cells, i = [], 0
    for width, best in ((8, 2), (16, 4)):
        for c in CS:
            for seed, lam in ((0, 3.0), (1, 5.0)):
                loss = 1.0 + 0.1 * (math.log2(c) - best) ** 2 + 0.02 * seed
                cells.append({"id": i, "status": "finished", "lr_target": c / lam, "test_loss": loss,
                              "swept": {"model.width": width, "optimizer.lr": f"{c:g}/lambda0", "seed": seed}})
                i += 1
    return cells


def test_relative_learning_rates_average_their_seeds_at_the_grids_c(tmp_path):
    curves = transfer_curves(_relative_cells(), AXES, series="model.width", panel=None)
    assert curves.x_relative
    assert [n for _, _, n in curves.spread[None][8]] == [2, 2, 2]   # each point: both seeds
    assert optima(curves)[None] == {8: (4.0, pytest.approx(1.01)), 16: (16.0, pytest.approx(1.01))}
    assert "4/λ0 (1.01" in transfer_table(curves) and "16/λ0 (1.01" in transfer_table(curves)
    failed = [dict(c, status="failed", lr_target=None, test_loss=None) if c["id"] == 0 else c for c in _relative_cells()]
    assert math.isnan(dict(transfer_curves(failed, AXES, series="model.width", panel=None).curves[None][8])[1.0])
    mixed = [dict(c, swept={**c["swept"], "optimizer.lr": 0.5}) if c["id"] == 0 else c for c in _relative_cells()]
    with pytest.raises(ValueError, match="mixes absolute learning rates and c/lambda0 ones"):
        transfer_curves(mixed, AXES, series="model.width", panel=None)
    plot_transfer(curves, tmp_path / "t.png")


GRID_AXES = [{"key": "optimizer.lr", "values": [0.1, 0.2], "labels": ["0.1", "0.2"]},
             {"key": "data.cache_dir", "values": ["/d/$\\foo$", "/d/b"], "labels": ["/d/$\\foo$", "/d/b"]},
             {"key": "model.width", "values": [8, 16], "labels": ["8", "16"]}]


def _grid_cells():
    cells, i = [], 0
    for lr in (0.1, 0.2):
        for path in ("/d/$\\foo$", "/d/b"):
            for width in (8, 16):
                # at lr 0.1, /d/b both widths collapse to a constant output with the lowest loss
                collapsed = lr == 0.1 and path == "/d/b"
                cells.append({"id": i, "status": "collapsed" if collapsed else "finished",
                              "test_loss": 0.5 if collapsed else 1.0 + lr + 0.01 * width, "wall_time_s": 1.0 + i,
                              "swept": {"optimizer.lr": lr, "data.cache_dir": path, "model.width": width}})
                i += 1
    return cells


def test_the_best_cell_is_one_where_every_seed_finished_and_the_title_names_what_is_averaged(tmp_path):
    grid = phase_grid(_grid_cells(), GRID_AXES, "test_loss", "optimizer.lr", "data.cache_dir")
    assert grid.status[1][0] == "partial" and grid.values[1, 0] == 0.5     # the collapsed cells' value
    assert grid.best == (0, 0)                                              # not the collapsed 0.5
    assert grid.averaged == ["model.width"]
    fig = plot_phase_diagram(grid, tmp_path / "p.png")                      # "$\foo$" raised in mathtext
    title = fig.axes[0].get_title()
    assert "mean ± std over model.width" in title and "seeds" not in title
    # the value 0.5 is the collapsed cells' own: the legend said it was the mean of the "finished"
    # seeds with the "collapsed" ones among the others, left out
    legend = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "collapsed ones counted" in legend and "others diverged or failed" in legend.replace("\n", " "), legend
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["/d/\\$\\foo\\$", "/d/b"]
    assert phase_grid(_grid_cells(), GRID_AXES, "wall_time_s", "optimizer.lr", "data.cache_dir").best is None
    plot_cell_trajectories({"cell 0: data.cache_dir=/d/$\\foo$": [{"step": 0, "train_loss": 1.0}]},
                           tmp_path / "t.png", title="$\\foo$")


class _Store:
    def metrics(self, cell_id):
        return [{"step": 10, "eig_1": 0.1, "hessian_trace": 0.97}, {"step": 13, "train_loss": float("inf")}]


def test_a_diverged_cell_exports_no_spectrum():
    # its eig_1 was the last value before it blew up, beside a blank sharpness
    config = {"eval": {"spectrum_top_k": 1, "trace_matvecs": 10}}
    assert last_spectrum(_Store(), {"id": 4, "status": "diverged", "config": config}) == {}
    assert last_spectrum(_Store(), {"id": 4, "status": "finished", "config": config}) == \
        {"eig_1": 0.1, "hessian_trace": 0.97}


def test_plotting_a_metric_no_cell_has_exits_2(tmp_path, capsys):
    # it drew an empty grid with a made-up 0..1 colour bar and exited 0
    config = tmp_path / "s.yaml"
    config.write_text(tiny_config("tiny_plot") + "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    assert cli.main(["plot", str(store), "--metric", "sharpness", "--out", str(tmp_path / "x.png")]) == 2
    assert "no cell of" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_the_sharpness_heatmap_marks_cells_whose_value_came_from_an_unconverged_solve(tmp_path):
    # catapult plot --metric sharpness (and eig_<i>) averaged approximate final values into the
    # heatmap like any other: a cell with a seed whose final solve was cut short is now crossed
    cells = []
    for i, (lr, seed, mark) in enumerate([(0.1, 0, 1), (0.1, 1, 0), (0.2, 0, 1), (0.2, 1, 1)]):
        cells.append({"id": i, "status": "finished", "sharpness": 10.0 + i, "sharpness_converged": mark,
                      "eig_1": 10.0 + i, "eig_converged": 1 - mark if lr == 0.2 else 1,
                      "swept": {"optimizer.lr": lr, "seed": seed}})
    axes = [{"key": "optimizer.lr", "values": [0.1, 0.2], "labels": ["0.1", "0.2"]},
            {"key": "seed", "values": [0, 1], "labels": ["0", "1"]}]
    grid = phase_grid(cells, axes, "sharpness", "optimizer.lr", None)
    assert grid.values[0].tolist() == [10.5, 12.5] and grid.unconverged[0].tolist() == [1, 0]
    crossed = [line for line in plot_phase_diagram(grid).axes[0].get_lines() if line.get_marker() == "x"]
    assert len(crossed) == 1 and round(float(crossed[0].get_xdata()[0])) == 0
    assert phase_grid(cells, axes, "eig_1", "optimizer.lr", None).unconverged[0].tolist() == [0, 2]
    assert phase_grid(cells, axes, "test_loss", "optimizer.lr", None).unconverged is None
    unmarked = [{k: v for k, v in c.items() if k != "sharpness_converged"} for c in cells]   # an old store's
    grid = phase_grid(unmarked, axes, "sharpness", "optimizer.lr", None)
    assert not [line for line in plot_phase_diagram(grid).axes[0].get_lines() if line.get_marker() == "x"]


@pytest.mark.parametrize("metric, values", [("test_loss", [0.5, 2.0, 1e306]), ("sharpness", [1.0, 3.0, 1.7e308]),
                                            ("sharpness", [-1.7e308, 3.0, 1.7e308]), ("test_loss", [1e-300, 2.0, 1e300])])
def test_a_value_near_the_float_maximum_is_drawn_as_a_diverged_cell(tmp_path, metric, values):
    # `catapult plot` ended in an OverflowError from matplotlib's tick formatter (a test_loss of
    # 1e306 on the log scale, a sharpness of 1.7e308, a log scale over 600 decades), or "Axis limits
    # cannot be NaN or Inf"
    import warnings

    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    from catapult.plots.phase import DRAWABLE_MAX

    cells = [{"id": j, "status": "finished", metric: v, "swept": {"optimizer.lr": 0.1 * (j + 1)}}
             for j, v in enumerate(values)]
    axes = [{"key": "optimizer.lr", "values": [0.1, 0.2, 0.3], "labels": ["0.1", "0.2", "0.3"]}]
    grid = phase_grid(cells, axes, metric, "optimizer.lr", None)
    assert grid.values[0].tolist() == values
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy's overflow warnings in the colour norm too
        fig = plot_phase_diagram(grid, tmp_path / "phase.png")
    assert (tmp_path / "phase.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hatched = sorted(round(p.get_x() + 0.5) for p in fig.axes[0].patches
                     if isinstance(p, Rectangle) and p.get_hatch() == "xx" and p.get_facecolor() == to_rgba("#bdbdbd"))
    assert hatched == [j for j, v in enumerate(values) if abs(v) > DRAWABLE_MAX]
    mesh = fig.axes[0].collections[0]
    drawn = [v for v in values if abs(v) <= DRAWABLE_MAX]
    scale = (min(drawn), max(drawn)) if len(drawn) > 1 else (0.9 * drawn[0], 1.1 * drawn[0])  # one value: +-10%
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx(scale)   # the colour scale spans the drawable values
