"""Sharpness tracking in your own training loop: :class:`SharpnessTracker`, a callback that
measures the sharpness that bounds the optimizer's next step every ``every`` calls, warm-started
from its last eigenvector, and records it beside that step's instability threshold.

Which sharpness (``kind="auto"``), as ``catapult train`` measures it
(:mod:`catapult.engine.sharpness_rule`):

* no optimizer, or SGD that steps every trainable parameter with one lr: ``"hessian"``,
  ``lambda_max(H)``;
* SGD whose groups' lrs (or weight decays) differ (``catapult.param_groups`` under muP / SμPar, or
  groups set by hand; a group at lr 0 and parameters no group holds, which the step does not move, included):
  ``"lr_scaled"``, ``lambda_max(M^1/2 H M^1/2)`` with ``M = diag(lr_i / lr_0)``
  (:func:`catapult.optim.thresholds.lr_scaled_sharpness`), which ``2 / lr_0`` bounds;
* Adam, AdamW, GI-Adam: ``"preconditioned"``, ``lambda_max(P^-1/2 H P^-1/2)`` of the next step's
  pre-conditioner, each group's block scaled by its lr relative to the first group's;
* RAdam: while its next step is un-rectified (EMA-momentum SGD) SGD's rule (``"hessian"``, or
  ``"lr_scaled"`` where the groups' lrs or decays differ or a part is not moved), ``"preconditioned"`` afterwards.

The threshold is :func:`~catapult.curvature.sharpness.instability_threshold` at the first group's
current lr (lowered by its weight decay's own curvature, so that the sharpness stays the loss's)
(``inf`` while every group's lr is 0, as at the start of a warmup from 0). Where the
first group moves nothing while another moves (a part frozen by lr 0 or ``requires_grad=False``
listed first, an empty group), the first group that moves is the reference instead (its lr is
``lr_0`` above and the record's ``lr``).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

from catapult.arguments import MAX_STEPS, check_integer, check_module, check_real
from catapult.curvature.sharpness import instability_threshold, preconditioned_sharpness, sharpness
from catapult.optim import registry

__all__ = ["SharpnessRecord", "SharpnessTracker", "TRACKER_KINDS"]

#: ``kind`` values of :class:`SharpnessTracker`
TRACKER_KINDS = ("auto", "hessian", "preconditioned", "lr_scaled")

#: solver options passed through to the measurement (those of :func:`catapult.sharpness`; ``init``
#: is the tracker's warm start, ``coarse`` applies to cold Hessian solves only)
_SOLVER_OPTIONS = ("tol", "max_iter", "dtype", "hvp", "seed", "max_basis", "chunk_size", "memory",
                   "distributed", "curvature")
#: the options lr_scaled_sharpness takes
_LR_SCALED_OPTIONS = ("tol", "max_iter", "dtype", "hvp", "seed", "max_basis", "chunk_size")


@dataclass(frozen=True)
class SharpnessRecord:
    """One measurement of a :class:`SharpnessTracker`: ``step`` (the tracker's call count before
    this call, 0-based), ``value`` (the sharpness of ``kind``), ``threshold`` (the instability
    threshold of the optimizer's next step; ``None`` without an optimizer, ``inf`` while every
    group's lr is 0), ``lr`` (the first param group's lr, or the first moving group's where that
    one is at 0; ``None`` without an optimizer), ``kind``, ``matvecs`` (products spent) and
    ``converged``.

    Example:
        >>> record = SharpnessRecord(step=0, value=4.0, threshold=20.0, lr=0.1, kind="hessian",
        ...                          matvecs=3, converged=True)
        >>> record.ratio                     # value / threshold: above 1, past the edge
        0.2
    """

    step: int
    value: float
    threshold: float | None
    lr: float | None
    kind: str
    matvecs: int
    converged: bool

    @property
    def ratio(self) -> float | None:
        """``value / threshold`` (``None`` without a threshold; 0 at an infinite one, ``inf`` at 0:
        a weight decay with ``lr wd >= 2`` diverges alone): 1 is the edge of stability. With
        weight decay the threshold is lowered by the decay's own curvature
        (:func:`catapult.optim.thresholds.weight_decay_shift`), so the ratio is still the loss's
        sharpness over what the step tolerates of it."""
        if self.threshold is None:
            return None
        if self.threshold == 0:
            return math.inf if self.value > 0 else 0.0
        return 0.0 if math.isinf(self.threshold) else self.value / self.threshold


def _group_lr(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def _first_lr(optimizer: torch.optim.Optimizer) -> float:
    return _group_lr(optimizer.param_groups[0])


def _check_lrs(optimizer: torch.optim.Optimizer) -> None:
    """A ValueError naming a param group whose lr is not a finite number >= 0 (set by hand or by a
    scheduler past its end): a nan or negative lr was recorded with threshold ``inf``, ratio 0."""
    for i, group in enumerate(optimizer.param_groups):
        lr = _group_lr(group)
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"SharpnessTracker: param group {i} has lr={lr!r}; the step it measures needs a "
                             f"finite lr >= 0 in every group")


def _moves(group: dict) -> bool:
    """Whether the step moves something of ``group`` (:func:`catapult.optim.thresholds.group_moves`)."""
    from catapult.optim.thresholds import group_moves

    return group_moves(group)


def _reference_view(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer``, or where its first group moves nothing (lr 0, or no trainable parameter: an
    empty group, a body frozen by ``requires_grad=False`` listed first) while another group moves
    (a trainable parameter, lr > 0) a shallow view of it whose first group is the first that moves: the measurements'
    operators and the threshold take the first group as their reference (``lr_i / lr_0``,
    ``2 / lr_0``), and a first group held at lr 0 (a frozen part listed first) made the threshold
    ``inf`` (ratio 0) and the operator one in which every group moved alike, while the next step
    moves the other groups (a frozen first group at lr 1e-3 beside the head's 1e-2 gave the head's
    top times 10 as 'lr_scaled', with lr 1e-3). The view shares the optimizer's state and groups; nothing is changed."""
    groups = optimizer.param_groups
    if _moves(groups[0]):
        return optimizer
    moving = next((g for g in groups if _moves(g)), None)
    if moving is None:      # every group at lr 0 (a warmup from 0): the first group's, inf
        return optimizer
    view = object.__new__(type(optimizer))
    view.__dict__.update(optimizer.__dict__)
    view.param_groups = [moving] + [g for g in groups if g is not moving]
    return view


