"""Mutation pass 23b: :func:`catapult.cli.common.where_values` read directly. A cell has one value of
each key, so ``--where seed=0 --where seed=1`` names no cell; it was read as the last one given
(seed 1) silently before the refusal, and no test gave a key twice."""
from __future__ import annotations

import pytest

from catapult.cli.common import where_values


@pytest.mark.parametrize("items", [["seed=0", "seed=1"], ["seed=1", "seed=1"], ["model.width=8", " model.width =16"]])
def test_a_key_given_twice_is_refused_naming_it_and_both_texts(items):
    key = items[0].split("=")[0].strip()
    with pytest.raises(ValueError) as info:
        where_values(items)
    words = str(info.value)
    assert f"--where gives {key} twice" in words and repr(items[0]) in words and repr(items[1]) in words, words


def test_distinct_keys_are_each_kept_once():
    assert where_values(["seed=1", "model.width=8"]) == {"seed": 1, "model.width": 8}


def test_an_integer_axis_value_written_as_its_label_is_kept_for_the_matcher():
    # Mutation pass 23b (WV5): without the labels among the written forms, model.width=2^3 (the label the
    # grid's {log2: [3, 4]} gives 8) went to the integer key's check and was refused as no integer
    from catapult.plots.phase import value_selects, value_positions
    from catapult.sweep import parse_sweep

    (axis,) = parse_sweep({"grid": {"model.width": {"log2": [3, 4]}}}).axes
    assert axis.values == (8, 16) and axis.labels == ("2^3", "2^4")   # 2^3 = 8: the grid's own label
    axes = [{"key": axis.key, "values": list(axis.values), "labels": list(axis.labels)}]
    assert where_values(["model.width=2^3"], axes) == {"model.width": "2^3"}
    cells = [{"id": i, "swept": {"model.width": v}} for i, v in enumerate(axis.values)]
    positions = value_positions(axes, "model.width", cells)
    assert [value_selects(axes[0], positions, v, "2^3") for v in axis.values] == [True, False]
