"""Optimizers: the update rules written once (:mod:`~catapult.optim.rules`), the table of
optimizers (:mod:`~catapult.optim.registry`) and GI-Adam (:class:`GIAdam`, Adam with the second
moment initialised from the first gradient)."""
from __future__ import annotations

from catapult.optim import rules
from catapult.optim.gi_adam import GIAdam, GIAdamW
from catapult.optim.rules import V0_CHOICES, State, initial_second_moment
from catapult.optim import registry
from catapult.optim.registry import OptimizerSpec

__all__ = ["GIAdam", "GIAdamW", "initial_second_moment", "V0_CHOICES", "rules", "registry",
           "State", "OptimizerSpec"]
