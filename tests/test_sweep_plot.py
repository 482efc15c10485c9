"""Phase diagrams from a store: the reduced grid (against the fake's closed form) and PNG files."""
from __future__ import annotations

import numpy as np
import pytest

from catapult import config as cfg
from catapult.plots.phase import cell_label, phase_grid, plot_cell_trajectories, plot_phase_diagram
from catapult.sweep.store import Store
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun, fake_accuracy

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "s.db"
    config = cfg.validate({"name": "p", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-3, 0]},
                                 "schedule.warmup_steps": {"log2": [0, 3]}}, "seeds": [0, 1]})
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=1.0), lambda0_fn=lambda c: 2.0, progress="none")
    return path


def test_phase_grid_places_means_and_marks_diverged_and_best(store_path):
    with Store(store_path, create=False) as store:
        grid = phase_grid(store.cells(), store.axes(), "test_accuracy")
    assert (grid.x_key, grid.y_key) == ("optimizer.lr", "schedule.warmup_steps")
    assert grid.x_labels == ["2^-3/λ0", "2^-2/λ0", "2^-1/λ0", "2^0/λ0"]
    assert grid.y_labels == ["2^0", "2^1", "2^2", "2^3"]
    assert grid.values.shape == (4, 4)
    for i, warm in enumerate([1, 2, 4, 8]):
        for j, x in enumerate([-3, -2, -1, 0]):
            lr = 2.0 ** x / 2.0
            if lr * 8 / warm > 1.0:  # the fake's divergence rule
                assert grid.status[i][j] == "diverged" and np.isnan(grid.values[i, j])
            else:
                assert grid.status[i][j] == "ok"
                want = np.mean([fake_accuracy(lr, warm, s) for s in (0, 1)])  # averaged over seeds
                assert grid.values[i, j] == pytest.approx(want)
                assert len(grid.members[i][j]) == 2
    finite = np.where(np.isfinite(grid.values), grid.values, -np.inf)
    assert grid.best == np.unravel_index(np.argmax(finite), finite.shape)
    # warmup widens the stable range in the fake, as in the paper
    stable = [sum(s == "ok" for s in row) for row in grid.status]
    assert stable == sorted(stable) and stable[0] < stable[-1]


def test_where_selects_a_seed_and_losses_are_minimised(store_path):
    with Store(store_path, create=False) as store:
        grid = phase_grid(store.cells(), store.axes(), "test_loss", where={"seed": 1})
        with pytest.raises(ValueError, match="not a swept key"):
            phase_grid(store.cells(), store.axes(), "test_loss", x="model.width")
        with pytest.raises(ValueError, match="unknown metric"):
            phase_grid(store.cells(), store.axes(), "accuracy")
    assert all(len(m) == 1 for row in grid.members for m in row)
    finite = np.where(np.isfinite(grid.values), grid.values, np.inf)
    assert grid.best == np.unravel_index(np.argmin(finite), finite.shape)


def test_plot_files_are_pngs(store_path, tmp_path):
    with Store(store_path, create=False) as store:
        grid = phase_grid(store.cells(), store.axes(), "test_accuracy")
        plot_phase_diagram(grid, tmp_path / "phase.png")
        plot_cell_trajectories({"a": store.metrics(0), "b": store.metrics(15)}, tmp_path / "traj.png",
                               statuses={"b": store.cell(15)["status"]})
    for name in ("phase.png", "traj.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def test_plot_command_writes_heatmap_and_trajectories(store_path, tmp_path, capsys):
    from catapult.cli import main

    out, traj = tmp_path / "h.png", tmp_path / "t.png"
    assert main(["plot", str(store_path), "--metric", "train_loss", "--where", "seed=0", "--cells", "0", "5",
                 "--out", str(out), "--trajectories-out", str(traj)]) == 0
    assert out.read_bytes().startswith(PNG) and traj.read_bytes().startswith(PNG)
    assert main(["plot", str(store_path), "--cells", "99", "--out", str(out), "--trajectories-out", str(traj)]) == 2
    assert "no cells [99]" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["plot", "transfer"])
