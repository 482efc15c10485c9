"""Torch operations whose second derivatives torch gets wrong, taken by parts inside the curvature
operators' forward passes (:class:`weight_norm_by_parts`).

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

Under ``torch.compile`` the mode does not reach the op (``hvp="compiled"`` still gave that
0.911918, the mode entered inside or around the compiled function), so the compiled products
refuse a model with weight norm (:func:`weight_norm_module` names it).
"""
from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["weight_norm_by_parts", "weight_norm_module"]


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
        return func(*args, **kwargs)


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
