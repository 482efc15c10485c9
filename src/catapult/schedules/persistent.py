"""Persistent catapult warmup (warmup paper, Alg. 3): warmup without a warmup length."""
from __future__ import annotations

import numbers
import re
import warnings
from typing import Any, Callable

import torch

from catapult.arguments import check_batch, check_integer, check_module
from catapult.critical_lr import GROUP_LRS_WARNING, critical_lr, probe_loss
from catapult.optim import registry
from catapult.parametrize import group_lr_mult
from catapult.schedules.functions import checked_real
from catapult.schedules.scheduler import separate_lr_tensors, set_group_lr, warn_replaced_group_lrs

__all__ = ["PersistentCatapultWarmup"]

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

    A search probes the step the optimizer would take with the gradient of ``batch`` at the
    current parameters (from its own backward pass), not with ``.grad``: pass the whole batch of
    the step (all micro-batches when gradients are accumulated). Gradient clipping is not seen:
    a clipped step is shorter than the probed one, so the lr set is below that step's catapult
    (with ``clip_grad_norm_(..., 0.1)`` on the README's model, the first step at the found lr
    lowered the loss from 0.379 to 0.337).

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

    #: The constructor's settings a :meth:`state_dict` carries and :meth:`load_state_dict` checks.
    SETTINGS = ("lr_target", "delta", "lr_start", "rtol", "warm_start")

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                 loss_fn: Callable, lr_target: float, delta: float = 0.1, *,
                 lr_start: float | None = None, warm_start: bool = True, rtol: float | None = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        check_module("PersistentCatapultWarmup", model)
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(outputs, targets) -> scalar")
        self.lr_target = checked_real("PersistentCatapultWarmup", "lr_target", lr_target, positive=True)
        self.delta = checked_real("PersistentCatapultWarmup", "delta", delta, positive=True)
        if lr_start is None:
            lr_start = min(1e-4, self.lr_target)
        self.lr_start = checked_real("PersistentCatapultWarmup", "lr_start", lr_start, positive=True)
        if self.lr_start > self.lr_target:
            raise ValueError(f"lr_start ({self.lr_start}) must be <= lr_target ({self.lr_target})")
        if not isinstance(warm_start, bool):  # bool("no") is True
            raise TypeError(f"warm_start must be True or False, got {warm_start!r}")
        self.warm_start = warm_start
        self.rtol = None if rtol is None else checked_real("PersistentCatapultWarmup", "rtol", rtol, positive=True)
        registry.refuse_maximize(optimizer, "PersistentCatapultWarmup")
        self.optimizer, self.model, self.loss_fn = optimizer, model, loss_fn
        warn_replaced_group_lrs(optimizer, type(self).__name__)
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
        with warnings.catch_warnings():  # said once, when this warmup was built
            warnings.filterwarnings("ignore", message=re.escape(GROUP_LRS_WARNING), category=UserWarning)
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
        separate_lr_tensors(self.optimizer.param_groups)   # (one shared tensor held the last group's lr)
        for index, group in enumerate(self.optimizer.param_groups):
            set_group_lr(group, self.lr * group_lr_mult(group, index))

    def step(self, batch, loss: torch.Tensor | float | None = None) -> float:
        """Decide this training step's lr, set it on the optimizer's groups, and return it.

        Args:
            batch: ``(inputs, targets)`` of this step (searches run on it).
            loss: the loss at the current parameters on ``batch``, if already computed (saves a
                forward pass); a non-finite loss never triggers a search.
        """
        check_batch("PersistentCatapultWarmup.step", batch)
        if self.lr is None:
            self._search(batch)
        elif not self.done:
            if loss is None:
                current = probe_loss(self.model, self.loss_fn, batch)
                self.forward_passes += 1
            else:
                current = _loss_value(loss)
            if current < self.loss_ref:            # False for nan / inf
                self._search(batch)
        self._apply()
        self.steps += 1
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        """Progress (plain Python values; safe for ``torch.load(weights_only=True)``), with the
        settings it was made under (:data:`SETTINGS`), which :meth:`load_state_dict` checks."""
        return dict(lr=self.lr, loss_ref=self.loss_ref, steps=self.steps, searches=self.searches,
                    forward_passes=self.forward_passes,
                    history=[dict(entry) for entry in self.history],
                    **{key: getattr(self, key) for key in self.SETTINGS})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore progress from :meth:`state_dict` and set the groups' lr accordingly."""
        missing = {"lr", "loss_ref", "steps", "searches", "forward_passes", "history"} - set(state_dict)
        if missing:
            raise KeyError(f"PersistentCatapultWarmup state_dict is missing {sorted(missing)}")
        # progress made towards another target (or with another catapult threshold, search start,
        # bracket tolerance or warm start) would mix two warmups' searches; a state_dict saved
        # before these keys existed is taken as it is
        for key in self.SETTINGS:
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise ValueError(f"PersistentCatapultWarmup state_dict was saved with {key}="
                                 f"{state_dict[key]!r}, this warmup has {key}={getattr(self, key)!r}")
        lr = state_dict["lr"]
        if lr is not None:  # the lr the groups get: a checked base lr, never above the target
            lr = checked_real("PersistentCatapultWarmup", "state_dict['lr']", lr, positive=True)
            if lr > self.lr_target:
                raise ValueError(f"PersistentCatapultWarmup state_dict has lr={lr!r} above this "
                                 f"warmup's lr_target={self.lr_target!r}")
        loss_ref = state_dict["loss_ref"]
        if loss_ref is not None and (isinstance(loss_ref, bool) or not isinstance(loss_ref, (int, float))):
            raise TypeError(f"PersistentCatapultWarmup state_dict has loss_ref={loss_ref!r}; expected a number")
        self.lr, self.loss_ref = lr, loss_ref
        # int() took steps=2.5 as 2, "7" as 7 and -3 as it came
        self.steps, self.searches, self.forward_passes = (
            check_integer("PersistentCatapultWarmup state_dict", key, state_dict[key], low=0)
            for key in ("steps", "searches", "forward_passes"))
        self.history = [dict(entry) for entry in state_dict["history"]]
        if self.lr is not None:
            self._apply()


def _loss_value(loss: Any) -> float:
    """The number of a loss passed to :meth:`PersistentCatapultWarmup.step`: a scalar tensor or
    a real number; anything else is a TypeError naming ``loss``."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar (the batch's loss), got a tensor of shape {tuple(loss.shape)}")
        return float(loss.detach())
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):    # NumPy scalars too
        raise TypeError(f"loss must be a scalar tensor or a number, got {loss!r}")
    return float(loss)
