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

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = [
    "polynomial_warmup_factor",
    "decay_progress",
    "cosine_decay",
    "linear_decay",
    "WarmupSchedule",
    "warmup",
    "ScheduleLR",
    "attach",
    "DECAYS",
]

#: Allowed values of ``decay`` (``None`` means ``"constant"``).
DECAYS = ("constant", "cosine", "linear")


# --------------------------------------------------------------------------------------------
# Pure building blocks
# --------------------------------------------------------------------------------------------
def polynomial_warmup_factor(t: int, warmup_steps: int, power: float = 1.0) -> float:
    """Fraction of the way from ``lr_init`` to ``lr_target`` at step ``t``.

    ``factor(t) = min(1, ((t + 1) / T) ** power)`` with ``T = warmup_steps``; ``t`` is 0-based,
    so the target is first used by step ``T - 1`` and ``T = 1`` means no warmup.
    """
    return min(1.0, ((t + 1) / warmup_steps) ** power)


def decay_progress(t: int, start: int, total_steps: int) -> float:
    """How far step ``t`` is through a decay that runs from step ``start`` to ``total_steps - 1``.

    ``s(t) = clip((t - start) / (total_steps - 1 - start), 0, 1)``: 0 at ``start`` (the step that
    first uses the peak lr), 1 at the last step ``total_steps - 1`` and after it.
    """
    span = total_steps - 1 - start
    return min(1.0, max(0.0, (t - start) / span))


def cosine_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_end + (lr_start - lr_end) * (1 + cos(pi * s)) / 2`` for progress ``s`` in [0, 1]."""
    return lr_end + (lr_start - lr_end) * 0.5 * (1.0 + math.cos(math.pi * s))


def linear_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_start + (lr_end - lr_start) * s`` for progress ``s`` in [0, 1]."""
    return lr_start + (lr_end - lr_start) * s


_DECAY_FNS = {"cosine": cosine_decay, "linear": linear_decay}


