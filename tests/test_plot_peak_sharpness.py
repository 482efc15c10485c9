"""``catapult plot --metric peak_sharpness`` was refused ('unknown metric') though ``catapult export``
and the report carry that column (each cell's summary's largest sharpness, with its solve's mark).
The phase diagram now draws it: the mean over seeds of the finished cells' summary peaks (the
aggregate's ``peak_sharpness_mean``; a diverged cell is hatched, as in the aggregate it is left out),
and the cells whose peak came from a solve that did not converge are counted as for ``sharpness``."""
from __future__ import annotations

import math

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun


def test_plot_draws_the_summary_peak_sharpness_the_export_gives(tmp_path, capsys, monkeypatch):
    fake = FakeRun(diverge_above=5.0)   # lr > 0.625 diverges

    def run_fn(config, progress=None):   # summaries as the engine writes them
        result = fake(config, progress)
        diverged = result.status == "diverged"
        result.summary.update(peak_sharpness=100.0 if diverged else 10.0 + 3 * config["seed"],
                              peak_sharpness_converged=not diverged and config["seed"] == 0)
        return result

    config = cfg.validate({"name": "t", "train": {"steps": 4}, "eval": {"sharpness_every": 0}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.25, 2.0]}, "seeds": [0, 1]})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=run_fn, lambda0_fn=lambda c: 2.0, progress="none")

    import catapult.plots.phase as phase

    drawn = []
    real = phase.plot_phase_diagram
    monkeypatch.setattr(phase, "plot_phase_diagram", lambda grid, out: (drawn.append(grid), real(grid, out)))
    code = cli.main(["plot", str(store), "--metric", "peak_sharpness", "--out", str(tmp_path / "h.png"),
                     "--trajectories-out", str(tmp_path / "t.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "h.png").stat().st_size > 0
    (grid,) = drawn
    assert grid.x_values == [0.25, 2.0] and grid.status == [["ok", "diverged"]]
    # seeds 0 and 1 at lr 0.25: peaks 10 and 13 (mean 11.5, sample std 3/sqrt(2)); lr 2.0 diverged: no value
    assert grid.values[0, 0] == 11.5 and math.isnan(grid.values[0, 1])
    assert abs(grid.spread[0, 0] - 3 / math.sqrt(2)) <= 1e-12
    assert grid.unconverged.tolist() == [[1, 0]]   # seed 1's peak came from an unconverged solve
    assert grid.best is None                        # a curvature measure, no objective
