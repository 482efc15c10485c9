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
  ``t = 0`` for the Hessian kind; matvec counts per member as ``run`` counts them. Adam-family
  members with ``sharpness_kind: auto`` (or ``preconditioned``) measure
  ``P^-1/2 (H + wd_L2) P^-1/2`` with the pre-conditioner of their next update;
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

Settings that change only how the local engine computes the same numbers are accepted and
computed this engine's way: ``eval.sharpness_hvp`` (products by double backprop whatever the
mode) and ``eval.sharpness_chunk_size`` (no micro-batches: the HVP graph of the measuring
members on the whole batch is alive during a measurement; bound memory with ``max_members``).
``eval.sharpness_dtype`` is honoured (parameters, buffers and float inputs cast for the
Hessian). Attention runs on the math kernel (the function the fused kernels compute).

Grouping, chunking and the local fallback (cells :func:`batched_unsupported_reason` refuses,
chunks whose batched run raises) are the executor's: :class:`catapult.sweep.ensemble.EnsembleExecutor`
sends a group here when the hand-derived MLP kernels do not reproduce it (or ``kernels=False``);
:func:`catapult.sweep.ensemble.run_batched` is the same with every batchable cell here.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Sequence

import torch

from catapult import config as cfg
from catapult.curvature import batched_lanczos
from catapult.engine.step import diverged, new_row
from catapult.sweep.batched_model import StackedModel
from catapult.sweep.batched_optim import SUPPORTED as OPTIMIZERS
from catapult.sweep.batched_optim import StackedOptimizer
from catapult.sweep.grouping import group_key
from catapult.sweep.member import Member
from catapult.sweep.executors import Cell, CellResult, worker_name

__all__ = ["batched_unsupported_reason", "run_group"]

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
    return None


def _sharpness_kind(config: Mapping[str, Any]) -> str:
    from catapult import engine

    kind = config["eval"]["sharpness_kind"]
    if kind == "auto":
        kind = "preconditioned" if config["optimizer"]["name"] in engine.ADAPTIVE else "hessian"
    return kind


def _sharpness(model: StackedModel, opt: StackedOptimizer | None, members: Sequence[Member],
               rows: Sequence[int], x, y, inits: torch.Tensor, dtype, max_basis: int,
               preconditioned: bool) -> list:
    """Top eigenpairs for members ``rows`` on ``(x, y)`` (batched Lanczos from ``inits``)."""
    op = model.hessian(rows, x, y, dtype)
    if preconditioned:
        d, l2 = opt.preconditioner(rows, model.params, model.split(op.gradient))

        def matvec(active, U):
            sel = torch.as_tensor(list(active), dtype=torch.long, device=U.device)
            ds = d.index_select(0, sel)
            out = op.matvec(active, ds * U) * ds
            if l2 is not None:
                out = out + l2.index_select(0, sel) * U
            return out
    else:
        matvec = op.matvec
    return batched_lanczos(matvec, inits.to(op.dtype), tol=[members[r].tol for r in rows],
                           max_iter=[members[r].max_iter for r in rows], max_basis=max_basis)