# --------------------------------------------------------------------------------------------
# Argument checks (clear errors that name the argument)
# --------------------------------------------------------------------------------------------
def _real(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _count(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _step(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"step t must be an integer, got {t!r}")
    if t < 0:
        raise ValueError(f"step t must be >= 0 (optimizer steps already taken), got {t}")
    return int(t)


def _check_decay(decay, total_steps, lr_final, lr_target, warmup_steps):
    """Validate the decay arguments; return (decay, total_steps, lr_final) normalised."""
    if decay is None:
        decay = "constant"
    if decay not in DECAYS:
        raise ValueError(f"decay must be None or one of {DECAYS}, got {decay!r}")
    if decay == "constant":
        if lr_final is not None:
            raise ValueError(
                "lr_final is only used with decay='cosine' or 'linear'; got "
                f"lr_final={lr_final!r} with decay={decay!r}")
        if total_steps is not None:  # accepted (the run length) but not needed
            total_steps = _count("total_steps", total_steps)
        return decay, total_steps, None
    if total_steps is None:
        raise ValueError(f"decay={decay!r} needs total_steps (the last step is total_steps - 1)")
    total_steps = _count("total_steps", total_steps)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"total_steps ({total_steps}) must be > warmup_steps ({warmup_steps}) for "
            f"decay={decay!r}: the decay runs from step warmup_steps - 1 to total_steps - 1")
    lr_final = lr_target / 10.0 if lr_final is None else _real("lr_final", lr_final)
    return decay, total_steps, lr_final


def _after_peak(t: int, lr_peak: float, peak_step: int, decay: str, total_steps, lr_final) -> float:
    """The lr at step ``t >= peak_step`` of a schedule that peaks at ``lr_peak``."""
    if decay == "constant":
        return lr_peak
    s = decay_progress(t, peak_step, total_steps)
    return _DECAY_FNS[decay](s, lr_peak, lr_final)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarmupSchedule:
    """Polynomial warmup then constant / cosine / linear decay; call it with the step ``t``.

    With ``T = warmup_steps``::

        t <= T - 1:  lr(t) = lr_init + (lr_target - lr_init) * min(1, ((t + 1) / T) ** power)
        t >= T - 1:  constant: lr(t) = lr_target
                     cosine:   lr(t) = cosine_decay(s(t), lr_target, lr_final)
                     linear:   lr(t) = linear_decay(s(t), lr_target, lr_final)
                     s(t) = clip((t - (T - 1)) / (total_steps - T), 0, 1)

    so step ``T - 1`` is the first to use ``lr_target`` and the last step, ``total_steps - 1``,
    uses ``lr_final`` (as do any steps after it). Build it with :func:`warmup`.
    """

    lr_target: float
    warmup_steps: int
    lr_init: float = 0.0
    power: float = 1.0
    decay: str = "constant"
    total_steps: int | None = None
    lr_final: float | None = None

    def __call__(self, t: int) -> float:
        t = _step(t)
        peak = self.warmup_steps - 1
        if t < peak:
            factor = polynomial_warmup_factor(t, self.warmup_steps, self.power)
            return self.lr_init + (self.lr_target - self.lr_init) * factor
        return _after_peak(t, self.lr_target, peak, self.decay, self.total_steps, self.lr_final)


def warmup(lr_target: float, warmup_steps: int, *, lr_init: float = 0.0, power: float = 1.0,
           decay: str | None = None, total_steps: int | None = None,
           lr_final: float | None = None) -> WarmupSchedule:
    """Warmup schedule ``t -> lr`` (``t`` = optimizer steps already taken, 0-based).

    ``lr(t) = lr_init + (lr_target - lr_init) * min(1, ((t + 1) / T) ** power)`` with
    ``T = warmup_steps`` (``T = 1``: constant ``lr_target`` from the first step); after warmup
    the lr stays at ``lr_target`` (``decay=None`` or ``"constant"``) or decays to ``lr_final``
    by a cosine or linear curve that reaches ``lr_final`` at the last step,
    ``t = total_steps - 1`` (see :class:`WarmupSchedule`).

    Args:
        lr_target: peak learning rate (``lr_trgt``), >= 0.
        warmup_steps: ``T_wrm`` >= 1.
        lr_init: learning rate extrapolated to ``t = -1`` (step 0 uses
            ``lr_init + (lr_target - lr_init) / T``), >= 0.
        power: exponent ``k`` > 0 of the polynomial warmup (1 = linear).
        decay: ``None`` / ``"constant"``, ``"cosine"`` or ``"linear"``.
        total_steps: number of optimizer steps of the run; required (and > ``warmup_steps``)
            when decaying, accepted and ignored otherwise.
        lr_final: lr at the last step when decaying; default ``lr_target / 10`` (the warmup
            paper's reference code). Must be ``None`` without decay.

    Raises:
        TypeError / ValueError naming the bad argument.
    """
    lr_target = _real("lr_target", lr_target)
    warmup_steps = _count("warmup_steps", warmup_steps)
    lr_init = _real("lr_init", lr_init)
    power = _real("power", power, positive=True)
    decay, total_steps, lr_final = _check_decay(decay, total_steps, lr_final, lr_target,
                                                warmup_steps)
    return WarmupSchedule(lr_target, warmup_steps, lr_init, power, decay, total_steps, lr_final)


# --------------------------------------------------------------------------------------------
# Attaching a schedule to an optimizer
# --------------------------------------------------------------------------------------------
class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """A ``torch.optim`` scheduler that sets ``group["lr"] = fn(t) * group.get("lr_mult", 1.0)``.

    ``t`` (``last_epoch``) counts ``scheduler.step()`` calls; construction already sets the
    groups to ``fn(0)``, so call ``optimizer.step()`` then ``scheduler.step()`` each iteration
    and optimizer step ``t`` uses ``fn(t)``. Per-group ``lr_mult`` (set by
    ``catapult.param_groups`` for muP / SμPar) is re-applied at every step, so the schedule is
    relative to each group's multiplier.

    ``state_dict()`` holds the step counters only (``fn`` may be a closure and is not saved):
    rebuild the scheduler with the same ``fn``, then ``load_state_dict``; the groups' lr are
    then set for the restored step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fn: Callable[[int], float],
                 last_epoch: int = -1):
        if not callable(fn):
            raise TypeError(f"fn must be a callable step -> lr, got {fn!r}")
        self.fn = fn
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t: int) -> float:
        lr = self.fn(t)
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        lr = float(lr)
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"schedule returned lr={lr} at step {t}; expected a finite value >= 0")
        return lr

    def get_lr(self) -> list[float]:
        """``[fn(t) * lr_mult for each param group]`` with ``t = last_epoch``."""
        lr = self._lr_at(self.last_epoch)
        return [lr * float(group.get("lr_mult", 1.0)) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Scheduler state without the optimizer and the schedule function."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "fn")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counters and set every group's lr for the restored step."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "fn")})
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = values


def attach(optimizer: torch.optim.Optimizer, fn: Callable[[int], float]) -> ScheduleLR:
    """Drive ``optimizer`` with the schedule ``fn``: returns a :class:`ScheduleLR`.

    Each param group's lr becomes ``fn(t) * group.get("lr_mult", 1.0)``; the groups hold
    ``fn(0)`` as soon as this returns. Call ``scheduler.step()`` after each ``optimizer.step()``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return ScheduleLR(optimizer, fn)