@pytest.mark.parametrize("where", [["--where", "seed=0", "seed=1"], ["--where", "seed=0", "--where", "seed=1"]])
def test_a_where_key_given_twice_is_refused(store_path, tmp_path, capsys, command, where):
    # the last value was taken, and a second --where flag replaced the first one's list: exit 0
    # with a figure of one of the two seeds asked for
    from catapult.cli import main

    out = tmp_path / "h.png"
    assert main([command, str(store_path), *where, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--where gives seed twice ('seed=0' and 'seed=1')" in err and "Traceback" not in err
    assert not out.exists()


def test_a_y_that_takes_the_only_non_seed_key_asks_for_an_x():
    # "an x key is needed" named neither the option nor what to give it
    axes = [{"key": "optimizer.lr", "values": [0.1, 1.0]}, {"key": "seed", "values": [0, 1]}]
    with pytest.raises(ValueError, match=r"--y 'optimizer.lr' leaves no swept key for the x axis; give --x KEY "
                                         r"\(swept keys: optimizer.lr, seed\)"):
        phase_grid([], axes, "test_accuracy", y="optimizer.lr")


@pytest.mark.parametrize("nx, ny", [(2, 1), (1, 1), (1, 4), (12, 3)])
def test_a_narrow_grid_with_every_legend_entry_keeps_its_layout(tmp_path, nx, ny):
    # a 1x2 grid with a collapsed cell (value*, whose legend line is long) drew a legend wider than
    # its axes under them: matplotlib warned "constrained_layout not applied" on stderr
    import warnings

    from catapult.plots.phase import PhaseGrid

    status = [["ok"] * nx for _ in range(ny)]
    status[0][-1] = "partial"
    if nx * ny > 2:
        status[-1][0], status[-1][-1] = "diverged", "failed"
    grid = PhaseGrid("test_accuracy", "optimizer.lr", "schedule.warmup_steps" if ny > 1 else None,
                     [f"2^{j}/λ0" for j in range(nx)], [f"2^{i}" for i in range(ny)] if ny > 1 else [""],
                     list(range(nx)), list(range(ny)), np.linspace(0.1, 0.9, nx * ny).reshape(ny, nx), status,
                     [[[0]] * nx for _ in range(ny)], (0, 0), {"seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the layout warning fails the test
        fig = plot_phase_diagram(grid, tmp_path / "h.png")
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]:
        box = legend.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0  # all of it on the page
    heatmap = fig.axes[0].get_window_extent(renderer)
    assert heatmap.width > 0.5 * page.width and heatmap.height > 0.3 * page.height


def test_cells_whose_values_the_config_normalized_stay_on_the_diagram(tmp_path):
    # "2^-3" is stored as 0.125 and 1.0 as 1 in each cell; matched on the written values
    # alone, most cells fell off the diagram as "missing", silently
    path = tmp_path / "s.db"
    config = cfg.validate({"name": "p", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": ["2^-3", 0.25], "schedule.warmup_steps": [1.0, 8],
                                 "model.width": [16.0, 32]}})
    run_sweep(config, spec, path, run_fn=FakeRun(diverge_above=10.0), lambda0_fn=lambda c: 2.0, progress="none")
    with Store(path, create=False) as store:
        cells, axes = store.cells(), store.axes()
    grid = phase_grid(cells, axes, "test_accuracy")  # x = lr (columns), y = warmup (rows)
    assert grid.members == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    for i, warm in enumerate([1, 8]):
        for j, lr in enumerate([0.125, 0.25]):
            assert grid.status[i][j] == "ok"
            assert grid.values[i, j] == pytest.approx(fake_accuracy(lr, warm, 0))
    # the width given as written in the grid, as its label or as stored selects the same cells
    for wanted in (16.0, "16", 16):
        one = phase_grid(cells, axes, "test_accuracy", where={"model.width": wanted})
        assert one.members == [[[0], [4]], [[2], [6]]]
    by_label = phase_grid(cells, axes, "test_accuracy", x="model.width", y="schedule.warmup_steps",
                          where={"optimizer.lr": "2^-3"})
    assert by_label.members == [[[0], [1]], [[2], [3]]]
    # a trajectory's legend names the cell in the grid's units too (it read lr=0.125)
    assert cell_label(cells[0], axes) == "cell 0: lr=2^-3, T_wrm=1, model.width=16"


def test_a_huge_grid_gives_a_figure_image_readers_open_with_every_tick_label_at_its_own_column(tmp_path):
    # the figure grew 0.75 in per column and 0.55 in per row without bound: a 200 x 200 grid made
    # a 16775 x 12320 PNG (206 Mpx, which Pillow refuses as a decompression bomb), and 1000 lrs an
    # 82775 px wide strip
    from PIL import Image

    nx, ny = 240, 150
    axes = [{"key": "optimizer.lr", "values": [k + 1 for k in range(nx)], "labels": [f"v{k}" for k in range(nx)]},
            {"key": "schedule.warmup_steps", "values": [k + 1 for k in range(ny)], "labels": [f"w{k}" for k in range(ny)]}]
    cells = [{"id": i * ny + j, "status": "finished", "test_accuracy": ((i + j) % 10) / 10,
              "swept": {"optimizer.lr": i + 1, "schedule.warmup_steps": j + 1}} for i in range(nx) for j in range(ny)]
    grid = phase_grid(cells, axes, "test_accuracy")
    fig = plot_phase_diagram(grid, tmp_path / "huge.png")
    with Image.open(tmp_path / "huge.png") as image:      # raises DecompressionBombError past 179 Mpx
        width, height = image.size
    assert width * height <= Image.MAX_IMAGE_PIXELS and max(width, height) <= 8000
    ax = fig.axes[0]
    for prefix, ticks, labels in (("v", ax.get_xticks(), ax.get_xticklabels()),
                                  ("w", ax.get_yticks(), ax.get_yticklabels())):
        shown = [(t, label.get_text()) for t, label in zip(ticks, labels) if label.get_text()]
        assert 5 <= len(shown) <= 100                        # thinned to a readable number ...
        assert all(text == f"{prefix}{int(t)}" for t, text in shown)   # ... each at its own column
    # a small grid keeps one label per column
    axes = [{**axes[0], "values": axes[0]["values"][:12], "labels": axes[0]["labels"][:12]},
            {**axes[1], "values": axes[1]["values"][:8], "labels": axes[1]["labels"][:8]}]
    cells = [c for c in cells if c["swept"]["optimizer.lr"] <= 12 and c["swept"]["schedule.warmup_steps"] <= 8]
    for c in cells:
        c["id"] = (c["swept"]["optimizer.lr"] - 1) * 8 + c["swept"]["schedule.warmup_steps"] - 1
    ax = plot_phase_diagram(phase_grid(cells, axes, "test_accuracy")).axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == [f"v{k}" for k in range(12)]
    assert [label.get_text() for label in ax.get_yticklabels()] == [f"w{k}" for k in range(8)]
    assert len(ax.texts) == 12 * 8                           # each cell's value written in it
    # 120 x 2 cells (under the 256 that are annotated) in a capped figure: no values squeezed
    # into cells a third of a label wide
    axes = [{"key": "optimizer.lr", "values": list(range(1, 121)), "labels": [f"v{k}" for k in range(120)]},
            {"key": "schedule.warmup_steps", "values": [1, 2], "labels": ["w0", "w1"]}]
    cells = [{"id": 2 * i + j, "status": "finished", "test_accuracy": 0.5,
              "swept": {"optimizer.lr": i + 1, "schedule.warmup_steps": j + 1}} for i in range(120) for j in range(2)]
    assert len(plot_phase_diagram(phase_grid(cells, axes, "test_accuracy")).axes[0].texts) == 0
