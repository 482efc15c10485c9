"""Torch's errors where the curvature operators meet a derivative torch lacks or cannot take,
renamed into ValueErrors that name the ``hvp`` mode (or ``curvature``) that measures the model
(:func:`named_missing_derivatives`), and the refusal of a reentrant ``torch.utils.checkpoint``
(:func:`refuse_reentrant_checkpoint`). Split from :mod:`~catapult.curvature.twice`, which
takes the ops torch differentiates twice wrong in other forms.
"""
from __future__ import annotations

import functools
import re

__all__ = ["named_missing_derivatives", "refuse_reentrant_checkpoint", "REENTRANT_MESSAGE", "REENTRANT_ERROR",
           "is_reentrant_error", "no_backward_error", "functions_without_backward", "CURVATURE_NEEDS"]


#: torch's RuntimeError where an op has no derivative formula at all (autograd's ``NotImplemented``
#: node: the double backward of ``F.multi_margin_loss``, ``F.ctc_loss``, ``torch.segment_reduce``).
_NO_DERIVATIVE = re.compile(r"derivative for (?:aten::)?'?([\w.]+)'? is not implemented")


#: torch's RuntimeError where double backprop meets a ``torch.compile``'d graph.
_NO_DOUBLE_BACKWARD = "torch.compile with aot_autograd does not currently support double backward"


#: torch's RuntimeError where a forward-AD formula gives a tangent of the wrong shape
#: (``masked_scatter``: "Trying to set a forward gradient that has a different size ...").
_BAD_TANGENT = "Trying to set a forward gradient"


#: torch's NotImplementedError where a custom ``autograd.Function`` has no ``backward`` (a first
#: derivative missing: no mode measures it, finite differences neither).
_NO_BACKWARD = "You must implement either the backward or vjp method"


#: What a loss through a custom Function without a backward lacks for a curvature (:func:`no_backward_error`).
CURVATURE_NEEDS = "every curvature mode needs (finite differences too)"


def mode_named(op) -> str:
    """How an operator's messages name its mode: ``curvature='ggn'`` for the Gauss-Newton products
    (also while its Hessian part is built)."""
    ggn = op.mode == "gauss_newton" or getattr(op, "_scripted_mode", None) == "ggn"
    return "curvature='ggn'" if ggn else f"hvp={op.mode!r}"


def no_backward_error(what: str, err: Exception | None = None, names=(),
                      needs: str = CURVATURE_NEEDS) -> ValueError | None:
    """The ValueError for a loss through a custom ``torch.autograd.Function`` without a backward
    (the names ``names`` where known: :func:`functions_without_backward`), for ``what`` (the mode,
    or the function) which ``needs`` a gradient; from torch's error ``err`` (its first line quoted),
    or None where ``err`` is another error. A first derivative is missing: no mode measures the
    loss, finite differences neither.

    >>> str(no_backward_error("catapult.critical_lr", names=["Clamp"], needs="the optimizer's step needs"))
    "catapult.critical_lr: the model (or loss_fn) goes through a custom autograd.Function without a backward (Clamp), so it has no gradient, which the optimizer's step needs: implement the Function's backward"
    >>> no_backward_error("hvp='double_backprop'", RuntimeError("another")) is None
    True
    """
    if err is not None and _NO_BACKWARD not in str(err):
        return None
    which = f" ({', '.join(names)})" if names else ""
    said = f" (torch: {(str(err).strip().splitlines() or [''])[0]})" if err is not None else ""
    return ValueError(f"{what}: the model (or loss_fn) goes through a custom autograd.Function without a "
                      f"backward{which}, so it has no gradient, which {needs}: implement the Function's "
                      f"backward{said}")


