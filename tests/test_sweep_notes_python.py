"""The notes ``catapult sweep`` prints about a grid (cells that run without an option the base
sets) reach Python users too: ``expand`` and ``run_sweep`` issue each as a ``SweepNote`` warning
and ``SweepOutcome.notes`` lists them. Before, they printed nothing from Python."""
from __future__ import annotations

import warnings

from catapult import cli
from catapult.sweep import SweepNote, expand, load_sweep, run_sweep

GRID = ("name: notes\nseed: 0\ndata: {name: digits, n_train: 32, n_test: 8}\n"
        "model: {name: mlp, width: 8, depth: 3}\noptimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
        "train: {steps: 2}\neval: {sharpness_every: 0, test_every: 0}\n"
        "sweep:\n  grid:\n    optimizer.name: [sgd, adam]\n")


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, SweepNote)]


def test_expand_and_run_sweep_warn_what_the_command_line_prints(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    assert cli.main(["sweep", str(path), "--dry-run", "--store", str(tmp_path / "d.db")]) == 0
    printed = [line.removeprefix("catapult sweep: note: ") for line in capsys.readouterr().err.splitlines()
               if line.startswith("catapult sweep: note: ")]
    assert len(printed) == 1 and printed[0].startswith("optimizer.momentum (0.9) is read by optimizer.name sgd only")
    assert "adam run without it" in printed[0]

    cells, caught = _caught(lambda: expand(*load_sweep(path)))
    assert len(cells) == 2 and [str(w.message) for w in caught] == printed
    assert caught[0].category is SweepNote and issubclass(SweepNote, UserWarning)

    outcome, caught = _caught(lambda: run_sweep(*load_sweep(path), tmp_path / "s.db", progress="none"))
    assert [str(w.message) for w in caught] == printed and outcome.notes == printed
    assert outcome.counts["finished"] == 2


def test_the_command_line_prints_each_note_once_and_no_warning(tmp_path, capfd):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    # (recorded, not read from stderr: pytest records a warning where a shell prints it)
    code, caught = _caught(lambda: cli.main(["sweep", str(path), "--store", str(tmp_path / "s.db"),
                                             "--progress", "none"]))
    err = capfd.readouterr().err
    assert code == 0 and caught == []
    assert err.count("optimizer.momentum (0.9)") == 1 and "SweepNote" not in err, err


def test_a_grid_without_notes_warns_nothing(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.replace(", momentum: 0.9", ""))
    (cells, caught) = _caught(lambda: expand(*load_sweep(path)))
    assert len(cells) == 2 and caught == []


def test_a_base_not_yet_validated_gets_its_notes_and_no_key_error(tmp_path):
    # run_sweep / expand accept a plain mapping; the notes read keys it leaves out as defaults
    # (the first version of the warning raised KeyError 'spectrum_block_size' on such a base)
    from catapult.sweep import parse_sweep

    base = {"data": {"name": "digits", "n_train": 32, "n_test": 8}, "optimizer": {"name": "sgd", "momentum": 0.9},
            "train": {"steps": 1}, "eval": {"sharpness_every": 0}}
    spec = parse_sweep({"grid": {"optimizer.name": ["sgd", "adam"]}})
    cells, caught = _caught(lambda: expand(base, spec))
    assert len(cells) == 2 and len(caught) == 1 and str(caught[0].message).startswith("optimizer.momentum (0.9)")
    plain = {k: v for k, v in base.items() if k != "optimizer"}
    cells, caught = _caught(lambda: expand(plain, parse_sweep({"grid": {"train.steps": [1, 2]}})))
    assert len(cells) == 2 and caught == []
