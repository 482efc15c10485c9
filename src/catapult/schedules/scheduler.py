"""Driving a ``torch.optim`` optimizer with a schedule function: :func:`attach` returns a
``torch.optim.lr_scheduler.LRScheduler`` that applies each param group's ``lr_mult``."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable

import torch

from catapult.arguments import caller_stacklevel
from catapult.parametrize import group_lr_mult, unscaled_group_lrs

__all__ = ["ScheduleLR", "attach", "warn_replaced_group_lrs", "checked_lr", "separate_lr_tensors"]


def checked_lr(schedule: Callable[[int], float], t: int) -> float:
    """``schedule(t)`` as a float: a TypeError unless a number (a one-element tensor is read; a
    NumPy scalar is a number), a ValueError unless finite and >= 0. The one check of a schedule's
    value, for :class:`ScheduleLR` and the engine's lr setter (:mod:`catapult.engine.step_lr`).

    >>> checked_lr(lambda t: 0.5 * t, 3)
    1.5
    """
    lr = schedule(t)
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"schedule returned {lr!r} at step {t}; expected a number (the lr)")
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"schedule returned lr={lr} at step {t}; expected a finite value >= 0")
    return lr

# --------------------------------------------------------------------------------------------
# Attaching a schedule to an optimizer
# --------------------------------------------------------------------------------------------
def separate_lr_tensors(groups) -> None:
    """Give each param group whose tensor lr is the same tensor as an earlier group's its own copy
    (same value, dtype and device). torch's optimizers give every group without an lr of its own the
    constructor's ``lr`` object itself (``Adam(groups, lr=torch.tensor(0.01))``; a later
    ``add_param_group`` too), so filling one group's lr in place filled them all: every group then
    held the last group's ``fn(t) * lr_mult``, its own multiplier lost without a word.

    >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=torch.tensor(0.1))
    >>> separate_lr_tensors(opt.param_groups)
    >>> opt.param_groups[0]["lr"] is opt.param_groups[1]["lr"], float(opt.param_groups[1]["lr"])
    (False, 0.10000000149011612)
    """
    seen: set[int] = set()
    for group in groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            if id(lr) in seen:
                group["lr"] = lr.detach().clone()
            else:
                seen.add(id(lr))


def set_group_lr(group: dict, lr: float) -> None:
    """``group["lr"] = lr``, filled in place when the group holds a tensor lr (as torch's own
    schedulers do): a compiled or CUDA-graph-captured ``optimizer.step`` keeps reading it."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def warn_replaced_group_lrs(optimizer: torch.optim.Optimizer, who: str) -> bool:
    """Warn (and return True) when the groups' own lrs differ and none sets ``lr_mult``.

    catapult's schedules set *absolute* lrs, ``fn(t) * lr_mult``, unlike ``LambdaLR``'s
    ``lr_0 * lambda(t)``; groups given different lrs by hand would silently all get ``fn(t)``.

    Example:
        >>> import warnings
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
        >>> with warnings.catch_warnings(record=True):
        ...     warn_replaced_group_lrs(opt, "attach")
        True
    """
    shown = unscaled_group_lrs(optimizer.param_groups)
    if shown is None:
        return False
    warnings.warn(f"{who}: the param groups' lrs differ ({shown}) but none sets 'lr_mult'; "
                  f"every group now gets the schedule's lr. To keep their ratios, give each group "
                  f"'lr_mult' (e.g. its lr / the largest), as catapult.param_groups does.",
                  UserWarning, stacklevel=caller_stacklevel())
    return True


#: What :meth:`ScheduleLR.state_dict` leaves out: the optimizer, the schedule function and the
#: lrs and group dicts of this process, which mean nothing to another.
_NOT_SAVED = ("optimizer", "fn", "_lrs_at_load", "_groups_seen")


