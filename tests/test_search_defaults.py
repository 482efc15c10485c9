"""The critical-lr search's default ``delta`` (``schedule.delta: null``): the paper's 0.1 for SGD
and 0.01 for every Adam-family optimizer (Adam, AdamW, RAdam, GI-Adam), not for Adam alone; a
mutation that gave AdamW, RAdam and GI-Adam SGD's 0.1 survived the engine tests."""
import pytest

from catapult.config import validate
from catapult.engine.build import search_delta


@pytest.mark.parametrize("name, delta", [("sgd", 0.1), ("adam", 0.01), ("adamw", 0.01), ("radam", 0.01),
                                         ("gi-adam", 0.01)])
def test_the_default_delta_is_the_papers_for_each_optimizer(name, delta):
    assert search_delta(validate({"optimizer": {"name": name}})) == delta
    assert search_delta(validate({"optimizer": {"name": name}, "schedule": {"delta": 0.05}})) == 0.05
