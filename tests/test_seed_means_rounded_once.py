"""The phase diagram and the transfer curves averaged seeds in floating point (``np.mean`` /
``np.std``, ``sum / n``): three seeds whose test loss is exactly 0.1 were drawn as
0.10000000000000002 with a cell annotated "±1.7e-17", and ``catapult transfer --json`` gave that
mean as the optimum's loss with a std of 1.7e-17, where the export's aggregate (``mean_std``,
rounded once) says 0.1 and 0.0. The truth here is exact rational arithmetic (``fractions``) on the
values written into the store."""
from __future__ import annotations

import json
import sqlite3
from fractions import Fraction

from catapult import cli
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun

# (lr, density) -> the three seeds' test losses; equal seeds at (0.1, 1.0), unequal ones elsewhere
LOSSES = {(0.1, 1.0): (0.1, 0.1, 0.1), (0.2, 1.0): (0.3, 0.7, 0.3), (0.1, 0.5): (0.1, 0.2, 0.7),
          (0.2, 0.5): (0.9, 0.9, 0.9)}


def _store(tmp_path):
    config = cfg.validate({"name": "t", "train": {"steps": 2}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2], "model.density": [1.0, 0.5]}, "seeds": [0, 1, 2]})
    store = tmp_path / "s.db"
    run_sweep(config, spec, store, run_fn=FakeRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    conn = sqlite3.connect(store)
    for cell_id, swept in conn.execute("SELECT id, swept_json FROM cells").fetchall():
        s = json.loads(swept)
        conn.execute("UPDATE cells SET test_loss = ? WHERE id = ?",
                     (LOSSES[(s["optimizer.lr"], s["model.density"])][s["seed"]], cell_id))
    conn.commit()
    conn.close()
    return store


def _exact(values):
    """(mean, sample std) of ``values``: the mean exact and rounded once; the variance exact, its
    square root within an ulp (two roundings), 0.0 exactly for equal values."""
    xs = [Fraction(v) for v in values]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return float(mean), float(var) ** 0.5 if var else 0.0


def test_the_heatmap_draws_each_cells_exact_mean_and_std(tmp_path, capsys, monkeypatch):
    store = _store(tmp_path)
    import catapult.plots.phase as phase

    drawn = []
    real = phase.plot_phase_diagram
    monkeypatch.setattr(phase, "plot_phase_diagram", lambda grid, out: drawn.append(real(grid, out)))
    code = cli.main(["plot", str(store), "--metric", "test_loss", "--x", "optimizer.lr", "--y", "model.density",
                     "--out", str(tmp_path / "h.png"), "--trajectories-out", str(tmp_path / "t.png")])
    assert code == 0, capsys.readouterr().err
    (fig,) = drawn
    ax = fig.axes[0]
    mesh = ax.collections[0].get_array()   # the colours' data: rows density 1.0, 0.5; columns lr 0.1, 0.2
    for (lr, density), values in LOSSES.items():
        i, j = [1.0, 0.5].index(density), [0.1, 0.2].index(lr)
        assert float(mesh[i, j]) == _exact(values)[0], (lr, density)
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[(0, 0)] == "0.1\n±0"   # three seeds of exactly 0.1: no spread (was '0.1\n±1.7e-17')
    assert texts[(1, 1)] == "0.9\n±0"


def test_transfer_json_gives_the_exact_mean_at_the_optimum_and_its_std(tmp_path, capsys):
    store = _store(tmp_path)
    code = cli.main(["transfer", str(store), "--json", "--out", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    best = {s: o for s, o in summary["optima"]["all"].items()}
    assert best["1.0"] == {"x": 0.1, "metric": _exact(LOSSES[(0.1, 1.0)])[0]} and best["1.0"]["metric"] == 0.1
    assert best["0.5"] == {"x": 0.1, "metric": _exact(LOSSES[(0.1, 0.5)])[0]}
    for series, density in (("1.0", 1.0), ("0.5", 0.5)):
        for point, lr in zip(summary["spread"]["all"][series], (0.1, 0.2)):
            want = _exact(LOSSES[(lr, density)])[1]
            assert (point["x"], point["n"]) == (lr, 3)
            # the truth's sqrt rounds twice: within 2 ulps (4.5e-16 relative) of a correctly rounded one
            assert abs(point["std"] - want) <= 4.5e-16 * want, (series, lr, point["std"], want)
    # seeds that agree exactly: a std of exactly 0 (was 1.7e-17)
    assert summary["spread"]["all"]["1.0"][0]["std"] == 0.0 and summary["spread"]["all"]["0.5"][1]["std"] == 0.0