class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """A ``torch.optim`` scheduler that sets ``group["lr"] = fn(t) * group.get("lr_mult", 1.0)``,
    times what other schedulers multiplied in.

    ``t`` (``last_epoch``) counts ``scheduler.step()`` calls; construction already sets the
    groups to ``fn(0)``, so call ``optimizer.step()`` then ``scheduler.step()`` each iteration
    and optimizer step ``t`` uses ``fn(t)``. Per-group ``lr_mult`` (set by
    ``catapult.param_groups`` for muP / SμPar) is re-applied at every step, so the schedule is
    relative to each group's multiplier.

    **Composing** (it is chainable, as torch's ``ExponentialLR`` is): where something else scaled a
    group's lr since this scheduler's last step (``ExponentialLR`` / ``StepLR`` /
    ``MultiplicativeLR`` in a ``ChainedScheduler``, ``ReduceLROnPlateau``, a hand edit), that
    factor is kept, so the lr is ``fn(t) * lr_mult * (their product)``: warmup times decay. (It
    replaced it: ``ChainedScheduler([attach(opt, warmup(...)), ExponentialLR(opt, 0.5)])``
    halved the lr once and never decayed.) A factor applied while this scheduler's lr was 0 is
    not seen. In ``SequentialLR`` a scheduler taking over at a milestone starts from the groups'
    ``initial_lr`` (their lr before any scheduler: with :func:`catapult.param_groups`,
    ``lr_target * lr_mult``), and this one, taking over or first, starts afresh (``fn(0)``); a
    group added later (``add_param_group``) gets ``fn(t) * lr_mult`` from the next step. ``LambdaLR``
    sets absolute lrs too (``initial_lr * lambda(t)``): beside this one the last to step wins, as
    between torch's own; compose the functions instead (``attach(opt, lambda t: fn(t) * g(t))``).

    ``state_dict()`` holds the step counters only (``fn`` may be a closure and is not saved).
    To resume, as with torch's schedulers: rebuild the scheduler with the same ``fn`` (this sets
    the groups to ``fn(0)``), then ``optimizer.load_state_dict`` (restores the groups' lr) and
    ``scheduler.load_state_dict`` (restores the counters and leaves the lr alone, so that
    inside ``SequentialLR`` / ``ChainedScheduler`` the lr another scheduler set survives). The
    scheduler's state alone (a fresh optimizer) resumes too, as ``LambdaLR``'s does: from the next
    ``step()`` the groups hold ``fn(t) * lr_mult`` (the fresh lr is not taken for another's factor);
    the optimizer's state alone (a fresh scheduler) runs the schedule afresh from the next ``step()``,
    as ``LambdaLR`` does (the loaded lr is not taken for one either).

    Example (a group with ``lr_mult = 0.5`` gets half the scheduled lr):
        >>> import torch
        >>> from catapult.schedules import warmup
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
        #: per group, the product of the factors other schedulers applied (1: none)
        self.factors = [1.0] * len(optimizer.param_groups)
        if last_epoch == -1:
            warn_replaced_group_lrs(optimizer, type(self).__name__)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t: int) -> float:
        return checked_lr(self.fn, t)

    def step(self, epoch: int | None = None) -> None:
        """torch's step, a tensor lr filled in place: torch 2.2's replaced it with a float, so a
        compiled or captured ``optimizer.step`` kept reading the old lr. Groups sharing one tensor
        lr (torch's constructor default) are given their own first (:func:`separate_lr_tensors`)."""
        separate_lr_tensors(self.optimizer.param_groups)
        held = [group["lr"] for group in self.optimizer.param_groups]
        super().step(epoch) if epoch is not None else super().step()
        self._groups_seen = list(self.optimizer.param_groups)   # (the dicts themselves: see get_lr)
        replaced = False
        for group, lr in zip(self.optimizer.param_groups, held):
            if isinstance(lr, torch.Tensor) and group["lr"] is not lr:
                lr.fill_(float(group["lr"]))
                group["lr"], replaced = lr, True
        if replaced:   # the lrs set, as newer torch keeps them (copies): the next factors compare like
            self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
                             for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """``[fn(t) * lr_mult * factor for each param group]`` with ``t = last_epoch``; ``factor``
        takes in the ratio of the group's lr now to the one this scheduler set last."""
        lr = self._lr_at(self.last_epoch)
        last = getattr(self, "_last_lr", None)  # what the previous step set (none before the first)
        groups = self.optimizer.param_groups
        # a group added since (optimizer.add_param_group): factor 1 (the factors were one short, and
        # torch's step refused the shorter list: "zip() argument 2 is shorter than argument 1")
        self.factors = (list(self.factors) + [1.0] * len(groups))[:len(groups)]
        # the lrs this scheduler had set itself when its load_state_dict ran (read once): a group still there was
        # not restored by the optimizer's load_state_dict (the fresh optimizer's fn(0) * lr_mult), and that
        # ratio to the saved lr is nobody's factor (it was taken for one: fn(0) / fn(t) for good)
        loaded, self._lrs_at_load = getattr(self, "_lrs_at_load", None) or [], None
        if self._step_count <= 1:
            # the first step: at construction, or SequentialLR's start, which had set the groups to
            # their initial_lr (the lrs before any scheduler): no factor to take in (that initial_lr
            # over fn(0) was taken for one, 4x the warmup's peak and every lr_mult lost)
            self.factors = [1.0] * len(groups)
        elif last is not None:
            # the groups this scheduler stepped last: one replaced since (optimizer.load_state_dict
            # builds new group dicts) with no state of this scheduler loaded after its last step holds
            # the saved lr, nobody's factor (taken for one, an optimizer resumed beside a fresh
            # scheduler ran at fn(t) * fn(saved t) / fn(0): warmup(0.1, 10) at 1.0, 10x its target)
            seen, self._groups_seen = getattr(self, "_groups_seen", None), None
            for i, (group, before) in enumerate(zip(groups, last)):
                now, before = float(group["lr"]), float(before)
                if i < len(loaded) and loaded[i] is not None and now == loaded[i]:
                    continue
                if seen is not None and i < len(seen) and group is not seen[i]:
                    continue
                if now != before and before > 0:  # another scheduler's (or a hand's) factor
                    self.factors[i] *= now / before
        return [lr * group_lr_mult(group, i) * factor
                for i, (group, factor) in enumerate(zip(groups, self.factors))]

    def _get_closed_form_lr(self) -> list[float]:
        """``step(epoch)`` (``SequentialLR`` handing over at a milestone): ``fn(epoch) * lr_mult``,
        the factors reset."""
        self.factors, self._lrs_at_load = [1.0] * len(self.optimizer.param_groups), None
        lr = self._lr_at(self.last_epoch)
        return [lr * group_lr_mult(group, i) for i, group in enumerate(self.optimizer.param_groups)]

    def state_dict(self) -> dict[str, Any]:
        """Scheduler state without the optimizer and the schedule function."""
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_SAVED}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counters and factors (the optimizer's own ``load_state_dict`` restores
        the lr)."""
        # a group holding what this scheduler set itself (the fresh optimizer's lr, fn(0) * lr_mult): where the
        # next step still finds it, no optimizer state restored the group (loaded first, it holds the saved lr)
        own = [float(lr) for lr in getattr(self, "_last_lr", None) or []]
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_SAVED})
        self._groups_seen = None    # (the optimizer's groups may be loaded before or after: the lrs say)
        if "factors" not in state_dict:  # saved before the factors were: none were applied then
            self.factors = [1.0] * len(self.optimizer.param_groups)
        self._lrs_at_load = [float(group["lr"]) if i < len(own) and float(group["lr"]) == own[i] else None
                             for i, group in enumerate(self.optimizer.param_groups)]


def attach(optimizer: torch.optim.Optimizer, fn: Callable[[int], float]) -> ScheduleLR:
    """Drive ``optimizer`` with the schedule ``fn``: returns a :class:`ScheduleLR`.

    Each param group's lr becomes ``fn(t) * group.get("lr_mult", 1.0)``; the groups hold
    ``fn(0)`` as soon as this returns. The groups' own lrs are replaced, not scaled (a
    ``UserWarning`` says so when they differ and no group sets ``lr_mult``). Call ``scheduler.step()`` after each ``optimizer.step()``.
    Decays from other schedulers compose (a ``ChainedScheduler`` with ``ExponentialLR``: the lr
    is ``fn(t) * lr_mult * gamma^t``); see :class:`ScheduleLR`.

    Example:
        >>> import torch
        >>> from catapult.schedules import warmup
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
    if not optimizer.param_groups:  # a schedule with no lr to set did nothing, silently
        raise ValueError("attach: the optimizer has no param groups: there is no lr to schedule")
    return ScheduleLR(optimizer, fn)
