"""A batched engine for any model the local engine trains, on :mod:`torch.func`.

:func:`run_group` trains sweep cells that differ only in per-member keys
(:data:`catapult.sweep.ensemble.PER_MEMBER_KEYS`; cells are grouped by
:func:`catapult.sweep.ensemble.group_key`) as one vectorised model, and yields each cell's
result as it finishes or diverges. Unlike the ensemble's hand-derived MLP kernels it makes no
assumption about the architecture: every member's model is built by
:func:`catapult.engine.build_model` (its own init seed and masks: the same initial weights as a
local run), the members' parameters and buffers are stacked (:class:`StackedModel`), and the
forward pass, loss, gradient (``vmap(grad)``) and Hessian-vector products (double backprop of
the sum of the members' losses, block-diagonal over members) run under ``vmap`` of
``functional_call``. MLPs and GPTs, every parametrization, sparse masks, MSE and cross-entropy.

Exactness contract: each member reproduces :func:`catapult.engine.run` for its cell -- the step
semantics of that module's docstring -- up to float rounding (batched reductions round
differently; nothing else differs):

* data: one shared :class:`catapult.engine.BatchStream` (members of a group have one data seed,
  or train full batch);
* lambda_0 and sharpness: :func:`catapult.curvature.batched_lanczos` (the lockstep
  iteration of the local Lanczos, per-member stopping) from each member's ``randn(P,
  sharpness_seed)`` and then its previous eigenvector; the lambda_0 estimate is reused at
  ``t = 0`` for the Hessian kind; matvec counts per member as ``run`` counts them. The kind is
  :mod:`catapult.engine.sharpness_rule`'s, per member and row: Adam-family members with
  ``sharpness_kind: auto`` (or ``preconditioned``), and RAdam once rectified, measure
  ``P^-1/2 (H + wd_L2) P^-1/2`` with the pre-conditioner of their next update; SGD members
  whose groups' lrs differ (``auto``, or ``lr_scaled``) ``M^1/2 H M^1/2``; a float32
  pre-conditioned solve ends as the local one does (the rounding's reach along its vector, and
  beyond ``tol`` its residual in float64, per member:
  :func:`~catapult.sweep.batched_loop.certified_members`), so ``sharpness_converged`` is the mark
  the local engine's rule gives the member's own vector;
* the optimizer's hyper-parameters are read from each member's own torch optimizer
  (:func:`catapult.engine.build_optimizer`, per-group ``lr_mult``) and its rule
  (:mod:`catapult.optim.rules`: sgd with momentum/nesterov/weight decay, adam, adamw, radam,
  gi-adam with every ``v0`` option) updates the stacked tensors
  (:class:`catapult.sweep.batched_optim.StackedOptimizer`); schedules are each member's own
  :func:`catapult.engine.build_warmup` rule;
* warmups: ``linear``; ``catapult`` (the step-0 critical-lr search runs on each member's own
  model and optimizer before stacking: at ``theta_0`` with empty state, exactly as ``run``);
  ``persistent`` (each member's :class:`~catapult.schedules.PersistentCatapultWarmup` is called
  at every step; until it is done, the member's own model and torch optimizer are first loaded
  with its stacked parameters and state, so its searches see what ``run``'s see);
* divergence: the member's row ``t`` is logged, its result yielded at once, and its rows are
  dropped from every stacked tensor; no arithmetic mixes members, so the others do not change;
* rows, thresholds (:func:`catapult.engine.threshold` of the member's optimizer) and the summary
  (:func:`catapult.engine.summarize`, :func:`catapult.engine.warmup_summary`) are built as
  ``run`` builds them; ``wall_time_s`` is the group's wall time divided by its members.

``eval.sharpness_hvp`` and ``eval.sharpness_chunk_size`` are honoured as the local engine
honours them (:class:`~catapult.sweep.batched_model.StackedHessian`: double backprop with one
graph, or forward-over-reverse under ``vmap``, which also stands in for ``compiled``: exact
products, equal to the local engine's up to rounding; ``finite_difference`` and
``eval.sharpness_memory: lean`` run locally, since their values differ from exact products'
by more than rounding; micro-batches of
``chunk_size`` samples summed
with weights ``|B_k| / |B|``, one chunk's graph alive at a time). ``eval.sharpness_dtype`` is
honoured (parameters, buffers and float inputs cast for the
Hessian). Attention runs on the math kernel (the function the fused kernels compute).

Grouping, chunking and the local fallback (cells :func:`batched_unsupported_reason` refuses,
chunks whose batched run raises) are the executor's: :class:`catapult.sweep.ensemble.EnsembleExecutor`
sends a group here when the hand-derived MLP kernels do not reproduce it (or ``kernels=False``);
:func:`catapult.sweep.ensemble.run_batched` is the same with every batchable cell here.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch

from catapult.curvature import batched_lanczos
from catapult.curvature.start import mixed_starts
from catapult.engine.sharpness_rule import SOLVE_SEED
from catapult.engine.step import rows_finite
from catapult.sweep.batched_loop import certified_members, open_group, train_group
from catapult.sweep.batched_model import StackedModel
from catapult.sweep.batched_optim import SUPPORTED as OPTIMIZERS
from catapult.sweep.batched_optim import StackedOptimizer
from catapult.sweep.executors import Cell, CellResult
from catapult.sweep.grouping import group_key

__all__ = ["batched_unsupported_reason", "run_group", "FuncStack"]

_LOSSES = ("mse", "cross_entropy")
_WARMUPS = ("linear", "catapult", "persistent")


def batched_unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """Why :func:`run_batched` cannot reproduce ``config`` (a validated run config), or ``None``."""
    from catapult import engine

    if config["model"]["name"] not in engine.MODELS:
        return f"model.name={config['model']['name']!r} has no builder"
    if config["optimizer"]["name"] not in OPTIMIZERS:
        return f"optimizer.name={config['optimizer']['name']!r} (batched: {', '.join(OPTIMIZERS)})"
    if config["schedule"]["warmup"] not in _WARMUPS:
        return f"schedule.warmup={config['schedule']['warmup']!r} (batched: {', '.join(_WARMUPS)})"
    if config["loss"] not in _LOSSES:
        return f"loss={config['loss']!r} (batched: {', '.join(_LOSSES)})"
    if config["model"].get("sparsity", {}).get("method", "static") != "static":  # masks change per member
        return f"model.sparsity.method={config['model']['sparsity']['method']!r} (batched: static masks only)"
    evaluation = config["eval"]
    if evaluation.get("sharpness_hvp") == "finite_difference":  # its truncation is part of its value
        return "eval.sharpness_hvp='finite_difference' (batched: exact products only)"
    if evaluation.get("sharpness_memory", "fast") != "fast":  # lean's solver restarts otherwise
        return f"eval.sharpness_memory={evaluation['sharpness_memory']!r} (batched: 'fast' only)"
    for key in ("spectrum_top_k", "trace_matvecs"):  # the members' spectra are not computed here
        if evaluation.get(key):
            return f"eval.{key}={evaluation[key]} (batched: the top eigenvalue only)"
    return None


class FuncStack:
    """A :class:`StackedModel` and its :class:`StackedOptimizer` behind the stack interface of
    :mod:`catapult.sweep.batched_loop` (the torch.func engine)."""

    fuses = False

    def __init__(self, models: Sequence[torch.nn.Module], loss_fn, members: Sequence, *,
                 sharpness_dtype: torch.dtype | None, max_basis: int, hvp: str = "auto",
                 chunk_size: int | None = None, pad_lone: bool = True):
        self.model = StackedModel(models, loss_fn, pad_lone=pad_lone)
        self.members = list(members)
        self.names = self.model.names
        self.n_params = self.model.numel
        self.sharpness_dtype = sharpness_dtype
        self.max_basis = max_basis
        self.hvp, self.chunk_size = hvp, chunk_size
        self.opt: StackedOptimizer | None = None

    def loss_grads(self, x, y, need_grads: bool, lrs=None):
        return self.model.loss_and_grads(x, y, need_grads)

    def step(self, grads: dict[str, torch.Tensor], lrs: Sequence[float]) -> None:
        self.opt.step(self.model.params, grads, lrs)

    def sharpness(self, rows: list[int], x, y, inits: torch.Tensor, *, kind: str = "hessian",
                  grads: Any = None, lrs: Sequence[float] | None = None) -> list:
        """Top eigenpairs of ``kind`` (hessian, preconditioned, lr_scaled) for members ``rows``
        on ``(x, y)`` (batched Lanczos from ``inits``); the pre-conditioner comes from the
        gradients of the Hessian's own pass (its dtype), lr_scaled's ``M^1/2`` from the
        optimizer's ``lr_mult`` (:meth:`~catapult.sweep.batched_optim.StackedOptimizer.lr_scale`)."""
        op = self.model.hessian(rows, x, y, self.sharpness_dtype, hvp=self.hvp, chunk_size=self.chunk_size)
        tol = [self.members[r].tol for r in rows]
        starts = mixed_starts(inits.to(op.dtype), SOLVE_SEED, tol)  # each warm start as local's
        max_iter = [self.members[r].max_iter for r in rows]
        if kind not in ("preconditioned", "lr_scaled"):
            return batched_lanczos(op.matvec, starts, tol=tol, max_iter=max_iter, max_basis=self.max_basis)
        if kind == "lr_scaled":
            d, l2 = self.opt.lr_scale(rows, self.model.params, op.dtype)
        else:
            d, l2 = self.opt.preconditioner(rows, self.model.params, self.model.split(op.gradient))
        ests = batched_lanczos(_preconditioned(op, d, l2), starts, tol=tol, max_iter=max_iter,
                               max_basis=self.max_basis)
        if kind == "lr_scaled":
            return ests
        gradient = op.gradient
        del op   # (the float32 graph, before a float64 one)

        def float64_product(positions: list[int], Y: torch.Tensor) -> torch.Tensor:
            sub = [rows[i] for i in positions]
            op64 = self.model.hessian(sub, x, y, torch.float64, hvp=self.hvp, chunk_size=self.chunk_size)
            d64, l2_64 = self.opt.preconditioner(sub, self.model.params, self.model.split(op64.gradient))
            return _preconditioned(op64, d64, l2_64)(range(len(sub)), Y)

        # the local engine's end of a float32 solve: the rounding's reach, and a float64 check beyond tol
        return certified_members(ests, d, gradient, tol, float64_product)

    def evaluate(self, rows, x, y):
        return self.model.evaluate(rows, x, y)

    def keep(self, rows: list[int]) -> None:
        self.members = [self.members[r] for r in rows]
        self.model.keep(rows)
        if self.opt is not None:
            self.opt.keep(rows)

    def materialize(self, row: int) -> None:
        self.opt.materialize(row, self.model.params)

    def outputs(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.outputs(rows, x, y)

    def finite_rows(self) -> list[bool]:
        return rows_finite(list(self.model.params.values()))


def _preconditioned(op, d: torch.Tensor, l2: torch.Tensor | None):
    """``(active, U) -> d * H(d * U) + l2 * U`` of ``op``'s members ``active`` (rows of ``d`` and ``l2``)."""
    def matvec(active, U):
        sel = torch.as_tensor(list(active), dtype=torch.long, device=U.device)
        ds = d.index_select(0, sel)
        out = op.matvec(active, ds * U) * ds
        if l2 is not None:
            out = out + l2.index_select(0, sel) * U
        return out
    return matvec


def run_group(cells: Sequence[Cell], *, data: Any = None, pad_lone: bool = True) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` (one group: equal :func:`~catapult.sweep.ensemble.group_key`) together
    as one :class:`FuncStack` in the batched loop (:func:`catapult.sweep.batched_loop.train_group`);
    yields ``(cell_id, CellResult)`` as each member finishes or diverges (module docstring).
    ``pad_lone``: a lone member of a convolutional model computes beside a copy of itself
    (:class:`~catapult.sweep.batched_model.StackedModel`), so it rounds as in a chunk of
    more; the executor passes ``False`` where its memory budget or ``max_members`` holds one
    member per chunk."""
    group = open_group(cells, data)
    if len({group_key(c) for c in group.configs}) > 1:
        raise ValueError("run_group: the cells differ beyond the per-member keys (see group_key)")
    ev0 = group.config["eval"]
    sdtype = getattr(torch, ev0["sharpness_dtype"]) if ev0["sharpness_dtype"] else None
    stack = FuncStack(group.models, group.loss_fn, group.members, sharpness_dtype=sdtype,
                      max_basis=ev0["sharpness_max_basis"], hvp=ev0["sharpness_hvp"],
                      chunk_size=ev0["sharpness_chunk_size"], pad_lone=pad_lone)
    yield from train_group(group, stack)
