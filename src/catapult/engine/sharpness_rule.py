"""Which sharpness a run measures and which instability threshold it is compared with, step by
step: ``eval.sharpness_kind`` resolved (``auto``), the measurement itself, and the threshold
of each row. Both engines (:mod:`catapult.engine.loop` and the batched one in
:mod:`catapult.sweep`) read these, so a cell's record does not depend on its engine.

``eval.sharpness_kind: auto`` (:func:`resolve_kind`):

* Adam, AdamW, GI-Adam (:data:`ADAPTIVE`): ``preconditioned``, ``lambda_max(P^-1 H)`` of the
  pre-conditioner the next update applies, against ``(2 + 2 b1) / ((1 - b1) lr)``;
* RAdam: :data:`RADAM_KIND`, i.e. per row (:func:`step_kind`) while the update about to be applied
  is un-rectified (``rho_t <= 5``: EMA-momentum SGD) SGD's kind below, the pre-conditioned one
  afterwards, each against :func:`catapult.optim.thresholds.radam_threshold`; where the groups'
  lrs differ (muP with ``base_width``, SμPar) :data:`RADAM_LR_SCALED_KIND`: ``lr_scaled`` rows
  until rectified (``hessian`` rows measured ``lambda_max(H)`` there, not the step's operator);
* SGD whose param groups' learning rates differ (the muP table form, SμPar:
  ``lr_mult`` not all equal): ``lr_scaled``, ``lambda_max(M^1/2 H M^1/2)`` with
  ``M = diag(lr_i / lr_0)``, the sharpness that ``2 / lr_0`` of the first group bounds;
* SGD with one learning rate for every group: ``hessian`` (``lambda_max(H)``).

SGD's choice between the two (and RAdam's before rectification) is
:func:`catapult.optim.thresholds.unpreconditioned_kind`, the rule :class:`catapult.SharpnessTracker`
takes too.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from catapult.config.errors import ConfigError
from catapult.engine.records import EIG_CONVERGED_COLUMN, RADAM_KIND, RADAM_KINDS, RADAM_LR_SCALED_KIND, STEP_KIND_COLUMN
from catapult.optim import registry

__all__ = ["ADAPTIVE", "RADAM_KIND", "RADAM_LR_SCALED_KIND", "SOLVE_SEED", "solver_options", "curvature_options", "spectrum_estimates", "top_k_basis", "check_spectrum_cadence", "SharpnessRule", "sharpness_rule", "resolve_kind",
           "group_lrs_differ", "step_kind", "threshold", "STEP_KIND_COLUMN"]

#: Optimizers whose sharpness is the pre-conditioned one (``eval.sharpness_kind: auto``):
#: ``registry.preconditioned_names()``. RAdam is not there: it switches (:data:`RADAM_KIND`).
ADAPTIVE = set(registry.preconditioned_names())

# RADAM_KIND, RADAM_LR_SCALED_KIND (``auto``'s kinds for RAdam) and STEP_KIND_COLUMN (the column naming each row's kind)
# are the records' (catapult.engine.records), which read a metrics file without torch


#: The ``seed`` of the engine's sharpness solves (the random part of their warm starts,
#: :func:`~catapult.curvature.start.mixed_start`; a dropout mask), the same in every run so that the
#: batched engines draw what ``local`` draws. The first start is the run's own (its sharpness seed).
SOLVE_SEED = 0


def solver_options(config: Mapping[str, Any]) -> dict:
    """Keyword arguments of :func:`catapult.sharpness` from a validated config's ``eval.sharpness_*``
    keys (tol, max_iter, hvp, dtype, max_basis, chunk_size) and :data:`SOLVE_SEED`."""
    ev = config["eval"]
    memory = ev.get("sharpness_memory", "fast")
    # lean's sharpness keeps no Krylov basis (catapult.curvature.lean.lean_top_eigenpair): the
    # basis size does not apply to it
    max_basis = None if memory == "lean" else ev["sharpness_max_basis"]
    return dict(tol=ev["sharpness_tol"], max_iter=ev["sharpness_max_iter"], hvp=ev["sharpness_hvp"],
                dtype=getattr(torch, ev["sharpness_dtype"]) if ev["sharpness_dtype"] else None,
                max_basis=max_basis, chunk_size=ev["sharpness_chunk_size"], memory=memory, seed=SOLVE_SEED)


def curvature_options(config: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None,
                      curvature: str = "hessian") -> dict:
    """Keyword arguments every spectrum function (:func:`catapult.top_eigenpairs`,
    :func:`catapult.hessian_trace`, :func:`catapult.spectral_density`) takes from a validated
    config: its ``eval.sharpness_*`` dtype, HVP mode and micro-batch size, the ``curvature``, the
    random probes' ``seed`` (the run's sharpness seed, so another ``seed`` draws other probes),
    and with an ``optimizer`` the pre-conditioned (Adam family) or lr-scaled (SGD) operator, each
    group's lr folded in as the engine measures it."""
    from catapult.engine.seeds import seeds

    kwargs = solver_options(config)
    return dict(dtype=kwargs["dtype"], hvp=kwargs["hvp"], chunk_size=kwargs["chunk_size"], curvature=curvature,
                optimizer=optimizer, scale_by_group_lr=optimizer is not None, seed=seeds(config["seed"])[2])