def functions_without_backward(loss) -> list[str]:
    """The names of the custom ``torch.autograd.Function`` classes in the graph of ``loss`` that
    have neither a ``backward`` nor a ``vjp`` (torch raises "You must implement either the
    backward or vjp method" once a backward reaches them; torch.func's transforms first say the
    Function lacks ``setup_context``, and its forward-mode products never call a backward at all).
    Walked only for a graph that holds custom Functions.

    >>> import torch
    >>> class Twice(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return 2 * x
    >>> w = torch.ones(2, requires_grad=True)
    >>> functions_without_backward(Twice.apply(w).sum()), functions_without_backward((2 * w).sum())
    (['Twice'], [])
    """
    import torch

    found, seen, stack = set(), set(), [loss.grad_fn]
    base = torch.autograd.Function
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and getattr(cls, "backward", None) is base.backward and \
                getattr(cls, "vjp", None) is base.vjp:
            found.add(cls.__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(found)


#: torch's RuntimeError where a reentrant ``torch.utils.checkpoint`` meets ``autograd.grad`` or
#: ``backward(inputs=...)`` (every curvature product and gradient here takes one of those).
REENTRANT_ERROR = "When use_reentrant=True, torch.utils.checkpoint is incompatible"

#: torch 2.2's words for :data:`REENTRANT_ERROR`.
_REENTRANT_ERROR_22 = "Checkpointing is not compatible with .grad() or when an `inputs` parameter is passed"


def is_reentrant_error(err: BaseException) -> bool:
    """Whether ``err`` is torch's refusal of a reentrant ``torch.utils.checkpoint`` under
    ``autograd.grad`` or ``backward(inputs=...)``, in any supported torch's words (torch 2.2 said
    it otherwise: :data:`REENTRANT_ERROR` alone let its raw RuntimeError through).

    >>> is_reentrant_error(RuntimeError(REENTRANT_ERROR + " with .grad()"))
    True
    >>> is_reentrant_error(RuntimeError("Checkpointing is not compatible with .grad() or when an `inputs` "
    ...                                 "parameter is passed to .backward()."))
    True
    >>> is_reentrant_error(RuntimeError("out of memory"))
    False
    """
    return str(err).startswith((REENTRANT_ERROR, _REENTRANT_ERROR_22))

#: What a loss through a reentrant checkpoint is told (its block's parameters are not in the outer
#: graph: its backward re-runs the block and calls ``backward`` itself, which neither ``autograd.grad``
#: nor ``torch.func`` can reach into).
REENTRANT_MESSAGE = ("the model calls torch.utils.checkpoint with use_reentrant=True, whose backward cannot be "
                     "taken with respect to chosen tensors (autograd.grad) or by torch.func, as every curvature "
                     "product and gradient here is: pass use_reentrant=False (the same memory saving; every hvp "
                     "mode but forward_over_reverse and compiled measures it), or call the block without checkpoint")


def refuse_reentrant_checkpoint(custom: list[str]) -> None:
    """A ValueError (:data:`REENTRANT_MESSAGE`) where the custom Functions ``custom`` of a loss's
    graph (:func:`graph_functions`) hold torch's reentrant checkpoint (``CheckpointFunction``).

    >>> refuse_reentrant_checkpoint(["Double"])
    >>> refuse_reentrant_checkpoint(["CheckpointFunction"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the model calls torch.utils.checkpoint with use_reentrant=True, ...
    """
    if "CheckpointFunction" in custom:
        raise ValueError(REENTRANT_MESSAGE)


def _missing(err: Exception) -> str | None:
    """The first line of torch's error for a derivative it lacks, or None (another error)."""
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, NotImplementedError) or (isinstance(err, RuntimeError) and (
            _NO_DERIVATIVE.search(first) or first.startswith(_BAD_TANGENT))):
        return first
    return None


def _from_dynamo(err: BaseException) -> bool:
    """Whether ``err`` is torch.compile's own error (``torch._dynamo.exc``): torch 2.2's dynamo
    raised "Cannot access data pointer of Tensor that doesn't have storage" tracing under
    ``torch.func`` whatever the model did."""
    return type(err).__module__.startswith("torch._dynamo")


