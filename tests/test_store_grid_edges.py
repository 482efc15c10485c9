"""``store_grid.grid_value_problem``'s edges (mutation pass 14): a stored cell's swept value must be
the grid's value at the cell's place, as written or as the config normalized it (the module's
docstring). Truth: the grid as written in the sweep's spec and the rule of that docstring."""
from __future__ import annotations

import json
import sqlite3

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store, StoreError
from catapult.sweep.store_grid import grid_value_problem

from sweep_fakes import FakeLambda0, FakeRun

LR_AXIS = {"key": "optimizer.lr", "values": ["2^0/lambda0", "2^1/lambda0"], "labels": ["2^0/λ0", "2^1/λ0"]}


def test_a_made_up_relative_lr_at_a_place_no_other_cell_holds_is_refused(tmp_path, capsys):
    # a one-axis sweep of relative lrs (a critical-lr sweep), no seeds: each place has one cell, so
    # 'two cells at one place' cannot see the edit; 2^5/lambda0 was exported as a result of the grid
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [0, 1]}}})
    path = tmp_path / "s.db"
    run_sweep(config, spec, path, run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
    conn = sqlite3.connect(path)
    conn.execute("""UPDATE cells SET swept_json = '{"optimizer.lr": "2^5/lambda0"}' WHERE id = 0""")
    conn.commit()
    conn.close()
    with Store(path, create=False) as store, pytest.raises(StoreError, match="damaged: cell 0 swept_json optimizer.lr "
                                                                            "'2\\^5/lambda0' is not the grid's value"):
        store.cells()
    assert main(["export", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert "cell 0 swept_json optimizer.lr" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_relative_lrs_pass_as_the_config_stores_them_and_are_refused_off_their_place():
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": "2^0/lambda0"}},
                               {"id": 1, "swept": {"optimizer.lr": "2^1/lambda0"}}], [LR_AXIS]) is None
    # the config keeps a relative lr stripped of the spaces a grid may have written around it
    spaced = {**LR_AXIS, "values": [" 2^0/lambda0 ", "2^1/lambda0"]}
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": "2^0/lambda0"}}], [spaced]) is None
    for edited in ("2^5/lambda0", "0.5/lambda0", "2^0", 1.0):
        problem = grid_value_problem([{"id": 0, "swept": {"optimizer.lr": edited}}], [LR_AXIS])
        assert problem and problem.startswith("cell 0 swept_json optimizer.lr") and problem.endswith("(2^0/λ0)")


def test_a_swept_key_the_grid_does_not_sweep_is_refused_as_a_missing_one_is():
    cells = [{"id": 0, "swept": {"optimizer.lr": "2^0/lambda0", "seed": 0}}]
    assert grid_value_problem(cells, [LR_AXIS]) == ("cell 0 swept_json has the keys ['optimizer.lr', 'seed'], "
                                                    "not the grid's ['optimizer.lr']")


@pytest.mark.parametrize("cid", [-1, 2, 3])
def test_a_cell_id_outside_the_grid_is_refused(cid):
    # ids 0 .. 1 for two places: -1 and 2 wrapped round to a place (1 and 0) whose value they held
    value = LR_AXIS["values"][cid % 2]
    assert grid_value_problem([{"id": cid, "swept": {"optimizer.lr": value}}], [LR_AXIS]) == \
        f"cell {cid} is not one of the grid's 2 cells"


NUMBER_AXIS = {"key": "optimizer.lr", "values": ["2^-3", 0.5], "labels": ["2^-3", "0.5"]}


def test_a_number_place_takes_its_number_and_refuses_text_or_another_number():
    # the config stores a number as a number (2^-3 -> 0.125): text there, even of the same number,
    # was written by hand, as is a name, null or a flag; a number a millionth off is another learning rate
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": 0.125}}], [NUMBER_AXIS]) is None
    for edited in ("0.125", "2^-3 ", 0.125 * (1 + 1e-6), 0.125 * (1 - 1e-4), "sgd", None, True):
        assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": edited}}], [NUMBER_AXIS]) == \
            f"cell 0 swept_json optimizer.lr {edited!r:.40} is not the grid's value at the cell's place (2^-3)"


def test_the_text_of_a_number_is_not_the_number():
    # '1' and 1 print alike; the config stores schedule.warmup_steps as the integer
    axis = {"key": "schedule.warmup_steps", "values": [1, 4], "labels": ["1", "4"]}
    assert grid_value_problem([{"id": 1, "swept": {"schedule.warmup_steps": 4}}], [axis]) is None
    assert grid_value_problem([{"id": 1, "swept": {"schedule.warmup_steps": "4"}}], [axis]) == \
        "cell 1 swept_json schedule.warmup_steps '4' is not the grid's value at the cell's place (4)"


def test_two_cells_at_one_place_holding_different_names_are_refused():
    # a name is stored as the config normalized it ('SGD' -> 'sgd'), so its text is not compared
    # with the grid's; the cells sharing its place must agree (a made-up name is refused before:
    # the test below)
    axes = [{"key": "optimizer.name", "values": ["SGD", "adam"], "labels": ["SGD", "adam"]},
            {"key": "seed", "values": [0, 1], "labels": ["0", "1"]}]
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.name": "sgd", "seed": 0}},
                               {"id": 1, "swept": {"optimizer.name": "sgd", "seed": 1}}], axes) is None
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.name": "sgd", "seed": 0}},
                               {"id": 1, "swept": {"optimizer.name": "SGD", "seed": 1}}], axes) == \
        'cells 0 and 1 hold different optimizer.name values ("sgd" and "SGD") at one place of the grid (SGD)'