def spectrum_estimates(config: Mapping[str, Any], model: nn.Module, loss_fn, batch, *, top_k: int,
                       trace_matvecs: int, optimizer: torch.optim.Optimizer | None = None,
                       curvature: str = "hessian", distributed: bool = False):
    """``(eigenpairs, trace)`` on ``batch`` with the config's solver settings: the ``top_k``
    largest eigenpairs (:func:`catapult.top_eigenpairs`, to ``eval.sharpness_tol``, with at least
    ``3 k`` products and blocks of ``eval.spectrum_block_size``) and the Hutch++ trace with
    ``trace_matvecs`` products; ``None`` for a count of 0; the top-k solve keeps at most
    :func:`top_k_basis` Krylov vectors (``eval.sharpness_max_basis``, at least ``3 k + block`` or
    the solver's own). Operator as in
    :func:`curvature_options`. The engine's spectrum columns and ``catapult spectrum`` both
    measure this way. ``distributed``: ``batch`` is this rank's shard of a data-parallel run (the
    answers are the union's, on every rank)."""
    from catapult import curvature as curv

    kwargs, common = solver_options(config), curvature_options(config, optimizer, curvature)
    if distributed:
        common["distributed"] = True
    eig = trace = None
    if top_k:
        block = min(int(config["eval"].get("spectrum_block_size", 1)), top_k)
        eig = curv.top_eigenpairs(model, loss_fn, batch, k=top_k, tol=kwargs["tol"],
                                  max_iter=max(kwargs["max_iter"], 3 * top_k), memory=kwargs["memory"],
                                  block_size=block, max_basis=top_k_basis(kwargs["max_basis"], top_k, block),
                                  **common)
    if trace_matvecs:
        trace = float(curv.hessian_trace(model, loss_fn, batch, matvecs=trace_matvecs, **common))
    return eig, trace


def top_k_basis(max_basis: int | None, k: int, block: int) -> int | None:
    """The Krylov vectors a top-``k`` solve (blocks of ``block``) keeps under the config's
    ``eval.sharpness_max_basis`` (``max_basis``; None under ``memory: lean``, which sizes its own,
    with the same floor, :func:`catapult.curvature.top_k.restart_floor`):
    that bound, but at least ``min(3 k + block, own)``, ``own = max(2 k + 10, 32) + block - 1`` the
    solver's own basis (:func:`catapult.top_eigenpairs`), which the engine kept whatever the bound
    before (32 vectors for a top 3 under ``eval.sharpness_max_basis: 10``).

    Why the floor: a basis near ``k`` restarts after every block. On a 160-parameter MLP (float64)
    the top 3 at ``tol=1e-10`` took 570 products in ``2 k + 1`` vectors, 64 in ``3 k + 1``, 33 in
    the solver's own; the top 6, 600 (not converged), 60 and 47; on a 3,466-parameter one
    ``2 k + 1`` cost at most 1.5x, and at ``tol=1e-3`` at most 1.5x on both.

    >>> top_k_basis(20, 3, 1), top_k_basis(10, 3, 1), top_k_basis(10, 6, 1), top_k_basis(20, 18, 1)
    (20, 10, 19, 46)
    >>> top_k_basis(100, 3, 1), top_k_basis(None, 3, 1)
    (100, None)
    """
    if max_basis is None:
        return None
    from catapult.curvature import MEMORY_SETTINGS
    from catapult.curvature.top_k import restart_floor

    return max(int(max_basis), restart_floor(k, block, int(MEMORY_SETTINGS["fast"]["max_basis"])))


