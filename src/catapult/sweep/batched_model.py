"""Stacked models on :mod:`torch.func`: ``N`` copies of one architecture with their own weights,
evaluated as one vectorised function of the stacked parameters.

Every member's module is built by the caller (e.g. with :func:`catapult.engine.build_model`, so
each has its own init seed and sparsity masks); their parameters and buffers are stacked into
tensors with a leading member dimension ``[N, ...]`` and the first module serves as the
architecture (``functional_call`` swaps its tensors for one member's)::

    loss_n, out_n = loss_fn(f(theta_n, buffers_n; x), y)      for n = 1..N, under vmap
    grad_n        = d loss_n / d theta_n                       (vmap of grad)
    (H_n v_n)     = d/d theta_n <grad_n, v_n>                  (double backprop of sum_n loss_n)

The members' Hessians are the diagonal blocks of the Hessian of ``sum_n loss_n`` (no member's
loss depends on another's parameters), so one double backprop of that sum gives every member's
Hessian-vector product at once, exactly as the local engine's
:class:`catapult.curvature.HessianOperator` (``double_backprop`` mode) gives one member's.

Attention runs on the math kernel of ``scaled_dot_product_attention`` everywhere: it is the
kernel with a batching rule (the fused CPU kernel would fall back to a loop over members) and
with a double backward; it computes the same function as the fused kernels.

A lone member of a convolutional model runs beside a copy of itself (:attr:`StackedModel.pad_lone`),
whose results are dropped. Under ``vmap`` a convolution of one member is torch's convolution
on the member's own memory layout (the WRN's channel LayerNorm leaves channels-last strides),
while two or more members run as one grouped convolution on a contiguous copy, whose
algorithm rounds otherwise: on a WRN a member's loss moved by ~2e-7 relative at step 0
whenever it ran alone (a resumed sweep's last cell, the survivor of a chunk, a Lanczos
member left iterating). From two members on, a member's bits do not depend on which members
share its chunk, nor on its row. MLPs and GPTs round the same alone and are not padded. A model
runs a convolution when it holds a ``torch.nn`` conv layer or, failing that, when one shows at
torch's dispatcher during a probe forward (:meth:`StackedModel.probe`): a user's model that
calls ``torch.nn.functional.conv2d`` on its own weights rounds as a WRN does.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad, grad_and_value, stack_module_state, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from catapult.curvature.forward_ad import jvp_of_gradient
from catapult.curvature.hessian import math_attention, resolve_hvp
from catapult.losses import IGNORE_INDEX

__all__ = ["StackedModel", "StackedHessian", "accuracies", "accuracy_counts"]


def _has_conv(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a convolution (``torch.nn`` Conv/ConvTranspose, any dimension)."""
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules())


#: aten ops that run a convolution (``aten::convolution`` is where ``torch.nn.functional.conv*``,
#: ``torch.conv*`` and the ``nn`` layers meet; the others are its backends, for a model calling them)
_CONV_OP = re.compile(r"^aten::(_?convolution|conv\d|conv_transpose\d|conv_tbc|\w*_convolution\w*|slow_conv\w*|thnn_conv\w*)$")