def _check_holds(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """A ValueError unless ``optimizer`` holds one of the model's trainable parameters (when it
    has any: the measurement names a model without). The optimizer of another model (or of the
    model before a ``copy.deepcopy``) moves none of them: ``kind="hessian"`` (given, or RAdam's
    un-rectified steps) recorded ``lambda_max(H)`` beside that optimizer's threshold, where the
    pre-conditioned and lr-scaled kinds refused it."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if trainable and not any(id(p) in held for p in trainable):
        raise ValueError(f"SharpnessTracker: the optimizer ({type(optimizer).__name__}) holds none of the "
                         f"model's trainable parameters (is it the optimizer of another model, or of a "
                         f"copy?): its step moves none of them, so no sharpness bounds it")


def _next_step(optimizer: torch.optim.Optimizer) -> int:
    """The 1-based count of the optimizer's next step: the largest ``state[p]["step"]`` of what can
    move, plus 1 as torch adds it (1 before the first step; a float32 count stops at ``2**24``:
    :func:`catapult.optim.thresholds.radam_reference_step`)."""
    from catapult.optim.thresholds import radam_reference_step

    return radam_reference_step(optimizer)[0]


def _trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _record_from(owner: str, i: int, fields: Any) -> SharpnessRecord:
    """The :class:`SharpnessRecord` of a saved ``asdict`` record, each field checked; a ValueError
    naming ``history[i]`` and the field otherwise."""
    where = f"{owner}: history[{i}]"
    names = [f.name for f in dataclasses.fields(SharpnessRecord)]
    if not isinstance(fields, Mapping) or set(fields) != set(names):
        shown = sorted(map(str, fields)) if isinstance(fields, Mapping) else type(fields).__name__
        raise ValueError(f"{where} must be a dict of the fields {names}; got {shown}")

    def real(name, *, none=False, finite=False):
        value = fields[name]
        if none and value is None:
            return None
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok or (finite and not math.isfinite(value)):
            raise ValueError(f"{where} {name} must be {'None or ' if none else ''}a real number; got {value!r}")
        return float(value)

    kind = fields["kind"]
    if kind not in TRACKER_KINDS[1:]:
        raise ValueError(f"{where} kind must be one of {TRACKER_KINDS[1:]}; got {kind!r}")
    if not isinstance(fields["converged"], bool):
        raise ValueError(f"{where} converged must be True or False; got {fields['converged']!r}")
    return SharpnessRecord(step=check_integer(where, "step", fields["step"], low=0), value=real("value"),
                           threshold=real("threshold", none=True), lr=real("lr", none=True, finite=True),
                           kind=kind, matvecs=check_integer(where, "matvecs", fields["matvecs"], low=0),
                           converged=fields["converged"])


class SharpnessTracker:
    """Measure the sharpness every ``every`` calls in your own loop, warm-started, beside the
    optimizer's instability threshold.

    Call it once per training step, after ``loss.backward()`` (or anywhere before
    ``optimizer.step()``): ``tracker.step(batch)`` (or ``tracker(batch)``) measures on the calls
    ``0, every, 2 every, ...`` and returns a :class:`SharpnessRecord`, else ``None``; every record
    is also appended to ``tracker.history``. The measurement is of the step the optimizer is about
    to take: its pre-conditioner and its lr (after the scheduler's last ``step()``). The Adam
    family's pre-conditioner is built from the gradient of ``loss_fn`` on ``batch``, not from
    ``.grad`` (so a ``GradScaler``'s scaled gradients do not enter it): under gradient accumulation
    pass the whole accumulated batch, with a ``loss_fn`` whose gradient is the accumulated one
    (the sum of ``k`` micro-batch means is ``k`` times the batch mean's). Like the
    functions it calls, it changes nothing of the model (parameters, ``.grad``, buffers such as
    BatchNorm's running statistics, train/eval mode) or the optimizer, nor the global RNG.

    Each measurement starts from the previous one's eigenvector (``init=``, with the random part
    every warm start gets: :func:`catapult.sharpness`), so it costs a handful of products once
    the sharpness moves slowly; a measurement that gave ``nan`` (a diverged loss), or a change in
    the number of trainable parameter entries, starts the next one cold.

    Args:
        model, loss_fn: the loss ``loss_fn(model(inputs), targets)`` of each ``batch``.
        optimizer: the loop's optimizer (SGD, Adam, AdamW, RAdam, GI-Adam), or ``None``: then the
            Hessian's sharpness and no threshold.
        every: measure on every ``every``-th call (the first call measures).
        kind: ``"auto"`` (the module docstring's rule), or one of ``"hessian"``,
            ``"preconditioned"`` (Adam family), ``"lr_scaled"`` (SGD). ``"hessian"`` is refused at a
            step without a pre-conditioner (SGD, RAdam before rectification) whose moving groups
            decay differently (a ValueError, before any product): the threshold holds one decay only.
        **options: solver options of :func:`catapult.sharpness` (``tol``, ``max_iter``,
            ``dtype``, ``hvp``, ``seed``, ``max_basis``, ``chunk_size``, ``memory``,
            ``distributed``, ``curvature``); the lr-scaled sharpness takes the first seven only.

    ``state_dict()`` / ``load_state_dict()`` save and restore the call count, the warm start
    and the history (plain Python and one tensor, so ``torch.load(..., weights_only=True)`` reads
    it back), as ``torch.optim`` objects do; ``load_state_dict`` refuses a state that is not one.

    Raises:
        TypeError / ValueError: at construction, for a model that is not a module, an optimizer
            the rules do not cover (the message names it) or that holds none of the model's
            trainable parameters, an unknown ``kind`` or option, or a ``kind`` that does not fit
            the optimizer.

    Example (GD on ``L(w) = mean((x w - y)^2)`` with ``x = (2, 0), (0, 1)``: Hessian
    ``diag(4, 1)``, so the sharpness is 4 and the threshold ``2 / lr = 20``):
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> tracker = SharpnessTracker(model, torch.nn.MSELoss(), opt, every=2)
        >>> for step in range(4):
        ...     opt.zero_grad()
        ...     torch.nn.MSELoss()(model(batch[0]), batch[1]).backward()
        ...     record = tracker.step(batch)
        ...     opt.step()
        >>> [(r.step, round(r.value, 3), r.threshold, r.kind) for r in tracker.history]
        [(0, 4.0, 20.0, 'hessian'), (2, 4.0, 20.0, 'hessian')]
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer | None = None,
                 *, every: int = 1, kind: str = "auto", **options: Any):
        check_module("SharpnessTracker", model)
        if not callable(loss_fn):
            raise TypeError(f"SharpnessTracker: loss_fn must be callable, got {type(loss_fn).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"SharpnessTracker: optimizer must be a torch.optim.Optimizer or None, "
                            f"got {type(optimizer).__name__}")
        self.every = check_integer("SharpnessTracker", "every", every, high=MAX_STEPS)
        if kind not in TRACKER_KINDS:
            raise ValueError(f"SharpnessTracker: kind must be one of {TRACKER_KINDS}; got {kind!r}")
        unknown = sorted(set(options) - set(_SOLVER_OPTIONS))
        if unknown:
            raise TypeError(f"SharpnessTracker: unknown solver option(s) {unknown}; known: "
                            f"{list(_SOLVER_OPTIONS)} (init is the tracker's warm start)")
        if "tol" in options:    # as the solvers take it (check_solver_args), before any step is measured
            options["tol"] = check_real("SharpnessTracker", "tol", options["tol"], low=0.0, high=1.0,
                                        low_open=True, high_open=True)
        family = None
        if optimizer is not None:
            spec = registry.spec_for(optimizer)     # NotImplementedError naming an unsupported one
            family = "adam" if spec.preconditioned else spec.rule
            registry.refuse_maximize(optimizer, "SharpnessTracker")
            _check_holds(optimizer, model)
        if kind != "auto":
            fits = {"hessian": True, "preconditioned": family in ("adam", "radam"), "lr_scaled": family == "sgd"}
            if not fits[kind]:
                raise ValueError(f"SharpnessTracker: kind={kind!r} does not fit "
                                 f"{type(optimizer).__name__ if optimizer is not None else 'no optimizer'}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.kind, self.options = kind, dict(options)
        self.calls = 0
        self.history: list[SharpnessRecord] = []
        self.vector: torch.Tensor | None = None
        self._count: int | None = None     # trainable entries when self.vector was measured

    # -- which sharpness, which threshold ---------------------------------------------------
    def _kind_now(self) -> str:
        opt = self.optimizer
        if self.kind != "auto":
            return self.kind
        if opt is None:
            return "hessian"
        spec = registry.spec_for(opt)
        if spec.preconditioned:
            return "preconditioned"
        params = [p for p in self.model.parameters() if p.requires_grad]
        view = _reference_view(opt)
        from catapult.optim.thresholds import radam_step_kind, radam_step_scales, unpreconditioned_kind

        if spec.rule == "radam":
            # each parameter's own step count: a step rectified for some parameters only is
            # refused here, before any product (radam_step_kind reads the largest count)
            # (a parameter never stepped that has no gradient now, an unused one, is left to the
            # measurement's own check, which asks the loss whether it reaches it)
            radam_step_scales(view, params, skip={id(p) for p in params if p.grad is None and not opt.state.get(p)})
            # un-rectified: EMA-momentum SGD, measured as SGD's step (the Hessian's took a frozen
            # group's curvature, and groups at other lrs as if at the first one's)
            return radam_step_kind(view, _next_step(opt), params)
        # every trainable entry stepped at the reference lr and one decay: the Hessian's; else M^1/2 (H + W) M^1/2
        return unpreconditioned_kind(view, params)

    def _check_hessian_decay(self) -> None:
        """A ValueError where ``kind="hessian"`` is given for a step without a pre-conditioner (SGD;
        RAdam before rectification) whose moving groups decay differently: the threshold is lowered
        by the first group's decay only, and ``lambda_max(H)`` cannot hold the others' (the step's
        operator is ``M^1/2 (H + W) M^1/2``, which ``kind="auto"`` measures): the ratio was off by up
        to the decays' difference, silently."""
        opt = self.optimizer
        if self.kind != "hessian" or opt is None:
            return
        from catapult.optim.thresholds import group_decays, radam_step_kind

        rule = registry.spec_for(opt).rule
        bare = rule == "sgd" or (rule == "radam" and radam_step_kind(_reference_view(opt), _next_step(opt))
                                 == "hessian")
        decays = group_decays(opt)
        if bare and len(decays) > 1:
            shown = ", ".join(f"{wd:g}{' decoupled' if dec else ''}" for wd, dec in sorted(decays))
            raise ValueError(f"SharpnessTracker: kind='hessian' with param groups that decay differently "
                             f"(weight_decay {shown}): the threshold holds one group's decay, and the Hessian's "
                             f"sharpness none of the others'; pass kind='auto' (the lr-scaled sharpness "
                             f"M^1/2 (H + W) M^1/2 holds each group's)")

    def _threshold(self) -> float | None:
        if self.optimizer is None:
            return None
        reference = _reference_view(self.optimizer)
        if not _first_lr(reference) > 0:
            return math.inf
        return float(instability_threshold(reference))

    def _measure(self, batch, kind: str, init):
        if kind == "hessian":
            return sharpness(self.model, self.loss_fn, batch, init=init, **self.options)
        if kind == "preconditioned":
            return preconditioned_sharpness(self.model, self.loss_fn, batch, _reference_view(self.optimizer), init=init,
                                            scale_by_group_lr=True, **self.options)
        from catapult.optim.thresholds import lr_scaled_sharpness

        other = sorted(k for k in self.options if k not in _LR_SCALED_OPTIONS)
        if other:
            raise ValueError(f"SharpnessTracker: the lr-scaled sharpness (SGD, or RAdam before rectification, "
                             f"whose groups' lrs differ, or that "
                             f"leaves parameters unmoved: a group at lr 0, parameters no group holds) takes no "
                             f"{other}; pass kind='hessian' to measure the whole Hessian's instead")
        return lr_scaled_sharpness(self.model, self.loss_fn, batch, _reference_view(self.optimizer), init=init,
                                   **self.options)

    # -- the callback ---------------------------------------------------------------------
    def step(self, batch) -> SharpnessRecord | None:
        """Count one call; on every ``every``-th (the first included) measure on ``batch`` and
        return the :class:`SharpnessRecord` (also appended to ``history``), else ``None``.

        A measurement that raises (a refused optimizer state, a ``loss_fn`` that raises, an
        interrupt) leaves the tracker as it was: the call is not counted, so calling again
        with the same step's batch measures that step; what the optimizer's state makes
        unmeasurable (an lr no step has, groups whose thresholds differ, an optimizer that
        holds none of the model's parameters) is refused before any product."""
        t = self.calls
        if t % self.every:
            self.calls = t + 1
            return None
        threshold = lr = None
        if self.optimizer is not None:
            _check_lrs(self.optimizer)
            _check_holds(self.optimizer, self.model)
            self._check_hessian_decay()
            # the threshold first: groups whose rules differ were refused after the whole solve
            threshold = self._threshold()
            lr = _first_lr(_reference_view(self.optimizer))
        count = _trainable_count(self.model)
        init = self.vector if self.vector is not None and count == self._count else None
        kind = self._kind_now()
        est = self._measure(batch, kind, init)
        record = SharpnessRecord(step=t, value=float(est.value), threshold=threshold, lr=lr,
                                 kind=kind, matvecs=int(est.matvecs), converged=bool(est.converged))
        # nothing is changed before the measurement returns: a raise above leaves calls, the warm start
        # and the history as they were
        self.vector = est.vector.detach() if math.isfinite(est.value) else None
        self._count = count
        self.history.append(record)
        self.calls = t + 1
        return record

    __call__ = step

    def state_dict(self) -> dict[str, Any]:
        """The call count, the warm start and the history (records as dicts)."""
        return {"calls": self.calls, "vector": self.vector, "count": self._count,
                "history": [asdict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the warm start moved to the model's device).
        A state that is not one (a key missing or extra, a vector that is not a finite non-zero
        flat float tensor of ``count`` entries, a record with other fields or values) is refused
        with a ValueError naming the key, before anything is changed: a bad vector was taken and
        failed every later measurement ("init must be finite and non-zero")."""
        owner = "SharpnessTracker.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{owner}: the state must be a dict as state_dict() returns, got "
                             f"{type(state_dict).__name__}")
        keys = {"calls", "vector", "count", "history"}
        missing, extra = sorted(keys - set(state_dict)), sorted(map(str, set(state_dict) - keys))
        if missing or extra:
            raise ValueError(f"{owner}: the state " + ("lacks " + str(missing) if missing else "")
                             + (" and " if missing and extra else "") + ("has unknown keys " + str(extra) if extra else ""))
        calls = check_integer(owner, "calls", state_dict["calls"], low=0)
        count = check_integer(owner, "count", state_dict["count"], low=1, optional=True)
        vector = state_dict["vector"]
        if vector is not None:
            if not (isinstance(vector, torch.Tensor) and vector.dim() == 1 and vector.is_floating_point()
                    and count == vector.numel() and bool(torch.isfinite(vector).all()) and bool(vector.any())):
                shown = (f"a {vector.dtype} tensor of shape {tuple(vector.shape)}" if isinstance(vector, torch.Tensor)
                         else type(vector).__name__)
                raise ValueError(f"{owner}: vector must be None or a finite, non-zero 1-D float tensor of count "
                                 f"({count}) entries; got {shown}")
            device = next((p.device for p in self.model.parameters()), vector.device)
            vector = vector.to(device)
        history = state_dict["history"]
        if not isinstance(history, (list, tuple)):
            raise ValueError(f"{owner}: history must be a list of records (dicts), got {type(history).__name__}")
        records = [_record_from(owner, i, r) for i, r in enumerate(history)]
        self.calls, self.vector, self._count, self.history = calls, vector, count, records