def check_spectrum_cadence(config: Mapping[str, Any]) -> None:
    """Raise :class:`~catapult.config.ConfigError` naming ``eval.spectrum_top_k`` /
    ``eval.trace_matvecs`` when a run would log them but never measures: they are taken on the
    sharpness cadence, and ``eval.sharpness_every: 0`` has none (the run wrote empty
    ``eig_*`` / ``hessian_trace`` columns and said nothing). ``catapult spectrum`` reads the same
    keys for its one measurement and does not call this.

    >>> from catapult.config import validate
    >>> check_spectrum_cadence(validate({"eval": {"sharpness_every": 5, "trace_matvecs": 10}}))
    >>> check_spectrum_cadence(validate({"eval": {"sharpness_every": 0, "trace_matvecs": 10}}))
    Traceback (most recent call last):
    ...
    catapult.config.errors.ConfigError: eval.trace_matvecs: is measured on the sharpness cadence, and eval.sharpness_every is 0 (never): set eval.sharpness_every > 0 or remove eval.trace_matvecs (on the command line: eval.trace_matvecs=0)
    """
    ev = config["eval"]
    if ev["sharpness_every"]:
        return
    off = {"spectrum_top_k": "0", "trace_matvecs": "0"}  # their defaults: off
    problems = [(f"eval.{key}", f"is measured on the sharpness cadence, and eval.sharpness_every is 0 (never): "
                                f"set eval.sharpness_every > 0 or remove eval.{key} (on the command line: "
                                f"eval.{key}={off[key]})")
                for key in ("spectrum_top_k", "trace_matvecs") if ev.get(key)]
    if problems:
        raise ConfigError(problems)


def group_lrs_differ(model: nn.Module, optimizer_name: str) -> bool:
    """Whether the param groups :func:`catapult.param_groups` gives ``model`` for the family of
    ``optimizer_name`` (the groups the engine's optimizer gets) have different ``lr_mult``: whether
    a step without a pre-conditioner over them is bounded by the ``lr_scaled`` sharpness
    (:func:`catapult.optim.thresholds.unpreconditioned_kind`, the tracker's rule, on those groups)."""
    from catapult.optim.thresholds import unpreconditioned_kind
    from catapult.parametrize import param_groups

    with warnings.catch_warnings():  # the optimizer's own grouping warns, once
        warnings.simplefilter("ignore")
        groups = param_groups(model, 1.0, optimizer=registry.get(optimizer_name).family)
    if not groups:
        return False
    # the groups as torch's SGD(groups, lr=1.0) would hold them (its defaults: lr 1, no weight decay),
    # read by the rule through param_groups alone; not an SGD, whose constructor imports torch._dynamo
    # (+1.0 CPU s on torch 2.2.2, +1.7 on 2.13: bench/RESULTS.md), which `catapult spectrum` then paid
    # for an optimizer it never builds
    steps = SimpleNamespace(param_groups=[{"lr": 1.0, "weight_decay": 0.0, **g, "params": list(g["params"])}
                                          for g in groups])
    return unpreconditioned_kind(steps, [p for g in groups for p in g["params"]]) == "lr_scaled"


def resolve_kind(config: Mapping[str, Any], model: nn.Module | None) -> str:
    """``eval.sharpness_kind`` with ``auto`` resolved (module docstring); ``model`` (the run's)
    decides SGD's and RAdam's kind: ``lr_scaled`` (RAdam: :data:`RADAM_LR_SCALED_KIND`) when its
    groups' learning rates differ."""
    kind = config["eval"]["sharpness_kind"]
    if kind != "auto":
        return kind
    name = config["optimizer"]["name"]
    if name in ADAPTIVE:
        return "preconditioned"
    if model is None:
        raise ValueError(f"resolve_kind: eval.sharpness_kind auto with {name} needs the run's model")
    differ = group_lrs_differ(model, name)
    if name == "radam":
        return RADAM_LR_SCALED_KIND if differ else RADAM_KIND
    return "lr_scaled" if differ else "hessian"


