"""Figures of metrics near float64's largest value (a float64 run with divergence_factor inf logs
a loss of 1e308 before it overflows): matplotlib's margins and ticks overflowed ("Axis limits
cannot be NaN or Inf", "arange: cannot compute length"), a traceback instead of the figure."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sweep_fakes import FakeRun  # noqa: E402

from catapult import config as cfg  # noqa: E402
from catapult.cli import main  # noqa: E402
from catapult.config import resolve_lr  # noqa: E402
from catapult.plots.spectrum import plot_spectral_density  # noqa: E402
from catapult.sweep import parse_sweep, run_sweep  # noqa: E402

BIG = 1e308


class HugeRun(FakeRun):
    """lr 0.2 logs +1e308 for every loss, accuracy and sharpness, lr 0.4 -1e308 (-|.| for the
    losses' log axes is left to the finite cells)."""

    def __call__(self, config, progress=None):
        result = super().__call__(config, progress)
        lr = resolve_lr(config["optimizer"]["lr"])
        if lr in (0.2, 0.4):
            value = BIG if lr == 0.2 else -BIG
            for row in result.metrics:
                row["train_loss"] = value
                row["sharpness"] = abs(value)
                if row["test_loss"] is not None:
                    row["test_loss"] = value
                    row["test_accuracy"] = value
        return result


def _store(tmp_path):
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2, 0.4], "schedule.warmup_steps": [1, 2]}})
    store = tmp_path / "h.db"
    run_sweep(cfg.validate({"name": "h", "optimizer": {"name": "adam"}, "train": {"steps": 3}}), spec, store,
              run_fn=HugeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    return store


def _image(path_or_bytes):
    image = mpimg.imread(path_or_bytes if isinstance(path_or_bytes, Path) else io.BytesIO(path_or_bytes))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


@pytest.mark.parametrize("metric", ["test_loss", "test_accuracy"])
def test_transfer_draws_metrics_of_plus_and_minus_1e308(tmp_path, capsys, metric):
    store = _store(tmp_path)
    capsys.readouterr()
    out = tmp_path / "t.png"
    assert main(["transfer", str(store), "--series", "schedule.warmup_steps", "--metric", metric,
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    _image(out)
    # the values are drawn, not changed: the optimum of the loss is the -1e308 at lr 0.4, the
    # accuracy's the +1e308 at lr 0.2
    want = {"x": 0.4, "metric": -BIG} if metric == "test_loss" else {"x": 0.2, "metric": BIG}
    assert summary["optima"]["all"] == {"1": want, "2": want}


def test_plot_heatmap_and_trajectories_and_report_of_1e308(tmp_path, capsys):
    store = _store(tmp_path)
    for metric in ("test_loss", "test_accuracy"):
        heat, traj = tmp_path / f"{metric}.png", tmp_path / f"{metric}_t.png"
        assert main(["plot", str(store), "--metric", metric, "--out", str(heat),
                     "--trajectories-out", str(traj), "--cells", "0", "1", "2", "3", "4", "5"]) == 0
        _image(heat)
        _image(traj)
    page = tmp_path / "r.html"
    assert main(["report", str(store), "--out", str(page)]) == 0
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page.read_text())
    assert images
    for data in images:
        _image(base64.b64decode(data))
    assert main(["export", str(store), "--out", str(tmp_path / "e.csv")]) == 0
    rows = (tmp_path / "e.csv").read_text()
    assert "1e+308" in rows and "-1e+308" in rows  # the table keeps them


@pytest.mark.parametrize("grid", [[-BIG, 0.0, BIG], [0.0, 1.0, 1.7e308]])
def test_a_spectrum_reaching_1e308_is_drawn(tmp_path, grid):
    density = SimpleNamespace(grid=np.array(grid), density=np.array([0.2, 1.0, 0.2]))
    path = tmp_path / "d.png"
    fig = plot_spectral_density(density, path, marks=[grid[-1]])
    _image(path)
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= grid[0] and hi >= grid[-1] and math.isfinite(lo) and math.isfinite(hi)


def test_a_run_s_figure_with_a_sharpness_of_1e308_is_drawn(tmp_path):
    # the sharpness panel's top was 8x the largest sharpness: inf, "Axis limits cannot be NaN or Inf"
    from catapult.engine.trajectories import plot_run

    rows = [{"step": t, "train_loss": [1.0, 1e300, BIG][t], "sharpness": [1.0, 1e300, BIG][t], "lr": 0.1,
             "threshold": 20.0} for t in range(3)]
    path = tmp_path / "run.png"
    fig = plot_run(rows, path, status="finished")
    _image(path)
    low, high = fig.axes[1].get_ylim()
    assert low <= 1.0 and high >= BIG and math.isfinite(high)
