"""Schedules as pure functions ``lr(t) -> float`` of the optimizer steps already taken:
:func:`warmup` (polynomial warmup, then constant, cosine or linear decay) and
:func:`catapult_warmup` (linear warmup from a measured critical learning rate), and the small
building blocks they compose, each with its formula in the docstring.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from catapult.arguments import MAX_STEPS, check_integer, check_real
from catapult.critical_lr import CriticalLR

__all__ = [
    "polynomial_warmup_factor",
    "decay_progress",
    "cosine_decay",
    "linear_decay",
    "WarmupSchedule",
    "CatapultWarmupSchedule",
    "warmup",
    "catapult_warmup",
    "DECAYS",
]

#: Allowed values of ``decay`` (``None`` means ``"constant"``).
DECAYS = ("constant", "cosine", "linear")
#: A catapult warmup's ramp within this many ulps of ``lr_target`` has reached it
#: (:attr:`CatapultWarmupSchedule.peak_step`): the ramp's own rounding, not a step short.
PEAK_ULPS = 4


# --------------------------------------------------------------------------------------------
# Pure building blocks
# --------------------------------------------------------------------------------------------
def polynomial_warmup_factor(t: int, warmup_steps: int, power: float = 1.0) -> float:
    """Fraction of the way from ``lr_init`` to ``lr_target`` at step ``t``.

    ``factor(t) = min(1, ((t + 1) / T) ** power)`` with ``T = warmup_steps``; ``t`` is 0-based,
    so the target is first used by step ``T - 1`` and ``T = 1`` means no warmup.

    Example:
        >>> [polynomial_warmup_factor(t, 4) for t in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
        >>> polynomial_warmup_factor(1, 4, power=2.0)      # ((1 + 1) / 4) ** 2
        0.25
    """
    # power=nan gave 1.0 (the target at step 0), True ran as power 1 and power <= 0 gave 1.0 at every step
    power = check_real("polynomial_warmup_factor", "power", power, low=0.0, low_open=True)
    warmup_steps = check_integer("polynomial_warmup_factor", "warmup_steps", warmup_steps, high=MAX_STEPS)
    # t=-3 gave the factor -0.5 (a negative lr), t=2.5 a factor of no step, True step 1's
    return _warmup_factor(_step(t), warmup_steps, power)


def _warmup_factor(t: int, warmup_steps: int, power: float) -> float:
    """:func:`polynomial_warmup_factor` on checked arguments (a schedule's per-step path)."""
    if t + 1 >= warmup_steps:   # the min's 1 (the power first: (101 / 10) ** 400 raised OverflowError)
        return 1.0
    return ((t + 1) / warmup_steps) ** power


def decay_progress(t: int, start: int, total_steps: int) -> float:
    """How far step ``t`` is through a decay that runs from step ``start`` to ``total_steps - 1``.

    ``s(t) = clip((t - start) / (total_steps - 1 - start), 0, 1)``: 0 at ``start`` (the step that
    first uses the peak lr), 1 at the last step ``total_steps - 1`` and after it. With no room to
    decay (``start`` is the last step, or later) ``s`` is 0 up to ``start`` and 1 after it: the
    peak is used once, at ``start`` (a catapult warmup can peak at the last step).

    Example:
        >>> [decay_progress(t, 3, 8) for t in (2, 3, 5, 7, 9)]   # span 8 - 1 - 3 = 4 steps
        [0.0, 0.0, 0.5, 1.0, 1.0]
        >>> [decay_progress(t, 4, 5) for t in (3, 4, 5)]         # the peak is the last step
        [0.0, 0.0, 1.0]
    """
    # t=nan gave 0 (the peak), start=-2 a decay begun before step 0 and total_steps=-4 none at all
    t = _step(t)
    start = check_integer("decay_progress", "start", start, low=0, high=MAX_STEPS)
    total_steps = check_integer("decay_progress", "total_steps", total_steps, low=1, high=MAX_STEPS)
    return _progress(t, start, total_steps)


def _progress(t: int, start: int, total_steps: int) -> float:
    """:func:`decay_progress` on checked arguments (a schedule's per-step path)."""
    span = total_steps - 1 - start
    if span <= 0:                       # no room to decay: the peak at `start`, the final value after
        return 0.0 if t <= start else 1.0
    return min(1.0, max(0.0, (t - start) / span))


def cosine_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_end + (lr_start - lr_end) * (1 + cos(pi * s)) / 2`` for progress ``s`` in [0, 1],
    evaluated as ``c lr_start + (1 - c) lr_end`` with ``c = (1 + cos(pi s)) / 2``: exactly
    ``lr_start`` at ``s = 0`` and ``lr_end`` at ``s = 1`` (the other order peaked at
    0.30000000000000004 for 0.3 -> 0.03, above the target).

    Example:
        >>> [round(cosine_decay(s, 1.0, 0.1), 3) for s in (0.0, 0.5, 1.0)]
        [1.0, 0.55, 0.1]
        >>> cosine_decay(0.0, 0.3, 0.03)
        0.3
    """
    # s=nan gave nan, s outside [0, 1] an lr beyond lr_start or lr_end (cos is even: s=-0.5 was s=0.5)
    return _cosine(*_checked_decay("cosine_decay", s, lr_start, lr_end))


def _cosine(s: float, lr_start: float, lr_end: float) -> float:
    c = 0.5 * (1.0 + math.cos(math.pi * s))
    return c * lr_start + (1.0 - c) * lr_end


def linear_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_start + (lr_end - lr_start) * s`` for progress ``s`` in [0, 1], evaluated as
    ``(1 - s) lr_start + s lr_end``: exactly ``lr_end`` at ``s = 1`` (the other order gave
    0.09999999999999998 for 1.0 -> 0.1, and cancelled to a relative 5e-12 for 1.0 -> 1e-5).

    Example:
        >>> [linear_decay(s, 1.0, 0.0) for s in (0.0, 0.25, 1.0)]
        [1.0, 0.75, 0.0]
        >>> linear_decay(1.0, 1.0, 0.1)
        0.1
    """
    return _linear(*_checked_decay("linear_decay", s, lr_start, lr_end))


def _linear(s: float, lr_start: float, lr_end: float) -> float:
    return (1.0 - s) * lr_start + s * lr_end


def _checked_decay(owner: str, s: Any, lr_start: Any, lr_end: Any) -> tuple[float, float, float]:
    """A decay's progress in [0, 1] and its two finite lrs (>= 0), checked (the public functions only:
    a schedule checks its lrs once, at construction, and computes ``s`` itself)."""
    return (check_real(owner, "s", s, low=0.0, high=1.0), check_real(owner, "lr_start", lr_start, low=0.0),
            check_real(owner, "lr_end", lr_end, low=0.0))


_DECAY_FNS = {"cosine": _cosine, "linear": _linear}


# --------------------------------------------------------------------------------------------
# Argument checks (clear errors that name the argument)
# --------------------------------------------------------------------------------------------
def checked_real(owner: str, name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a float once it is a finite real (``> 0`` with ``positive``, else ``>= 0``):
    :func:`catapult.arguments.check_real`'s ValueError naming ``owner`` and ``name`` otherwise (the
    schedules' argument check; a 0-d tensor is a number, as it is everywhere)."""
    return check_real(owner, name, value, low=0.0, low_open=positive)


def _count(name: str, value: Any, *, minimum: int = 1) -> int:
    """A step count (``warmup_steps``, ``total_steps``): an integer in ``[minimum, MAX_STEPS]``."""
    return check_integer("", name, value, low=minimum, high=MAX_STEPS)


def _step(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"step t must be an integer, got {t!r}")
    if t < 0:
        raise ValueError(f"step t must be >= 0 (optimizer steps already taken), got {t}")
    return int(t)


def _check_decay(decay, total_steps, lr_final, lr_target, warmup_steps, owner):
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
    lr_final = lr_target / 10.0 if lr_final is None else checked_real(owner, "lr_final", lr_final)
    if lr_final > lr_target:  # the "decay" rose from lr_target to lr_final
        raise ValueError(f"lr_final ({lr_final:g}) must be <= lr_target ({lr_target:g}): decay={decay!r} "
                         f"falls from lr_target to lr_final")
    return decay, total_steps, lr_final


def _set_fields(schedule: Any, **values: Any) -> None:
    """Set a frozen dataclass's fields to their checked values (in ``__post_init__``)."""
    for name, value in values.items():
        object.__setattr__(schedule, name, value)


def _checked_warmup_fields(schedule: Any) -> dict[str, Any]:
    """The checked fields both warmup schedules have (``lr_target``, ``warmup_steps`` and the decay's),
    as the factories check them."""
    owner = type(schedule).__name__
    lr_target = checked_real(owner, "lr_target", schedule.lr_target)
    warmup_steps = _count("warmup_steps", schedule.warmup_steps)
    decay, total_steps, lr_final = _check_decay(schedule.decay, schedule.total_steps, schedule.lr_final,
                                                lr_target, warmup_steps, owner)
    return dict(lr_target=lr_target, warmup_steps=warmup_steps, decay=decay, total_steps=total_steps,
                lr_final=lr_final)


def _after_peak(t: int, lr_peak: float, peak_step: int, decay: str, total_steps, lr_final) -> float:
    """The lr at step ``t >= peak_step`` of a schedule that peaks at ``lr_peak``."""
    if decay == "constant":
        return lr_peak
    s = _progress(t, peak_step, total_steps)
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

    Example (a frozen, printable dataclass):
        >>> schedule = WarmupSchedule(lr_target=1.0, warmup_steps=4)
        >>> schedule(1), schedule(10)
        (0.5, 1.0)
        >>> schedule == warmup(1.0, 4)
        True
    """

    lr_target: float
    warmup_steps: int
    lr_init: float = 0.0
    power: float = 1.0
    decay: str = "constant"
    total_steps: int | None = None
    lr_final: float | None = None

    def __post_init__(self) -> None:
        # built directly (the class is public), a bad field crashed at some later step with a
        # bare TypeError/KeyError, or gave negative lrs: the same checks as warmup()
        fields = _checked_warmup_fields(self)
        lr_init = checked_real("WarmupSchedule", "lr_init", self.lr_init)
        if lr_init > fields["lr_target"]:  # the "warmup" fell from lr_init to lr_target
            raise ValueError(f"lr_init ({lr_init:g}) must be <= lr_target ({fields['lr_target']:g}): the warmup "
                             f"rises from lr_init to lr_target")
        power = checked_real("WarmupSchedule", "power", self.power, positive=True)
        _set_fields(self, **fields, lr_init=lr_init, power=power)

    def __call__(self, t: int) -> float:
        t = _step(t)
        peak = self.warmup_steps - 1
        if t < peak:
            factor = _warmup_factor(t, self.warmup_steps, self.power)
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
            ``lr_init + (lr_target - lr_init) / T``), ``0 <= lr_init <= lr_target``.
        power: exponent ``k`` > 0 of the polynomial warmup (1 = linear).
        decay: ``None`` / ``"constant"``, ``"cosine"`` or ``"linear"``.
        total_steps: number of optimizer steps of the run; required (and > ``warmup_steps``)
            when decaying, accepted and ignored otherwise.
        lr_final: lr at the last step when decaying, <= ``lr_target``; default ``lr_target / 10``
            (the warmup paper's reference code). Must be ``None`` without decay.

    Raises:
        TypeError / ValueError naming the bad argument.

    Example:
        >>> schedule = warmup(1.0, 4)
        >>> [schedule(t) for t in range(6)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
        >>> cosine = warmup(1.0, 2, decay="cosine", total_steps=5, lr_final=0.0)
        >>> [round(cosine(t), 3) for t in range(5)]    # peak at step 1, lr_final at step 4
        [0.5, 1.0, 0.75, 0.25, 0.0]
    """
    return WarmupSchedule(lr_target, warmup_steps, lr_init, power, decay, total_steps, lr_final)


@dataclass(frozen=True)
class CatapultWarmupSchedule:
    """Linear warmup that starts at the critical learning rate; call it with the step ``t``.

    ``lr(t) = min(lr_target, lr_critical + lr_target * t / T)`` with ``T = warmup_steps``: step 0
    uses ``lr_critical`` (capped at ``lr_target``), and ``lr_target`` is reached at
    ``t* = ceil(T (1 - lr_critical / lr_target))`` -- about ``T lr_critical / lr_target`` steps
    earlier than a warmup from 0. From ``t*`` on, the optional decay works as in
    :class:`WarmupSchedule`: ``s(t) = clip((t - t*) / (total_steps - 1 - t*), 0, 1)``.
    Build it with :func:`catapult_warmup`.

    Example:
        >>> schedule = CatapultWarmupSchedule(lr_target=1.0, warmup_steps=8, lr_critical=0.25)
        >>> schedule.peak_step                          # ceil(8 * (1 - 0.25 / 1.0))
        6
        >>> schedule(0), schedule(3), schedule(6)
        (0.25, 0.625, 1.0)
    """

    lr_target: float
    warmup_steps: int
    lr_critical: float
    decay: str = "constant"
    total_steps: int | None = None
    lr_final: float | None = None

    def __post_init__(self) -> None:
        # the same checks as catapult_warmup() (warmup_steps=0 divided by zero at step 0)
        lr_critical = checked_real("CatapultWarmupSchedule", "lr_critical", self.lr_critical)
        _set_fields(self, **_checked_warmup_fields(self), lr_critical=lr_critical)

    @property
    def peak_step(self) -> int:
        """``t*``: the first step that uses ``lr_target``, the first ``t`` whose ramp
        ``lr_critical + lr_target * t / T`` reaches ``lr_target`` up to its rounding
        (:data:`PEAK_ULPS` ulps of ``lr_target``): ``ceil(T (1 - lr_critical / lr_target))``. (The
        float ramp's own comparison decided it, and one ulp short moved the peak and the whole
        decay a step late: ``catapult_warmup(7.7, 41, 0.0)``'s ramp at 41 is 7.699999999999999,
        and with a linear decay to 0 over 95 steps step 42 used 7.7 for 7.5547, 2% high; so did
        ``(0.1, 10, 0.01)``, at 10 for 9, and 256 of 49,077 schedules of decimal lrs, T < 400.)"""
        if self.lr_critical >= self.lr_target:
            return 0
        t = max(0, math.ceil((self.lr_target - self.lr_critical) * self.warmup_steps
                             / self.lr_target))
        # guard the ceil against rounding: t* is the first t whose ramp reaches lr_target
        while not self._reaches(t):
            t += 1
        while t > 0 and self._reaches(t - 1):
            t -= 1
        return t

    def _ramp(self, t: int) -> float:
        return self.lr_critical + self.lr_target * t / self.warmup_steps

    def _reaches(self, t: int) -> bool:
        return self._ramp(t) >= self.lr_target - PEAK_ULPS * math.ulp(self.lr_target)

    def __call__(self, t: int) -> float:
        t = _step(t)
        peak = self.peak_step
        if t < peak:
            return self._ramp(t)
        return _after_peak(t, self.lr_target, peak, self.decay, self.total_steps, self.lr_final)


def catapult_warmup(lr_target: float, warmup_steps: int, lr_critical: float | CriticalLR, *,
                    decay: str | None = None, total_steps: int | None = None,
                    lr_final: float | None = None) -> CatapultWarmupSchedule:
    """Catapult-initialised warmup ``t -> lr`` (warmup paper, Sec. 6).

    ``lr(t) = min(lr_target, lr_critical + lr_target * t / T)``, ``T = warmup_steps``, where
    ``lr_critical`` comes from :func:`catapult.critical_lr` at initialisation (a
    :class:`~catapult.critical_lr.CriticalLR` result is accepted as is). Warmup starts where the
    loss would catapult instead of at 0 and saves about ``T * lr_critical / lr_target`` steps;
    with ``lr_target <= lr_critical`` the target is used from step 0. Optional ``decay``,
    ``total_steps`` (> ``warmup_steps``) and ``lr_final`` (default ``lr_target / 10``) as in
    :func:`warmup`, starting from the first step at ``lr_target``.

    Example (6 steps to the target instead of 8 for a warmup from 0):
        >>> schedule = catapult_warmup(1.0, 8, lr_critical=0.25)
        >>> [schedule(t) for t in range(8)]
        [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    """
    if isinstance(lr_critical, CriticalLR):
        lr_critical = lr_critical.lr
    return CatapultWarmupSchedule(lr_target, warmup_steps, lr_critical, decay, total_steps,
                                  lr_final)