def test_a_made_up_name_at_a_place_no_other_cell_holds_is_refused(tmp_path, capsys):
    # a one-axis sweep of optimizer names, no seeds: each place has one cell, so 'two cells at one
    # place' cannot see an edit; 'rmsprop' (no optimizer of the config) or 'adamw' (another place's
    # normalized name, not its text) at 'SGD''s cell was exported as a result of the grid
    axes = [{"key": "optimizer.name", "values": ["SGD", "Adam"], "labels": ["SGD", "Adam"]}]
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.name": "sgd"}},
                               {"id": 1, "swept": {"optimizer.name": "adam"}}], axes) is None
    for edited in ("rmsprop", "adam", "radam", None, 3):
        assert grid_value_problem([{"id": 0, "swept": {"optimizer.name": edited}}], axes) == \
            f"cell 0 swept_json optimizer.name {edited!r} is not the grid's value at the cell's place (SGD)"
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.name": ["SGD", "Adam"]}})
    path = tmp_path / "s.db"
    run_sweep(config, spec, path, run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
    with Store(path, create=False) as store:
        assert [c["swept"]["optimizer.name"] for c in store.cells()] == ["sgd", "adam"]   # as the config made them
    conn = sqlite3.connect(path)
    conn.execute("""UPDATE cells SET swept_json = '{"optimizer.name": "rmsprop"}' WHERE id = 0""")
    conn.commit()
    conn.close()
    assert main(["export", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert "cell 0 swept_json optimizer.name 'rmsprop' is not the grid's value" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_a_number_at_an_infinite_place_must_be_infinite():
    # train.divergence_factor alone takes inf: a place of inf took any number (1e308, 10), since
    # only finite numbers were compared with their place's (mutation pass 14's G3, retried in 15)
    axes = [{"key": "train.divergence_factor", "values": [10.0, float("inf")], "labels": ["10", "inf"]}]
    assert grid_value_problem([{"id": 0, "swept": {"train.divergence_factor": 10}},
                               {"id": 1, "swept": {"train.divergence_factor": float("inf")}}], axes) is None
    for edited in (1e308, 1e6):
        assert grid_value_problem([{"id": 1, "swept": {"train.divergence_factor": edited}}], axes) == (
            f"cell 1 swept_json train.divergence_factor {edited!r} is not the grid's value at the cell's place (inf)")


@pytest.mark.parametrize("key, places, edited", [
    ("optimizer.betas", [[0.9, 0.999], [0.9, 0.95]], [0.9, 0.99]),
    ("model.bias", [False], True),
    ("train.batch_size", [None], 7),
])
def test_a_made_up_list_bool_or_none_at_a_place_no_other_cell_holds_is_refused(tmp_path, capsys, key, places, edited):
    # a one-axis sweep of betas (or a bias, or a batch size left None): each place has one cell,
    # and a place that is neither a number, a relative lr nor a name had no rule of its own: betas
    # [0.9, 0.99] (no place of the grid) at [0.9, 0.999]'s cell, a bias true at a grid of false,
    # were exported as results of the grid (the config ran the place's value)
    config = cfg.validate({"name": "t", "train": {"steps": 3}, "optimizer": {"name": "adam"}})
    spec = parse_sweep({"grid": {key: places}})
    path = tmp_path / "s.db"
    run_sweep(config, spec, path, run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
    with Store(path, create=False) as store:
        assert [c["swept"][key] for c in store.cells()] == places
    conn = sqlite3.connect(path)
    conn.execute("UPDATE cells SET swept_json = ? WHERE id = 0", (json.dumps({key: edited}),))
    conn.commit()
    conn.close()
    assert main(["export", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert f"cell 0 swept_json {key} {edited!r} is not the grid's value" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_a_number_within_rounding_of_its_place_is_its_place_not_a_name():
    # a number place takes a value within 1e-9 of it (the number rule), and the name rule (what
    # the config makes of a value) is not asked of numbers: 0.1 (1 + 1e-12) at a place of 0.1
    axes = [{"key": "optimizer.lr", "values": [0.1, 0.2], "labels": ["0.1", "0.2"]}]
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": 0.1 * (1 + 1e-12)}}], axes) is None
    assert grid_value_problem([{"id": 0, "swept": {"optimizer.lr": 0.1 * (1 + 1e-6)}}], axes) is not None
