"""The Hessian of a model's loss as a matrix-free operator: Hessian-vector products by double
backprop (the gradient graph built once) or forward-over-reverse (``torch.func``), in
micro-batches when memory is short.

Nothing here changes a model's parameters, gradients, buffers or train/eval mode, or the global
random number generators.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from catapult.arguments import check_batch, check_module, check_seed
from catapult.curvature.difference import refuse_renormed_differences, refuse_spectral_norm_differences
from catapult.curvature.difference_products import DifferenceProducts
from catapult.curvature.forward_ad import jvp_of_gradient, refuse_sparse_products
from catapult.curvature.grads_into import backward_into, graph_handles, refuse_constant, scalar_loss
from catapult.curvature.krylov import scaled_norm
from catapult.curvature.microbatch import map_tensors, refuse_dropout, split_batch, weighted_gradient
from catapult.curvature.modes import (HVP_MODES, holds_compiled, named_dtype_mix, refuse_stale_compiled, resolve_dtype,
                                      resolve_hvp)
from catapult.curvature.rng import fixed_rng
from catapult.curvature.stateless import (AttributesKept, RenormedCopies, batch_versions, functional_loss,
                                          has_renormed_embeddings, refuse_batch_written, refuse_parameters_written,
                                          refuse_scripted, storage_of)
from catapult.curvature.torch_errors import (functions_without_backward, mode_named, named_missing_derivatives,
                                             no_backward_error)
from catapult.curvature.twice import (built_with_forms, forms_for, math_attention, needs_forms, verify_operator,
                                      weight_norm_module)

__all__ = ["HVP_MODES", "HessianOperator", "resolve_dtype", "resolve_hvp", "fixed_rng", "math_attention"]


class HessianOperator(DifferenceProducts):
    """``v -> H v``: the Hessian of ``loss_fn(model(x), y)`` at the model's current parameters.

    ``H`` is taken with respect to all parameters with ``requires_grad`` (flattened in
    ``model.parameters()`` order), on one fixed batch, in the mode (train/eval) the model is in.
    The model is evaluated through :func:`torch.func.functional_call` on detached copies of its
    parameters and on clones of its buffers, cast to ``dtype`` when given (together with the
    floating-point inputs and targets, tensors nested in tuples, lists, dicts, mappings and dataclasses included), so
    the model's parameters, ``.grad``, buffers (e.g. BatchNorm running statistics) and mode are
    never changed. Every forward pass runs with the CPU/CUDA generator seeded with ``seed``
    inside :func:`torch.random.fork_rng`: in train mode with dropout ``H`` is the Hessian for
    one dropout mask, the same mask in every product, and the global RNG state is left as it
    was (NumPy's global generator and Python's ``random`` too: seeded per product, put back).

    Modes (``hvp=``):
      * ``"double_backprop"``: ``g = autograd.grad(L, theta, create_graph=True)`` once, then
        ``H v = autograd.grad(g, theta, grad_outputs=v)`` re-using that graph (one backward each).
      * ``"forward_over_reverse"``: ``H v = jvp(grad(L), (theta,), (v,))`` with
        :mod:`torch.func` (a forward + backward with dual numbers per product; no graph kept;
        floating targets get a zero tangent, see :func:`~catapult.curvature.forward_ad.jvp_of_gradient`).
      * ``"finite_difference"``: ``H v ~ (g(theta + h u) - g(theta - h u)) / (2 h) * ||v||``,
        ``u = v / ||v||``, ``h = eps^(1/3)`` of the dtype: two plain gradients per product, no
        second-order graph, for setups without double backward. Each product is checked for
        kinks of the loss (ReLU) and retaken at a smaller step, or refused with a ValueError
        (:mod:`~catapult.curvature.difference`; ``difference_gap``, ``shrunk_steps``). Measured
        relative error of ``H v`` on a small tanh MLP (``tests/test_spectrum.py``): <= 5e-11 in
        float64, <= 2.5e-5 in float32; a step crossing a ReLU kink by a small margin passes the
        check with an error of about half its gap (up to 1.4e-3 of ``lambda_max``,
        ``bench/probe_fd_margin.py``). ``sharpness``, ``preconditioned_sharpness`` and
        ``top_eigenpairs`` end a solve on these products with two or three more per vector, so their
        ``error_bound`` (``residuals``) includes
        the products' own error (:mod:`~catapult.curvature.certify`; ``difference.scaled_step``
        takes a product at a multiple of the step, ``step_factor``).
      * ``"compiled"``: ``H v = vjp(grad(L))(v)``, reverse over reverse, and the gradients of
        :meth:`forward_difference`, through ``torch.compile`` (:mod:`~catapult.curvature.compiled`):
        exact products, no graph kept, cheaper per call once compiled on models whose products
        are many small operations (the small GPT of ``bench/bench_peers.py``: a ``sharpness``
        call 1.3x faster), slower on large matmuls (the Fig. 1 FCN: 1.4x, since each product
        re-runs the forward and backward that double backprop keeps); the first call compiles
        (15-50 s on 2 CPU cores). Train-mode dropout is refused (compiled graphs draw their own
        masks), and so is weight norm (:mod:`~catapult.curvature.twice`: wrong there).
      * ``"auto"``: the one measured faster (``_AUTO_HVP``; double backprop on CPU);
        forward-over-reverse for a model holding a ``torch.compile`` wrapper (no double backward).

    Micro-batches (``chunk_size``): with ``chunk_size=c`` smaller than the batch, the batch is cut
    along dim 0 into chunks ``B_1..B_K`` of at most ``c`` samples and every product is summed
    over them, ``H v = sum_k w_k H_k v`` (``H_k`` the Hessian of the chunk's loss), so at most
    one chunk's graph is alive at a time: the HVP's working memory (activations and the
    backward's saved tensors) shrinks by ``~K``, at the price of re-running the chunk's forward
    and gradient in every product (double backprop then costs about a gradient more per
    product). This is exact when the loss is a per-sample mean (``w_k = |B_k| / |B|``: MSE,
    cross-entropy, token-mean LM losses) or a per-sample sum (``w_k = 1``); which one is
    detected once, by comparing the full batch's loss with both combinations of the chunks'
    losses, and any other loss is refused with a ``ValueError``. Train-mode BatchNorm and
    dropout couple or re-draw samples per chunk, so they are refused too (call
    ``model.eval()`` first).

    Weight norm (``torch._weight_norm``) is taken by parts, ``v * (g / ||v||)`` (torch's fused
    kernel has a wrong double backward), and embeddings without ``scale_grad_by_freq`` and
    ``sparse`` (flags of the backward alone): :mod:`~catapult.curvature.twice`.

    Without ``dtype``, a float16 or bfloat16 model is measured in float32: half precision rounds
    at 1e-3 .. 8e-3, above the tolerances asked of the solvers. Where the loss at the
    parameters is nan or inf (a diverged model), every product is nan, and the solvers report
    ``nan``; where no trainable parameter reaches the loss, the operator is refused
    (``ValueError``).

    ``retain_graph=False`` (double backprop only): the whole batch's gradient graph is not kept
    between products either; every product rebuilds it as one micro-batch would, so the
    operator holds no parameter-sized state between products (``memory="lean"``).

    Attributes: ``numel``, ``dtype``, ``device``, ``mode`` (resolved hvp mode), ``loss`` (float),
    ``kinked`` (whether the loss's graph goes through a kinked op such as ``F.relu``:
    :data:`~catapult.curvature.twice.KINKED_NODES`),
    ``gradient()`` (flat gradient at the current parameters, computed once), ``matvecs``,
    ``chunks`` (number of micro-batches, 1 without ``chunk_size``), ``forward_difference(v)``
    (a one-sided difference approximation of ``H v`` from one gradient, for start vectors).

    Example: ``L(w) = mean((x w - y)^2)`` over two samples ``x = (2, 0), (0, 1)`` has the
    Hessian ``2 x^T x / 2 = diag(4, 1)``:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> H = HessianOperator(model, torch.nn.MSELoss(), batch)
        >>> H(torch.tensor([1.0, 1.0]))
        tensor([4., 1.])
        >>> H.numel, H.mode, H.matvecs
        (2, 'double_backprop', 1)
    """

    #: whether a build checks one product of a loss through custom Functions (twice.verify_operator); the
    #: Gauss-Newton operator checks its own (ggn.verify_gauss_newton)
    _checks_products = True

    #: the mode a parameterless TorchScript module is judged under (stateless.refuse_scripted); None: ``hvp``
    _scripted_mode: str | None = None

    def __init__(self, model: torch.nn.Module, loss_fn, batch, *, dtype=None, hvp: str = "auto",
                 seed: int = 0, chunk_size: int | None = None, retain_graph: bool = True):
        check_module("HessianOperator", model)
        refuse_scripted("", model)
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        check_batch("HessianOperator", batch)  # a pair, and no input of 0 samples
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
        # 2**64 failed at the first product in torch's "Overflow when unpacking long long"; torch.tensor(3) was refused
        seed = check_seed("HessianOperator", "seed", seed, optional=False)
        dtype, promoted = resolve_dtype(dtype), None
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("model has no parameters with requires_grad=True")
        # no values to measure: torch's raw "Can't access the shape of an uninitialized parameter" or
        # "Tensor on device meta is not on the expected device" came out
        for name, p in model.named_parameters():
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                raise ValueError(f"parameter {name!r} is uninitialized (a lazy module): run one forward of the "
                                 f"model first")
            if p.is_meta:
                raise ValueError(f"parameter {name!r} is on the meta device (no values): materialize the model "
                                 f"first (model.to_empty(device=...) and its initialization, or load a state dict)")
        # (after the lazy and meta checks: numel() of an uninitialized parameter raises)
        if not any(p.numel() for p in trainable.values()):   # the solvers' "v0 must be non-empty" came out
            raise ValueError(f"model's trainable parameters {sorted(trainable)} have 0 entries: there is no "
                             f"Hessian to measure")
        first = next(iter(trainable.values()))
        if dtype is None and any(p.dtype in (torch.float16, torch.bfloat16) for p in trainable.values()):
            dtype = promoted = torch.float32  # half precision rounds at 1e-3 .. 8e-3, above any useful tol
        self.device = first.device
        self.dtype = dtype if dtype is not None else first.dtype
        # every one: a complex parameter after a real one (or under dtype=) met torch's raw cast error
        if (odd := next((n for n, p in trainable.items() if not p.dtype.is_floating_point), None)) is not None:
            raise ValueError(f"parameters must be floating point, got {trainable[odd].dtype} for {odd!r} "
                             f"(freeze it with requires_grad_(False) to measure the others)")
        if not self.dtype.is_floating_point:
            raise ValueError(f"parameters must be floating point, got {self.dtype}")
        refuse_stale_compiled("HessianOperator", model)   # torch 2.2.2: products at the traced parameters
        if hvp in ("auto", "double_backprop") and holds_compiled(model):
            # torch.compile's graphs have no double backward: it failed at the first product
            # ("aot_autograd does not currently support double backward"); forward-over-reverse
            # differentiates them once
            if hvp == "double_backprop":
                raise ValueError("hvp='double_backprop' cannot differentiate a torch.compile'd model twice; use "
                                 "hvp='auto' (forward_over_reverse for such a model) or pass the model uncompiled")
            hvp = "forward_over_reverse"
        self.mode = hvp = resolve_hvp(hvp, self.device)
        refuse_scripted("", model, self._scripted_mode or hvp)   # a parameterless one: torch.func's are wrong
        refuse_sparse_products(self._scripted_mode or hvp, batch)   # the Gauss-Newton products take them
        if hvp == "finite_difference":
            refuse_spectral_norm_differences(model, "hvp='finite_difference'")
        self.seed = seed
        self.names = list(trainable)
        self.shapes = [p.shape for p in trainable.values()]
        self.sizes = [p.numel() for p in trainable.values()]
        self.numel = sum(self.sizes)
        self.matvecs = 0

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return t.to(self.dtype) if dtype is not None and t.is_floating_point() else t

        # Detached (storage-sharing) leaves for the trainable parameters, frozen parameters as
        # constants; buffers are cloned inside every forward (_loss), because train-mode
        # BatchNorm updates them in place and torch.func forbids mutating captured tensors.
        self._params = {n: cast(p) for n, p in trainable.items()}
        # finite differences' rounding unit: the coarsest dtype (without dtype= they may mix)
        self._eps = max(float(torch.finfo(d).eps)
                        for d in {self.dtype, *(t.dtype for t in self._params.values())})
        self._frozen = {n: cast(p) for n, p in model.named_parameters() if not p.requires_grad}
        self._buffers = {n: cast(b) for n, b in model.named_buffers()}
        inputs, targets = batch
        # tensors nested in tuples, lists, dicts, mappings, dataclasses (a model taking several inputs)
        # are cast too (microbatch.map_tensors: torch's pytree left a dict subclass's uncast)
        self._inputs = map_tensors(cast, inputs)
        self._targets = map_tensors(cast, targets)
        self._model, self._loss_fn = model, loss_fn
        # asked once: a scan of the modules in every forward cost the small GPT's sharpness ~1% (twice.py)
        self._forms_needed, self._renormed = needs_forms(model), has_renormed_embeddings(model)
        # the forwards up to the graph walk pass an F.embedding(max_norm=) call a copy of the weight, and
        # say whether one did (stateless.RenormedCopies; forms from then on): it wrote the user's rows
        # (and how close a row looked up is to its max_norm: finite differences move it across)
        self._watch_renorm, self._renorm_seen, self._renorm_room = True, False, math.inf
        self._kept = AttributesKept()   # a state the forward carries in a plain attribute: put back (stateless.py)
        self._grad_flat: torch.Tensor | None = None
        self._base: torch.Tensor | None = None  # g(theta) for the finite differences
        self.difference_gap, self.shrunk_steps = 0.0, 0
        self.step_factor = 1.0   # the difference step's multiple (difference.scaled_step)
        # the kink test's gap as every process sees it: DistributedOperator makes it the ranks' largest
        self.agree_gap: Callable[[float], float] = lambda gap: gap
        # [(inputs, targets, weight)]; one entry = the whole batch, weight 1 (and a nan loss).
        with named_dtype_mix(dtype, trainable.values(), promoted is not None):   # a forward casting to float32 itself
            self._chunks, self.loss = split_batch(model, self._loss, self._params, self._inputs,
                                                  self._targets, chunk_size, self.dtype)
        self.chunks = len(self._chunks)
        # With chunks, every product and the gradient are built chunk by chunk (_chunked_product,
        # gradient); on the whole batch double backprop keeps one gradient graph for all products
        # (unless retain_graph=False: then the whole batch is one chunk, rebuilt per product).
        # Compiled products and gradients come from compiled.py, chunk by chunk.
        self._per_product = self.mode != "compiled" and (
            self.chunks > 1 or (self.mode == "double_backprop" and not retain_graph))
        if self.mode == "compiled":
            refuse_dropout(model, "hvp='compiled'", "would not follow the seed in a compiled graph",
                           "another hvp mode")
            if (where := weight_norm_module(model)) is not None:  # twice.py
                raise ValueError(f"hvp='compiled': module {where!r} is under weight norm, whose second "
                                 "derivatives torch.compile takes wrong; use another hvp mode")
            # theta as one flat vector in dtype, and how to cut it back into the parameters
            self._theta = torch.cat([p.reshape(-1).to(self.dtype) for p in self._params.values()])
            self._layout = (tuple(self.names), tuple(tuple(s) for s in self.shapes),
                            tuple(p.dtype for p in self._params.values()))
        # one forward (built again where a direct torch._weight_norm call needs the forms; twice.py)
        with named_dtype_mix(dtype, trainable.values(), promoted is not None):
            self._custom = custom = built_with_forms(self, self._build)
        self._watch_renorm = False
        refuse_renormed_differences(self)
        # the curvature of a nan or inf loss is nan: every product says so (a diverged model)
        self._finite_loss = math.isfinite(self.loss)
        if self._checks_products and self._finite_loss:  # custom Functions' (twice.py)
            verify_operator(self, custom)

    def _build(self) -> torch.Tensor:
        """The graph the products start from (the first piece's forward otherwise, which also
        refuses a loss no parameter reaches); its loss, with that graph."""
        if self.chunks == 1 and self.mode == "double_backprop" and not self._per_product:
            self._leaves, loss, grads = self._gradient_graph(self._inputs, self._targets,
                                                             create_graph=True)
            self.loss = float(loss.detach())
            self._grads = grads  # the flat gradient is made from these only when asked for
            self._diff = [i for i, g in enumerate(grads) if g.requires_grad]
            return loss
        _, loss, _ = self._gradient_graph(*self._chunks[0][:2], create_graph=None)
        self.loss = float(loss.detach()) if self.chunks == 1 else self.loss
        if self.chunks == 1 and self.mode in ("forward_over_reverse", "finite_difference"):
            self._grad_fn = torch.func.grad_and_value(self._loss)
        return loss

    @named_missing_derivatives
    def _gradient_graph(self, inputs, targets, create_graph: bool | None, scale: float = 1.0):
        """``(leaves, loss, grads)``: the loss on ``(inputs, targets)`` at fresh leaves (detached
        aliases of the parameters, so ``requires_grad_`` leaves the model's tensors alone) and
        the gradient of ``scale`` times it, differentiable again when ``create_graph`` (none
        when it is None: ``(leaves, loss, None)``)."""
        leaves = [self._params[n].detach().requires_grad_(True) for n in self.names]
        with torch.enable_grad():
            loss = self._loss(dict(zip(self.names, leaves)), inputs, targets)
            refuse_constant(loss)
            if create_graph is None:
                return leaves, loss, None
            try:
                grads = weighted_gradient(loss, scale, leaves, self._eps, create_graph=create_graph,
                                          allow_unused=True, materialize_grads=True)
            except NotImplementedError as err:   # torch's error names no Function; the graph is at hand
                if (refusal := no_backward_error(mode_named(self), err, functions_without_backward(loss))) is not None:
                    raise refusal from err
                raise
        return leaves, loss, grads

    @named_missing_derivatives
    def accumulate(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out += H v`` in place (``out`` flat, in the operator's dtype; returned).

        In double-backprop mode the product is never formed apart from ``out``: the leaves'
        ``.grad`` are views of ``out``, so autograd adds each parameter block's product into it
        as soon as that block is computed, and a micro-batch's gradient tensors are dropped
        before its second backward (only their graph, by
        :func:`torch.autograd.graph.get_gradient_edge`, is kept), with the micro-batch weight
        folded into its loss. The working memory is then the largest parameter block plus the
        graph, instead of two or three parameter-sized vectors (the gradient, the product and
        the sum). In finite-difference mode the gradients are accumulated the same way into one
        work vector, from one shifted copy of the parameters moved in place. Forward-over-reverse adds
        ``self(v)``. Counts one product.

        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> H = HessianOperator(model, torch.nn.MSELoss(), batch, chunk_size=1)
        >>> H.accumulate(torch.tensor([1.0, 1.0]), torch.tensor([10.0, 20.0]))
        tensor([14., 21.])
        """
        if out.shape != (self.numel,) or out.dtype != self.dtype:
            raise ValueError(f"out must be a flat {self.dtype} vector of {self.numel} elements, "
                             f"got {out.dtype} of shape {tuple(out.shape)}")
        if self.mode not in ("double_backprop", "finite_difference") or not self._finite_loss:
            return out.add_(self(v))
        v = v.to(device=self.device, dtype=self.dtype)
        parts, views = self.split(v), self.split(out)
        self.matvecs += 1
        if self.mode == "finite_difference":
            self._finite_difference_into(parts, out, scaled_norm(v))
            return out
        if not self._per_product:
            if self._diff:
                edges = graph_handles([self._grads[i] for i in self._diff])
                backward_into(self._leaves, views, edges, [parts[i] for i in self._diff],
                               retain_graph=True)
            return out
        for x, y, w in self._chunks:
            leaves, _, grads = self._gradient_graph(x, y, create_graph=True, scale=w)
            diff = [i for i, g in enumerate(grads) if g.requires_grad]
            edges = graph_handles([grads[i] for i in diff])
            del grads  # the graph stays alive through the edges; the gradient values are freed (torch 2.3+)
            if edges:
                backward_into(leaves, views, edges, [parts[i] for i in diff],
                               retain_graph=False)
        return out

    def _loss(self, params: dict, inputs=None, targets=None, then=None) -> torch.Tensor:
        inputs = self._inputs if inputs is None else inputs
        targets = self._targets if targets is None else targets
        # Second derivatives need the math kernel of scaled_dot_product_attention: the fused
        # (flash / memory-efficient) kernels have no double backward; and weight norm by parts,
        # whose fused kernel's double backward is wrong (twice.py).
        watch = RenormedCopies() if self._watch_renorm else contextlib.nullcontext()
        versions = batch_versions(inputs, targets) if self._watch_renorm else None   # (up to the graph walk)
        written = ({n: (t._version, storage_of(t)) for n, t in {**self._frozen, **params}.items()}
                   if self._watch_renorm else None)
        state = self._kept.watch(self._model) if self._watch_renorm else contextlib.nullcontext()
        # (self._kept: the state put back after the forward, also where it or loss_fn raised)
        with fixed_rng(self.seed, self.device), math_attention(), forms_for(self._forms_needed), watch, state, \
                self._kept:
            buffers = {n: b.clone() for n, b in self._buffers.items()}   # a loss_fn may read params too
            loss = functional_loss(self._model, {**self._frozen, **buffers, **params}, inputs, self._loss_fn,
                                   targets, renormed=self._renormed, then=then)
        if self._watch_renorm:
            self._renorm_seen, self._renorm_room = self._renorm_seen or watch.seen, min(self._renorm_room, watch.room)
            refuse_batch_written(versions, (inputs, targets))
            refuse_parameters_written(written, {**self._frozen, **params})
        return scalar_loss(loss)

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Flat vector -> list of views shaped like the trainable parameters."""
        if v.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} elements (one per trainable "
                             f"parameter entry), got shape {tuple(v.shape)}")
        return [c.view(s) for c, s in zip(torch.split(v, self.sizes), self.shapes)]

    def unused_parameters(self) -> set[str]:
        """Names of the trainable parameters the loss reaches on no piece of the batch: their ``.grad``
        gets no value from it, and torch's step skips those whose ``.grad`` is None (no move, no decay; one
        holding zeros, ``zero_grad(set_to_none=False)``, is stepped: ``curvature.preconditioner.skipped_parameters``
        reads which). One gradient's work."""
        unused = set(self.names)
        for x, y, _ in self._chunks:
            leaves, loss, _ = self._gradient_graph(x, y, create_graph=None)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            unused &= {n for n, g in zip(self.names, grads) if g is None}
        return unused

    @named_missing_derivatives
    def gradient(self) -> torch.Tensor:
        """Flat gradient of the loss at the current parameters (computed once, cached)."""
        if self._grad_flat is None and self._per_product:
            flat = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
            for x, y, w in self._chunks:
                _, _, grads = self._gradient_graph(x, y, create_graph=False)
                for out, g in zip(self.split(flat), grads):
                    out.add_(g, alpha=w)
            self._grad_flat = flat
        elif self._grad_flat is None and self.mode in ("compiled", "finite_difference"):
            # the base the differences subtract (plain autograd: custom Functions need no functorch rule)
            self._grad_flat = self._difference_base()
        elif self._grad_flat is None and self.mode == "double_backprop":
            self._grad_flat = torch.cat([g.detach().reshape(-1) for g in self._grads])
        elif self._grad_flat is None:
            with torch.enable_grad():
                grads, loss = self._grad_fn(self._params)
            self.loss = float(loss)
            self._grad_flat = torch.cat([grads[n].reshape(-1) for n in self.names])
        return self._grad_flat

    def _chunked_product(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``sum_k w_k H_k v`` over the micro-batches, one chunk's graph alive at a time."""
        out = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        views = self.split(out)
        tangents = dict(zip(self.names, parts))
        for x, y, w in self._chunks:
            if self.mode == "double_backprop":
                leaves, _, grads = self._gradient_graph(x, y, create_graph=True)
                diff = [i for i, g in enumerate(grads) if g.requires_grad]
                if not diff:
                    continue
                with torch.enable_grad():
                    pieces = torch.autograd.grad([grads[i] for i in diff], leaves,
                                                 grad_outputs=[parts[i] for i in diff],
                                                 allow_unused=True, materialize_grads=True)
                del grads  # frees this chunk's graph before the next one is built
            else:
                _, hv = jvp_of_gradient(torch.func.grad(self._loss), self._params, tangents,
                                        x, y)
                pieces = [hv[n] for n in self.names]
            for o, h in zip(views, pieces):   # torch 2.2 materialised an unused leaf's zeros requiring grad
                o.add_(h.detach(), alpha=w)
            del pieces
        return out

    def _compiled_call(self, name: str, vector: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k`` over the micro-batches of :mod:`~catapult.curvature.compiled`'s
        gradient at the flat point ``vector`` (``name="gradient"``) or of ``H vector`` at the
        parameters (``"product"``)."""
        from catapult.curvature import compiled  # it imports this module's math_attention

        total, restore = None, self._kept.restore   # (also before the eager retry of a failed compile)
        for x, y, w in self._chunks:
            with fixed_rng(self.seed, self.device), self._kept:   # (the state put back, also on a raise)
                if name == "product":
                    _, part = compiled.gradient_and_product(self._model, self._loss_fn, self._theta,
                                                            vector, self._layout, self._frozen,
                                                            self._buffers, x, y, self._forms_needed, restore)
                else:
                    part, _ = compiled.gradient_and_loss(self._model, self._loss_fn, vector,
                                                         self._layout, self._frozen, self._buffers,
                                                         x, y, self._forms_needed, restore)
            if total is None:
                total = part if w == 1.0 else part.mul_(w)
            else:
                total.add_(part, alpha=w)
        return total

    @named_missing_derivatives
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``H v`` for a flat vector ``v`` (cast to the operator's dtype/device)."""
        v = v.to(device=self.device, dtype=self.dtype)
        parts = self.split(v)
        self.matvecs += 1
        if not self._finite_loss:
            return torch.full_like(v, math.nan)
        if self.mode == "finite_difference":
            out = torch.zeros_like(v)
            self._finite_difference_into(parts, out, scaled_norm(v))
            return out
        if self.mode == "compiled":
            return self._compiled_call("product", v)
        if self._per_product:
            return self._chunked_product(parts)
        if self.mode == "double_backprop":
            if not self._diff:
                return torch.zeros_like(v)
            with torch.enable_grad():
                hv = torch.autograd.grad([self._grads[i] for i in self._diff], self._leaves,
                                         grad_outputs=[parts[i] for i in self._diff],
                                         retain_graph=True, allow_unused=True,
                                         materialize_grads=True)
            # detached: torch 2.2 materialised an unused leaf's zeros requiring grad (Lanczos then
            # refused its inner products as add_'s alpha)
            return torch.cat([h.reshape(-1) for h in hv]).detach()
        (grads, _), (hv, _) = jvp_of_gradient(self._grad_fn, self._params,
                                              dict(zip(self.names, parts)), self._inputs,
                                              self._targets)
        if self._grad_flat is None:  # the primal output is the gradient: keep it for free
            self._grad_flat = torch.cat([grads[n].reshape(-1) for n in self.names])
        return torch.cat([hv[n].reshape(-1) for n in self.names])


