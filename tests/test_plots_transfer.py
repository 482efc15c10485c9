"""Transfer curves: optima and drift from hand-made cells, and `catapult transfer` on a real store."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from catapult.cli import main
from catapult.plots.transfer import (drift, optima, optima_rows, plot_transfer, shift, transfer_curves,
                                     transfer_table)

AXES = [{"key": "model.parametrization", "values": ["sp", "supar"], "labels": ["sp", "supar"]},
        {"key": "model.density", "values": [1.0, 0.25, 0.0625], "labels": ["1", "0.25", "0.0625"]},
        {"key": "optimizer.lr", "values": [2.0**k for k in range(-8, -2)],
         "labels": [f"2^{k}" for k in range(-8, -2)]},
        {"key": "seed", "values": [0, 1], "labels": ["0", "1"]}]


def _cells():
    """Parabolas in log2(lr) with a known optimum: SP's moves by +1 per factor 4 of density
    (-6 -> -5 -> -4), SμPar's stays at -6; seed 1 adds 0.01; one diverged SP cell."""
    cells, i = [], 0
    for p in ("sp", "supar"):
        for j, rho in enumerate((1.0, 0.25, 0.0625)):
            best = -6 + (j if p == "sp" else 0)
            for k in range(-8, -2):
                for seed in (0, 1):
                    status = "diverged" if (p == "sp" and rho == 1.0 and k == -3 and seed == 1) else "finished"
                    cells.append({"id": i, "status": status, "lr_target": 2.0**k,
                                  "swept": {"model.parametrization": p, "model.density": rho,
                                            "optimizer.lr": 2.0**k, "seed": seed},
                                  "test_loss": None if status != "finished" else 1.0 + 0.1 * (k - best) ** 2 + 0.01 * seed})
                    i += 1
    return cells


