"""Learning-rate schedules: warmup, catapult warmup, persistent catapult warmup.

A schedule is a pure function ``lr(t) -> float`` of ``t``, the number of optimizer steps
already taken (0-based): ``lr(t)`` is the learning rate used by optimizer step ``t``.

* :func:`warmup` -- polynomial warmup from ``lr_init`` to ``lr_target`` over ``warmup_steps``,
  then constant, cosine or linear decay (the warmup paper's schedule).
* :func:`catapult_warmup` -- linear warmup that starts at a measured critical learning rate.
* :func:`attach` -- drive a ``torch.optim`` optimizer with such a function; each param group's
  ``lr_mult`` (muP / SμPar per-layer multiplier) is applied on top.
* :class:`PersistentCatapultWarmup` -- warmup without a warmup length (paper Alg. 3): raise the
  learning rate to the critical one each time the loss improves on its reference.

The building blocks (:func:`polynomial_warmup_factor`, :func:`cosine_decay`,
:func:`linear_decay`, :func:`decay_progress`) are small pure functions with the formula in
their docstrings; the schedule objects returned by :func:`warmup` and :func:`catapult_warmup`
are frozen dataclasses (picklable, printable) that compose them.
"""
from __future__ import annotations

from catapult.schedules import functions
from catapult.schedules.functions import (
    DECAYS,
    CatapultWarmupSchedule,
    WarmupSchedule,
    catapult_warmup,
    cosine_decay,
    decay_progress,
    linear_decay,
    polynomial_warmup_factor,
    warmup,
)
from catapult.schedules.persistent import PersistentCatapultWarmup
from catapult.schedules.scheduler import ScheduleLR, attach

# the functions module's names (its __all__), then the scheduler and the persistent warmup
__all__ = [*functions.__all__, "ScheduleLR", "attach", "PersistentCatapultWarmup"]
