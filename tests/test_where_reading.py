"""``plot --where`` and ``transfer --where`` read a value as the config reads the same text: the
override's rule for the text (``seed=010``, YAML 1.1's octal 8, and ``1:0``, base 60's 60, are
refused, as ``seed: 010`` in a file and the override ``seed=010`` are), then the key's own check
(``seed=09`` refused as the integer key refuses it; ``seed=1e1`` and ``seed=10.0`` are seed 10).
Before, the filters read the text their own way: ``010``, ``09`` and ``1:0`` were kept as text
and matched nothing ("no cells match where={'seed': '010'}", no word on why), and ``1e1`` and
``10.0``, which the config reads as 10, matched nothing either. Truth: the config's own reading
of the override ``seed=TEXT`` (its value, or its refusal's words)."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult import config as C
from catapult.plots.phase import phase_grid
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store

from sweep_fakes import FakeRun


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("where") / "s.db"
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [-3, -2]}, "model.width": [8, 16]},
                        "seeds": [8, 10]})   # 8: what YAML 1.1 makes of 010; 10: what it looks like
    run_sweep(C.validate({"name": "w", "train": {"steps": 3}}), spec, path, run_fn=FakeRun(diverge_above=1.0),
              lambda0_fn=lambda c: 2.0, progress="none")
    return path


def _config_reading(tmp_path, text: str):
    """The config's reading of the override ``seed=TEXT``: its value, or the ConfigError's text."""
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    try:
        return C.load_config(path, [f"seed={text}"])["seed"]
    except C.ConfigError as err:
        return str(err)


def _args(command, store_path, tmp_path, text):
    extra = ["--series", "model.width"] if command == "transfer" else [
        "--trajectories-out", str(tmp_path / "t.png")]
    return [command, str(store_path), "--where", f"seed={text}", "--out", str(tmp_path / "h.png"), *extra]


@pytest.mark.parametrize("command", ["plot", "transfer"])
@pytest.mark.parametrize("text, words", [("010", "reads 010 as 8 (octal)"), ("1:0", "reads 1:0 as 60 (base 60)"),
                                         ("09", "YAML reads digits after a leading zero as text")])
def test_a_value_the_config_refuses_is_refused_naming_the_key_and_value(store_path, tmp_path, capsys, command,
                                                                        text, words):
    config_says = _config_reading(tmp_path, text)
    assert isinstance(config_says, str) and words in config_says   # the config refuses it (the truth)
    assert cli.main(_args(command, store_path, tmp_path, text)) == 2
    err = capsys.readouterr().err
    assert f"--where seed={text}" in err and words in err and "Traceback" not in err, err
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("command", ["plot", "transfer"])
@pytest.mark.parametrize("text", ["1e1", "10.0"])
def test_a_value_the_config_reads_selects_the_cells_of_that_value(store_path, tmp_path, capsys, command, text):
    assert _config_reading(tmp_path, text) == 10
    assert cli.main(_args(command, store_path, tmp_path, text)) == 0, capsys.readouterr().err
    assert (tmp_path / "h.png").exists()
    from catapult.cli.common import where_values

    with Store(store_path, create=False) as store:
        cells, axes = store.cells(), store.axes()
    where = where_values([f"seed={text}"], axes)
    assert where == {"seed": 10}
    grid = phase_grid(cells, axes, "test_loss", x="optimizer.lr", y="model.width", where=where)
    chosen = sorted(i for row in grid.members for m in row for i in m)
    assert chosen == sorted(c["id"] for c in cells if c["swept"]["seed"] == 10) and len(chosen) == 4


@pytest.mark.parametrize("command", ["plot", "transfer"])
def test_a_key_no_axis_sweeps_is_named_as_such_before_its_value_is_judged(store_path, tmp_path, capsys, command):
    # (a67baf88 judged the value first: schedule.warmup_steps=09 was refused as "expected an integer", where the
    # key is the mistake: the store sweeps no schedule.warmup_steps)
    args = _args(command, store_path, tmp_path, "8")
    args[args.index("seed=8")] = "schedule.warmup_steps=09"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "'schedule.warmup_steps' is not a swept key" in err and "expected an integer" not in err, err