def test_optima_and_drift_in_log2_units(tmp_path):
    curves = transfer_curves(_cells(), AXES)
    opt = optima(curves)
    assert opt["sp"][1.0] == (2.0**-6, pytest.approx(1.005))
    assert [math.log2(opt["sp"][r][0]) for r in (1.0, 0.25, 0.0625)] == [-6, -5, -4]
    assert all(math.log2(opt["supar"][r][0]) == -6 for r in (1.0, 0.25, 0.0625))
    assert drift(curves) == {"sp": 2.0, "supar": 0.0}
    assert shift(curves) == {"sp": 2.0, "supar": 0.0}
    # cells not run yet are no points at all (not failures)
    pending = [dict(c, status="pending", test_loss=None) if c["swept"]["model.density"] == 0.0625 else c
               for c in _cells()]
    assert set(transfer_curves(pending, AXES).curves["sp"]) == {1.0, 0.25}
    # a point with a diverged seed is a failure, not the other seed's value
    point = dict(curves.curves["sp"][1.0])[2.0**-3]
    assert math.isnan(point)
    table = transfer_table(curves)
    assert "| sp |" in table and "| 2.0 | 2.0 |" in table and "| 0.0 | 0.0 |" in table
    fig = plot_transfer(curves, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0 and len(fig.axes) == 2
    # without a panel key the one panel is "all", as in the figure (the table said "None")
    one = transfer_curves([c for c in _cells() if c["swept"]["model.parametrization"] == "sp"], AXES, panel=None)
    assert "| all |" in transfer_table(one) and "None" not in transfer_table(one)
    # and --json names that panel as the table does (it wrote the key "None")
    from catapult.plots.transfer import transfer_summary
    summary = transfer_summary(one)
    assert list(summary["optima"]) == list(summary["drift_log2"]) == list(summary["spread"]) == ["all"]
    only = transfer_curves(_cells(), AXES, where={"seed": 1})
    assert optima(only)["sp"][1.0][1] == pytest.approx(1.01)
    with pytest.raises(ValueError, match="not a swept key"):
        transfer_curves(_cells(), AXES, x="model.width")
    # fixing the x axis left one point per curve: SP's drift of 2 read 0.0, as perfect transfer
    with pytest.raises(ValueError, match="where: 'optimizer.lr' is the x axis"):
        transfer_curves(_cells(), AXES, where={"optimizer.lr": 2.0**-3})


def test_the_first_series_is_the_grid_s_first_when_the_config_normalized_its_value():
    # model.density: [1, 0.25, 0.0625] stores 1.0 in the cells; matched on the written 1 the
    # dense curve went last, and shift() measured from density 0.25: 1.0 for SP's 2.0
    axes = [dict(a, values=[1, 0.25, 0.0625]) if a["key"] == "model.density" else a for a in AXES]
    curves = transfer_curves(_cells(), axes)
    assert list(curves.curves["sp"]) == [1.0, 0.25, 0.0625]
    assert shift(curves) == {"sp": 2.0, "supar": 0.0}
    # --where model.density=1, as the grid wrote it, selects the dense cells (was "no cells match")
    dense = transfer_curves(_cells(), axes, series=None, where={"model.density": 1})
    assert optima(dense)["sp"][None] == optima(curves)["sp"][1.0]


@pytest.mark.usefixtures("single_thread")
def test_transfer_command_on_a_real_sweep(tmp_path, capsys):
    config = {
        "name": "tr",
        "data": {"name": "digits", "n_train": 200, "n_test": 100},
        "model": {"width": 32, "depth": 3, "parametrization": "supar", "base_width": 32},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"steps": 8, "batch_size": 50},
        "eval": {"sharpness_every": 0, "test_every": 0},
        "sweep": {"grid": {"model.density": [1.0, 0.25], "optimizer.lr": {"log2": [-8, -4, 2]}}},
    }
    path = tmp_path / "tr.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp_path / "tr.db"
    assert main(["sweep", str(path), "--store", str(store), "--progress", "none"]) == 0
    capsys.readouterr()
    assert main(["transfer", str(store), "--out", str(tmp_path / "tr.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["panel"] is None and out["series"] == "model.density"
    assert set(out["optima"]["all"]) == {"1.0", "0.25"}
    assert (tmp_path / "tr.png").exists()
    assert main(["transfer", str(store), "--x", "model.width"]) == 2
    assert main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Transfer of optimizer.lr across model.density" in page and "data:image/png;base64," in page


def test_a_list_valued_key_as_series_or_panel_gives_curves_not_a_traceback(tmp_path, capsys):
    # optimizer.betas is a list: grouping cells by it raised "TypeError: unhashable type: 'list'"
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_fakes import FakeRun

    from catapult import config as cfg
    from catapult.sweep import parse_sweep, run_sweep

    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2, 0.4], "optimizer.betas": [[0.9, 0.999], [0.95, 0.99]]}})
    store = tmp_path / "b.db"
    run_sweep(cfg.validate({"name": "b", "optimizer": {"name": "adam"}, "train": {"steps": 3}}), spec, store,
              run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    capsys.readouterr()
    assert main(["transfer", str(store), "--series", "optimizer.betas", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # FakeRun's test loss is 0.1 + lr: the optimum is the smallest lr under either betas
    assert out["optima"]["all"] == {"[0.9, 0.999]": {"x": 0.1, "metric": pytest.approx(0.2)},
                                     "[0.95, 0.99]": {"x": 0.1, "metric": pytest.approx(0.2)}}
    assert out["drift_log2"] == {"all": 0.0}
    assert main(["transfer", str(store), "--panel", "optimizer.betas", "--out", str(tmp_path / "p.png")]) == 0
    table = capsys.readouterr().out
    assert "| [0.9, 0.999] |" in table and "| [0.95, 0.99] |" in table


def _weight_decay_cells(best):
    """One series per density; test loss 1 at the series' best weight decay, 2 elsewhere."""
    axes = [{"key": "model.density", "values": list(best), "labels": [str(r) for r in best]},
            {"key": "optimizer.weight_decay", "values": [0.0, 0.001, 0.01], "labels": ["0", "0.001", "0.01"]}]
    cells = [{"id": 3 * i + j, "status": "finished", "swept": {"model.density": r, "optimizer.weight_decay": w},
              "test_loss": 1.0 if w == best[r] else 2.0}
             for i, r in enumerate(best) for j, w in enumerate((0.0, 0.001, 0.01))]
    return transfer_curves(cells, axes, x="optimizer.weight_decay", series="model.density", panel=None)


def test_an_optimum_at_zero_is_no_finite_log2_drift_and_is_drawn():
    from catapult.plots.transfer import transfer_summary

    # the dense optimum is weight decay 0, the others 0.001 and 0.01: log2(max/min) is infinite;
    # drift skipped the 0 and said 3.3 (= log2(0.01/0.001)), the figure dropped the 0 point and its star
    curves = _weight_decay_cells({1.0: 0.0, 0.5: 0.001, 0.25: 0.01})
    assert drift(curves) == {None: math.inf} and shift(curves) == {None: math.inf}
    assert "| inf | inf |" in transfer_table(curves)
    summary = transfer_summary(curves)
    assert summary["drift_log2"] == {"all": None} and summary["shift_log2"] == {"all": None}
    json.loads(json.dumps(summary, allow_nan=False))      # strict JSON: no Infinity
    fig = plot_transfer(curves)
    ax = fig.axes[0]
    drawn = [x for line in ax.lines for x in line.get_xdata()]
    assert 0.0 in drawn                                    # the curves' 0 points and the star at 0
    left, right = ax.get_xlim()
    assert left < 0.0 < right                              # ... inside the axis
    # every optimum at 0: it does not move
    same = _weight_decay_cells({1.0: 0.0, 0.5: 0.0})
    assert drift(same) == {None: 0.0} and shift(same) == {None: 0.0}


@pytest.mark.parametrize("losses", [(0.0, 0.5, 1.0), (1.0, 1.0, 1.0), (0.2, 0.3, 0.25)])
def test_every_point_of_a_loss_curve_lies_inside_the_axis_not_on_its_frame(losses):
    # a best loss of exactly 0 set the y axis to (0, 1e-12): every other point was off the figure;
    # a flat curve (or the highest point) sat on the top frame, where the frame hid it
    axes = [{"key": "optimizer.lr", "values": [0.1, 0.2, 0.4], "labels": ["0.1", "0.2", "0.4"]}]
    cells = [{"id": j, "status": "finished", "swept": {"optimizer.lr": lr}, "best_train_loss": loss}
             for j, (lr, loss) in enumerate(zip((0.1, 0.2, 0.4), losses))]
    curves = transfer_curves(cells, axes, x="optimizer.lr", series=None, panel=None, metric="best_train_loss")
    ax = plot_transfer(curves).axes[0]
    bottom, top = ax.get_ylim()
    for loss in losses:
        assert bottom < loss < top, (loss, bottom, top)


def test_series_alike_to_six_digits_have_headers_of_their_own():
    # ':g' keeps 6 significant digits: densities 0.1 and 0.1000001 were both headed 'density=0.1',
    # two columns of one name whose optima could not be told apart
    header, rows = optima_rows(_weight_decay_cells({0.1: 0.0, 0.1000001: 0.01}))
    assert header[1:3] == ["density=0.1", "density=0.1000001"]
    assert rows[0][1:3] == ["0 (1)", "0.01 (1)"]
    assert "| density=0.1 | density=0.1000001 |" in transfer_table(_weight_decay_cells({0.1: 0.0, 0.1000001: 0.01}))
