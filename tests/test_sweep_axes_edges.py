"""Sweep axis edges: an inclusive range whose span is a rounding below a whole number of steps,
integer labels written in full, the float range of a log2 axis, and labels found by value."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.sweep.spec import parse_sweep


def test_an_inclusive_range_keeps_a_stop_that_rounding_puts_just_beyond_it():
    # (0.3 - 0) / 0.1 = 2.9999999999999996 in floating point: four values, 0.3 included
    axis = parse_sweep({"grid": {"optimizer.weight_decay": {"range": [0, 0.3, 0.1]}}}).axis("optimizer.weight_decay")
    assert len(axis) == 4 and axis.values[-1] == pytest.approx(0.3, rel=1e-15, abs=0)


def test_integer_labels_are_written_in_full():
    spec = parse_sweep({"grid": {"train.steps": {"range": [1_000_000, 3_000_000, 1_000_000]},
                                 "model.width": {"log2": [20, 21]}}})
    assert spec.axis("train.steps").labels == ("1000000", "2000000", "3000000")   # not 1e+06
    assert spec.axis("model.width").values == (2 ** 20, 2 ** 21)


@pytest.mark.parametrize("low", [-1023, -1030, -1074.5])
def test_log2_exponents_below_the_normal_floats_are_refused(low):
    # 2^-1023 and below are subnormal: fewer than 53 bits, and 2^-1074.2 rounds to 2^-1074
    with pytest.raises(cfg.ConfigError, match="below the range of a float"):
        parse_sweep({"grid": {"optimizer.lr": {"log2": [low, low + 1]}}})
    assert parse_sweep({"grid": {"optimizer.lr": {"log2": [-1022, -1021]}}}).axis("optimizer.lr").values[0] == 2.0 ** -1022


def test_a_label_is_found_by_value_not_by_identity():
    # values read back (a store's JSON, a config) are equal objects, not the axis's own
    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [3, 4]}, "model.width": {"log2": [10, 11]}}})
    assert spec.axis("optimizer.lr").label_of("".join(["2^3", "/lambda0"])) == "2^3/λ0"
    assert spec.axis("model.width").label_of(int("1024")) == "2^10"


# Mutation pass 22 (SS2-SS5, SS9, SS10, SS14, SS15, SS17): the axis forms' bounds and what they hold


def _problems(section):
    with pytest.raises(cfg.ConfigError) as caught:
        parse_sweep(section)
    return caught.value.problems


def test_a_step_of_zero_is_refused_naming_the_axis_not_a_zero_division():
    problems = _problems({"grid": {"train.steps": {"range": [0, 4, 0]}}})
    assert [key for key, _ in problems] == ["sweep.grid.train.steps"]
    assert "step must be a finite number > 0" in problems[0][1]


def test_a_range_or_log2_axis_whose_stop_is_its_start_holds_that_one_value():
    spec = parse_sweep({"grid": {"train.steps": {"range": [3, 3]}, "model.width": {"log2": [2, 2]}}})
    assert spec.axis("train.steps").values == (3,) and spec.axis("model.width").values == (4,)


def test_an_axis_of_exactly_max_cells_values_is_taken_and_one_more_is_refused():
    from catapult.sweep.spec import MAX_CELLS

    axis = parse_sweep({"grid": {"train.steps": {"range": [1, MAX_CELLS]}}}).axis("train.steps")
    assert len(axis) == MAX_CELLS and axis.values[-1] == MAX_CELLS
    problems = _problems({"grid": {"train.steps": {"range": [1, MAX_CELLS + 1]}}})
    assert problems[0][0] == "sweep.grid.train.steps" and f"{MAX_CELLS + 1} values is too many" in problems[0][1]


def test_the_largest_float_power_2_to_the_1023_is_taken():
    axis = parse_sweep({"grid": {"model.width": {"log2": [1023, 1023]}}}).axis("model.width")
    assert axis.values == (2 ** 1023,) and type(axis.values[0]) is int
    assert "beyond the range of a float" in _problems({"grid": {"model.width": {"log2": [1024, 1024]}}})[0][1]


def test_a_range_of_whole_numbers_holds_ints_and_one_with_fractions_floats():
    values = parse_sweep({"grid": {"train.steps": {"range": [1, 3]}}}).axis("train.steps").values
    assert values == (1, 2, 3) and [type(v) for v in values] == [int, int, int]
    values = parse_sweep({"grid": {"optimizer.lr": {"range": [0.5, 1.5, 0.5]}}}).axis("optimizer.lr").values
    assert [type(v) for v in values] == [float, int, float]


def test_an_axis_mapping_with_two_forms_is_refused():
    problems = _problems({"grid": {"train.steps": {"range": [1, 2], "log2": [0, 1]}}})
    assert [key for key, _ in problems] == ["sweep.grid.train.steps"] and "expected a list of values" in problems[0][1]


def test_more_seeds_than_a_sweep_may_have_are_named_as_the_seeds_key():
    from catapult.sweep.spec import MAX_CELLS

    problems = _problems({"seeds": MAX_CELLS + 1})
    assert [key for key, _ in problems] == ["sweep.seeds"] and "number of seeds K >= 1" in problems[0][1]


def test_a_seed_count_is_kept_as_the_count_and_a_seed_list_as_the_list():
    assert parse_sweep({"seeds": 3}).raw == {"grid": {}, "seeds": 3}
    assert parse_sweep({"seeds": [0, 1, 2]}).raw == {"grid": {}, "seeds": [0, 1, 2]}
    assert parse_sweep({"seeds": 3}).axis("seed").values == (0, 1, 2)


def test_a_repeated_seed_is_named_as_the_seeds_key():
    problems = _problems({"seeds": [0, 1, 0]})
    assert [key for key, _ in problems] == ["sweep.seeds"] and "repeats a value" in problems[0][1]


def test_a_grid_of_exactly_max_cells_cells_is_taken_and_one_row_more_is_refused():
    from catapult.sweep.spec import MAX_CELLS

    spec = parse_sweep({"grid": {"train.steps": {"range": [1, 1000]}, "model.width": {"range": [1, MAX_CELLS // 1000]}}})
    assert spec.size == MAX_CELLS
    problems = _problems({"grid": {"train.steps": {"range": [1, 1000]},
                                   "model.width": {"range": [1, MAX_CELLS // 1000 + 1]}}})
    assert [key for key, _ in problems] == ["sweep"] and "more than the 100,000" in problems[0][1]


@pytest.mark.parametrize("override", ["sweep={}", "sweep.grid.=[1, 2]"])
def test_an_override_of_the_sweep_section_or_an_empty_grid_key_is_named_as_no_sweep_override(tmp_path, override):
    from catapult.sweep.spec import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("train: {steps: 10}\nsweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")
    with pytest.raises(cfg.ConfigError) as caught:
        load_sweep(path, [override])
    assert [key for key, _ in caught.value.problems] == [override.split("=")[0]]
    assert "a sweep override is sweep.seeds=[...] or sweep.grid.<dotted key>=<values>" in caught.value.problems[0][1]


# Mutation pass 22c (SS31, SS32, SS33): the count of problems past the shown ones, and a sweep of no axes

def test_cells_error_lists_shown_problems_whole_and_counts_only_those_past_them():
    from catapult.sweep.spec import cells_error

    exact = cells_error([(f"cell {i} optimizer.lr", "bad") for i in range(20)])
    assert [key for key, _ in exact.problems] == [f"cell {i} optimizer.lr" for i in range(20)]   # no '... and 0 more'
    over = cells_error([(f"cell {i} optimizer.lr", "bad") for i in range(23)])
    assert [key for key, _ in over.problems[:20]] == [f"cell {i} optimizer.lr" for i in range(20)]
    assert over.problems[20:] == [("", "... and 3 more problems")]   # 23 - 20, not 23


def test_a_sweep_of_no_axes_is_one_cell():
    from catapult.sweep.spec import expand

    spec = parse_sweep({})
    assert spec.axes == () and spec.size == 1
    assert len(expand({"train": {"steps": 3}}, spec)) == spec.size


def test_a_listed_relative_lr_is_labelled_in_lambda0_units_without_spaces():
    # Mutation pass 22c (SS35): a value written 'c / lambda0' in a plain list is labelled c/λ0
    axis = parse_sweep({"grid": {"optimizer.lr": ["2 / lambda0", "0.5/lambda_0", 0.1]}}).axis("optimizer.lr")
    assert axis.labels == ("2/λ0", "0.5/λ0", "0.1")
