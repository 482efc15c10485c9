"""Mutation pass 17 (TH9, TH10): ``weight_decay_shift`` refuses an operator it does not know
(whatever the decay, before it looks at it), and a small decay still lowers the threshold by
exactly itself (closed forms: SGD ``2 / lr - wd``; AdamW ``38 / lr - 19 wd`` at b1 = 0.9)."""
from __future__ import annotations

import pytest

from catapult.optim.thresholds import rule_threshold, weight_decay_shift


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_an_unknown_operator_is_refused(wd):
    with pytest.raises(ValueError, match="operator must be one of"):
        weight_decay_shift("sgd", {"weight_decay": wd}, operator="lr-scaled")
    with pytest.raises(ValueError, match="operator must be one of"):
        rule_threshold("adamw", {"lr": 0.1, "weight_decay": wd}, operator="Hessian")


@pytest.mark.parametrize("wd", [1e-4, 1e-6])
def test_a_small_decay_lowers_the_threshold_by_itself(wd):
    assert rule_threshold("sgd", {"lr": 0.1, "weight_decay": wd}) == pytest.approx(20.0 - wd, rel=1e-15, abs=0)
    assert rule_threshold("adamw", {"lr": 0.1, "weight_decay": wd}) == pytest.approx(380.0 - 19.0 * wd, rel=1e-15,
                                                                                    abs=0)
    assert weight_decay_shift("sgd", {"weight_decay": wd}) == wd
