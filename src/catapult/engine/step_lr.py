"""The learning rate and the instability threshold of each step of the engine's loop
(:mod:`catapult.engine.loop`), at about a dict lookup a step.

Why not torch's ``LRScheduler`` (``catapult.schedules.attach``) in the loop: inside a small
minibatch step every call runs cold, at ~10x its hot time, and ``scheduler.step()``, a second
``schedule(t)`` call and ``threshold(optimizer)`` cost 120-180 us of a 3 ms step of the
benchmark's MLP (RESULTS, "Engine overhead ... the step's extras, in the loop"). The values are
those of ``attach(optimizer, schedule)`` with ``scheduler.step()`` after every update, and of
:func:`~catapult.engine.sharpness_rule.threshold` at every row, exactly.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from catapult.engine.sharpness_rule import threshold
from catapult.parametrize import group_lr_mult
from catapult.schedules import CatapultWarmupSchedule, WarmupSchedule
from catapult.schedules.scheduler import checked_lr, separate_lr_tensors, set_group_lr, warn_replaced_group_lrs

__all__ = ["StepLRs", "StepThresholds", "PURE_SCHEDULES"]

#: Schedules whose ``lr(t)`` depends on ``t`` alone (frozen dataclasses): :class:`StepLRs`
#: computes them ahead, :attr:`StepLRs.CHUNK` steps at a time. Any other callable (the persistent
#: warmup's, which reads the warmup's current lr) is called once per step, when that step's lr is set.
PURE_SCHEDULES = (WarmupSchedule, CatapultWarmupSchedule)


class StepLRs:
    """``lr_t = schedule(t)`` of each step, and the optimizer's param groups set to ``lr_t * lr_mult``.

    Construction sets step 0's lrs (warning as ``schedules.attach`` does when the groups' own
    lrs differ and none sets ``lr_mult``); :meth:`apply` ``(t + 1)`` after update ``t`` sets the
    next step's, as ``scheduler.step()`` does; :meth:`at` ``(t)`` is the row's lr, computed once
    for both. The groups' ``lr_mult`` are read (and checked) once: nothing in a run changes them.
    A tensor lr (GI-Adam's, a compiled step's) is filled in place. ``last``: the last step whose lr
    is asked for (a pure schedule is not computed past it).

    Example (the values ``attach`` gives; a group with ``lr_mult = 0.5`` gets half):
        >>> from catapult.schedules import warmup
        >>> w, v = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [w]}, {"params": [v], "lr_mult": 0.5}], lr=1.0)
        >>> lrs = StepLRs(opt, warmup(1.0, 4), last=5)
        >>> [g["lr"] for g in opt.param_groups]
        [0.25, 0.125]
        >>> lrs.apply(1), lrs.at(1), [g["lr"] for g in opt.param_groups]
        (0.5, 0.5, [0.5, 0.25])
    """

    #: Steps of a pure schedule computed at once (hot, in one loop) when a step past the table is asked for.
    CHUNK = 256

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float], last: int):
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable step -> lr, got {schedule!r}")
        warn_replaced_group_lrs(optimizer, "ScheduleLR")
        self.optimizer, self.schedule, self.last = optimizer, schedule, int(last)
        self.pure = type(schedule) in PURE_SCHEDULES
        separate_lr_tensors(optimizer.param_groups)   # (one shared tensor lr held the last group's)
        self._pairs = [(group, group_lr_mult(group, i)) for i, group in enumerate(optimizer.param_groups)]
        self._table: list[float] = []  # lr_s, lr_{s+1}, ... of a pure schedule, s = self._start
        self._start = 0
        self._t, self._lr = -1, 0.0  # the latest step another schedule was asked for, and its lr
        self.apply(0)

    def at(self, t: int) -> float:
        """``lr_t``, checked (:func:`~catapult.schedules.scheduler.checked_lr`), computed once per step."""
        if self.pure:
            i = t - self._start
            if not 0 <= i < len(self._table):
                if i < 0:  # behind the chunk (the loop never asks): computed on its own
                    return checked_lr(self.schedule, t)
                self._extend(t)
                i = t - self._start
            return self._table[i]
        if t != self._t:
            self._lr, self._t = checked_lr(self.schedule, t), t
        return self._lr

    def _extend(self, t: int) -> None:
        """Replace the table by steps ``t, t + 1, ...``: at most :attr:`CHUNK` of them, none past
        ``last`` (so a long run holds one chunk, not a float per step). A step whose lr is refused
        ends the chunk before it: its error is raised when that step is asked for, where
        ``scheduler.step()`` raised it."""
        table: list[float] = []
        for s in range(t, max(t + 1, min(t + self.CHUNK, self.last + 1))):
            try:
                table.append(checked_lr(self.schedule, s))
            except (TypeError, ValueError):
                if s == t:
                    raise
                break
        self._table, self._start = table, t

    def apply(self, t: int) -> float:
        """Set every group's lr to ``lr_t * lr_mult``; returns ``lr_t``."""
        lr = self.at(t)
        for group, mult in self._pairs:
            if type(group["lr"]) is float:
                group["lr"] = lr * mult
            else:
                set_group_lr(group, lr * mult)
        return lr


class StepThresholds:
    """:func:`~catapult.engine.sharpness_rule.threshold` ``(optimizer, step=t)`` of a row whose
    groups hold ``lr * lr_mult``, remembered for the latest ``lr``: the value depends on the step
    for RAdam only, and otherwise on the lr and on hyper-parameters a run does not change.

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([w], lr=0.5)
    >>> thresholds = StepThresholds(opt)
    >>> thresholds(0.5, 0), thresholds(0.5, 1)
    (4.0, 4.0)
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.by_step = isinstance(optimizer, torch.optim.RAdam)
        self._lr: float | None = None
        self._value = math.nan

    def __call__(self, lr: float, t: int) -> float:
        if self.by_step or lr != self._lr:  # a nan lr is never equal: computed again
            self._value, self._lr = threshold(self.optimizer, step=t), lr
        return self._value
