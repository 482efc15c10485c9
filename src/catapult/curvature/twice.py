"""Torch operations whose second derivatives torch gets wrong or lacks, taken in forms it
differentiates twice right inside the curvature operators' forward passes
(:class:`weight_norm_by_parts`, :class:`second_order_forms`, :func:`math_attention`).

``F.scaled_dot_product_attention``'s fused kernels (flash, memory-efficient) have no double
backward: the operators restrict it to its math kernel (:func:`math_attention`).

``torch._weight_norm(v, g, dim)`` (``torch.nn.utils.parametrizations.weight_norm`` and the legacy
``torch.nn.utils.weight_norm``) runs, for ``dim`` 0 or the last one, the fused
``_weight_norm_interface``, whose backward under ``create_graph`` treats the row norms it saved in
the forward as constants (torch 2.13): its double backward drops their dependence on ``v``. On a
``Linear(5, 6)`` under weight norm, ``Tanh``, ``Linear(6, 3)`` and cross-entropy (float64) the
Hessian from double backprop was not symmetric (entries 0.2 off their transposes), and
``catapult.sharpness`` returned 0.911918 with ``error_bound`` 5e-9, ``converged``, where the
Hessian's top eigenvalue (central differences of the gradient, or double backprop of the
same loss with ``W = g v / ||v||`` written out) is 0.912154; forward-over-reverse products raised
torch's NotImplementedError (the fused op has no forward-AD formula). The composite
``v * (g / norm_except_dim(v, 2, dim))`` that torch itself takes for other ``dim`` is the same
function, differentiable twice by parts, with forward-AD formulas throughout.

A custom ``torch.autograd.Function`` whose backward is not made of differentiable torch operations
(NumPy, a custom kernel) differentiates twice wrong, silently: a ``tanh`` computed in NumPy inside
a ``Linear(5, 6)``, ``Linear(6, 3)`` model gave a sharpness of 0.7078, ``converged`` with
``error_bound`` 8e-9, where the model's is 0.7583 (the ``tanh''`` term is lost; the matrix stays
symmetric, so no solver sees it). Where the loss's graph holds such a Function
(:func:`custom_functions`), the double-backprop operator checks one product of a seeded random
vector against central differences of the gradient, which need first derivatives only
(:func:`check_custom_functions`), and refuses a product that is off.

``F.embedding`` with ``scale_grad_by_freq=True`` divides each row's gradient by its count in the
batch: that is not the loss's gradient, and its Jacobian is not symmetric (a 4-dimensional
embedding's "sharpness" came out 0.468275, ``converged``, error bound 8e-10, where the loss's
Hessian has 0.465925 and the matrix taken had a 3.6e-2 spread in its top three); with
``sparse=True`` the gradient is a sparse tensor, and every product raised "reshape is not
implemented for sparse tensors". Neither flag changes the forward, so the operators take the
lookup without them (:class:`second_order_forms`), and measure the loss's Hessian.

Under ``torch.compile`` the embeddings' flags are dropped all the same, but the mode does not
reach the weight-norm op (``hvp="compiled"`` still gave that
0.911918, the mode entered inside or around the compiled function), so the compiled products
refuse a model with weight norm (:func:`weight_norm_module` names it).

A ``torch._weight_norm`` (or ``torch._weight_norm_interface``) called in a model's forward, with no
weight-norm module to see, gave the same silently wrong products (3.4e-6 off the top of a dense
float64 Hessian, ``converged`` with ``error_bound`` 6e-11): the operators find the fused op's node
in the graph of their first forward, one walk per build (:func:`built_with_forms`), and take it
by parts from there on.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from catapult.curvature.difference import central_step
from catapult.curvature.krylov import scaled_norm
from catapult.curvature.modes import eager_stance, holds_compiled
from catapult.curvature.stateless import renormed_lookup
from catapult.curvature.torch_errors import (functions_without_backward, mode_named, no_backward_error,
                                            refuse_reentrant_checkpoint)
from catapult.curvature.torchscript import profiled_runs, refuse_torchscript, torchscript_node, user_scripted

__all__ = ["math_attention", "weight_norm_by_parts", "weight_norm_module", "custom_functions", "check_custom_functions",
           "verify_operator", "built_with_forms", "GraphScan", "KINKED_NODES", "graph_functions", "refuse_parameters_read",
           "second_order_forms", "needs_forms", "forms_for", "full_backward_hooked"]


def math_attention():
    """Context that restricts ``F.scaled_dot_product_attention`` to its math kernel (twice
    differentiable). Torch before 2.3 has no ``torch.nn.attention``: there the process-wide flags of
    ``torch.backends.cuda`` (which its CPU kernel choice reads too) turn the flash and
    memory-efficient kernels off inside and back as they were after.

    Example:
        >>> q = torch.ones(1, 2, 4)
        >>> with math_attention():
        ...     out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        >>> out.shape
        torch.Size([1, 2, 4])
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: it was a no-op, and a fused kernel has no double backward
        return _math_attention_flags()
    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def _math_attention_flags():
    """:func:`math_attention` on torch < 2.3: only the math kernel's flag on, the others restored after."""
    cuda = torch.backends.cuda
    kernels = [k for k in ("flash", "mem_efficient", "cudnn") if hasattr(cuda, f"{k}_sdp_enabled")]
    before = {k: bool(getattr(cuda, f"{k}_sdp_enabled")()) for k in (*kernels, "math")}
    try:
        for k in kernels:
            getattr(cuda, f"enable_{k}_sdp")(False)
        cuda.enable_math_sdp(True)
        yield
    finally:
        for k, on in before.items():
            getattr(cuda, f"enable_{k}_sdp")(on)


