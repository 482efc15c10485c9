"""The ensemble engine's loop: :func:`run_ensemble` trains a chunk of cells as one
:class:`~catapult.sweep.ensemble_kernels.MLPStack` with their optimizers' updates, sharpness
measurements and records (see :mod:`catapult.sweep.ensemble` for the exactness contract).
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from catapult import config as cfg
from catapult.curvature import EigenEstimate, batched_lanczos
from catapult.engine.step import diverged, evaluates_test, measures_sharpness, new_row, output_collapsed
from catapult.sweep.executors import Cell, CellResult, worker_name
from catapult.sweep.member import Member

from catapult.sweep.ensemble_kernels import MLPStack, even_ranges

__all__ = ["run_ensemble"]


def _threshold_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A one-parameter copy of ``optimizer``'s first group, for ``train.threshold``."""
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    return type(optimizer)([dict(group, params=[torch.zeros(1, requires_grad=True)])])


class _Batch(MLPStack):
    """An :class:`MLPStack` with its members' optimizer updates, sharpness and evaluation."""

    # ---- the optimizer update (torch's single-tensor rules on stacked tensors)
    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lrs: Sequence[float]) -> None:
        """One optimizer step of every member from the stacked gradients ``grads``: ``lrs[m]``
        is member m's ``lr_t``; parameter k of member m moves at ``lrs[m] * lr_mult[k][m]``.
        Applied span by span (:meth:`update_spans`, :meth:`apply_update`), so temporaries stay
        in cache."""
        scalars = self.step_scalars(lrs)
        for s, e in self.update_spans():
            self.apply_update(scalars, [g[s:e] for g in grads], s, e)

    def update_spans(self) -> list[tuple[int, int]]:
        """Member ranges of :meth:`update`: on the CPU as many members as keep parameters,
        gradients, optimizer state and a temporary (4 copies) within ``group_bytes``."""
        M = len(self.members)
        if self.params[0].device.type != "cpu":
            return even_ranges(M, M)
        per = 4 * self.n_params * self.params[0].element_size()
        return even_ranges(M, max(1, int(self.group_bytes // per)), self.threads)

    @torch.no_grad()
    def step_scalars(self, lrs: Sequence[float]) -> list[dict[str, Any]]:
        """Starts one optimizer step of all members (allocates missing state, counts Adam's
        step) and returns, per parameter, the step's per-member scalars as ``[M, 1, ...]``
        columns for :meth:`apply_update`. Scalars are formed in double on the host, as torch
        forms them from the python floats of its param groups::

            SGD:   buf = g (first step) | momentum * buf + g;   p -= lr * buf
            Adam:  m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2;
                   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        with ``g = grad + wd * p`` (coupled L2: SGD, Adam) or ``p *= 1 - lr wd`` first (AdamW).
        """
        M = len(self.members)
        out: list[dict[str, Any]] = []
        if self.optimizer == "sgd":
            bufs = self.state.setdefault("momentum_buffer", [None] * len(self.params))
            for k, p in enumerate(self.params):
                hp = self.hp[k]
                c: dict[str, Any] = {"lr": self.col([lrs[m] * hp["lr_mult"][m] for m in range(M)], p),
                                     "momentum": self.col(hp["momentum"], p), "first": bufs[k] is None}
                if any(hp["weight_decay"]):
                    c["wd"] = self.col(hp["weight_decay"], p)
                if bufs[k] is None:
                    bufs[k] = torch.empty_like(p)
                out.append(c)
            return out
        self.step_count += 1
        t = self.step_count
        avg = self.state.setdefault("exp_avg", [None] * len(self.params))
        avg_sq = self.state.setdefault("exp_avg_sq", [None] * len(self.params))
        for k, p in enumerate(self.params):
            hp = self.hp[k]
            lr = [lrs[m] * hp["lr_mult"][m] for m in range(M)]
            wd = hp["weight_decay"]
            b1, b2 = hp["beta1"], hp["beta2"]
            c = {"one_minus_b1": self.col([1 - b for b in b1], p), "b2": self.col(b2, p),
                 "one_minus_b2": self.col([1 - b for b in b2], p),
                 "step_size": self.col([lr[m] / (1 - b1[m] ** t) for m in range(M)], p),
                 "bias2_sqrt": self.col([(1 - b ** t) ** 0.5 for b in b2], p), "eps": self.col(hp["eps"], p)}
            if any(wd):
                if self.optimizer == "adamw":
                    c["decay"] = self.col([1 - lr[m] * wd[m] for m in range(M)], p)
                else:
                    c["wd"] = self.col(wd, p)
            if avg[k] is None:
                avg[k] = torch.zeros_like(p)
                avg_sq[k] = torch.zeros_like(p)
            out.append(c)
        return out

    @torch.no_grad()
    def apply_update(self, scalars: list[dict[str, Any]], grads: Sequence[torch.Tensor], s: int, e: int) -> None:
        """The step begun by :meth:`step_scalars` for members ``s:e`` (in place), from their
        gradients ``grads`` (each ``[e - s, ...]``)."""
        if self.optimizer == "sgd":
            bufs = self.state["momentum_buffer"]
            for k, (p, g) in enumerate(zip(self.params, grads)):
                c, p, buf = scalars[k], self.params[k][s:e], bufs[k][s:e]
                if "wd" in c:
                    g = g + c["wd"][s:e] * p
                if c["first"]:
                    buf.copy_(g)
                else:
                    # a member without momentum uses g itself (0 * buf + g == g exactly)
                    buf.mul_(c["momentum"][s:e]).add_(g)
                p.sub_(c["lr"][s:e] * buf)
            return
        for k, g in enumerate(grads):
            c, p = scalars[k], self.params[k][s:e]
            avg, avg_sq = self.state["exp_avg"][k][s:e], self.state["exp_avg_sq"][k][s:e]
            if "decay" in c:
                p.mul_(c["decay"][s:e])
            elif "wd" in c:
                g = g + c["wd"][s:e] * p
            avg.lerp_(g, c["one_minus_b1"][s:e])
            avg_sq.mul_(c["b2"][s:e]).addcmul_(g, g * c["one_minus_b2"][s:e])
            denom = (avg_sq.sqrt() / c["bias2_sqrt"][s:e]).add_(c["eps"][s:e])
            p.sub_(c["step_size"][s:e] * (avg / denom))

    # ---- curvature
    def preconditioner(self, rows: list[int], grads: Sequence[torch.Tensor], lrs: Sequence[float]):
        """``(d, l2)``: flat ``P^-1/2`` (times each parameter's ``lr_mult / lr_mult_0``) and the
        coupled-L2 rows ``P^-1 wd`` (Adam, not AdamW) of members ``rows``, the operator of
        :func:`catapult.curvature.preconditioned_sharpness` with ``scale_by_group_lr=True``::

            v' = b2 v + (1 - b2) g^2   (v = 0 before the first step),
            P  = (1 - b1^(t+1)) (sqrt(v' / (1 - b2^(t+1))) + eps).
        """
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        t = self.step_count
        d_parts, l2_parts = [], []
        coupled = self.optimizer == "adam"
        has_l2 = False
        for k, (p, g) in enumerate(zip(self.params, grads)):
            hp = {key: [v[r] for r in rows] for key, v in self.hp[k].items()}
            p, g = p[idx], g[idx]
            wd = hp["weight_decay"]
            if coupled and any(wd):
                g = g + self.col(wd, p) * p
                has_l2 = True
            b2 = self.col(hp["beta2"], p)
            one_minus_b2 = self.col([1.0 - b for b in hp["beta2"]], p)
            if t > 0:
                v_next = b2 * self.state["exp_avg_sq"][k][idx] + one_minus_b2 * g * g
            else:
                v_next = one_minus_b2 * g * g
            v_corr = self.col([1.0 - b ** (t + 1) for b in hp["beta2"]], p)
            m_corr = self.col([1.0 - b ** (t + 1) for b in hp["beta1"]], p)
            P = m_corr * (torch.sqrt(v_next / v_corr) + self.col(hp["eps"], p))
            inv = 1.0 / P
            ratio = [(lrs[r] * self.hp[k]["lr_mult"][r]) / (lrs[r] * self.members[r].lr_mult0) for r in rows]
            if any(x != 1.0 for x in ratio):
                inv = inv * self.col(ratio, p)
            d_parts.append(torch.sqrt(inv).reshape(len(rows), -1))
            l2_parts.append((inv * self.col(wd, p)).reshape(len(rows), -1))
        return torch.cat(d_parts, dim=1), (torch.cat(l2_parts, dim=1) if has_l2 else None)

    def sharpness(self, rows: list[int], x, y, inits: torch.Tensor, precond=None) -> list[EigenEstimate]:
        """Batched (pre-conditioned) sharpness of members ``rows`` on the batch ``(x, y)``."""
        tol = [self.members[r].tol for r in rows]
        max_iter = [self.members[r].max_iter for r in rows]

        def operator(sel: torch.Tensor, V: torch.Tensor, hvp) -> torch.Tensor:
            """The solver's operator from Hessian products ``hvp``: ``H v``, or with ``precond =
            (d, l2)`` the pre-conditioned ``d * H(d * v) + l2 * v`` of members ``sel``."""
            if precond is None:
                return hvp(V)
            out = hvp(precond[0][sel] * V) * precond[0][sel]
            if precond[1] is not None:
                out = out + precond[1][sel] * V
            return out

        if self.hand:
            # products for the members still iterating only (``active`` indexes ``rows``, the
            # positions of the state)
            state = self.hvp_state(rows, x, y)

            def hand_matvec(active: np.ndarray, V: torch.Tensor) -> torch.Tensor:
                active = [int(a) for a in active]
                sel = torch.as_tensor(active, dtype=torch.long, device=V.device)
                return operator(sel, V, lambda U: self.hvp(state, U, active))

            return batched_lanczos(hand_matvec, inits, tol=tol, max_iter=max_iter, max_basis=self.max_basis)

        graph: dict[str, Any] = {}

        def build(local: np.ndarray) -> None:
            sel = torch.as_tensor([rows[i] for i in local], dtype=torch.long, device=self.params[0].device)
            leaves = [p.detach()[sel].requires_grad_(True) for p in self.params]
            masks = [m[sel] if m is not None else None for m in self.masks]
            with torch.enable_grad():
                out = self.forward(leaves, masks, x)
                total = self.losses(out, y).sum()
                grads = torch.autograd.grad(total, leaves, create_graph=True)
            graph.update(local=list(local), leaves=leaves, grads=grads)

        build(np.arange(len(rows)))

        def matvec(active: np.ndarray, V: torch.Tensor) -> torch.Tensor:
            active = list(int(a) for a in active)
            if active != graph["local"] and len(active) <= len(graph["local"]) // 2:
                build(np.asarray(active))
            pos = {a: i for i, a in enumerate(graph["local"])}
            where = torch.as_tensor([pos[a] for a in active], dtype=torch.long, device=V.device)
            sel = torch.as_tensor(active, dtype=torch.long, device=V.device)

            def hvp(U: torch.Tensor) -> torch.Tensor:  # rows of the graph's members not asked: 0
                full = U.new_zeros((len(graph["local"]), U.shape[1]))
                full[where] = U
                with torch.enable_grad():
                    hv = torch.autograd.grad(graph["grads"], graph["leaves"], grad_outputs=self.split(full),
                                             retain_graph=True, allow_unused=True, materialize_grads=True)
                return self.flat(hv)[where]

            return operator(sel, V, hvp)

        return batched_lanczos(matvec, inits, tol=tol, max_iter=max_iter, max_basis=self.max_basis)

    @torch.no_grad()
    def evaluate(self, rows: list[int], x: torch.Tensor, y: torch.Tensor, chunk: int = 8192):
        """``[(loss, accuracy)]`` on ``(x, y)`` per member of ``rows`` (as ``train.evaluate``)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        params = [p[idx] for p in self.params]
        masks = [m[idx] if m is not None else None for m in self.masks]
        n = x.shape[0]
        loss_tot = [0.0] * len(rows)
        acc_tot = [0.0] * len(rows)
        for start in range(0, n, chunk):
            xb, yb = x[start:start + chunk], y[start:start + chunk]
            out = self.forward(params, masks, xb)
            losses = self.losses(out, yb).tolist()
            accs = self.accuracies(out, yb)
            for i in range(len(rows)):
                loss_tot[i] += losses[i] * xb.shape[0]
                acc_tot[i] += accs[i] * xb.shape[0]
        return [(loss_tot[i] / n, acc_tot[i] / n) for i in range(len(rows))]


def _sharpness_at(mb: Member, t: int) -> bool:
    """Whether member ``mb`` measures its sharpness at step ``t`` (as ``run``)."""
    return measures_sharpness(t, mb.sharpness_every, mb.steps)


def _test_at(mb: Member, t: int) -> bool:
    """Whether member ``mb`` evaluates on the test set at step ``t`` (as ``run``)."""
    return evaluates_test(t, mb.test_every, mb.steps)


def run_ensemble(cells: Sequence[Cell], *, threads: int | None = None,
                 data: Any = None) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` (one group: see :func:`group_key`) as one batched model; yields
    ``(cell_id, CellResult)`` as each member finishes or diverges (see the module docstring).
    ``data``: the group's :func:`catapult.engine.load_data` result on the CPU in float32, if
    the caller has it (used when the run's device and dtype are those; else loaded again)."""
    from catapult import engine as train

    started = time.perf_counter()
    configs = [cfg.validate(c.config) for c in cells]
    c0 = configs[0]
    device = train.resolve_device(c0["device"])
    dtype = getattr(torch, c0["dtype"])
    data = train.load_data_once(c0, data, device, dtype)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    in_features = data.in_features
    data_seed = train.seeds(c0["seed"])[1]
    batches = train.BatchStream(x_train, y_train, c0["train"]["batch_size"], data_seed)
    opt_name = c0["optimizer"]["name"]
    kind = c0["eval"]["sharpness_kind"]
    if kind == "auto":
        kind = "preconditioned" if opt_name in train.ADAPTIVE else "hessian"
    worker = worker_name()

    members: list[Member] = []
    models = []
    for cell, config in zip(cells, configs):
        members.append(Member.of(cell, config))
        model = train.build_model(config, in_features, data.num_classes, device, dtype)
        model.train()
        models.append(model)
    batch = _Batch(members, models, kind, c0["loss"], opt_name, max_basis=c0["eval"]["sharpness_max_basis"])
    n_params = batch.n_params

    def result_of(mb: Member, t_end: float) -> CellResult:
        return mb.result(n_params=n_params, device=device, sharpness_kind=kind,
                         wall_time=(t_end - started) / len(cells), worker=worker)

    # ---- lambda_0 (Hessian sharpness at theta_0 on batch 0, from randn(P, sharpness_seed))
    x0, y0 = batches.batch(0)
    lam_batches = train.lambda0_batches(data, c0, train.seeds(c0["seed"])[1])
    Member.measure_lambda0(members, n_params, device, dtype, lambda rows, inits: batch.sharpness(rows, x0, y0, inits),
                           solve_on=lambda t: (lambda rows, inits: batch.sharpness(rows, *lam_batches[t], inits)))

    # ---- per-member optimizer groups (lr_mult, hyper-parameters), schedules
    failed: list[int] = []
    for i, (mb, model) in enumerate(zip(members, models)):
        if not mb.resolve_lr_target():
            failed.append(i)
        optimizer = train.build_optimizer(mb.config, model, mb.lr_trgt)
        by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        mb.hyper = []
        for p in model.parameters():
            g = by_id[id(p)]
            entry = {"lr_mult": float(g.get("lr_mult", 1.0)), "weight_decay": float(g.get("weight_decay", 0.0))}
            if opt_name == "sgd":
                if g.get("nesterov") or g.get("dampening", 0.0) or g.get("maximize"):
                    raise ValueError("the ensemble reproduces SGD without nesterov/dampening/maximize only")
                entry["momentum"] = float(g.get("momentum", 0.0))
            else:
                if g.get("amsgrad") or g.get("maximize"):
                    raise ValueError("the ensemble reproduces Adam without amsgrad/maximize only")
                entry.update(beta1=float(g["betas"][0]), beta2=float(g["betas"][1]), eps=float(g["eps"]))
            mb.hyper.append(entry)
        mb.lr_mult0 = float(optimizer.param_groups[0].get("lr_mult", 1.0))
        mb.optimizer = _threshold_optimizer(optimizer)
        if mb.status != "failed":
            mb.warmup = train.Warmup(train.build_schedule(mb.config, mb.lr_trgt))
    batch.set_hyper()
    del models
    for i in failed:
        yield members[i].cell.id, members[i].failed_result(worker)
    if failed:
        batch.keep([r for r in range(len(members)) if r not in set(failed)])

    # ---- the loop
    t = 0
    while batch.members:
        mbs = batch.members
        x, y = batches.batch(t)
        lrs = [float(mb.warmup.schedule(t)) for mb in mbs]
        rows = [new_row(t, lr_t, mb.threshold_at(lr_t)) for mb, lr_t in zip(mbs, lrs)]
        # fused step: when no member measures anything at t (sharpness, test, final step), each
        # sub-batch's update is applied right after its gradient, which stays in cache (a member
        # that diverges at t is updated too, and dropped below, as with the unfused update)
        fused = batch.hand and all(t < mb.steps and not _sharpness_at(mb, t) and not _test_at(mb, t) for mb in mbs)
        if fused:
            losses, accs, _ = batch.loss_grads(x, y, True, step=batch.step_scalars(lrs))
            grads = None
        elif batch.hand:  # loss and gradient in one hand-derived pass, before the divergence test
            losses, accs, grads = batch.loss_grads(x, y, any(t < mb.steps for mb in mbs))
        else:
            params = [p.detach().requires_grad_(True) for p in batch.params]
            with torch.enable_grad():
                out = batch.forward(params, batch.masks, x)
                losses = batch.losses(out, y)
            accs = batch.accuracies(out.detach(), y)
        loss_list = losses.detach().tolist()
        alive, gone = [], []
        for r, (mb, row) in enumerate(zip(mbs, rows)):
            loss_t = float(loss_list[r])
            row["train_loss"], row["train_accuracy"] = loss_t, accs[r]
            if t == 0:
                mb.loss_0 = loss_t
            if diverged(loss_t, mb.loss_0, mb.divergence_factor):
                mb.status, mb.diverged_at = "diverged", t
                mb.metrics.append(row)
                gone.append(r)
            else:
                alive.append(r)
        if not batch.hand:
            grads = None
            if any(t < mbs[r].steps for r in alive):
                sel = torch.as_tensor(alive, dtype=torch.long, device=losses.device)
                grads = torch.autograd.grad(losses[sel].sum(), params)
            del out, params
        del losses
        # sharpness
        sharp_rows = [r for r in alive if _sharpness_at(mbs[r], t)]
        measured = {}
        reuse = [r for r in sharp_rows if t == 0 and kind == "hessian" and mbs[r].lambda0_estimate is not None]
        for r in reuse:
            measured[r] = mbs[r].lambda0_estimate
        todo = [r for r in sharp_rows if r not in measured]
        if todo:
            inits = torch.stack([mbs[r].warm for r in todo])
            precond = None
            if kind == "preconditioned":
                if grads is None and batch.hand:  # only final steps: gradient for the preconditioner
                    grads = batch.loss_grads(x, y, True)[2]
                elif grads is None:
                    params = [p.detach().requires_grad_(True) for p in batch.params]
                    with torch.enable_grad():
                        total = batch.losses(batch.forward(params, batch.masks, x), y)
                        sel = torch.as_tensor(alive, dtype=torch.long, device=total.device)
                        grads = torch.autograd.grad(total[sel].sum(), params)
                    del params, total
                precond = batch.preconditioner(todo, grads, lrs)
            for r, est in zip(todo, batch.sharpness(todo, x, y, inits, precond)):
                measured[r] = est
                mbs[r].matvecs_total += int(est.matvecs)
                mbs[r].unconverged += int(not est.converged)
        for r, est in measured.items():
            mbs[r].warm = est.vector
            rows[r]["sharpness"] = float(est.value)
            rows[r]["sharpness_matvecs"] = int(est.matvecs)
            mbs[r].measurements += 1
        # test
        test_rows = [r for r in alive if _test_at(mbs[r], t)]
        if test_rows:
            for r, (tl, ta) in zip(test_rows, batch.evaluate(test_rows, x_test, y_test)):
                rows[r]["test_loss"], rows[r]["test_accuracy"] = tl, ta
        finished = []
        for r in alive:
            mbs[r].metrics.append(rows[r])
            if t == mbs[r].steps:
                finished.append(r)
        if finished:  # the collapse rule on the final batch (engine.step.output_collapsed), as run
            with torch.no_grad():
                idx = torch.as_tensor(finished, dtype=torch.long, device=batch.params[0].device)
                out = batch.forward([p[idx] for p in batch.params],
                                    [m[idx] if m is not None else None for m in batch.masks], x)
            for r, member_out in zip(finished, out):
                mbs[r].collapsed = output_collapsed(member_out)
        now = time.perf_counter()
        for r in gone + finished:
            yield mbs[r].cell.id, result_of(mbs[r], now)
        stay = [r for r in alive if r not in set(finished)]
        if stay and not fused:
            batch.update(grads, lrs)
        batch.keep(stay)
        t += 1