def step_kind(kind: str, optimizer: torch.optim.Optimizer, t: int) -> str:
    """The kind measured at row ``t`` (before update ``t``, torch's step ``t + 1``): ``kind``,
    or for an RAdam kind (:data:`~catapult.engine.records.RADAM_KINDS`) its un-rectified kind
    (``"hessian"``; ``"lr_scaled"`` for :data:`RADAM_LR_SCALED_KIND`) / ``"preconditioned"`` as
    that update is un-rectified / rectified (``optimizer``'s reference group's ``beta2``, the first that moves,
    :func:`catapult.optim.thresholds.radam_step_kind`)."""
    if kind not in RADAM_KINDS:
        return kind
    from catapult.optim.step_count import counted_step
    from catapult.optim.thresholds import radam_step_kind

    # torch's count of that update (a float32 count stops at 2**24), as threshold() takes it
    step = counted_step(optimizer, t + 1)
    return "preconditioned" if radam_step_kind(optimizer, step) == "preconditioned" else RADAM_KINDS[kind]


def threshold(optimizer: torch.optim.Optimizer, lr: float | None = None, step: int | None = None) -> float:
    """``instability_threshold`` at the reference group's current lr (or ``lr``); ``inf`` at lr 0. The
    reference is :func:`catapult.optim.thresholds.reference_group`, the first group that moves, as
    ``instability_threshold`` takes it (the engine's groups all move: it is their first); RAdam's betas and
    weight decay are that group's too. A fine-tuning optimizer with a frozen body listed first was read at the
    body's lr (SGD body 0.1 before a head at 0.05, momentum 0.9: 38 for the step's 76; a body at lr 0: inf).

    With ``step`` (the row, i.e. before update ``step``) an RAdam optimizer gets its step's own
    threshold, :func:`catapult.optim.thresholds.radam_threshold` at torch's step ``step + 1`` (as torch
    counts it: :func:`~catapult.optim.step_count.counted_step`):
    the momentum-SGD one while un-rectified (the same value as Adam's rule), the Adam rule over
    the rectification ``r_t`` afterwards."""
    from catapult.curvature import instability_threshold
    from catapult.optim.thresholds import reference_group

    group = reference_group(optimizer)   # the first that moves (a body frozen first: not it)
    current = group["lr"] if lr is None else lr
    if not current > 0:
        return math.inf
    if isinstance(optimizer, torch.optim.RAdam):
        from catapult.optim.step_count import counted_step
        from catapult.optim.thresholds import radam_threshold

        # without a step (the summary's threshold at lr_trgt): the un-rectified rule, as before
        # instability_threshold read RAdam's step count, and as the batched engines report. With one:
        # the count torch's update takes (float32: it stops at 2**24, and so does its r_t); a copy without
        # state takes the row as given (the batched engines pass it as their members' torch optimizers count
        # it, StackedOptimizer.torch_step, as their update does)
        return float(radam_threshold(current, group["betas"], 1 if step is None else counted_step(optimizer, step + 1),
                                     weight_decay=group.get("weight_decay", 0.0),
                                     decoupled_weight_decay=group.get("decoupled_weight_decay", False))[1])
    return float(instability_threshold(optimizer, lr=current))


@dataclass(frozen=True)
class SharpnessRule:
    """How a run measures sharpness: ``kind`` is ``"hessian"``, ``"preconditioned"``,
    ``"lr_scaled"``, :data:`RADAM_KIND` or :data:`RADAM_LR_SCALED_KIND`; ``hessian(...)`` and ``measure(...)`` take ``(model,
    loss_fn, batch, optimizer, init)`` and return an :class:`~catapult.curvature.EigenEstimate`;
    ``measure`` is the kind the run reports (``kind=`` one of the fixed kinds overrides it: the
    row's :func:`step_kind`); lambda_0 is always the Hessian's."""

    kind: str
    hessian: Callable
    measure: Callable
    # (model, loss_fn, batch, optimizer[, kind]) -> (row entries, whether the top-k solve converged:
    # None without one, eval.spectrum_top_k 0; the Hutch++ trace spends a fixed budget, no test;
    # whether it stopped unconverged below its product budget)
    spectrum: Callable | None = None

    def kind_at(self, optimizer: torch.optim.Optimizer, t: int) -> str:
        """The kind measured at row ``t`` (:func:`step_kind`)."""
        return step_kind(self.kind, optimizer, t)


