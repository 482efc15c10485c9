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


def test_the_search_starts_at_the_least_of_its_start_and_the_target():
    from catapult.config import ConfigError
    from catapult.engine.build import search_lr_start

    # default start 1e-4, but never above the target: a target of 1e-5 starts there
    assert search_lr_start(validate({"optimizer": {"lr": 1e-5}}), 1e-5) == 1e-5
    assert search_lr_start(validate({"optimizer": {"lr": 0.5}}), 0.5) == 1e-4
    # an explicit start equal to the target is allowed (the search starts at it); above it, refused
    config = validate({"optimizer": {"lr": "2/lambda0"}, "schedule": {"lr_start": 0.25}})
    assert search_lr_start(config, 0.25) == 0.25
    with pytest.raises(ConfigError, match="schedule.lr_start.*exceeds the target lr 0.2"):
        search_lr_start(config, 0.2)