def named_missing_derivatives(method):
    """Decorate an operator method (``self.mode`` its hvp mode): torch's error for a second
    derivative it lacks (a NotImplementedError: ``nn.EmbeddingBag``'s "the derivative for
    '_embedding_bag_backward' is not implemented", ``torch.cdist``'s, forward AD of many fused ops;
    a RuntimeError "derivative for aten::multi_margin_loss_backward is not implemented") becomes a
    ValueError naming ``hvp`` (``curvature='ggn'`` for the Gauss-Newton products) and the mode that
    needs first derivatives only; torch's error is its ``__cause__``. A custom Function without
    ``setup_context`` under forward-over-reverse products (``torch.func`` refuses it) names
    ``hvp='double_backprop'``; on ``gradient`` and ``forward_difference`` (gradients alone) those
    are the only errors renamed.

    >>> class Op:
    ...     mode = "double_backprop"
    ...     @named_missing_derivatives
    ...     def product(self):
    ...         raise NotImplementedError("the derivative for 'f' is not implemented.")
    >>> Op().product()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hvp='double_backprop': torch has no second derivative of this model (the derivative for 'f' is not implemented.); hvp='finite_difference' takes its products from gradients alone
    """
    # gradients alone: a missing first derivative is no missing second one
    first_only = method.__name__ in ("gradient", "forward_difference")

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (NotImplementedError, RuntimeError) as err:
            if is_reentrant_error(err):    # any mode, the gradient too
                raise ValueError(REENTRANT_MESSAGE) from err
            # a torch.compile'd function the model calls (which holds_compiled cannot see)
            if _NO_DOUBLE_BACKWARD in str(err):
                if self.mode == "gauss_newton":
                    raise ValueError("curvature='ggn' takes J v by differentiating a backward, which the graphs of the "
                                     "torch.compile'd code this model runs cannot; run it uncompiled, or use "
                                     "curvature='hessian' with hvp='forward_over_reverse'") from err
                raise ValueError(f"hvp={self.mode!r}: the model runs torch.compile'd code (a compiled function or "
                                 f"block), whose graphs have no double backward; hvp='forward_over_reverse' or "
                                 f"'finite_difference' measures it") from err
            if self.mode in ("forward_over_reverse", "compiled") and "support saved tensor hooks" in str(err):
                raise ValueError(f"hvp={self.mode!r}: torch.func cannot differentiate a forward that uses saved-"
                                 f"tensor hooks (torch.utils.checkpoint with use_reentrant=False, activation "
                                 f"offloading); hvp='double_backprop' (the default) measures it") from err
            if self.mode == "compiled" and "doesn't have storage" in str(err) and _from_dynamo(err):
                import torch
                raise ValueError(f"hvp='compiled': torch {torch.__version__}'s torch.compile cannot trace these "
                                 f"products under torch.func ({type(err).__name__}: {str(err).splitlines()[0]}), "
                                 f"a limit of this torch, not of the model; hvp='forward_over_reverse' takes the "
                                 f"same products uncompiled") from err
            if self.mode == "forward_over_reverse" and "doesn't have storage" in str(err) and _from_dynamo(err):
                # torch 2.2.2: a torch.compile'd function the model calls, under torch.func
                import torch
                raise ValueError(f"hvp='forward_over_reverse': torch {torch.__version__}'s torch.compile cannot "
                                 f"run the compiled code this model calls under torch.func ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0]}), a limit of this torch, not of the model; "
                                 f"hvp='finite_difference' takes its products from gradients alone") from err
            if self.mode in ("forward_over_reverse", "compiled") and "doesn't have storage" in str(err):
                raise ValueError(f"hvp={self.mode!r}: torch.func cannot run this model's forward, which reads a "
                                 f"tensor's memory itself (NumPy, .data_ptr() or a custom kernel in a custom "
                                 f"autograd.Function); hvp='double_backprop' (the default; it checks the Function's "
                                 f"second derivatives) or 'finite_difference' measures it") from err
            if self.mode in ("forward_over_reverse", "compiled") and "must override the setup_context" in str(err):
                raise ValueError(f"hvp={self.mode!r}: the model goes through a custom autograd.Function "
                                 "without setup_context, which torch.func's transforms need; hvp='double_backprop' "
                                 "(the default; it checks the Function's second derivatives) or 'finite_difference' "
                                 "measures it") from err
            if (refusal := no_backward_error(mode_named(self), err)) is not None:   # no mode has a way out
                raise refusal from err
            if self.mode == "finite_difference" or first_only or (first := _missing(err)) is None:
                raise
            way_out = "hvp='finite_difference' takes its products from gradients alone"
            if self.mode == "forward_over_reverse":
                way_out = "hvp='double_backprop' (the default) needs no forward-mode formula, and " + way_out
            if self.mode == "gauss_newton":
                raise ValueError(f"curvature='ggn': torch has no derivative of this model's backward, which the "
                                 f"Gauss-Newton products take ({first}); curvature='hessian' with "
                                 f"hvp='finite_difference' takes its products from gradients alone") from err
            raise ValueError(f"hvp={self.mode!r}: torch has no second derivative of this model "
                             f"({first}); {way_out}") from err
    return run
