"""The hand-derived kernels' side of the batched loop: :class:`KernelStack` is an
:class:`~catapult.sweep.ensemble_kernels.MLPStack` behind the stack interface of
:mod:`catapult.sweep.batched_loop` -- loss and gradient (hand-derived for ReLU/identity MLPs,
autograd otherwise), the optimizer update (the rules of :mod:`catapult.optim.rules` through
:class:`~catapult.sweep.batched_optim.StackedOptimizer`, fused into the gradient pass where the
loop allows), sharpness and test evaluation. :func:`run_ensemble` trains a chunk of cells on it
(see :mod:`catapult.sweep.ensemble` for the exactness contract).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from catapult.curvature import EigenEstimate, batched_lanczos
from catapult.curvature.start import mixed_starts
from catapult.engine.sharpness_rule import SOLVE_SEED
from catapult.engine.step import rows_finite
from catapult.losses import IGNORE_INDEX
from catapult.sweep.batched_loop import certified_members, open_group, train_group
from catapult.sweep.batched_optim import StackedOptimizer
from catapult.sweep.ensemble_kernels import MLPStack, even_ranges
from catapult.sweep.executors import Cell, CellResult

__all__ = ["KernelStack", "run_ensemble"]


class KernelStack(MLPStack):
    """An :class:`MLPStack` with its members' optimizer updates, sharpness and evaluation: the
    :class:`~catapult.sweep.batched_loop.Stack` of the hand-derived engine."""

    opt: StackedOptimizer | None = None
    #: whether every label this stack is given was checked for -100 already (:func:`run_ensemble` checks
    #: the group's data once); else :meth:`loss_grads`, :meth:`sharpness` and :meth:`evaluate` check theirs
    labels_checked: bool = False

    def __init__(self, members: list, models: list[torch.nn.Module], kind: str, loss: str, max_basis: int = 20):
        super().__init__(members, models, kind, loss, max_basis)
        # the stacked tensors follow the modules' parameter order (weight, bias per layer)
        self.names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        shapes = [tuple(p.shape) for n, p in models[0].named_parameters() if p.requires_grad]
        if shapes != [tuple(s) for s in self.shapes]:
            raise ValueError("the MLP's parameters are not its layers' weights and biases in order")
        self.fuses = self.hand

    # ---- loss, gradient and the update
    def loss_grads(self, x: torch.Tensor, y: torch.Tensor, need_grads: bool,
                   lrs: Sequence[float] | None = None):
        """``(losses [M], accuracies, grads)``; with ``lrs`` (hand-derived passes only) each
        sub-batch's update at ``lrs`` is applied right after its gradient (``grads`` None)."""
        self._check_labels(y, "loss_grads")
        if lrs is not None:
            hp = self.opt.begin_step(self.params, lrs)
            out = self.hand_loss_grads(x, y, True, update=lambda parts, s, e: self.opt.apply(hp, self.params, parts, s, e))
            self.opt.end_step()
            return out
        if self.hand:
            return self.hand_loss_grads(x, y, need_grads)
        params = [p.detach().requires_grad_(True) for p in self.params]
        with torch.enable_grad():
            out = self.forward(params, self.masks, x)
            losses = self.losses(out, y)
            grads = torch.autograd.grad(losses.sum(), params) if need_grads else None
        return losses.detach(), self.accuracies(out.detach(), y), grads

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lrs: Sequence[float]) -> None:
        """One optimizer step of every member from the stacked gradients ``grads`` at base lrs
        ``lrs``, applied member span by member span (:meth:`update_spans`) so temporaries stay
        in cache."""
        hp = self.opt.begin_step(self.params, lrs)
        for s, e in self.update_spans():
            self.opt.apply(hp, self.params, [g[s:e] for g in grads], s, e)
        self.opt.end_step()

    def update_spans(self) -> list[tuple[int, int]]:
        """Member ranges of :meth:`step`: on the CPU as many members as keep parameters,
        gradients, optimizer state and a temporary (4 copies) within ``group_bytes``."""
        M = len(self.members)
        if self.params[0].device.type != "cpu":
            return even_ranges(M, M)
        per = 4 * self.n_params * self.params[0].element_size()
        return even_ranges(M, max(1, int(self.group_bytes // per)), self.threads)

    def keep(self, rows: list[int]) -> None:
        """Keep only members ``rows`` (positions), in that order, with their optimizer state."""
        super().keep(rows)
        if self.opt is not None:
            self.opt.keep(rows)

    def materialize(self, row: int) -> None:
        raise NotImplementedError("the hand-derived kernels train no persistent warmup")

    @torch.no_grad()
    def outputs(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network outputs ``[len(rows), batch, classes]`` of members ``rows`` on ``x``."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        return self.forward([p[idx] for p in self.params], [m[idx] if m is not None else None for m in self.masks], x)

    def finite_rows(self) -> list[bool]:
        """Per member: every parameter entry finite (:func:`catapult.engine.step.rows_finite`)."""
        return rows_finite(self.params)

    # ---- curvature
    def sharpness(self, rows: list[int], x, y, inits: torch.Tensor, *, kind: str = "hessian",
                  grads: Sequence[torch.Tensor] | None = None,
                  lrs: Sequence[float] | None = None) -> list[EigenEstimate]:
        """Batched sharpness of ``kind`` (hessian, preconditioned, lr_scaled) of members ``rows``
        on the batch ``(x, y)``; the pre-conditioner is the optimizer's
        (:meth:`StackedOptimizer.preconditioner`) from the step's gradients ``grads`` (computed
        here when the loop has none: final steps), lr_scaled's ``M^1/2`` its
        :meth:`~StackedOptimizer.lr_scale`."""
        self._check_labels(y, "sharpness")
        precond = None
        if kind == "lr_scaled":
            precond = self.opt.lr_scale(rows, dict(zip(self.names, self.params)), inits.dtype)
        elif kind == "preconditioned":
            if grads is None:
                grads = self.loss_grads(x, y, True)[2]
            idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
            grads = [g.index_select(0, idx) for g in grads]
            precond = self.opt.preconditioner(rows, dict(zip(self.names, self.params)), grads)
            ests = self._solve(rows, x, y, inits, precond)
            # the local engine's end of a float32 solve: the rounding's reach, and a float64 check beyond tol
            return certified_members(ests, precond[0], self.flat(grads), [self.members[r].tol for r in rows],
                                     lambda positions, Y: self._float64_product([rows[i] for i in positions], x, y, Y))
        return self._solve(rows, x, y, inits, precond)

    def _solve(self, rows: list[int], x, y, inits: torch.Tensor, precond) -> list[EigenEstimate]:
        """:meth:`sharpness`'s batched Lanczos, of ``H`` or with ``precond = (d, l2)`` of ``d H d + l2``."""
        tol = [self.members[r].tol for r in rows]
        max_iter = [self.members[r].max_iter for r in rows]
        inits = mixed_starts(inits, SOLVE_SEED, tol)  # each warm start as the local engine's

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

    def _float64_product(self, rows: list[int], x, y, Y: torch.Tensor) -> torch.Tensor:
        """``d H(d Y) + l2 Y`` of members ``rows`` in float64: their parameters, the batch, the gradient
        (so ``P``) and the product (autograd's double backprop)."""
        sel = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        leaves = [p.detach()[sel].to(torch.float64).requires_grad_(True) for p in self.params]
        masks = [m[sel] if m is not None else None for m in self.masks]
        x, y = (t.to(torch.float64) if t.is_floating_point() else t for t in (x, y))
        with torch.enable_grad():
            grads = torch.autograd.grad(self.losses(self.forward(leaves, masks, x), y).sum(), leaves, create_graph=True)
        d, l2 = self.opt.preconditioner(rows, dict(zip(self.names, self.params)), [g.detach() for g in grads])
        with torch.enable_grad():
            hv = torch.autograd.grad(grads, leaves, grad_outputs=self.split(d * Y), allow_unused=True,
                                     materialize_grads=True)
        out = self.flat(hv) * d
        return out if l2 is None else out + l2 * Y

    @torch.no_grad()
    def evaluate(self, rows: list[int], x: torch.Tensor, y: torch.Tensor, chunk: int = 8192):
        """``[(loss, accuracy)]`` on ``(x, y)`` per member of ``rows`` (as ``train.evaluate``)."""
        self._check_labels(y, "evaluate")
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


    def _check_labels(self, y: torch.Tensor, method: str) -> None:
        """A direct call's labels refused where they hold -100: :meth:`evaluate` averaged the ignored rows'
        zero losses and counted them as misses (a loss of 1.2232 for the true 2.4463 where half were
        ignored, an accuracy of 0.05 for 0.1); the others raised IndexError in Python's words."""
        if not self.labels_checked:
            _refuse_ignored(y, f"KernelStack.{method}", "the labels y")


def _refuse_ignored(labels: torch.Tensor, where: str, what: str) -> None:
    """A ValueError naming ``where`` and ``what`` where the integer ``labels`` hold -100."""
    if torch.is_tensor(labels) and not (labels.is_floating_point() or labels.is_complex()) \
            and bool((labels == IGNORE_INDEX).any()):
        raise ValueError(f"{where}: {what} hold {IGNORE_INDEX} (ignored targets), which the hand-derived kernels "
                         f"would average as rows; train these cells with catapult.sweep.batched.run_group (the "
                         f"torch.func engine) or locally, which leave them out")


def _refuse_ignored_labels(data: Any) -> None:
    """A ValueError where the labels hold -100 (:data:`~catapult.losses.IGNORE_INDEX`): the kernels' losses,
    gradients and accuracies are means over every row (image data, which has none, is what they run)."""
    for split, labels in (("train", data.y_train), ("test", data.y_test)):
        _refuse_ignored(labels, "run_ensemble", f"the {split} labels")


def run_ensemble(cells: Sequence[Cell], *, data: Any = None) -> Iterator[tuple[int, CellResult]]:
    """Train ``cells`` (one group: see :func:`group_key`) as one :class:`KernelStack` in the
    batched loop (:func:`catapult.sweep.batched_loop.train_group`); yields ``(cell_id,
    CellResult)`` as each member finishes or diverges. ``data``: the group's
    :func:`catapult.engine.load_data` result on the CPU in float32, if the caller has it (used
    when the run's device and dtype are those; else loaded again). The sub-batches follow torch's
    thread count (:attr:`MLPStack.threads`): a caller that wants other threads sets them around
    the call, as the executor does with :func:`catapult.sweep.executors.torch_threads`. Labels of -100
    (ignored targets, which config-built image data never holds) are refused (ValueError) before any step:
    the kernels' means run over every row."""
    group = open_group(cells, data)
    _refuse_ignored_labels(group.data)
    c0 = group.config
    stack = KernelStack(group.members, group.models, group.kind, c0["loss"],
                        max_basis=c0["eval"]["sharpness_max_basis"])
    stack.labels_checked = True   # (each batch is the checked data's: no check per step)
    yield from train_group(group, stack, keep_models=False)
