"""The Gauss-Newton matrix ``G = J^T H_L J`` as a matrix-free operator, the positive
semi-definite alternative to the Hessian (``curvature="ggn"`` in :func:`catapult.sharpness` and
the spectrum functions).
"""
from __future__ import annotations

import math

import torch
from catapult.curvature.hessian import HessianOperator, math_attention
from catapult.curvature.microbatch import opaque_leaves, tensor_leaves, with_tensors
from catapult.curvature.modes import holds_compiled
from catapult.curvature.rng import fixed_rng
from catapult.curvature.stateless import functional_call
from catapult.curvature.torch_errors import named_missing_derivatives
from catapult.curvature.twice import forms_for, graph_functions

__all__ = ["CURVATURES", "GaussNewtonOperator"]

#: The curvature matrices the measurements take (``curvature=``): the Hessian of the loss, or
#: the Gauss-Newton matrix.
CURVATURES = ("hessian", "ggn")


class GaussNewtonOperator(HessianOperator):
    """``v -> G v`` with ``G = J^T H_L J``: ``J`` the Jacobian of the model's outputs with
    respect to the trainable parameters, ``H_L`` the Hessian of ``loss_fn`` with respect to the
    outputs (positive semi-definite for convex losses: MSE, cross-entropy).

    Each product is ``J v`` (reverse-over-reverse: the derivative of ``u -> J^T u`` along
    ``v``), ``w = H_L J v`` (double backprop through the loss alone) and ``J^T w`` (a backward).
    Without ``chunk_size`` one forward graph is kept for all products. Model handling (dtype,
    mode, dropout mask, buffers) is that of :class:`HessianOperator`, and so are micro-batches
    (``chunk_size``): for a loss that is a per-sample mean (or sum) over chunks ``B_k`` with
    weights ``w_k`` (detected as there), ``H_L`` is block-diagonal, so
    ``G v = sum_k w_k J_k^T H_{L_k} J_k v`` exactly; each product then rebuilds one chunk's
    forward graph at a time (its working memory scales with the chunk, at the price of a forward
    per chunk and product).

    Example: for a linear model the Gauss-Newton matrix is the Hessian, ``diag(4, 1)``, with or
    without micro-batches:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> GaussNewtonOperator(model, torch.nn.MSELoss(), batch)(torch.tensor([1.0, 1.0]))
        tensor([4., 1.])
        >>> G = GaussNewtonOperator(model, torch.nn.MSELoss(), batch, chunk_size=1)
        >>> G(torch.tensor([1.0, 1.0])), G.chunks
        (tensor([4., 1.]), 2)
    """

    _checks_products = False   # its own products are checked (verify_gauss_newton), not forward over reverse's
    _scripted_mode = "ggn"     # products by differentiating a backward: a scripted activation is measured

    def __init__(self, model, loss_fn, batch, *, dtype=None, seed: int = 0,
                 chunk_size: int | None = None):
        if isinstance(model, torch.nn.Module) and holds_compiled(model):
            # it failed at the first product: "torch.compile with aot_autograd does not currently
            # support double backward" (J v is the derivative of u -> J^T u)
            raise ValueError("curvature='ggn' takes J v by differentiating a backward, which a torch.compile'd "
                             "model's graphs cannot; pass the model uncompiled, or use curvature='hessian'")
        super().__init__(model, loss_fn, batch, dtype=dtype, hvp="forward_over_reverse",
                         seed=seed, chunk_size=chunk_size)
        self.mode = "gauss_newton"
        if "CompiledFunction" in self._custom:   # a torch.compile'd function it calls: holds_compiled cannot see it
            raise ValueError("curvature='ggn' takes J v by differentiating a backward, which the graphs of the "
                             "torch.compile'd code this model runs cannot; run it uncompiled, or use "
                             "curvature='hessian' with hvp='forward_over_reverse'")
        if self.chunks == 1:
            self._graph = self._forward_graph(self._inputs, self._targets)
            self.loss = float(self._graph[-1].detach())
        if self._custom and self._finite_loss:
            verify_gauss_newton(self, self._custom)

    def _outputs(self, params: dict, inputs) -> tuple:
        """``(pieces, tree, where)``: the tensors of the model's outputs ``tree`` at ``params``,
        flattened, and the positions of those that depend on the parameters, as
        :meth:`_forward_graph` takes them (for :func:`verify_gauss_newton`)."""
        with fixed_rng(self.seed, self.device), math_attention(), forms_for(self._forms_needed):
            buffers = {n: b.clone() for n, b in self._buffers.items()}
            out = self._forward(params, buffers, inputs)
        pieces = tensor_leaves(out)   # (the one walker: a UserDict, dict subclass or dataclass output too)
        return pieces, out, [i for i, t in enumerate(pieces) if t.requires_grad]

    def _forward(self, params: dict, buffers: dict, inputs):
        """The model's outputs at ``params``; a state the forward carries put back after it
        (:class:`~catapult.curvature.stateless.AttributesKept`), also where it raised."""
        try:
            return functional_call(self._model, {**self._frozen, **buffers, **params}, (inputs,),
                                   renormed=self._renormed)
        finally:
            self._kept.restore()

    def _forward_graph(self, inputs, targets):
        """``(leaves, outs, dummies, jt, out_leaves, out_grads, loss)`` on one (micro-)batch: the
        graph of the outputs that depend on the parameters (the floating tensors of whatever the
        model returns: a tensor, or a tuple, list or dict of them), ``J^T dummies``
        differentiable in ``dummies``, and the loss's gradient in those outputs, differentiable
        again."""
        leaves = [self._params[n].detach().requires_grad_(True) for n in self.names]
        params = dict(zip(self.names, leaves))
        with (torch.enable_grad(), fixed_rng(self.seed, self.device), math_attention(),
              forms_for(self._forms_needed)):
            buffers = {n: b.clone() for n, b in self._buffers.items()}
            out = self._forward(params, buffers, inputs)
            # the outputs' tensors, walked as the batches are (microbatch.tensor_leaves): torch's pytree
            # took a UserDict, a dict subclass or a dataclass for a leaf, and G was refused there
            pieces = tensor_leaves(out)
            where = [i for i, t in enumerate(pieces) if t.requires_grad]
            outs = [pieces[i] for i in where]
            dummies = [torch.zeros_like(o, requires_grad=True) for o in outs]
            jt = torch.autograd.grad(outs, leaves, dummies, create_graph=True, allow_unused=True,
                                     materialize_grads=True) if outs else [torch.zeros_like(p) for p in leaves]
            pieces = [t.detach() for t in pieces]
            out_leaves = [pieces[i].requires_grad_(True) for i in where]
            loss = self._loss_fn(with_tensors(out, pieces), targets)
            out_grads = torch.autograd.grad(loss, out_leaves, create_graph=True, allow_unused=True,
                                            materialize_grads=True) if outs else []
        if not getattr(self, "_loss_walked", False):  # once: the loss of the outputs only, or refused
            self._loss_walked = True
            # the model's own parameters (read by loss_fn itself), and this graph's leaves (reached
            # through an output the walker cannot see into: an object of another class; G came out 0)
            watched = {id(p): "model:" + name for name, p in self._model.named_parameters() if p.requires_grad}
            watched.update({id(leaf): "leaf:" + name for name, leaf in zip(self.names, leaves)})
            reached = graph_functions(loss, watched).read if torch.is_tensor(loss) and loss.requires_grad else []
            if any(name.startswith("leaf:") for name in reached):
                kinds = sorted({type(t).__name__ for t in opaque_leaves(out)})
                raise ValueError(f"curvature='ggn' takes J from the model's outputs that are tensors, or tuples, "
                                 f"lists, dicts (mappings) and dataclasses of them, but the loss reaches the "
                                 f"parameters through an output it cannot see into ({', '.join(kinds)}; G would "
                                 f"be 0 there): return a tensor or a dict of them")
            read = [name.removeprefix("model:") for name in reached if name.startswith("model:")]
            if read:
                raise ValueError(f"curvature='ggn' takes the loss as a function of the model's outputs, but "
                                 f"loss_fn reads the model's parameter {', '.join(read)} itself (G would miss "
                                 f"that use); curvature='hessian' measures such a loss, or return what the "
                                 f"loss needs from the model's forward")
        return leaves, outs, dummies, jt, out_leaves, out_grads, loss

    @staticmethod
    def _product(graph, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """``J^T H_L J v`` on one graph of :meth:`_forward_graph`, per parameter."""
        leaves, outs, dummies, jt, out_leaves, out_grads, _ = graph
        with torch.enable_grad():
            diff = [i for i, g in enumerate(jt) if g.requires_grad]
            if not diff:  # the outputs do not depend on the parameters
                return [torch.zeros_like(p) for p in parts]
            jv = torch.autograd.grad([jt[i] for i in diff], dummies, [parts[i] for i in diff],
                                     retain_graph=True, allow_unused=True, materialize_grads=True)
            curved = [j for j, g in enumerate(out_grads) if g.requires_grad]
            if curved:
                w = torch.autograd.grad([out_grads[j] for j in curved], out_leaves,
                                        [jv[j] for j in curved], retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
            else:  # a loss linear in the outputs has H_L = 0
                w = [torch.zeros_like(j) for j in jv]
            return list(torch.autograd.grad(outs, leaves, w, retain_graph=True,
                                            allow_unused=True, materialize_grads=True))

    @named_missing_derivatives
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(device=self.device, dtype=self.dtype)
        parts = self.split(v)
        self.matvecs += 1
        if not self._finite_loss:  # a diverged model (HessianOperator)
            return torch.full_like(v, math.nan)
        if self.chunks == 1:
            return torch.cat([o.reshape(-1) for o in self._product(self._graph, parts)])
        result = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        views = self.split(result)
        for x, y, weight in self._chunks:
            graph = self._forward_graph(x, y)
            for o, piece in zip(views, self._product(graph, parts)):
                o.add_(piece, alpha=weight)
            del graph  # frees this chunk's graph before the next one is built
        return result


def verify_gauss_newton(op: GaussNewtonOperator, names: list[str]) -> None:
    """:func:`~catapult.curvature.twice.check_custom_functions` for the Gauss-Newton products of a
    loss that goes through the custom Functions ``names``: ``J v`` is taken by reverse over reverse,
    the derivative of ``u -> J^T u``, which a backward autograd cannot differentiate (NumPy) loses
    (a NumPy ``tanh`` left the top two eigenvalues 13% and 19% low, silently). One product on the
    first (micro-)batch, of a unit vector drawn as :func:`~catapult.curvature.twice.verify_operator`
    draws it, against ``J^T (g(o + h Jv) - g(o - h Jv)) / 2h`` with ``Jv = (o(theta + h v) -
    o(theta - h v)) / 2h`` (``o`` the outputs, ``g`` the loss's gradient in them): first
    derivatives only. Skipped where :func:`~catapult.curvature.distributed.refusals_agreed` is not.

    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    >>> verify_gauss_newton(GaussNewtonOperator(model, torch.nn.MSELoss(), batch), ["F"])   # passes
    """
    from catapult.curvature.difference import central_step
    from catapult.curvature.distributed import refusals_agreed
    from catapult.curvature.twice import check_custom_functions

    if not refusals_agreed():
        return
    x, y = op._chunks[0][:2]
    graph = op._graph if op.chunks == 1 else op._forward_graph(x, y)
    leaves, outs = graph[0], graph[1]
    base, spec, where = op._outputs(dict(zip(op.names, leaves)), x)

    def loss_gradient(at: list[torch.Tensor]) -> tuple:
        pieces = [t.detach() for t in base]
        at = [o.detach().requires_grad_(True) for o in at]
        for i, o in zip(where, at):
            pieces[i] = o
        with torch.enable_grad(), fixed_rng(op.seed, op.device):
            loss = op._loss_fn(with_tensors(spec, pieces), y)
            return torch.autograd.grad(loss, at, allow_unused=True, materialize_grads=True)

    def difference(u: torch.Tensor, h: float) -> torch.Tensor:
        def outputs_at(s: float) -> list[torch.Tensor]:
            shifted = {n: (op._params[n] + s * p).requires_grad_(True) for n, p in zip(op.names, op.split(u))}
            with torch.enable_grad():
                pieces, _, at = op._outputs(shifted, x)
            return [pieces[i].detach() for i in at]

        jv = [(a - b) / (2.0 * h) for a, b in zip(outputs_at(h), outputs_at(-h))]
        plus = loss_gradient([o.detach() + h * j for o, j in zip(outs, jv)])
        minus = loss_gradient([o.detach() - h * j for o, j in zip(outs, jv)])
        w = [(a - b) / (2.0 * h) for a, b in zip(plus, minus)]
        with torch.enable_grad():
            back = torch.autograd.grad(outs, leaves, w, retain_graph=True, allow_unused=True, materialize_grads=True)
        return torch.cat([t.reshape(-1) for t in back])

    def product(u: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in op._product(graph, op.split(u))])

    generator = torch.Generator().manual_seed(op.seed + 1)
    v = torch.randn(op.numel, generator=generator, dtype=torch.float64).to(device=op.device, dtype=op.dtype)
    check_custom_functions(names, product, difference, v / torch.linalg.vector_norm(v), central_step(op._eps),
                           what="the Gauss-Newton products (J v by reverse over reverse) take wrong here: a product",
                           way_out="use curvature='hessian' with hvp='finite_difference' (first derivatives only)")
