"""TorchScript functions called in a model's forward, whose derivatives torch.func takes wrong.

A ``@torch.jit.script`` (or ``torch.jit.trace``) function is no module: nothing in the model's tree
shows it (:func:`~catapult.curvature.stateless.refuse_scripted` sees scripted modules). Once its
executor has profiled a call (``torch._C._jit_get_num_profiled_runs()``, 1 in torch 2.13), TorchScript
runs it as one differentiable graph whose backward is its own autograd node
(``torch::jit::...::DifferentiableGraphBackward``), which forward-mode AD and torch.func's reverse
over reverse run eagerly do not pass through: ``tanh(x) * x`` between two ``Linear`` layers gave a
forward-over-reverse sharpness of 1.1782 for the dense Hessian's 2.1516, converged; a
``torch.compile``'d model calling it 1.0740 and 1.7326 (hvp='auto' and 'compiled'); hvp='compiled' on
the model uncompiled was right where dynamo compiled it, and as wrong where it ran eagerly
(:mod:`~catapult.curvature.compiled`'s fallback). Double backprop and finite differences measure it.

The operators' graph walk (:func:`~catapult.curvature.twice.graph_functions`) finds that node. On
a profiling call the function runs as ordinary operations, and the walk cannot tell; so where this
process holds TorchScript functions of its own (:func:`user_scripted`, a look at TorchScript's
compilation unit: no work for models in a process without any), the modes that take it wrong run
the walk's forward as many more times as the executor profiles, and walk the last one.
"""
from __future__ import annotations

import torch

__all__ = ["torchscript_node", "user_scripted", "profiled_runs", "refuse_torchscript"]


def torchscript_node(node) -> bool:
    """Whether the autograd ``node`` is the backward of a TorchScript differentiable graph.

    >>> torchscript_node((torch.ones(1, requires_grad=True) * 2).grad_fn)
    False
    """
    if type(node).__name__ != "CppFunction":
        return False
    name = getattr(node, "name", None)
    return callable(name) and "torch::jit" in name()


def user_scripted() -> bool:
    """Whether this process has compiled TorchScript functions or methods of its own (torch's
    own, which its forward-AD decompositions script on first use, are not counted).

    >>> isinstance(user_scripted(), bool)
    True
    """
    unit = getattr(getattr(torch.jit, "_state", None), "_python_cu", None)
    if unit is None:   # no compilation unit to look at: assume there may be
        return True
    return any(not f.qualified_name.startswith("__torch__.torch.") for f in unit.get_functions())


def profiled_runs() -> int:
    """How many calls TorchScript's executor profiles before it optimizes a function (>= 1).

    >>> profiled_runs() >= 1
    True
    """
    get = getattr(torch._C, "_jit_get_num_profiled_runs", None)
    return max(1, int(get())) if get is not None else 1


def refuse_torchscript(mode: str, compiled_model: bool) -> None:
    """The ValueError for a loss through a TorchScript function under ``mode`` (the product mode that
    takes it wrong), naming the modes that measure it.

    >>> refuse_torchscript("forward_over_reverse", False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hvp='forward_over_reverse': the model (or loss_fn) calls a TorchScript function ...
    """
    way_out = ("hvp='finite_difference' measures it, and so does hvp='double_backprop' (the default) on the model "
               "uncompiled" if compiled_model else
               "hvp='double_backprop' (the default) or 'finite_difference' measures it")
    raise ValueError(f"hvp={mode!r}: the model (or loss_fn) calls a TorchScript function (torch.jit.script or "
                     f"trace), whose differentiable graph torch.func does not differentiate through (a scripted "
                     f"tanh(x) * x: 1.1782 for 2.1516, marked converged); {way_out}, or call the function's Python "
                     f"original")
