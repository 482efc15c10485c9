"""An optimum at an end of the swept grid (no point, finished or diverged, beyond it) is no measured
optimum: two densities whose losses both still fall at the largest lr of the grid printed drift 0.0
and shift 0.0, "the optimum transfers", without a word (S). ``catapult transfer`` now warns which
curves end at their best (and ``--json`` lists them under ``edge_optima``); an optimum with a
diverged point beyond it is bracketed and not named. The truth: parabolas in log2(lr) with known
vertices, on and off the grid, and a real sweep whose Adam lrs 2^-8 .. 2^-6 are all below the best."""
from __future__ import annotations

import json
import math

import yaml

from catapult.cli import main
from catapult.plots.transfer import drift, edge_note, edge_optima, transfer_curves

AXES = [{"key": "model.density", "values": [1.0, 0.25], "labels": ["1", "0.25"]},
        {"key": "optimizer.lr", "values": [2.0**k for k in range(-8, -3)], "labels": [f"2^{k}" for k in range(-8, -3)]}]


def _cells(vertex, diverged_above=None):
    """Loss 1 + 0.1 (log2 lr - vertex[rho])^2; cells above ``diverged_above`` diverged."""
    cells = []
    for rho in (1.0, 0.25):
        for k in range(-8, -3):
            gone = diverged_above is not None and k > diverged_above
            cells.append({"id": len(cells), "status": "diverged" if gone else "finished", "lr_target": 2.0**k,
                          "swept": {"model.density": rho, "optimizer.lr": 2.0**k},
                          "test_loss": None if gone else 1.0 + 0.1 * (k - vertex[rho]) ** 2})
    return cells


def test_optima_past_the_top_of_the_grid_are_named_not_read_as_transfer():
    curves = transfer_curves(_cells({1.0: -1, 0.25: -2}), AXES, panel=None)   # true drift 1, both off the grid
    assert drift(curves) == {None: 0.0}                                      # what the table says
    assert edge_optima(curves) == [(None, 1.0, "highest"), (None, 0.25, "highest")]
    note = edge_note(curves)
    assert "density=1 (highest)" in note and "density=0.25 (highest)" in note and "optimizer.lr" in note


def test_bracketed_optima_and_a_diverged_point_beyond_are_not_named():
    assert edge_optima(transfer_curves(_cells({1.0: -6, 0.25: -5}), AXES, panel=None)) == []
    # the best finished lr is 2^-6, and 2^-5 .. 2^-4 diverged: the optimum is bracketed by divergence
    curves = transfer_curves(_cells({1.0: -1, 0.25: -1}, diverged_above=-6), AXES, panel=None)
    assert edge_optima(curves) == [] and edge_note(curves) is None
    low = transfer_curves(_cells({1.0: -9, 0.25: -6}), AXES, panel=None)
    assert edge_optima(low) == [(None, 1.0, "lowest")]