_EMBEDDING_GRADIENT_FLAGS = {"scale_grad_by_freq": False, "sparse": False}


def _weight_norm_arguments(v, g, dim=0):
    return v, g, dim


class weight_norm_by_parts(TorchFunctionMode):  # noqa: N801 -- used as a context, like torch's modes
    """Context in which ``torch._weight_norm(v, g, dim)`` is evaluated as
    ``v * (g / torch.norm_except_dim(v, 2, dim))``, the same function by operations whose double
    backward and forward AD are right; every other call is unchanged.

    Example (``w = g v / ||v||``: the Hessian of ``sum(w^3)`` in ``v``, taken by double backprop,
    is symmetric here, as a Hessian must be):
        >>> v, g = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[1.5]], dtype=torch.float64)
        >>> def f(v):
        ...     with weight_norm_by_parts():
        ...         return (torch._weight_norm(v, g, 0) ** 3).sum()
        >>> H = torch.autograd.functional.hessian(f, v).reshape(2, 2)
        >>> torch.allclose(H, H.T)
        True
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._weight_norm:
            v, g, dim = _weight_norm_arguments(*args, **kwargs)
            return v * (g / torch.norm_except_dim(v, 2, dim))
        if func is torch._weight_norm_interface:  # called directly: (w, the norms)
            v, g, dim = _weight_norm_arguments(*args, **kwargs)
            norm = torch.norm_except_dim(v, 2, dim)
            return v * (g / norm), norm
        return func(*args, **kwargs)


class second_order_forms(weight_norm_by_parts):  # noqa: N801 -- used as a context, like torch's modes
    """:class:`weight_norm_by_parts`, and ``F.embedding`` / ``F.embedding_bag`` with
    ``scale_grad_by_freq`` and ``sparse`` off (flags of the backward only, not of the value), so
    the gradient is the loss's own and dense, and with a ``max_norm`` on a copy of the weight
    (:func:`~catapult.curvature.stateless.renormed_lookup`); every other call is unchanged.

    Example (the row looked up twice: its gradient is 2, not 2 / 2):
        >>> w = torch.zeros(3, 2, requires_grad=True)
        >>> with second_order_forms():
        ...     loss = torch.nn.functional.embedding(torch.tensor([1, 1]), w, scale_grad_by_freq=True).sum()
        >>> torch.autograd.grad(loss, w)[0][1]
        tensor([2., 2.])
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.embedding, torch.nn.functional.embedding_bag):
            # a max_norm renormalises a copy of the weight (stateless.renormed_lookup), not the user's
            bound = renormed_lookup(func, args, kwargs) or inspect.signature(func).bind(*args, **kwargs)
            if any(bound.arguments.get(k) for k in _EMBEDDING_GRADIENT_FLAGS) or bound.arguments.get("max_norm"):
                bound.arguments.update(_EMBEDDING_GRADIENT_FLAGS)
                return func(*bound.args, **bound.kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def weight_norm_module(model: torch.nn.Module) -> str | None:
    """The name of the first module of ``model`` under weight norm (a
    ``torch.nn.utils.parametrizations.weight_norm`` parametrization, or the legacy
    ``torch.nn.utils.weight_norm`` hook), or None.

    >>> from torch.nn.utils.parametrizations import weight_norm
    >>> model = torch.nn.Sequential(torch.nn.Tanh(), weight_norm(torch.nn.Linear(2, 2)))
    >>> weight_norm_module(model), weight_norm_module(torch.nn.Linear(2, 2)) is None
    ('1', True)
    """
    from torch.nn.utils.parametrizations import _WeightNorm
    legacy = getattr(sys.modules.get("torch.nn.utils.weight_norm"), "WeightNorm", ())
    for name, module in model.named_modules():
        lists = getattr(module, "parametrizations", None)
        if isinstance(lists, torch.nn.ModuleDict) and any(
                isinstance(p, _WeightNorm) for chain in lists.values() for p in chain):
            return name
        if legacy and any(isinstance(hook, legacy) for hook in module._forward_pre_hooks.values()):
            return name
    return None


def needs_forms(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a module whose second derivatives :class:`second_order_forms` fixes: one
    under weight norm (:func:`weight_norm_module`), or an ``nn.Embedding`` / ``nn.EmbeddingBag``
    with ``scale_grad_by_freq`` or ``sparse``. The operators ask once, when they are built (a scan
    of the modules in every forward cost the small GPT's ``sharpness`` ~1%). A ``torch._weight_norm``
    called in a forward without those modules is found in the graph of the operator's first forward
    (:func:`built_with_forms`), and so is an ``F.embedding(..., scale_grad_by_freq=True)`` call.

    >>> needs_forms(torch.nn.Embedding(3, 2, sparse=True)), needs_forms(torch.nn.Linear(2, 2))
    (True, False)
    """
    flagged = any(isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                  and (m.scale_grad_by_freq or m.sparse) for m in model.modules())
    return flagged or weight_norm_module(model) is not None


def forms_for(needed: bool):
    """:class:`second_order_forms` where it is ``needed`` (:func:`needs_forms`), else a context that
    does nothing: the mode sends every torch call of the forward through Python, ~4% of a
    ``sharpness`` call's CPU time on the small GPT of ``bench/bench_peers.py`` (0.212 -> 0.204 s
    median, stop 48), for models that need it not.

    >>> isinstance(forms_for(True), second_order_forms), isinstance(forms_for(False), second_order_forms)
    (True, False)
    """
    return second_order_forms() if needed else contextlib.nullcontext()


#: The ``grad_fn`` of torch's fused weight norm, whose double backward is wrong (module docstring).
FUSED_WEIGHT_NORM = "WeightNormInterfaceBackward0"


class GraphScan(NamedTuple):
    """What one walk of a loss's graph found (:func:`graph_functions`).

    >>> GraphScan([], False, ["emb.weight"], []).read
    ['emb.weight']
    """

    custom: list        # names of custom autograd.Function classes
    fused: bool         # torch's fused weight norm, whose double backward is wrong
    read: list          # names of the model's own parameters reached as leaves
    wrong_forward: list  # ops whose forward-mode derivative torch takes wrong
    flagged: bool = False  # an embedding lookup with scale_grad_by_freq or sparse (a backward-only flag)
    scripted: bool = False  # a TorchScript function's differentiable graph (torchscript.py)
    kinked: bool = False    # an op of KINKED_NODES (a ReLU called as F.relu too)


#: The ``grad_fn`` names, less their ``Backward<n>`` tail, of the elementwise ops with a kink (a jump
#: in the first derivative) that :func:`graph_functions` marks ``kinked``: ``F.relu``/``nn.ReLU``,
#: ``threshold``, ``hardtanh``/``relu6``, ``leaky_relu``, ``prelu``, ``rrelu``, ``hardswish``,
#: ``hardsigmoid``, ``clamp``, ``abs``, two-tensor ``max``/``min`` (``maximum``, ``fmax``...),
#: ``hardshrink``, ``softshrink``; and max-pooling (``max_pool1d/2d/3d``, with indices or not,
#: ``adaptive_max_pool1d/2d/3d``, ``fractional_max_pool2d/3d``, the 1d ones pooled as 2d), whose kink
#: (where a window's largest entry changes) a float32 difference step crossed on a max-pool CNN
#: (bench/bench_first_start.py ``cnnmax``: its level skipped, 2 gradients lost, 14-18% of the call).
#: Reductions (``x.max(dim)``, ``amax``, ``topk``, ``sort``) are not: most hold a softmax's or a
#: log-sum-exp's shift, whose derivative cancels (a smooth loss): where one is a kink (a global max over
#: each channel, ``cnnamax``) trying the difference level first cost 2-14% (two runs), where a smooth loss
#: guessed kinked would lose 35-48% (the tanh CNN started at the sub-batch levels). The steps of ``round``,
#: ``floor``, ``ceil``, ``trunc``, ``sign``/``sgn`` and the sawtooths ``frac``, ``remainder``, ``fmod`` are
#: (their output jumps, so the gradients of the layers after them jump: a float32 step crossed them on every
#: direction measured, gap 2 as ReLU's, bench/fd_kinks.py). ``torch.where`` is not: its condition, not in the
#: graph, is a fixed mask as often as not (an attention mask: smooth, gap 0.005), and only one from the
#: parameters (``where(h > 0, h, 0.1 h)``: gap 2) is a kink. ``clamp`` with tensor bounds (a kink: gap 2) is
#: named already (``ClampBackward0``, ``ClampMinBackward1``, ``ClampMaxBackward1``). Torch 2.2.2
#: (our floor) names the elementwise ones alike (``clamp(min=tensor)`` ``ClampBackward0``, scalar bounds
#: ``ClampBackward1``); the max-pool names are torch 2.13's (``torch._C._functions``).
KINKED_NODES = frozenset({"Relu", "Threshold", "Hardtanh", "LeakyRelu", "Prelu", "PreluKernel", "RreluWithNoise",
                          "Hardswish", "Hardsigmoid", "Clamp", "ClampMin", "ClampMax", "Abs", "Maximum",
                          "Minimum", "Fmax", "Fmin", "Hardshrink", "Softshrink", "MaxPool2D", "MaxPool2DWithIndices",
                          "MaxPool3DWithIndices", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D", "FractionalMaxPool2D",
                          "FractionalMaxPool3D", "MkldnnMaxPool2D", "MkldnnMaxPool3D", "Round", "Floor", "Ceil",
                          "Trunc", "Frac", "Remainder", "Fmod", "Sign", "Sgn"})


#: The ``grad_fn`` names of ``F.embedding`` and ``F.embedding_bag``, whose saved flags
#: ``scale_grad_by_freq`` and ``sparse`` change the backward alone (:class:`second_order_forms`).
_EMBEDDING_NODES = ("EmbeddingBackward0", "EmbeddingBagBackward0")


def _flagged_embedding(node) -> bool:
    """Whether ``node`` is an embedding lookup's with a backward-only flag on."""
    return any(getattr(node, "_saved_" + flag, False) for flag in _EMBEDDING_GRADIENT_FLAGS)


def _wrong_forward(node) -> str | None:
    """The op at ``node`` whose forward-AD formula torch gets wrong (torch 2.13): ``scatter_reduce``
    with ``reduce="prod"`` (its tangent came out 0: a forward-over-reverse sharpness 7% low)."""
    if type(node).__name__ == "ScatterReduceBackward0" and getattr(node, "_saved_reduce", None) == "prod":
        return "scatter_reduce(reduce='prod')"
    return None


def graph_functions(loss: torch.Tensor, watched: dict | None = None) -> GraphScan:
    """One walk of the graph of ``loss`` (made once per operator build): the names of the custom
    ``torch.autograd.Function`` classes in it; whether it goes through torch's fused weight norm
    (a ``torch._weight_norm`` that :class:`weight_norm_by_parts` did not take by parts: one called
    in a forward without a weight-norm module, which :func:`needs_forms` does not see); the names
    of the tensors of ``watched`` (``{id(tensor): name}``: the model's own parameters) that it
    reaches as leaves; the ops whose forward-mode derivative torch gets wrong; and whether an
    embedding lookup has ``scale_grad_by_freq`` or ``sparse`` on (an ``F.embedding`` call in a
    forward, which :func:`needs_forms` does not see); and whether it goes through a TorchScript
    function's differentiable graph (:mod:`~catapult.curvature.torchscript`); and whether it holds
    an op of :data:`KINKED_NODES` (``kinked``: the coarse start's guess, :func:`catapult.curvature.coarse.kink_guess`).

    >>> v = torch.ones(2, 3, requires_grad=True)
    >>> tuple(graph_functions(torch._weight_norm(v, torch.ones(2, 1), 0).sum()))
    ([], True, [], [], False, False, False)
    >>> tuple(graph_functions((2 * v).sum(), {id(v): "v"}))
    ([], False, ['v'], [], False, False, False)
    >>> graph_functions(torch.nn.functional.relu(v).sum()).kinked, graph_functions(v.tanh().sum()).kinked
    (True, False)
    >>> graph_functions(torch.nn.functional.embedding(torch.tensor([1, 1]), v, scale_grad_by_freq=True).sum()).flagged
    True
    """
    found, seen, stack, fused, read, wrong = set(), set(), [loss.grad_fn], False, set(), set()
    flagged = scripted = kinked = False
    watched = watched or {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__.removesuffix("Backward"))
        name = type(node).__name__
        fused = fused or name == FUSED_WEIGHT_NORM
        if watched and id(getattr(node, "variable", None)) in watched:
            read.add(watched[id(node.variable)])
        if name.startswith("ScatterReduce") and (op := _wrong_forward(node)):
            wrong.add(op)
        if name in _EMBEDDING_NODES and not flagged:
            flagged = _flagged_embedding(node)
        if name == "CppFunction" and not scripted:
            scripted = torchscript_node(node)
        kinked = kinked or name[:name.rfind("Backward")] in KINKED_NODES
        stack.extend(next_node for next_node, _ in node.next_functions)
    return GraphScan(sorted(found), fused, sorted(read), sorted(wrong), flagged, scripted, kinked)


def refuse_parameters_read(read: list[str]) -> None:
    """A ValueError where the loss reaches the model's own parameters ``read``
    (:func:`graph_functions`) instead of the tensors the operator differentiates: a reference held
    from before the call (``W = model.emb.weight`` captured by ``loss_fn``, or kept by the model
    apart from its modules' slots), whose use the products would take as a constant.

    >>> refuse_parameters_read([])
    >>> refuse_parameters_read(["emb.weight"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the loss reaches the model's parameter emb.weight through a reference held from before the call ...
    """
    if read:
        raise ValueError(f"the loss reaches the model's parameter{'s' if len(read) > 1 else ''} {', '.join(read)} "
                         f"through a reference held from before the call (a tensor loss_fn captured, or one the "
                         f"model keeps apart from its modules), which the curvature would take as a constant: read it "
                         f"from the model at call time (model.emb.weight inside loss_fn), or return what the "
                         f"loss needs from the model's forward")


def custom_functions(loss: torch.Tensor) -> list[str]:
    """The names of the custom ``torch.autograd.Function`` classes in the graph of ``loss``
    (:func:`graph_functions`).

    >>> class Double(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return 2 * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         return 2 * g
    >>> w = torch.ones(2, requires_grad=True)
    >>> custom_functions(Double.apply(w).sum()), custom_functions((2 * w).sum())
    (['Double'], [])
    """
    return graph_functions(loss).custom


#: A product is refused where it is off the central difference by more than this many times the
#: difference's own error estimate ``||D_2h v - D_h v||`` (and by more than 1e-6 relative).
CHECK_MARGIN = 10.0


def check_custom_functions(names: list[str], product, difference, v: torch.Tensor, h: float, *,
                           what: str = "double backprop takes wrong here: a Hessian-vector product",
                           way_out: str = "pass hvp='finite_difference' (first derivatives only)") -> None:
    """A ValueError where ``product(v)`` (double backprop) is off the central difference
    ``difference(v, h)`` of the gradient by more than :data:`CHECK_MARGIN` times the difference's
    error estimate ``||difference(v, 2h) - difference(v, h)||``; ``names`` are the custom
    Functions the loss goes through (:func:`custom_functions`).

    >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> check_custom_functions(["F"], lambda u: A @ u, lambda u, h: A @ u, v, 1e-5)
    >>> check_custom_functions(["F"], lambda u: 0.9 * A @ u, lambda u, h: A @ u, v, 1e-5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the loss goes through the custom autograd.Function F, whose second derivatives ...
    """
    exact, near = product(v), difference(v, h)
    # scaled norms: of a loss times 2**-664 all three were 0 (no refusal: 0 > 0), times 2**531 inf
    estimate = scaled_norm(difference(v, 2.0 * h) - near)
    scale = scaled_norm(near)
    off = scaled_norm(exact - near)
    if off > CHECK_MARGIN * estimate and off > 1e-6 * scale:
        raise ValueError(
            f"the loss goes through the custom autograd.Function {', '.join(names)}, whose second derivatives "
            f"{what} is {off / max(scale, 1e-300):.2g} "
            f"(relative) off its central difference of first derivatives (whose own error is about "
            f"{estimate / max(scale, 1e-300):.1g}); a backward made of operations autograd cannot "
            f"differentiate (NumPy, a custom kernel) does that: make it differentiable, or {way_out}")


def built_with_forms(op, build) -> list[str]:
    """Build ``op``'s graph (``build()``, returning the loss with its graph) and walk it once
    (:func:`graph_functions`); the names of its custom Functions. A graph through torch's fused
    weight norm (a ``torch._weight_norm`` or ``torch._weight_norm_interface`` called in the
    forward, not by a module :func:`needs_forms` sees: its double backward is wrong, and it has no
    forward AD) turns :class:`second_order_forms` on for ``op`` and is built again; where they do
    not reach it (``hvp="compiled"``, whose graphs the mode does not reach) it is refused. A loss
    that reaches the model's own parameters is refused (:func:`refuse_parameters_read`), in every
    mode. Sets ``op.kinked``, whether the graph holds a kinked op (:data:`KINKED_NODES`).

    >>> from catapult.curvature.hessian import HessianOperator
    >>> class Model(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.v, self.g = torch.nn.Parameter(torch.ones(1, 2)), torch.nn.Parameter(torch.ones(1, 1))
    ...     def forward(self, x):
    ...         return x @ torch._weight_norm(self.v, self.g, 0).T
    >>> H = HessianOperator(Model(), torch.nn.MSELoss(), (torch.ones(3, 2), torch.zeros(3, 1)))
    >>> H._forms_needed
    True
    """
    compiled_model = holds_compiled(op._model)
    with eager_stance(compiled_model):
        loss = build()
    watched = {id(p): name for name, p in op._model.named_parameters() if p.requires_grad}
    custom, fused, read, wrong, flagged, scripted, op.kinked = graph_functions(loss, watched)
    refuse_parameters_read(read)
    refuse_reentrant_checkpoint(custom)   # a double-backprop build got torch's error already
    if custom and (missing := functions_without_backward(loss)):   # no gradient: torch.func's error hid it
        raise no_backward_error(mode_named(op), names=missing)
    # F.embedding(..., scale_grad_by_freq=True) called directly; or with max_norm (HessianOperator._loss
    # passed it a copy of the weight, which every later forward must too)
    if (flagged or getattr(op, "_renorm_seen", False)) and not op._forms_needed:
        op._forms_needed = True
        with eager_stance(compiled_model):
            custom, fused, _, wrong, _, scripted, _ = graph_functions(build())
    if op.mode == "finite_difference":
        return []
    # a TorchScript function's graph, which torch.func's products do not pass through (the GGN's
    # J v differentiates a backward: measured); on its profiling call(s) it is ordinary ops: run them
    mode = op._scripted_mode or op.mode
    if mode in ("forward_over_reverse", "compiled") and not scripted and user_scripted():
        for _ in range(profiled_runs()):
            with eager_stance(compiled_model):
                loss = build()
        scripted = graph_functions(loss).scripted
    if scripted and mode in ("forward_over_reverse", "compiled"):
        refuse_torchscript(mode, compiled_model)
    if "BackwardHookFunction" in custom and mode in ("forward_over_reverse", "compiled"):
        # torch.func said 'a custom autograd.Function without setup_context', at the first product
        way_out = ("hvp='finite_difference' measures it, and so does hvp='double_backprop' on the model uncompiled"
                   if compiled_model else "hvp='double_backprop' (the default) or 'finite_difference' measures it")
        raise ValueError(f"hvp={mode!r}: {full_backward_hooked(op._model)}, which torch.func's transforms cannot "
                         f"run; {way_out}, or remove the hook for the call")
    if wrong and op.mode == "forward_over_reverse":
        way_out = ("hvp='compiled' or 'finite_difference' measures it, and so does hvp='double_backprop' on the model "
                   "uncompiled" if compiled_model else "hvp='double_backprop' (the default) or 'finite_difference' "
                   "measures it")
        raise ValueError(f"hvp='forward_over_reverse': the loss goes through {', '.join(wrong)}, whose forward-mode "
                         f"derivative torch takes wrong (its products came out 7% low, marked converged); {way_out}")
    if fused and op.mode != "compiled" and not op._forms_needed:
        op._forms_needed = True
        with eager_stance(compiled_model):
            custom, fused = graph_functions(build())[:2]
    if fused:
        raise ValueError(f"hvp={op.mode!r}: the loss goes through torch's fused weight norm "
                         f"(torch._weight_norm_interface), whose second derivatives torch takes wrong, "
                         f"where it cannot be taken by parts; use hvp='finite_difference'")
    return custom


def full_backward_hooked(model: torch.nn.Module) -> str:
    """Who holds the full backward hook that put ``BackwardHookFunction`` in a loss's graph.

    >>> model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    >>> _ = model[0].register_full_backward_hook(lambda *args: None)
    >>> full_backward_hooked(model)
    "module '0' has a full backward hook (register_full_backward_hook or _pre_hook)"
    """
    for name, module in model.named_modules():
        if module._backward_pre_hooks or (module._backward_hooks and module._is_full_backward_hook):
            return (f"module {name!r} has" if name else "the model has") + \
                " a full backward hook (register_full_backward_hook or _pre_hook)"
    return "a global full backward hook (register_module_full_backward_hook or _pre_hook) runs on every module"


def verify_operator(op, names: list[str]) -> None:
    """:func:`check_custom_functions` for a double-backprop (or compiled: reverse over reverse too,
    where a NumPy ``tanh`` gave 0.6876 for 0.8903, converged, and a ``tanh`` Function with a
    backward of torch operations was as far off; or forward-over-reverse, which takes the Function's
    own ``jvp`` rule: one off by half left a sharpness 9% low, converged)
    :class:`~catapult.curvature.hessian.HessianOperator` whose loss goes through the custom
    Functions ``names`` (:func:`built_with_forms`), on a unit vector drawn from a
    private generator seeded with ``op.seed + 1`` (4 gradients and a product, not counted in
    ``matvecs``). Skipped where ``names`` is empty, and in a process group outside the distributed
    operators' agreed build (:func:`~catapult.curvature.distributed.refusals_agreed`), where a
    refusal on one rank alone would leave the others waiting (``distributed=True`` skipped it
    too: a NumPy ``tanh`` gave a sharpness 1.6% high, silently).

    >>> from catapult.curvature.hessian import HessianOperator
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
    >>> verify_operator(HessianOperator(model, torch.nn.MSELoss(), batch), [])   # no custom Function
    """
    from catapult.curvature.distributed import refusals_agreed

    if not names or not refusals_agreed() or op.mode == "finite_difference":
        return
    generator = torch.Generator().manual_seed(op.seed + 1)
    v = torch.randn(op.numel, generator=generator, dtype=torch.float64).to(device=op.device, dtype=op.dtype)
    v /= torch.linalg.vector_norm(v)

    def difference(u, h):
        plus, minus, leaves = torch.zeros_like(u), torch.zeros_like(u), op._leaf_buffers()
        op._gradient_into(leaves, op.split(plus), op.split(u), h)
        op._gradient_into(leaves, op.split(minus), op.split(u), -h)
        return (plus - minus) / (2.0 * h)

    matvecs = op.matvecs
    try:
        if op.mode == "forward_over_reverse":   # a Function's jvp rule off by half: 9% low, converged
            check_custom_functions(names, op, difference, v, central_step(op._eps),
                                   what="hvp='forward_over_reverse' takes wrong here (its forward-mode rule, jvp, "
                                        "or its backward's): a Hessian-vector product",
                                   way_out="use hvp='double_backprop' (which checks it the same way) or "
                                           "hvp='finite_difference'")
        elif op.mode == "compiled":   # torch.compile got even a differentiable backward's wrong (0.64 off)
            check_custom_functions(names, op, difference, v, central_step(op._eps),
                                   what="hvp='compiled' takes wrong here: a Hessian-vector product",
                                   way_out="use hvp='double_backprop' (which checks it the same way) or "
                                           "hvp='finite_difference'")
        else:
            check_custom_functions(names, op, difference, v, central_step(op._eps))
    finally:
        op.matvecs = matvecs
