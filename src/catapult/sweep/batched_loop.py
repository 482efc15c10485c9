"""The one training loop of both batched engines, over a small "stack" interface.

A group of sweep cells (one :func:`~catapult.sweep.grouping.group_key`) trains as one stack of
``N`` members; :func:`train_group` runs :func:`catapult.engine.run`'s step semantics for every
member at once (set-up, lambda_0, lr targets, optimizers and warmups, then per step: lr, loss,
divergence, persistent warmup, sharpness, test, records, update) and yields each member's
result as it finishes or diverges. What differs between the engines is only how the stacked
model computes, behind :class:`Stack`:

* the hand-derived MLP kernels (:class:`catapult.sweep.ensemble_run.KernelStack`), which can fuse
  the optimizer update into the gradient pass (``fuses``);
* the torch.func engine for any model (:class:`catapult.sweep.batched.FuncStack`).

Both update through one :class:`~catapult.sweep.batched_optim.StackedOptimizer`, i.e. the pure
rules of :mod:`catapult.optim.rules`. Members never mix: dropping one (``keep``) changes
nothing in the others.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from catapult import config as cfg
from catapult.curvature.certify import float32_certified, rounding_reach
from catapult.engine.records import SHARPNESS_CONVERGED_COLUMN, vocabulary_record
from catapult.engine.sharpness_rule import STEP_KIND_COLUMN, step_kind
from catapult.engine.step import NON_FINITE_TEST_LOSS, diverged, failure_of, new_row, output_collapsed
from catapult.sweep.batched_optim import StackedOptimizer
from catapult.sweep.executors import Cell, CellResult, worker_name
from catapult.sweep.member import Member

__all__ = ["Stack", "Group", "open_group", "sharpness_kind", "train_group", "threshold_copy", "certified_members"]


class Stack(Protocol):
    """The stacked members of one group, as the loop drives them. Rows follow the loop's
    member order; ``rows`` arguments index the current rows."""

    n_params: int
    names: list[str]                    # parameter names, the order of flat vectors
    fuses: bool                         # loss_grads can apply the update itself (lrs given)
    opt: StackedOptimizer | None        # set by the loop once the members' optimizers exist

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor, need_grads: bool,
                   lrs: Sequence[float] | None = None) -> tuple[torch.Tensor, list[float], Any]:
        """``(losses [N], accuracies, grads)`` on the batch; with ``lrs`` (only when ``fuses``)
        the update at those lrs is applied during the pass and ``grads`` is ``None``."""

    def step(self, grads: Any, lrs: Sequence[float]) -> None:
        """One optimizer update of every row from ``grads`` (as :meth:`loss_grads` returned)."""

    def sharpness(self, rows: list[int], x: torch.Tensor, y: torch.Tensor, inits: torch.Tensor, *,
                  kind: str = "hessian", grads: Any = None, lrs: Sequence[float] | None = None) -> list:
        """Top eigenpairs (``EigenEstimate``) of members ``rows`` on the batch from ``inits``, of
        ``kind``: ``hessian``, ``preconditioned`` or ``lr_scaled`` (one fixed kind per call)."""

    def evaluate(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """``[(loss, accuracy)]`` of members ``rows`` on a test set."""

    def keep(self, rows: list[int]) -> None:
        """Keep rows ``rows`` only (parameters, masks, optimizer state), in that order."""

    def materialize(self, row: int) -> None:
        """Load member ``row``'s own module and torch optimizer with its stacked state."""

    def outputs(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network outputs ``[len(rows), batch, ...]`` of members ``rows`` on ``x`` (for the
        collapse rule, :func:`catapult.engine.step.output_collapsed`)."""

    def finite_rows(self) -> list[bool]:
        """Per current row: whether every parameter entry is finite
        (:func:`catapult.engine.step.rows_finite`; the divergence rule's weights half)."""


@dataclass
class Group:
    """A group's shared set-up: configs, device, dtype, data, batch stream, members, models."""

    cells: Sequence[Cell]
    configs: list[dict]
    device: torch.device
    dtype: torch.dtype
    data: Any
    batches: Any
    loss_fn: Callable
    kind: str
    members: list[Member]
    models: list[torch.nn.Module] | None
    worker: str | None
    started: float

    @property
    def config(self) -> dict:
        return self.configs[0]


def sharpness_kind(config: dict, model: torch.nn.Module) -> str:
    """The config's sharpness kind with ``auto`` resolved as ``run`` resolves it (``model``: a
    member's; the members of a group share the model keys, so their lr multipliers)."""
    from catapult.engine.sharpness_rule import resolve_kind

    return resolve_kind(config, model)


def open_group(cells: Sequence[Cell], data: Any = None) -> Group:
    """Validate ``cells``, load the data (``data``: the group's :func:`catapult.engine.load_data`
    result, if the caller has it) and build every member's model as ``run`` builds it."""
    from catapult import engine
    from catapult.losses import get_loss

    started = time.perf_counter()
    configs = [cfg.validate(c.config) for c in cells]
    c0 = configs[0]
    device = engine.resolve_device(c0["device"])
    dtype = getattr(torch, c0["dtype"])
    data = engine.load_data_once(c0, data, device, dtype)
    batches = engine.batch_stream(c0, data)   # the run's batch order and data.augment
    members, models = [], []
    for cell, config in zip(cells, configs):
        members.append(Member.of(cell, config))
        model = engine.build_model(config, data.in_features, data.num_classes, device, dtype)
        if not models:  # the members share the model keys: one check (a user's model with too few outputs)
            engine.check_labels(config, model, data)
        model.train()
        models.append(model)
    return Group(cells, configs, device, dtype, data, batches, get_loss(c0["loss"]), sharpness_kind(c0, models[0]),
                 members, models, worker_name(), started)


def certified_members(ests: list, d: torch.Tensor, gradient: torch.Tensor, tols: Sequence[float],
                      product: Callable[[list[int], torch.Tensor], torch.Tensor]) -> list:
    """The members' pre-conditioned solves ``ests`` (rows of ``d = P^-1/2`` and of the flat ``gradient``
    ``P`` came from, ``[len(ests), P]``) ended as :func:`catapult.preconditioned_sharpness` ends a float32
    one (:func:`catapult.curvature.certify.float32_certified`: the rounding's reach along each vector, and
    where it exceeds the member's tol, the member's float64 residual): ``product(positions, Y)`` applies
    the float64 operators of members ``positions`` (indices into ``ests``) to the rows of ``Y``. It is
    asked for at most half of the members at a time (at least one), so that the float64 graph stays
    within the float32 solve's. Solves in another dtype are returned as they are.

    >>> from catapult.curvature import EigenEstimate
    >>> A = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    >>> ests = [EigenEstimate(4.001, torch.tensor([1.0, 0.05]), 3, True, 1e-7, 1e-7)]
    >>> d = torch.tensor([[1.0, 1e3]])   # P = (1, 1e-6): a reach of 2.4e-3 > tol, so the float64 residual
    >>> out = certified_members(ests, d, torch.ones(1, 2), [1e-3], lambda positions, Y: Y @ A)
    >>> round(out[0].error_bound, 4), out[0].converged
    (0.0375, False)
    """
    if d.dtype != torch.float32:
        return ests
    reaches = [rounding_reach(d[i], est.vector, gradient[i]) for i, est in enumerate(ests)]
    part = max(1, len(ests) // 2)

    def in_parts(positions: list[int], Y: torch.Tensor) -> torch.Tensor:
        return torch.cat([product(positions[s:s + part], Y[s:s + part]) for s in range(0, len(positions), part)])

    return float32_certified(ests, reaches, tols, None if d.device.type == "mps" else in_parts)


def threshold_copy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A one-parameter copy of ``optimizer``'s first group: enough for
    :func:`catapult.engine.threshold`, without holding the member's model."""
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    return type(optimizer)([dict(group, params=[torch.zeros(1, requires_grad=True)])])


def _start(group: Group, stack: Stack, keep_models: bool) -> list[int]:
    """lambda_0, lr targets, optimizers and warmups (as ``run``); returns the failed rows."""
    from catapult import engine

    members = group.members
    x0, y0 = group.batches.batch(0)
    # lambda_0 averaged over batches 0 .. k-1 (eval.lambda0_batches), as Run.lambda_0
    lam_batches = engine.lambda0_batches(group.data, group.config, engine.seeds(group.config["seed"])[1])
    Member.measure_lambda0(members, stack.n_params, group.device, group.dtype,
                           lambda rows, inits: stack.sharpness(rows, x0, y0, inits),
                           solve_on=lambda t: (lambda rows, inits: stack.sharpness(rows, *lam_batches[t], inits)))
    failed = []
    for i, (mb, model) in enumerate(zip(members, group.models)):
        if not mb.resolve_lr_target():
            failed.append(i)
        mb.optimizer = engine.build_optimizer(mb.config, model, mb.lr_trgt)
        mb.lr_mult0 = float(mb.optimizer.param_groups[0].get("lr_mult", 1.0))
        mb.vocabulary = vocabulary_record(model)
        if mb.status != "failed":  # catapult: the step-0 search on the member's own model
            mb.warmup = engine.build_warmup(mb.config, mb.lr_trgt, model, group.loss_fn, (x0, y0), mb.optimizer)
    stack.opt = StackedOptimizer(group.config["optimizer"]["name"], [mb.optimizer for mb in members],
                                 group.models, stack.names)
    if not keep_models:
        stack.opt.forget_members()
        for mb in members:
            mb.optimizer = threshold_copy(mb.optimizer)
    group.models = None
    return failed


def train_group(group: Group, stack: Stack, *, keep_models: bool = True) -> Iterator[tuple[int, CellResult]]:
    """Train ``group`` on ``stack``; yields ``(cell_id, CellResult)`` as each member finishes
    or diverges (``engine.run``'s steps, every member at once). ``keep_models=False`` lets the
    members' own modules go once their optimizers have been read (the stack then never
    needs them: no persistent warmup, no GI-Adam ``v0="random"``)."""
    kind = group.kind
    failed = _start(group, stack, keep_models)

    def result_of(mb: Member, now: float) -> CellResult:
        return mb.result(n_params=stack.n_params, device=group.device, sharpness_kind=kind,
                         wall_time=(now - group.started) / len(group.cells), worker=group.worker)

    for i in failed:
        yield group.members[i].cell.id, group.members[i].failed_result(group.worker)
    alive_rows = [i for i in range(len(group.members)) if i not in set(failed)]
    active = [group.members[i] for i in alive_rows]
    stack.keep(alive_rows)
    x_test, y_test = group.data.x_test, group.data.y_test

    t = 0
    while active:
        x, y = group.batches.batch(t)
        lrs = [float(mb.warmup.schedule(t)) for mb in active]
        # the row as the members' torch optimizers count update t + 1 (a float32 count stops at 2**24), for
        # RAdam's row threshold and kind: the members' own optimizers hold no state (the stack updates)
        row_t = stack.opt.torch_step(t + 1) - 1
        # fused step: when no member measures anything at t (sharpness, test, final step), the
        # stack may apply the update during the gradient pass (a member that diverges at t is
        # updated too, and dropped below, as with the separate update)
        fused = stack.fuses and all(t < mb.steps and not mb.sharpness_at(t) and not mb.test_at(t) for mb in active)
        # theta_t (after update t - 1) finite, per member: read before a fused pass updates it, at
        # the steps where the member evaluates its test set, as run reads it (engine.loop)
        checks = [t > 0 and mb.test_at(t) for mb in active]
        weights_ok = [True] * len(active)
        if any(checks):
            weights_ok = [ok or not check for ok, check in zip(stack.finite_rows(), checks)]
        losses, accs, grads = stack.loss_grads(x, y, any(t < mb.steps for mb in active), lrs if fused else None)
        loss_list = losses.tolist()
        rows, alive, gone = [], [], []
        for r, (mb, lr_t) in enumerate(zip(active, lrs)):
            row = new_row(t, lr_t, mb.threshold_at(lr_t, row_t))
            loss_t = float(loss_list[r])
            row["train_loss"], row["train_accuracy"] = loss_t, accs[r]
            rows.append(row)
            if t == 0:
                mb.loss_0 = loss_t
            if diverged(loss_t, mb.loss_0, mb.divergence_factor) or not weights_ok[r]:
                mb.status, mb.diverged_at, mb.failure = "diverged", t, failure_of(loss_t, weights_ok[r])
                mb.metrics.append(row)
                gone.append(r)
            else:
                alive.append(r)
        del losses

        # persistent warmup (Alg. 3): this step's lr, on the member's own module when it may search
        for r in alive:
            pcw = active[r].warmup.persistent
            if pcw is None or t >= active[r].steps:
                continue
            if not pcw.done:
                stack.materialize(r)
            lrs[r] = float(pcw.step((x, y), loss=rows[r]["train_loss"]))
            rows[r]["lr"] = lrs[r]
            rows[r]["threshold"] = active[r].threshold_at(lrs[r], row_t)

        # sharpness, of each member's kind at t (RAdam: hessian until rectified); the lambda_0
        # estimate stands for t = 0 with the Hessian kind
        measured, kinds = {}, {}
        todo: dict[str, list[int]] = {}
        for r in alive:
            mb = active[r]
            if not mb.sharpness_at(t):
                continue
            kinds[r] = step_kind(kind, mb.optimizer, row_t)
            if t == 0 and kinds[r] == "hessian" and mb.lambda0_estimate is not None:
                measured[r] = mb.lambda0_estimate
            else:
                todo.setdefault(kinds[r], []).append(r)
        for kind_t, todo_rows in todo.items():
            inits = torch.stack([active[r].warm for r in todo_rows])
            ests = stack.sharpness(todo_rows, x, y, inits, kind=kind_t, grads=grads, lrs=lrs)
            for r, est in zip(todo_rows, ests):
                measured[r] = est
                active[r].matvecs_total += int(est.matvecs)
                active[r].unconverged += int(not est.converged)
                active[r].below_budget += int(not est.converged and est.matvecs < active[r].max_iter)
        for r, est in sorted(measured.items()):
            mb = active[r]
            # eval.sharpness_start: cold starts every measurement from the member's own vector (as run)
            mb.warm = (est.vector if mb.config["eval"]["sharpness_start"] == "warm"
                       else mb.start_vector(est.vector.numel(), est.vector.device, est.vector.dtype))
            rows[r]["sharpness"] = float(est.value)
            rows[r]["sharpness_matvecs"] = int(est.matvecs)
            rows[r][SHARPNESS_CONVERGED_COLUMN] = int(bool(est.converged))  # as run marks it
            if kinds[r] != kind:  # a kind that changes during the run: say which (as run does)
                rows[r][STEP_KIND_COLUMN] = kinds[r]
            mb.measurements += 1

        test_rows = [r for r in alive if active[r].test_at(t)]
        if test_rows:
            for r, (tl, ta) in zip(test_rows, stack.evaluate(test_rows, x_test, y_test)):
                rows[r]["test_loss"], rows[r]["test_accuracy"] = tl, ta
            # a non-finite test loss ends the member after its row (as run)
            for r in [r for r in test_rows if not math.isfinite(rows[r]["test_loss"])]:
                mb = active[r]
                mb.status, mb.diverged_at, mb.failure = "diverged", t, NON_FINITE_TEST_LOSS
                mb.metrics.append(rows[r])
                alive.remove(r)
                gone.append(r)

        finished = []
        for r in alive:
            active[r].metrics.append(rows[r])
            if t == active[r].steps:
                finished.append(r)
        if finished:  # the collapse rule on the final batch, as run applies it
            for r, out in zip(finished, stack.outputs(finished, x, y)):
                active[r].collapsed = output_collapsed(out)
        now = time.perf_counter()
        for r in sorted(gone + finished):
            yield active[r].cell.id, result_of(active[r], now)
        stay = [r for r in alive if r not in set(finished)]
        if stay and not fused:
            stack.step(grads, lrs)
        del grads
        stack.keep(stay)
        active = [active[r] for r in stay]
        t += 1