def test_catapult_transfer_warns_of_an_optimum_at_the_grid_s_end(tmp_path, capsys):
    config = {"name": "edge", "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "model": {"width": 32, "depth": 3, "parametrization": "supar", "base_width": 32},
              "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01},
              "train": {"steps": 8, "batch_size": 50}, "eval": {"sharpness_every": 0, "test_every": 0},
              "sweep": {"grid": {"model.density": [1.0, 0.25], "optimizer.lr": {"log2": [-8, -6, 2]}}}}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp_path / "edge.db"
    assert main(["sweep", str(path), "--store", str(store), "--progress", "none"]) == 0
    capsys.readouterr()
    assert main(["transfer", str(store), "--out", str(tmp_path / "e.png"), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    optima = {s: o["x"] for s, o in out["optima"]["all"].items()}
    assert optima == {"1.0": 2.0**-6, "0.25": 2.0**-6}         # 8 Adam steps: the largest lr is best
    assert out["edge_optima"] == [{"panel": "all", "series": "1.0", "end": "highest"},
                                  {"panel": "all", "series": "0.25", "end": "highest"}]
    assert "warning: the best optimizer.lr is at an end of the grid" in captured.err
    assert main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 0      # the page says so too
    assert "At the grid's end:</b> the best optimizer.lr is at an end of the grid" in (tmp_path / "r.html").read_text()


def test_an_optimum_beside_unfinished_cells_is_not_at_the_grid_s_end():
    """The grid's ends are its x values, not the curve's finished points: a sweep still running (its
    larger lrs pending) named its best finished lr 'at an end of the grid' and advised extending the
    grid that already went on (vertices at 2^-6: the points 2^-8 .. 2^-6 finished, 2^-5 and 2^-4
    pending), and a lone finished point in the grid's middle 'lowest'. Those optima rest on
    incomplete rows, which the unfinished note says; an optimum at a true end with cells still
    pending inside the grid is named."""
    def pending(cells, ks):
        return [dict(c, status="pending", test_loss=None) if c["swept"]["optimizer.lr"] in [2.0**k for k in ks]
                else c for c in cells]

    running = transfer_curves(pending(_cells({1.0: -2, 0.25: -2}), (-5, -4)), AXES, panel=None)
    assert [x for x, _ in running.curves[None][1.0]] == [2.0**-8, 2.0**-7, 2.0**-6]   # best: 2^-6, the last point
    assert edge_optima(running) == [] and edge_note(running) is None
    middle = transfer_curves(pending(_cells({1.0: -6, 0.25: -6}), (-8, -7, -5, -4)), AXES, panel=None)
    assert edge_optima(middle) == []
    top = transfer_curves(pending(_cells({1.0: -1, 0.25: -6}), (-7, -6)), AXES, panel=None)
    assert edge_optima(top) == [(None, 1.0, "highest")]     # 2^-4, the grid's largest lr, finished and best


def test_a_best_density_of_1_is_the_end_of_its_range_not_of_the_grid():
    """``--x model.density``: the dense model best (density 1, the top of the grid) was named an
    optimum at the grid's end that 'may lie beyond it', with the advice to 'extend the grid of
    model.density' past 1, where no density lies. Density 1 is the optimum of the range, and the
    drift through it a measurement; an optimum at the grid's lowest density is still named (a
    sparser grid can go on)."""
    axes = [{"key": "optimizer.lr", "values": [2.0**-6, 2.0**-5], "labels": ["2^-6", "2^-5"]},
            {"key": "model.density", "values": [1.0, 0.5, 0.25], "labels": ["1", "0.5", "0.25"]}]
    cells = []
    for k, best in ((-6, 1.0), (-5, 0.25)):         # loss (log2 density - log2 best)^2: one best per lr
        for rho in (1.0, 0.5, 0.25):
            cells.append({"id": len(cells), "status": "finished", "lr_target": 2.0**k,
                          "swept": {"optimizer.lr": 2.0**k, "model.density": rho},
                          "test_loss": 1.0 + (math.log2(rho) - math.log2(best)) ** 2})
    curves = transfer_curves(cells, axes, x="model.density", series="optimizer.lr", panel=None)
    assert drift(curves) == {None: 2.0}                          # log2(1 / 0.25): measured, not bounded
    assert edge_optima(curves) == [(None, 2.0**-5, "lowest")]    # 1 at density 1 is not named
    note = edge_note(curves)
    assert "(lowest)" in note and "(highest)" not in note


def test_the_edge_note_names_the_panel_and_a_one_point_curves_end():
    """Mutation pass 20 (TE3, TE6): with a panel axis the note names each optimum's panel and series
    ('width=64 density=0.5 (lowest)'; TE6 left the panel out, so two panels' series read alike); a curve of
    one lr is at its lowest end (its first point; TE3 called it highest)."""
    from catapult.plots.transfer import TransferCurves

    curves = TransferCurves("test_loss", "optimizer.lr", "model.density", "model.width",
                            {64: {0.5: [(0.1, 1.0), (0.2, 1.5)], 1.0: [(0.1, 2.0), (0.2, 1.5), (0.4, 1.8)]},
                             128: {0.5: [(0.1, 1.0)]}})
    assert edge_optima(curves) == [(64, 0.5, "lowest"), (128, 0.5, "lowest")]
    assert edge_note(curves) == (
        "the best optimizer.lr is at an end of the grid for width=64 density=0.5 (lowest); width=128 density=0.5 "
        "(lowest): the optimum may lie beyond it, and the drift and shift through it are no measurement of it; "
        "extend the grid of optimizer.lr")