def run_group(cells: Sequence[Cell], *, data: Any = None) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` (one group: equal :func:`~catapult.sweep.ensemble.group_key`) together;
    yields ``(cell_id, CellResult)`` as each member finishes or diverges (module docstring)."""
    from catapult import engine
    from catapult.losses import get_loss

    started = time.perf_counter()
    configs = [cfg.validate(c.config) for c in cells]
    c0 = configs[0]
    if len({group_key(c) for c in configs}) > 1:
        raise ValueError("run_group: the cells differ beyond the per-member keys (see group_key)")
    device = engine.resolve_device(c0["device"])
    dtype = getattr(torch, c0["dtype"])
    ev0 = c0["eval"]
    sdtype = getattr(torch, ev0["sharpness_dtype"]) if ev0["sharpness_dtype"] else None
    data = engine.load_data_once(c0, data, device, dtype)
    x_test, y_test = data.x_test, data.y_test
    batches = engine.BatchStream(data.x_train, data.y_train, c0["train"]["batch_size"], engine.seeds(c0["seed"])[1])
    loss_fn = get_loss(c0["loss"])
    kind = _sharpness_kind(c0)
    max_basis = ev0["sharpness_max_basis"]
    worker = worker_name()

    members: list[Member] = []
    models = []
    for cell, config in zip(cells, configs):
        members.append(Member.of(cell, config))
        model = engine.build_model(config, data.in_features, data.num_classes, device, dtype)
        model.train()
        models.append(model)
    stacked = StackedModel(models, loss_fn)
    n_params = stacked.numel

    def result_of(mb: Member, now: float) -> CellResult:
        return mb.result(n_params=n_params, device=device, sharpness_kind=kind,
                         wall_time=(now - started) / len(cells), worker=worker)

    # ---- lambda_0: Hessian sharpness at theta_0 on batch 0 from randn(P, sharpness_seed)
    x0, y0 = batches.batch(0)
    Member.measure_lambda0(members, n_params, device, dtype, lambda rows, inits: _sharpness(
        stacked, None, members, rows, x0, y0, inits, sdtype, max_basis, False))

    # ---- each member's optimizer and warmup rule (catapult: its step-0 search, on its own model)
    failed = []
    for i, (mb, model) in enumerate(zip(members, models)):
        if not mb.resolve_lr_target():
            failed.append(i)
        mb.optimizer = engine.build_optimizer(mb.config, model, mb.lr_trgt)
        mb.lr_mult0 = float(mb.optimizer.param_groups[0].get("lr_mult", 1.0))
        if mb.status != "failed":
            mb.warmup = engine.build_warmup(mb.config, mb.lr_trgt, model, loss_fn, (x0, y0), mb.optimizer)
    opt = StackedOptimizer(c0["optimizer"]["name"], [mb.optimizer for mb in members], models, stacked.names)
    del models
    for i in failed:
        yield members[i].cell.id, members[i].failed_result(worker)
    alive_rows = [i for i in range(len(members)) if i not in set(failed)]
    active = [members[i] for i in alive_rows]
    stacked.keep(alive_rows)
    opt.keep(alive_rows)

    # ---- the loop (engine.run's steps 1-8, every member at once)
    t = 0
    while active:
        x, y = batches.batch(t)
        lrs = [float(mb.warmup.schedule(t)) for mb in active]
        need_grads = any(t < mb.steps for mb in active)
        losses, accs, grads = stacked.loss_and_grads(x, y, need_grads)
        loss_list = losses.tolist()
        rows, alive, gone = [], [], []
        for r, (mb, lr_t) in enumerate(zip(active, lrs)):
            row = new_row(t, lr_t, mb.threshold_at(lr_t))
            loss_t = float(loss_list[r])
            row["train_loss"], row["train_accuracy"] = loss_t, accs[r]
            rows.append(row)
            if t == 0:
                mb.loss_0 = loss_t
            if diverged(loss_t, mb.loss_0, mb.divergence_factor):
                mb.status, mb.diverged_at = "diverged", t
                mb.metrics.append(row)
                gone.append(r)
            else:
                alive.append(r)

        # persistent warmup (Alg. 3): this step's lr, on the member's own module when it may search
        for r in alive:
            pcw = active[r].warmup.persistent
            if pcw is None or t >= active[r].steps:
                continue
            if not pcw.done:
                opt.materialize(r, stacked.params)
            lrs[r] = float(pcw.step((x, y), loss=rows[r]["train_loss"]))
            rows[r]["lr"] = lrs[r]
            rows[r]["threshold"] = active[r].threshold_at(lrs[r])

        # sharpness (the lambda_0 estimate stands for t = 0 with the Hessian kind)
        measured = {}
        todo = []
        for r in alive:
            mb = active[r]
            if not mb.sharpness_at(t):
                continue
            if t == 0 and kind == "hessian" and mb.lambda0_estimate is not None:
                measured[r] = mb.lambda0_estimate
            else:
                todo.append(r)
        if todo:
            inits = torch.stack([active[r].warm for r in todo])
            ests = _sharpness(stacked, opt, active, todo, x, y, inits, sdtype, max_basis,
                              kind == "preconditioned")
            for r, est in zip(todo, ests):
                measured[r] = est
                active[r].matvecs_total += int(est.matvecs)
                active[r].unconverged += int(not est.converged)
        for r, est in measured.items():
            mb = active[r]
            mb.warm = est.vector
            rows[r]["sharpness"] = float(est.value)
            rows[r]["sharpness_matvecs"] = int(est.matvecs)
            mb.measurements += 1

        test_rows = [r for r in alive if active[r].test_at(t)]
        if test_rows:
            for r, (tl, ta) in zip(test_rows, stacked.evaluate(test_rows, x_test, y_test)):
                rows[r]["test_loss"], rows[r]["test_accuracy"] = tl, ta

        finished = []
        for r in alive:
            active[r].metrics.append(rows[r])
            if t == active[r].steps:
                finished.append(r)
        now = time.perf_counter()
        for r in sorted(gone + finished):
            yield active[r].cell.id, result_of(active[r], now)
        stay = [r for r in alive if r not in set(finished)]
        if stay:
            opt.step(stacked.params, grads, lrs)
        stacked.keep(stay)
        opt.keep(stay)
        active = [active[r] for r in stay]
        t += 1
