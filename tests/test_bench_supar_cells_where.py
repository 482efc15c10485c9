"""bench/bench_supar_cells.py's --where reads its values as catapult plot / transfer do
(cli.common.where_values): model.density=1 selects the grid's 1.0, an lr by its value or its
label, seed=1e1 is seed 10. Before, each value was compared as text with str() of the cell's
value, so model.density=1 (str(1.0) == "1.0") selected no cell. Truth: the cells' ids from the
grid order (first axis slowest, seeds last) and their configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench_module import bench_module

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "supar" / "lr_transfer_small.yaml")
OVERRIDES = ["data.vocab_size=512", "sweep.grid.model.density=[1.0,0.015625]",
             "sweep.grid.optimizer.lr={log2: [-12, -3, 1.5]}"]


class Selected(Exception):
    """Raised by the patched batched engine with the cells main() selected (no training)."""


def _main(monkeypatch, where):
    script = bench_module("bench_supar_cells")
    monkeypatch.setattr(script.train, "load_data", lambda config: None)

    def stop(cells, threads):
        raise Selected(cells)

    monkeypatch.setattr(script, "run_batched", stop)
    monkeypatch.setattr("sys.argv", ["bench_supar_cells.py", CONFIG, *OVERRIDES, "--where", *where])
    with pytest.raises(Selected) as got:
        script.main()
    return got.value.args[0]


def test_a_density_written_as_1_selects_the_grids_1_0(monkeypatch):
    cells = _main(monkeypatch, ["model.parametrization=supar", "seed=0", "model.density=1"])
    # axes: parametrization (5), density (2), lr (7), seed (3): supar = 2, density 1.0 = 0, seed 0
    assert [c.id for c in cells[:2]] == [(2 * 2 * 7 + 0) * 3, (2 * 2 * 7 + 1) * 3]


def test_every_cell_of_the_selection_and_an_lr_by_value_or_label():
    script = bench_module("bench_supar_cells")
    from catapult.sweep.spec import load_sweep

    base, spec = load_sweep(CONFIG, OVERRIDES)
    cells = script.select_cells(base, spec, ["model.parametrization=supar", "seed=0", "model.density=1"])
    assert [c.id for c in cells] == [(2 * 2 * 7 + lr) * 3 for lr in range(7)]
    assert {(c.config["model"]["parametrization"], c.config["model"]["density"], c.config["seed"]) for c in cells} \
        == {("supar", 1.0, 0)}
    assert [c.config["optimizer"]["lr"] for c in cells] == [2.0 ** (-12 + 1.5 * i) for i in range(7)]
    for lr in ("0.125", "2^-3"):   # the last lr, 2^-3, by its value and by its label
        one = script.select_cells(base, spec, ["model.parametrization=sp", "model.density=0.015625",
                                               f"optimizer.lr={lr}", "seed=1e0"])
        assert [c.id for c in one] == [((0 * 2 + 1) * 7 + 6) * 3 + 1]


@pytest.mark.parametrize("where, words", [
    (["seed=1e1"], "no cell matches --where seed=1e1"),            # seed 10: the sweep has 0, 1, 2
    (["model.width=64"], "model.width: not a swept key"),
    (["seed=010"], "octal"),
])
def test_a_selection_of_no_cell_or_a_bad_value_exits_2_before_any_work(monkeypatch, capsys, where, words):
    script = bench_module("bench_supar_cells")
    monkeypatch.setattr(script.train, "load_data", lambda config: pytest.fail("work started"))
    monkeypatch.setattr("sys.argv", ["bench_supar_cells.py", CONFIG, *OVERRIDES, "--where", *where])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2 and words in capsys.readouterr().err