def sharpness_rule(config: Mapping[str, Any], model: nn.Module | None = None, *,
                   distributed: bool = False) -> SharpnessRule:
    """The config's :class:`SharpnessRule`, ``auto`` resolved by :func:`resolve_kind` (``model``:
    the run's, for SGD's per-group learning rates).

    ``distributed``: the run is data-parallel inside an initialised process group, and each
    measurement's batch is this rank's shard; the Hessian and pre-conditioned sharpness and the
    spectrum columns are then the union batch's, on every rank (``distributed=True`` of
    :func:`catapult.sharpness`). The lr-scaled kind (and RAdam's before rectification where the
    groups' lrs differ) is not measured across processes: tracking it (``eval.sharpness_every >
    0``) is a ConfigError naming ``eval.sharpness_kind``."""
    from catapult import curvature

    ev = config["eval"]
    kwargs = solver_options(config)
    kind = resolve_kind(config, model)
    if distributed:
        if kind in ("lr_scaled", RADAM_LR_SCALED_KIND) and ev["sharpness_every"] > 0:
            raise ConfigError([("eval.sharpness_kind", "the lr-scaled sharpness (SGD, or RAdam before its "
                                                       "update is rectified, with per-group learning "
                                                       "rates) is not measured across processes; set "
                                                       "eval.sharpness_kind: hessian, or eval.sharpness_every: 0")])
        kwargs["distributed"] = True

    def hessian(model, loss_fn, batch, optimizer, init):
        return curvature.sharpness(model, loss_fn, batch, init=init, **kwargs)

    def preconditioned(model, loss_fn, batch, optimizer, init):
        return curvature.preconditioned_sharpness(model, loss_fn, batch, optimizer, init=init,
                                                  scale_by_group_lr=True, **kwargs)

    def lr_scaled(model, loss_fn, batch, optimizer, init):
        from catapult.optim.thresholds import lr_scaled_sharpness

        lean = {k: v for k, v in kwargs.items() if k != "memory"}
        if lean["max_basis"] is None:  # memory: lean; this solver keeps a basis: lean's cap
            from catapult.curvature import MEMORY_SETTINGS
            lean["max_basis"] = min(ev["sharpness_max_basis"], MEMORY_SETTINGS["lean"]["max_basis"])
        return lr_scaled_sharpness(model, loss_fn, batch, optimizer, init=init, **lean)

    solvers = {"hessian": hessian, "preconditioned": preconditioned, "lr_scaled": lr_scaled}

    def measure(model, loss_fn, batch, optimizer, init, kind: str | None = None):
        return solvers.get(kind or rule_kind, hessian)(model, loss_fn, batch, optimizer, init)

    rule_kind = kind if kind in solvers else "hessian"
    top_k, trace_matvecs = int(ev.get("spectrum_top_k", 0)), int(ev.get("trace_matvecs", 0))

    def spectrum(model, loss_fn, batch, optimizer, kind: str | None = None):
        """eig_1..eig_k and hessian_trace of the operator whose top eigenvalue the row's sharpness
        is: P^-1/2 H P^-1/2 (preconditioned), M^1/2 H M^1/2 (lr_scaled), else H; and whether the
        top-k solve converged (None: none taken), which the run's ``spectrum_unconverged`` counts and
        the row's ``eig_converged`` (1 / 0) says; and whether it stopped short of the tol below its
        product budget (``unconverged_below_budget``)."""
        opt = optimizer if (kind or rule_kind) in ("preconditioned", "lr_scaled") else None
        eig, trace = spectrum_estimates(config, model, loss_fn, batch, top_k=top_k,
                                        trace_matvecs=trace_matvecs, optimizer=opt, distributed=distributed)
        row = {} if eig is None else {f"eig_{i + 1}": float(v) for i, v in enumerate(eig.values)}
        if eig is not None:  # the row's own mark (records.EIG_CONVERGED_COLUMN)
            row[EIG_CONVERGED_COLUMN] = int(bool(eig.converged))
        if trace is not None:
            row["hessian_trace"] = trace
        if eig is None:
            return row, None, False
        # its budget, as spectrum_estimates sets it: short of tol below it, more products would not help
        return row, bool(eig.converged), not eig.converged and eig.matvecs < max(ev["sharpness_max_iter"], 3 * top_k)

    return SharpnessRule(kind, hessian, measure, spectrum if (top_k or trace_matvecs) else None)