class _ConvSeen(TorchDispatchMode):
    """Records whether any convolution op runs under it (the probe of :meth:`StackedModel.probe`)."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.seen and _CONV_OP.match(func._schema.name):
            self.seen = True
        return func(*args, **(kwargs or {}))


class StackedModel:
    """``N`` members of one architecture as stacked tensors (see the module docstring).

    ``params``: name -> ``[N, *shape]`` (the trainable parameters, in ``named_parameters()``
    order, the order of the flat vectors of :mod:`catapult.curvature`); ``buffers``: name ->
    ``[N, *shape]`` (masks, fixed position tables). ``loss_fn(outputs, targets)`` is the
    local engine's loss. Rows of every tensor follow the member order; :meth:`keep` drops rows.
    ``pad_lone`` (``pad_lone=True`` and the architecture runs a convolution): every ``vmap``
    over a single member runs it beside a copy of itself (module docstring), so a member
    rounds alike in a chunk of any size; ``pad_lone=False`` where two members do not fit.
    A ``torch.nn`` conv layer settles it at once; a model that calls ``torch.nn.functional.conv*``
    (or any op reaching ``aten::convolution``) is found by one probe, member 0's forward on one
    row of the first batch (eval mode, watched at torch's dispatcher), before the first ``vmap``.
    """

    def __init__(self, models: Sequence[torch.nn.Module], loss_fn: Callable, *, pad_lone: bool = True):
        self.module = models[0]
        self.pad_lone = bool(pad_lone) and _has_conv(self.module)
        self._conv_known = self.pad_lone or not pad_lone  # else the first batch's probe decides
        self._widest: int | None = None
        self.loss_fn = loss_fn
        self.names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.frozen = {n: p.detach() for n, p in self.module.named_parameters() if not p.requires_grad}
        params, buffers = stack_module_state(list(models))  # checks the members' classes agree
        self.params = {n: params[n].detach().contiguous() for n in self.names}
        self.buffers = {n: b.detach().contiguous() for n, b in buffers.items()}
        self.shapes = [tuple(self.params[n].shape[1:]) for n in self.names]
        self.sizes = [int(self.params[n][0].numel()) for n in self.names]
        self.numel = sum(self.sizes)

    @property
    def members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the members ``rows`` (indices of the current rows, in that order)."""
        if list(rows) == list(range(self.members)):
            return
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=next(iter(self.params.values())).device)
        self.params = {n: p.index_select(0, idx) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}

    # ---- flat vectors [M, P] <-> per-parameter [M, *shape]
    def flat(self, tensors: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        items = [tensors[n] for n in self.names] if isinstance(tensors, dict) else list(tensors)
        return torch.cat([t.reshape(t.shape[0], -1) for t in items], dim=1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(flat, self.sizes, dim=1)
        return [p.reshape((flat.shape[0],) + s) for p, s in zip(parts, self.shapes)]

    # ---- one member's loss (vmapped below)
    def _member_loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor):
        out = functional_call(self.module, {**self.frozen, **buffers, **params}, (x,))
        return self.loss_fn(out, y), out

    def _cast(self, tensors: dict, rows, dtype) -> dict:
        out = {}
        for n, t in tensors.items():
            t = t if rows is None else t.index_select(0, rows)
            out[n] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def loss_and_grads(self, x: torch.Tensor, y: torch.Tensor, need_grads: bool
                       ) -> tuple[torch.Tensor, list[float], dict[str, torch.Tensor] | None]:
        """``(losses [N], accuracies, grads)`` of every member on the shared batch ``(x, y)``;
        ``grads`` (name -> ``[N, *shape]``) only when ``need_grads``."""
        self.probe(x)
        params, buffers = self.params, self.buffers
        pad = self.padded_count(self.members) > self.members
        if pad:  # a lone member beside its copy (module docstring); its buffers are written back
            idx = self.padded_rows(torch.zeros(1, dtype=torch.long, device=x.device))
            params, buffers = self._cast(params, idx, None), self._cast(buffers, idx, None)
        with math_attention():
            if need_grads:
                fn = vmap(grad_and_value(self._member_loss, has_aux=True), in_dims=(0, 0, None, None))
                grads, (losses, out) = fn(params, buffers, x, y)
            else:
                with torch.no_grad():
                    losses, out = vmap(self._member_loss, in_dims=(0, 0, None, None))(params, buffers, x, y)
                grads = None
        if pad:
            with torch.no_grad():  # what the forward updated in place (BatchNorm's running statistics)
                for n, b in self.buffers.items():
                    b.copy_(buffers[n][:1])
            losses, out = losses[:1], out[:1]
            grads = None if grads is None else {n: g[:1] for n, g in grads.items()}
        return losses.detach(), accuracies(out.detach(), y), grads

    def probe(self, x: torch.Tensor) -> None:
        """Settle :attr:`pad_lone` on the batch ``x`` where no ``torch.nn`` conv layer did
        (class docstring); every method that runs a ``vmap`` calls it first. Once per model."""
        if not self._conv_known:
            self._look(x)

    def padded_count(self, n: int) -> int:
        """Members a ``vmap`` over ``n`` members runs: 2 for a lone one where :attr:`pad_lone`."""
        return 2 if self.pad_lone and n == 1 else n

    def padded_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` (member rows), a lone row twice where :attr:`pad_lone`: the rows a ``vmap``
        runs; results beyond ``len(idx)`` are the copy's."""
        return idx.repeat(2) if self.padded_count(idx.numel()) > idx.numel() else idx

    @torch.no_grad()
    def evaluate(self, rows: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                 chunk: int | None = None) -> list[tuple[float, float]]:
        """``(loss, accuracy)`` per member of ``rows`` on ``(x, y)`` in eval mode, in chunks of
        ``chunk`` rows combined as :func:`catapult.engine.evaluate` combines them (None: at most
        :func:`catapult.engine.loop.eval_chunk_rows` of the widest activation per row, a GPT's
        logits). Members go through in groups of :meth:`members_per_pass`
        (a test set is often much larger than a training batch; a group's activations then stay
        near the cache)."""
        from catapult.engine.loop import counted_targets, eval_chunk_rows

        self.probe(x)
        was_training = self.module.training
        self.module.eval()
        try:
            n = x.shape[0]
            if chunk is None:
                chunk = eval_chunk_rows(self.widest_activation(x[:1]))
            # as engine.evaluate: each chunk's loss weighted by its counted targets (a chunk of ignored
            # (-100) targets only adds nothing), the accuracy hits over counted labels (nan: none)
            loss_tot, counted = [0.0] * len(rows), 0
            hits_tot, labelled = [0] * len(rows), 0
            with math_attention():
                for start in range(0, n, chunk):
                    xb, yb = x[start:start + chunk], y[start:start + chunk]
                    weight = counted_targets(yb)
                    counted += weight
                    group, kept = self.members_per_pass(xb), 0
                    for g in range(0, len(rows), group):
                        idx = torch.as_tensor(list(rows[g:g + group]), dtype=torch.long, device=x.device)
                        n_rows = idx.numel()
                        if group > 1:  # one member per pass rounds alike for every member
                            idx = self.padded_rows(idx)
                        params, buffers = self._cast(self.params, idx, None), self._cast(self.buffers, idx, None)
                        losses, out = vmap(self._member_loss, in_dims=(0, 0, None, None))(params, buffers, xb, yb)
                        losses, out = losses[:n_rows], out[:n_rows]
                        hits, kept = accuracy_counts(out, yb)
                        for i, (lv, h) in enumerate(zip(losses.tolist(), hits), start=g):
                            if weight:
                                loss_tot[i] += lv * weight
                            hits_tot[i] += h
                    labelled += kept
            nan = float("nan")
            return [(loss_tot[i] / counted if counted else nan, hits_tot[i] / labelled if labelled else nan)
                    for i in range(len(rows))]
        finally:
            self.module.train(was_training)

    @torch.no_grad()
    def outputs(self, rows: Sequence[int], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network outputs ``[len(rows), batch, ...]`` of members ``rows`` on ``x`` (train
        mode, as the training forward; for the collapse rule)."""
        self.probe(x)
        idx = self.padded_rows(torch.as_tensor(list(rows), dtype=torch.long, device=x.device))
        params, buffers = self._cast(self.params, idx, None), self._cast(self.buffers, idx, None)
        with math_attention():
            return vmap(self._member_loss, in_dims=(0, 0, None, None))(params, buffers, x, y)[1][:len(rows)]

    def members_per_pass(self, x: torch.Tensor, budget_bytes: int = 32 * 2**20) -> int:
        """Members whose forward on ``x`` fits ``budget_bytes`` of one activation: ``rows x
        widest x itemsize`` per member, with ``widest`` the largest output of any submodule
        per input row (:meth:`widest_activation`: channels x height x width for a conv layer,
        positions x width for a sequence model), measured once."""
        itemsize = next(iter(self.params.values())).element_size()
        per = max(1, x.shape[0] * self.widest_activation(x) * itemsize)
        return max(1, budget_bytes // per)

    def widest_activation(self, x: torch.Tensor) -> int:
        """Elements of the largest submodule output for one row of ``x`` (member 0, eval mode,
        forward hooks; measured on the first call and cached): any architecture's widest
        activation per sample, for sizing member groups."""
        if self._widest is None:
            self._look(x)
        return self._widest

    @torch.no_grad()
    def _look(self, x: torch.Tensor) -> None:
        """Member 0's forward on one row of ``x`` (eval mode: no batch-norm statistics updated;
        the global generators untouched), measuring :meth:`widest_activation` and whether a
        convolution runs (:meth:`probe`)."""
        sizes: list[int] = []

        def record(module, inputs, output):
            if torch.is_tensor(output):
                sizes.append(output.numel())

        hooks = [m.register_forward_hook(record) for m in self.module.modules()]
        was_training = self.module.training
        self.module.eval()
        try:
            first = {**self.frozen, **{n: b[0] for n, b in self.buffers.items()},
                     **{n: p[0] for n, p in self.params.items()}}
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), math_attention(), _ConvSeen() as conv:
                functional_call(self.module, first, (x[:1],))
        finally:
            for h in hooks:
                h.remove()
            self.module.train(was_training)
        self._widest = max(sizes, default=1)
        if not self._conv_known:
            self.pad_lone, self._conv_known = conv.seen, True

    def hessian(self, rows: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                dtype: torch.dtype | None = None, *, hvp: str = "auto",
                chunk_size: int | None = None) -> "StackedHessian":
        """The Hessian operators of members ``rows`` on ``(x, y)`` (cast to ``dtype``), by
        products of mode ``hvp`` on micro-batches of ``chunk_size`` (see :class:`StackedHessian`)."""
        return StackedHessian(self, rows, x, y, dtype, hvp=hvp, chunk_size=chunk_size)


@torch.no_grad()
def accuracies(out: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per member (``out``: ``[M, ..., C]``) the :func:`catapult.losses.accuracy`: hits over the
    labels that count (not -100, the ignore index; every row of float targets), nan where none does.

    >>> out = torch.tensor([[[1., 3.], [2., 0.]], [[0., 1.], [0., 2.]]])
    >>> accuracies(out, torch.tensor([1, -100])), accuracies(out, torch.tensor([-100, -100]))
    ([1.0, 1.0], [nan, nan])
    """
    hits, counted = accuracy_counts(out, y)
    return [h / counted if counted else float("nan") for h in hits]


@torch.no_grad()
def accuracy_counts(out: torch.Tensor, y: torch.Tensor) -> tuple[list[int], int]:
    """``(hits per member, counted labels)`` behind :func:`accuracies`, as
    :func:`catapult.losses.accuracy_counts` counts them for one member.

    >>> accuracy_counts(torch.tensor([[[1., 3.], [2., 0.]], [[0., 1.], [0., 2.]]]), torch.tensor([1, -100]))
    ([1, 1], 1)
    """
    M, C = out.shape[0], out.shape[-1]
    predicted = out.reshape(M, -1, C).argmax(dim=-1)
    if y.is_floating_point() or y.is_complex():
        labels = y.reshape(-1, y.shape[-1]).argmax(dim=-1)
        counted = labels.numel()
    else:
        labels = y.reshape(-1)
        counted = int((labels != IGNORE_INDEX).sum())   # an ignored label is never an arg-max: no hit
    if labels.numel() == 0:
        return [0] * M, 0
    return (predicted == labels[None]).sum(dim=1).tolist(), counted


class StackedHessian:
    """``V -> [H_m V_m]`` for a set of members on one batch (block-diagonal over members), in
    the local engine's product modes and micro-batches (:class:`catapult.curvature.HessianOperator`):

    * ``hvp="double_backprop"``: the gradient graph of the sum of the members' losses, built
      once and re-used by every product; when at most half of the members are still asked it is
      rebuilt for those only;
    * ``hvp="forward_over_reverse"``: ``vmap`` over members of ``jvp(grad(L_m), theta_m, v_m)``,
      no graph kept between products; also what ``"finite_difference"`` and ``"compiled"`` run
      here (exact products: the same Hessian, up to rounding);
    * ``chunk_size=c`` (smaller than the batch): the batch is cut along dim 0 into chunks of at
      most ``c`` samples and every product (and the gradient) is ``sum_k (|B_k| / |B|) H_k v``:
      exact for the batched engine's losses, per-sample means (MSE, cross-entropy, token mean).

    ``gradient`` ``[M, P]``: the members' flat gradients (in the operator's dtype) on the batch.
    ``matvec(active, V)``: ``active`` indices into ``rows``, ``V`` ``[len(active), P]``.
    """

    def __init__(self, model: StackedModel, rows: Sequence[int], x, y, dtype, *, hvp: str = "auto",
                 chunk_size: int | None = None):
        self.model = model
        model.probe(x)
        self.rows = list(rows)
        self.dtype = dtype if dtype is not None else next(iter(model.params.values())).dtype
        x = x.to(dtype) if dtype is not None and x.is_floating_point() else x
        y = y.to(dtype) if dtype is not None and y.is_floating_point() else y
        self.mode = resolve_hvp(hvp, x.device)
        n = x.shape[0]
        if chunk_size is None or chunk_size >= n:
            self.chunks = [(x, y, 1.0)]
        else:
            self.chunks = [(x[i:i + chunk_size], y[i:i + chunk_size], min(chunk_size, n - i) / n)
                           for i in range(0, n, chunk_size)]
        self._graph: dict | None = None
        if len(self.chunks) == 1 and self.mode == "double_backprop":
            self._graph = self._build(list(range(len(self.rows))), x, y)
            grads = self._graph["grads"]
            self.gradient = torch.cat([g.detach().reshape(g.shape[0], -1) for g in grads], dim=1)[:len(self.rows)]
        else:
            self.gradient = self._chunked_gradient()

    def _inputs(self, local: Sequence[int]) -> tuple[dict, dict]:
        """Parameters and buffers of members ``local`` (indices into ``rows``), cast; a lone
        member with its copy where the model pads one (:meth:`StackedModel.padded_rows`)."""
        dev = next(iter(self.model.params.values())).device
        idx = self.model.padded_rows(torch.as_tensor([self.rows[i] for i in local], dtype=torch.long, device=dev))
        return self.model._cast(self.model.params, idx, self.dtype), self.model._cast(self.model.buffers, idx, self.dtype)

    def _build(self, local: list[int], x, y) -> dict:
        """The gradient graph of members ``local`` (indices into ``rows``) on ``(x, y)``."""
        params, buffers = self._inputs(local)
        leaves = [params[n].detach().requires_grad_(True) for n in self.model.names]
        with torch.enable_grad(), math_attention():
            losses, _ = vmap(self.model._member_loss, in_dims=(0, 0, None, None))(
                dict(zip(self.model.names, leaves)), buffers, x, y)
            grads = torch.autograd.grad(losses.sum(), leaves, create_graph=True,
                                        allow_unused=True, materialize_grads=True)
        return dict(local=local, rows=self.model.padded_count(len(local)), where={m: r for r, m in enumerate(local)},
                    leaves=leaves, grads=grads,
                    diff=[i for i, g in enumerate(grads) if g.requires_grad])

    def _chunked_gradient(self) -> torch.Tensor:
        """``sum_k w_k grad L_k`` of every member, chunk by chunk (no graph kept)."""
        params, buffers = self._inputs(range(len(self.rows)))
        out = None
        with math_attention():
            for x, y, w in self.chunks:
                grads, _ = vmap(grad_and_value(self.model._member_loss, has_aux=True),
                                in_dims=(0, 0, None, None))(params, buffers, x, y)
                flat = self.model.flat(grads).detach()[:len(self.rows)]
                out = flat * w if out is None else out.add_(flat, alpha=w)
        return out

    def _graph_product(self, graph: dict, active: list[int], V: torch.Tensor) -> torch.Tensor:
        """Products of members ``active`` from a gradient graph holding (at least) them."""
        if not graph["diff"]:
            return torch.zeros_like(V)
        n_graph = graph["rows"]  # a lone member's copy included
        pos = torch.as_tensor([graph["where"][a] for a in active], dtype=torch.long, device=V.device)
        full = V.new_zeros((n_graph, V.shape[1])) if len(active) < n_graph else None
        if full is not None:
            full[pos] = V
            parts = self.model.split(full)
        else:
            parts = self.model.split(V)
        with torch.enable_grad():
            hv = torch.autograd.grad([graph["grads"][i] for i in graph["diff"]], graph["leaves"],
                                     grad_outputs=[parts[i] for i in graph["diff"]], retain_graph=True,
                                     allow_unused=True, materialize_grads=True)
        out = torch.cat([h.reshape(n_graph, -1) for h in hv], dim=1)
        return out if full is None else out[pos]

    def _jvp_product(self, active: list[int], V: torch.Tensor, x, y) -> torch.Tensor:
        """Forward-over-reverse products of members ``active`` on ``(x, y)``."""
        params, buffers = self._inputs(active)
        n = len(active)
        if self.model.padded_count(n) > n:  # a lone member's copy: the same tangent
            V = V.repeat(2, 1)
        tangents = dict(zip(self.model.names, self.model.split(V)))

        def member_hvp(p, b, v):
            grad_fn = grad(lambda q, xs, ys: self.model._member_loss(q, b, xs, ys)[0])
            return jvp_of_gradient(grad_fn, p, v, x, y)[1]

        with math_attention():
            hv = vmap(member_hvp)(params, buffers, tangents)
        return self.model.flat(hv)[:n]

    def matvec(self, active: Sequence[int], V: torch.Tensor) -> torch.Tensor:
        active = [int(a) for a in active]
        V = V.to(self.dtype)
        if self._graph is not None:  # double backprop on the whole batch: one graph
            if self.model.padded_count(len(active)) <= self._graph["rows"] // 2:  # a rebuilt graph's rows
                x, y, _ = self.chunks[0]
                self._graph = self._build(active, x, y)
            return self._graph_product(self._graph, active, V)
        out = None
        for x, y, w in self.chunks:
            if self.mode == "double_backprop":
                part = self._graph_product(self._build(active, x, y), active, V)
            else:
                part = self._jvp_product(active, V, x, y)
            out = part * w if out is None else out.add_(part, alpha=w)
        return out
