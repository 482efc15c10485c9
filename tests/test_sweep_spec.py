"""Sweep specs: axis syntax, grid expansion, validation of every cell, overrides, spec diffs."""
from __future__ import annotations

import itertools
import textwrap

import pytest

from catapult import config as cfg
from catapult.sweep.spec import expand, load_sweep, parse_sweep
from catapult.sweep.spec_document import diff_documents, spec_document, spec_hash


def _write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_axis_forms_give_the_documented_values():
    spec = parse_sweep({
        "grid": {
            "optimizer.lr": {"log2_over_lambda0": [0, 6, 2]},
            "schedule.warmup_steps": {"log2": {"start": 0, "stop": 8, "step": 4}},
            "optimizer.momentum": {"range": [0.0, 0.5, 0.25]},
            "model.activation": ["relu", "tanh"],
        },
        "seeds": [3, 4],
    })
    assert spec.keys == ["optimizer.lr", "schedule.warmup_steps", "optimizer.momentum", "model.activation", "seed"]
    lr, warm, mom, act, seed = spec.axes
    assert lr.values == ("2^0/lambda0", "2^2/lambda0", "2^4/lambda0", "2^6/lambda0")
    assert lr.labels == ("2^0/λ0", "2^2/λ0", "2^4/λ0", "2^6/λ0")
    assert lr.exponents == (0.0, 2.0, 4.0, 6.0)
    assert warm.values == (1, 16, 256) and all(type(v) is int for v in warm.values)
    assert warm.labels == ("2^0", "2^4", "2^8")
    assert mom.values == (0, 0.25, 0.5)
    assert act.values == ("relu", "tanh") and seed.values == (3, 4)
    assert spec.size == 4 * 3 * 3 * 2 * 2
    # the engine's lr grammar reads every generated string as 2^x / lambda_0
    assert [cfg.resolve_lr(v, 4.0) for v in lr.values] == [0.25, 1.0, 4.0, 16.0]


def test_negative_log2_exponents_are_floats():
    (axis,) = parse_sweep({"grid": {"schedule.lr_init": {"log2": [-2, 0]}}}).axes
    assert axis.values == (0.25, 0.5, 1)


def test_expand_is_the_cartesian_product_in_order_and_validates_each_cell():
    base = cfg.validate({"name": "pd", "train": {"steps": 5}})
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [0, 2]},
                                 "schedule.warmup_steps": [1, 4]}, "seeds": [0, 1]})
    cells = expand(base, spec)
    expected = list(itertools.product(["2^0/lambda0", "2^1/lambda0", "2^2/lambda0"], [1, 4], [0, 1]))
    assert [(c.swept["optimizer.lr"], c.swept["schedule.warmup_steps"], c.swept["seed"]) for c in cells] == expected
    assert [c.id for c in cells] == list(range(12))
    c5 = cells[5]
    assert c5.config["optimizer"]["lr"] == "2^1/lambda0"
    assert c5.config["schedule"]["warmup_steps"] == 1 and c5.config["seed"] == 1
    assert c5.config["train"]["steps"] == 5 and c5.config["name"] == "pd-5"
    assert c5.config == cfg.validate(c5.config)  # a complete, valid run config


def test_invalid_cells_are_all_named_before_any_work():
    base = cfg.validate({"name": "pd"})
    spec = parse_sweep({"grid": {"schedule.warmup_steps": [0, 4, -1], "model.width": [8, "wide"]}})
    with pytest.raises(cfg.ConfigError) as info:
        expand(base, spec)
    text = str(info.value)
    assert "cell 0 (schedule.warmup_steps=0, model.width=8) schedule.warmup_steps" in text
    assert "cell 3 (schedule.warmup_steps=4, model.width=wide) model.width" in text
    assert "cell 4 (schedule.warmup_steps=-1" in text
    # warmup bad in cells 0, 1, 4, 5; width bad in cells 1, 3, 5
    assert len(info.value.problems) == 7


@pytest.mark.parametrize("section, key, words", [
    ({"grid": {"optimzer.lr": [0.1]}}, "sweep.grid.optimzer.lr", "did you mean 'optimizer.lr'"),
    ({"grid": {"model.width": {"log2_over_lambda0": [0, 2]}}}, "sweep.grid.model.width", "only optimizer.lr"),
    ({"grid": {"model.width": {"log2": [5, 3]}}}, "sweep.grid.model.width", "below start"),
    ({"grid": {"model.width": {"geomspace": [1, 3]}}}, "sweep.grid.model.width", "log2_over_lambda0"),
    ({"grid": {"model.width": []}}, "sweep.grid.model.width", "empty"),
    ({"grid": {"model.width": [8, 8]}}, "sweep.grid.model.width", "repeats a value"),
    ({"grid": {"seed": [0]}, "seeds": [1]}, "sweep.grid.seed", "only once"),
    ({"seed": [0, 1]}, "sweep.seed", "did you mean 'sweep.seeds'"),
    ({"seeds": "three"}, "sweep.seeds", "list of integer seeds"),
    ({"seeds": 0}, "sweep.seeds", "number of seeds K >= 1"),
    # once for sweep.seeds, where each cell named its own `seed` (20 lines and a count)
    ({"seeds": [0, 0.5]}, "sweep.seeds", "0.5 is no seed: expected an integer >= 0"),
    ({"seeds": [0, -1]}, "sweep.seeds", "-1 is no seed"),
    ({"seeds": [True]}, "sweep.seeds", "True is no seed"),
    # a falsy value that is no mapping was taken for no grid: a one-cell "sweep", silently
    ({"grid": []}, "sweep.grid", "expected a mapping of dotted config keys"),
    ({"grid": 0}, "sweep.grid", "expected a mapping of dotted config keys"),
    ({"grid": ""}, "sweep.grid", "expected a mapping of dotted config keys"),
    # the run's label: its cells were one run stored under two ids, and averaged as two results
    ({"grid": {"name": ["a", "b"]}}, "sweep.grid.name", "changes no cell's run"),
])
def test_bad_sweep_sections_name_the_key(section, key, words):
    with pytest.raises(cfg.ConfigError) as info:
        parse_sweep(section)
    assert key in info.value.keys, str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize("grid, words", [
    ({"model.width": [16, 16.0]}, "16 and 16.0 are the same value"),
    ({"optimizer.lr": [0.5, "2^-1"]}, "0.5 and '2^-1' are the same value"),
    ({"optimizer.lr": ["1/lambda0", "1.0 / lambda_0"]}, "'1/lambda0' and '1.0 / lambda_0' are the same"),
    ({"optimizer.lr": [0.1, 0.2], "train.steps": [10, "1e1"]}, "10 and '1e1' are the same value"),
])
def test_values_spelled_differently_but_equal_are_refused(grid, words):
    # they passed the raw-value duplicate test, and each such cell ran twice under two ids
    base = cfg.validate({"name": "dup"})
    with pytest.raises(cfg.ConfigError) as info:
        expand(base, parse_sweep({"grid": grid}))
    assert words in str(info.value), str(info.value)
    assert info.value.keys == [f"sweep.grid.{list(grid)[-1]}"]


