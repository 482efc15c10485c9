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
