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

from catapult.critical_lr import CriticalLR, critical_lr, probe_loss

__all__ = [
    "polynomial_warmup_factor",
    "decay_progress",
    "cosine_decay",
    "linear_decay",
    "WarmupSchedule",
    "CatapultWarmupSchedule",
    "warmup",
    "catapult_warmup",
    "ScheduleLR",
    "attach",
    "PersistentCatapultWarmup",
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

    Example:
        >>> [polynomial_warmup_factor(t, 4) for t in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
        >>> polynomial_warmup_factor(1, 4, power=2.0)      # ((1 + 1) / 4) ** 2
        0.25
    """
    return min(1.0, ((t + 1) / warmup_steps) ** power)


def decay_progress(t: int, start: int, total_steps: int) -> float:
    """How far step ``t`` is through a decay that runs from step ``start`` to ``total_steps - 1``.

    ``s(t) = clip((t - start) / (total_steps - 1 - start), 0, 1)``: 0 at ``start`` (the step that
    first uses the peak lr), 1 at the last step ``total_steps - 1`` and after it.

    Example:
        >>> [decay_progress(t, 3, 8) for t in (2, 3, 5, 7, 9)]   # span 8 - 1 - 3 = 4 steps
        [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    span = total_steps - 1 - start
    if span <= 0:                       # no room to decay: the final value from `start` on
        return 0.0 if t < start else 1.0
    return min(1.0, max(0.0, (t - start) / span))


def cosine_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_end + (lr_start - lr_end) * (1 + cos(pi * s)) / 2`` for progress ``s`` in [0, 1].

    Example:
        >>> [round(cosine_decay(s, 1.0, 0.1), 3) for s in (0.0, 0.5, 1.0)]
        [1.0, 0.55, 0.1]
    """
    return lr_end + (lr_start - lr_end) * 0.5 * (1.0 + math.cos(math.pi * s))


def linear_decay(s: float, lr_start: float, lr_end: float) -> float:
    """``lr(s) = lr_start + (lr_end - lr_start) * s`` for progress ``s`` in [0, 1].

    Example:
        >>> [linear_decay(s, 1.0, 0.0) for s in (0.0, 0.25, 1.0)]
        [1.0, 0.75, 0.0]
    """
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

    Example:
        >>> schedule = warmup(1.0, 4)
        >>> [schedule(t) for t in range(6)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
        >>> cosine = warmup(1.0, 2, decay="cosine", total_steps=5, lr_final=0.0)
        >>> [round(cosine(t), 3) for t in range(5)]    # peak at step 1, lr_final at step 4
        [0.5, 1.0, 0.75, 0.25, 0.0]
    """
    lr_target = _real("lr_target", lr_target)
    warmup_steps = _count("warmup_steps", warmup_steps)
    lr_init = _real("lr_init", lr_init)
    power = _real("power", power, positive=True)
    decay, total_steps, lr_final = _check_decay(decay, total_steps, lr_final, lr_target,
                                                warmup_steps)
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

    @property
    def peak_step(self) -> int:
        """``t*``: the first step that uses ``lr_target``."""
        if self.lr_critical >= self.lr_target:
            return 0
        t = max(0, math.ceil((self.lr_target - self.lr_critical) * self.warmup_steps
                             / self.lr_target))
        # guard the ceil against rounding: t* is the first t with lr(t) == lr_target
        while self._ramp(t) < self.lr_target:
            t += 1
        while t > 0 and self._ramp(t - 1) >= self.lr_target:
            t -= 1
        return t

    def _ramp(self, t: int) -> float:
        return self.lr_critical + self.lr_target * t / self.warmup_steps

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
    lr_target = _real("lr_target", lr_target)
    warmup_steps = _count("warmup_steps", warmup_steps)
    lr_critical = _real("lr_critical", lr_critical)
    decay, total_steps, lr_final = _check_decay(decay, total_steps, lr_final, lr_target,
                                                warmup_steps)
    return CatapultWarmupSchedule(lr_target, warmup_steps, lr_critical, decay, total_steps,
                                  lr_final)


# --------------------------------------------------------------------------------------------
# Attaching a schedule to an optimizer
# --------------------------------------------------------------------------------------------
def _set_group_lr(group: dict, lr: float) -> None:
    """``group["lr"] = lr``, filled in place when the group holds a tensor lr (as torch's own
    schedulers do): a compiled or CUDA-graph-captured ``optimizer.step`` keeps reading it."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


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

    Example (a group with ``lr_mult = 0.5`` gets half the scheduled lr):
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([{"params": [w], "lr_mult": 0.5}], lr=1.0)
        >>> scheduler = ScheduleLR(opt, warmup(1.0, 4))
        >>> opt.param_groups[0]["lr"]                   # fn(0) * 0.5
        0.125
        >>> scheduler.state_dict()["last_epoch"]
        0
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
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            _set_group_lr(group, lr)
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                         for g in self.optimizer.param_groups]


def attach(optimizer: torch.optim.Optimizer, fn: Callable[[int], float]) -> ScheduleLR:
    """Drive ``optimizer`` with the schedule ``fn``: returns a :class:`ScheduleLR`.

    Each param group's lr becomes ``fn(t) * group.get("lr_mult", 1.0)``; the groups hold
    ``fn(0)`` as soon as this returns. Call ``scheduler.step()`` after each ``optimizer.step()``.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([w], lr=123.0)        # the schedule overrides this lr
        >>> scheduler = attach(opt, warmup(1.0, 4))
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     scheduler.step()
        >>> lrs
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return ScheduleLR(optimizer, fn)


# --------------------------------------------------------------------------------------------
# Persistent catapult warmup (paper Alg. 3)
# --------------------------------------------------------------------------------------------
class PersistentCatapultWarmup:
    """Warmup without a warmup length: keep the lr at the critical lr of the latest "best" point.

    Algorithm (warmup paper, Alg. 3), one call of :meth:`step` per training step, before
    ``optimizer.step()``::

        first call:   search from theta_0; lr = min(upper, lr_target); theta* = theta_0
        while lr < lr_target:
            if L(theta_t) < L(theta*):   search from theta_t; lr = min(upper, lr_target);
                                         theta* = theta_t
            else:                        keep lr
        afterwards:   lr = lr_target

    "search" is :func:`catapult.critical_lr` on the current batch with
    ``lr_start`` (default ``min(1e-4, lr_target)``), ``lr_max = lr_target``, ``delta`` and
    ``rtol`` (None: the paper's stop);
    ``L(theta*)`` is that search's ``loss0``. With ``warm_start=True`` (default; beyond the
    paper) a re-search starts its doubling from the previous search's ``lower`` instead of
    ``lr_start`` and falls back to ``lr_start`` only if the loss already rises there: the same
    bracket criterion at a fraction of the forward passes (measured on a 2-layer ReLU net:
    ~8 instead of ~25 per re-search). The lr is a base lr: each param group gets
    ``lr * group.get("lr_mult", 1.0)``. It never exceeds ``lr_target``; a search may also
    *lower* it (the paper sets ``lr = upper``).

    ``L(theta_t)``: pass the loss you already computed on this batch at the current parameters
    (``pcw.step(batch, loss=loss)``, free); without it one extra forward pass (no grad, buffers
    and RNG restored) is spent and counted. With full-batch GD the comparison is exact; with
    minibatches it compares losses of different batches, so it is noisy (smaller ``delta``,
    or a fixed probe batch, make it steadier).

    Usage::

        pcw = PersistentCatapultWarmup(optimizer, model, loss_fn, lr_target=0.5)
        for batch in loader:
            loss = loss_fn(model(batch[0]), batch[1])
            optimizer.zero_grad(); loss.backward()
            pcw.step(batch, loss=loss)      # sets the lr of this step
            optimizer.step()

    Attributes:
        lr: current base lr (None before the first call).
        done: True once ``lr == lr_target`` (no more searches or loss probes).
        searches: number of critical-lr searches run.
        forward_passes: forward passes spent by searches and loss probes.
        history: one dict per search: step, lr, lower, upper, loss0, forward_passes.

    Example: GD on ``L(w) = mean((x w - y)^2)`` with ``x = diag(2, 1)``, top curvature 4, so the
    critical lr is ``2 / 4 = 0.5``; the first call searches and sets the lr just above it:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.0)
        >>> pcw = PersistentCatapultWarmup(opt, model, torch.nn.MSELoss(), lr_target=1.0,
        ...                                lr_start=1 / 64)
        >>> pcw.step(batch), pcw.history[0]["lower"], pcw.done
        (0.5078125, 0.5, False)
        >>> opt.param_groups[0]["lr"]
        0.5078125
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                 loss_fn: Callable, lr_target: float, delta: float = 0.1, *,
                 lr_start: float | None = None, warm_start: bool = True, rtol: float | None = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(outputs, targets) -> scalar")
        self.lr_target = _real("lr_target", lr_target, positive=True)
        self.delta = _real("delta", delta, positive=True)
        if lr_start is None:
            lr_start = min(1e-4, self.lr_target)
        self.lr_start = _real("lr_start", lr_start, positive=True)
        if self.lr_start > self.lr_target:
            raise ValueError(f"lr_start ({self.lr_start}) must be <= lr_target ({self.lr_target})")
        self.warm_start = bool(warm_start)
        self.rtol = None if rtol is None else _real("rtol", rtol, positive=True)
        self.optimizer, self.model, self.loss_fn = optimizer, model, loss_fn
        self.lr: float | None = None
        self.loss_ref: float | None = None
        self.steps = 0
        self.searches = 0
        self.forward_passes = 0
        self.history: list[dict[str, float]] = []

    @property
    def done(self) -> bool:
        """The target lr has been reached; :meth:`step` only sets it from now on."""
        return self.lr is not None and self.lr >= self.lr_target

    def _critical_lr(self, batch, lr_start: float):
        return critical_lr(self.model, self.loss_fn, batch, self.optimizer, lr_start=lr_start,
                           lr_max=self.lr_target, delta=self.delta, rtol=self.rtol)

    def _search(self, batch) -> None:
        passes = 0
        result = None
        if self.warm_start and self.history:
            # start from the last lr known not to raise the loss; if the loss now rises already
            # there, the critical lr dropped below it: search again from lr_start
            warm = max(self.lr_start, min(self.history[-1]["lower"], self.lr_target))
            if warm > self.lr_start:
                result = self._critical_lr(batch, warm)
                passes += result.forward_passes
                if result.lower == 0.0:
                    result = None
        if result is None:
            result = self._critical_lr(batch, self.lr_start)
            passes += result.forward_passes
        self.lr = min(result.upper, self.lr_target)
        self.loss_ref = result.loss0
        self.searches += 1
        self.forward_passes += passes
        self.history.append(dict(step=self.steps, lr=self.lr, lower=result.lower,
                                 upper=result.upper, loss0=result.loss0, forward_passes=passes))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            _set_group_lr(group, self.lr * float(group.get("lr_mult", 1.0)))

    def step(self, batch, loss: torch.Tensor | float | None = None) -> float:
        """Decide this training step's lr, set it on the optimizer's groups, and return it.

        Args:
            batch: ``(inputs, targets)`` of this step (searches run on it).
            loss: the loss at the current parameters on ``batch``, if already computed (saves a
                forward pass); a non-finite loss never triggers a search.
        """
        if self.lr is None:
            self._search(batch)
        elif not self.done:
            if loss is None:
                current = probe_loss(self.model, self.loss_fn, batch)
                self.forward_passes += 1
            else:
                current = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            if current < self.loss_ref:            # False for nan / inf
                self._search(batch)
        self._apply()
        self.steps += 1
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        """Progress (plain Python values; safe for ``torch.load(weights_only=True)``)."""
        return dict(lr=self.lr, loss_ref=self.loss_ref, steps=self.steps, searches=self.searches,
                    forward_passes=self.forward_passes,
                    history=[dict(entry) for entry in self.history])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore progress from :meth:`state_dict` and set the groups' lr accordingly."""
        missing = {"lr", "loss_ref", "steps", "searches", "forward_passes", "history"} - set(state_dict)
        if missing:
            raise KeyError(f"PersistentCatapultWarmup state_dict is missing {sorted(missing)}")
        self.lr = state_dict["lr"]
        self.loss_ref = state_dict["loss_ref"]
        self.steps = int(state_dict["steps"])
        self.searches = int(state_dict["searches"])
        self.forward_passes = int(state_dict["forward_passes"])
        self.history = [dict(entry) for entry in state_dict["history"]]
        if self.lr is not None:
            self._apply()