def test_distinct_values_that_print_alike_are_kept():
    base = cfg.validate({"name": "dup"})
    cells = expand(base, parse_sweep({"grid": {"optimizer.lr": ["1/lambda0", 1.0, "2^0.5"]}}))
    assert [c.swept["optimizer.lr"] for c in cells] == ["1/lambda0", 1.0, 2 ** 0.5]
    # only learning rates are read as numbers: "1e3" and "1000" are two folders
    text = cfg.validate({"name": "dup", "data": {"name": "text", "root": "/data/corpus.txt", "tokenizer": "bpe"},
                         "model": {"name": "gpt"}})
    cells = expand(text, parse_sweep({"grid": {"data.cache_dir": ["1e3", "1000"]}}))
    assert [c.swept["data.cache_dir"] for c in cells] == ["1e3", "1000"]


def test_log2_below_the_floats_is_named_not_called_a_repeat():
    with pytest.raises(cfg.ConfigError) as info:
        parse_sweep({"grid": {"optimizer.lr": {"log2": [-2000, 0, 500]}}})
    assert "2^-2000 is below the range" in str(info.value) and "repeats" not in str(info.value)


def test_load_sweep_splits_base_and_sweep_and_applies_overrides(tmp_path):
    path = _write(tmp_path, """
        model: {width: 16, depth: 2}
        train: {steps: 10}
        sweep:
          grid:
            optimizer.lr: [0.1, 0.2]
          seeds: [0]
        """, name="my-phase.yaml")
    base, spec = load_sweep(path, ["train.steps=20", "sweep.seeds=[0, 1, 2]",
                                   "sweep.grid.schedule.warmup_steps=[1, 8]"])
    assert base["name"] == "my-phase" and base["train"]["steps"] == 20 and base["model"]["width"] == 16
    assert "sweep" not in base
    assert spec.keys == ["optimizer.lr", "schedule.warmup_steps", "seed"]
    assert spec.size == 2 * 2 * 3


@pytest.mark.parametrize("grid", ["[]", "abc"])
def test_a_grid_override_onto_a_grid_that_is_no_mapping_names_the_grid(tmp_path, grid):
    # the override was written into the list or string: a TypeError's traceback
    path = _write(tmp_path, f"""
        train: {{steps: 10}}
        sweep: {{grid: {grid}}}
        """)
    with pytest.raises(cfg.ConfigError) as info:
        load_sweep(path, ["sweep.grid.optimizer.lr=[0.1]"])
    assert info.value.keys == ["sweep.grid"] and "expected a mapping" in str(info.value)


def test_load_sweep_rejects_overriding_a_swept_key_and_bad_base_keys(tmp_path):
    path = _write(tmp_path, """
        model: {widht: 16}
        sweep: {grid: {optimizer.lr: [0.1, 0.2]}}
        """)
    with pytest.raises(cfg.ConfigError) as info:
        load_sweep(path, ["optimizer.lr=0.3"])
    assert set(info.value.keys) == {"model.widht", "optimizer.lr"}
    assert "override the axis instead" in str(info.value)


def test_spec_document_ignores_the_name_and_diff_names_each_change():
    base = cfg.validate({"name": "a", "optimizer": {"momentum": 0.0}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2]}, "seeds": [0]})
    doc = spec_document(base, spec)
    assert spec_hash(doc) == spec_hash(spec_document({**base, "name": "renamed"}, spec))
    other = spec_document(cfg.validate({"name": "a", "optimizer": {"momentum": 0.9}}),
                          parse_sweep({"grid": {"optimizer.lr": [0.1, 0.4], "model.width": [8]}}))
    assert spec_hash(other) != spec_hash(doc)
    assert diff_documents(doc, other) == [
        "optimizer.momentum: 0.0 -> 0.9",
        "sweep.grid.optimizer.lr: [0.1, 0.2] -> [0.1, 0.4]",
        "sweep.seeds: removed (was [0])",
        "sweep.grid.model.width: added [8]",
    ]
