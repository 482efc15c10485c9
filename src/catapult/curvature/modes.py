"""The product modes (``hvp=``) and computation dtypes (``dtype=``) a curvature operator accepts.

Split from :mod:`catapult.curvature.hessian`, which re-exports them: one place says which
modes exist and what ``"auto"`` picks on a device.
"""
from __future__ import annotations

import contextlib
import functools
import re

import torch

__all__ = ["HVP_MODES", "resolve_hvp", "resolve_dtype", "holds_compiled", "refuse_stale_compiled", "eager_stance",
           "named_dtype_mix"]


#: Accepted values of ``hvp=``. ``"auto"`` picks the mode measured fastest (see
#: ``bench/bench_sharpness.py`` and the "Sharpness (issue 2)" section of ``bench/RESULTS.md``).
HVP_MODES = ("auto", "double_backprop", "forward_over_reverse", "finite_difference", "compiled")

# What "auto" resolves to, per device type. Measured by bench/bench_sharpness.py on the Fig. 1
# FCN (4 Linear layers, width 512, 5000 x 3072 batch) on a 2-core CPU: double backprop, which
# builds the gradient graph once and re-uses it for every HVP, beat forward-over-reverse, which
# re-runs forward + backward with dual numbers for every HVP. No GPU measurement exists yet, so
# CUDA uses the same choice.
_AUTO_HVP = {"cpu": "double_backprop", "cuda": "double_backprop"}


def resolve_hvp(hvp: str, device: torch.device | str) -> str:
    """The product mode ``hvp`` (one of :data:`HVP_MODES`) names on ``device``: ``"auto"`` is
    the mode measured faster there (``_AUTO_HVP``), the others are themselves.

    Example:
        >>> resolve_hvp("auto", "cpu"), resolve_hvp("forward_over_reverse", "cpu")
        ('double_backprop', 'forward_over_reverse')
    """
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
    if hvp == "auto":
        return _AUTO_HVP.get(torch.device(device).type, "double_backprop")
    return hvp


def holds_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` is, or holds, a ``torch.compile`` wrapper (an ``OptimizedModule``, which
    keeps the original as ``_orig_mod``), or a module compiled in place (``module.compile()``, whose
    calls run its compiled forward: double backprop raised torch's "torch.compile with aot_autograd
    does not currently support double backward" for it, torch 2.13).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> holds_compiled(model), holds_compiled(torch.nn.Sequential(torch.compile(model)))
        (False, True)
        >>> model.compile()
        >>> holds_compiled(model)
        True
    """
    return any(isinstance(getattr(sub, "_orig_mod", None), torch.nn.Module)
               or getattr(sub, "_compiled_call_impl", None) is not None for sub in model.modules())


def refuse_stale_compiled(owner: str, model: torch.nn.Module) -> None:
    """A ValueError where ``model`` holds a ``torch.compile``'d module (:func:`holds_compiled`) and
    this torch's compiled modules keep reading the parameters and buffers they were traced with
    (torch 2.2.2's do: the tensors ``torch.func.functional_call`` substitutes never reach the graph).
    Every measurement takes the model at other parameters that way: on 2.2.2 a compiled model's
    ``hvp='finite_difference'`` sharpness was 0.0, converged, and its critical lr 2.9e17 (2.125
    uncompiled). Probed once per process (a tiny module of its own, compiled by dynamo's eager
    backend), and only for a model that holds compiled code.

    Example:
        >>> refuse_stale_compiled("sharpness", torch.nn.Linear(2, 1))   # nothing compiled: nothing to ask
    """
    if not holds_compiled(model) or _compiled_modules_follow_substitutes():
        return
    raise ValueError(f"{owner}: torch {torch.__version__}'s torch.compile'd modules keep reading the parameters "
                     f"they were traced with, so the model at other parameters (torch.func.functional_call, "
                     f"which every measurement uses) would be the traced one (a compiled model's "
                     f"hvp='finite_difference' sharpness was 0.0 on torch 2.2.2); pass the model uncompiled "
                     f"(torch.compile(model)._orig_mod, a module not .compile()'d), or use a newer torch")


class _Probe(torch.nn.Module):
    """``x * weight``: a module of its own for :func:`_compiled_modules_follow_substitutes` (its compiled
    code takes no cache slot of a user's module class)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.weight


@functools.lru_cache(maxsize=None)
def _compiled_modules_follow_substitutes() -> bool:
    """Whether a compiled module called by ``torch.func.functional_call`` with a substituted weight
    computes with it (torch 2.13: yes; 2.2.2: it reads the traced weight). A torch that cannot
    compile the probe says no."""
    try:
        compiled = torch.compile(_Probe(), backend="eager")
        x = torch.ones(1)
        traced = float(compiled(x))
        moved = float(torch.func.functional_call(compiled, {"_orig_mod.weight": torch.full((1,), 2.0)}, (x,)))
    except Exception:   # noqa: BLE001 -- any failure of torch.compile here: it cannot be trusted
        return False
    return traced == 1.0 and moved == 2.0


def eager_stance(compiled: bool):
    """A context in which ``torch.compile``'d code runs eagerly where ``compiled`` (a model that
    :func:`holds_compiled`), else one that does nothing. The operators build the graph they walk
    once (:func:`~catapult.curvature.twice.built_with_forms`) in it: a compiled graph is one opaque
    node there, which hid a ``scatter_reduce(reduce="prod")`` (a forward-over-reverse sharpness 25%
    low, converged) and custom Functions from the walk.

    Example:
        >>> f = torch.compile(lambda x: x.sin())
        >>> with eager_stance(True):
        ...     f(torch.zeros(1)).grad_fn is None
        True
    """
    import contextlib

    set_stance = getattr(torch.compiler, "set_stance", None)   # torch >= 2.6
    if not compiled or set_stance is None:
        return contextlib.nullcontext()
    return set_stance("force_eager")


def resolve_dtype(dtype) -> torch.dtype | None:
    """The computation dtype named by ``dtype``: None, a name or a torch dtype (float32/64).

    Example:
        >>> resolve_dtype("float64"), resolve_dtype(None)
        (torch.float64, None)
    """
    if dtype is None:
        return None
    named = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str):
        if dtype not in named:
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
        return named[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be None, torch.float32 or torch.float64, got {dtype!r}")
    return dtype


#: torch's RuntimeErrors for an operation that meets tensors of two dtypes ("mat1 and mat2 must have the
#: same dtype", "expected scalar type Float but found Double", "Input type (float) and bias type (double)
#: should be the same", "mixed dtype (CPU): expect parameter to have scalar type of Float").
_DTYPE_MIX = re.compile(r"dtype|scalar type|type \((?:float|double|half|bfloat16|c10::\w+)\)", re.IGNORECASE)


@contextlib.contextmanager
def named_dtype_mix(dtype: torch.dtype | None, params, promoted: bool = False):
    """A context in which torch's RuntimeError for an operation that meets two dtypes becomes a
    ValueError naming ``dtype=`` (torch's error its ``__cause__``), where ``dtype`` was asked for and
    casts some of ``params``: a forward that casts to a dtype itself (``x.float()``) met the
    parameters cast to float64, and torch's "mat1 and mat2 must have the same dtype, but got Float
    and Double" was all a user saw. ``promoted``: ``dtype`` is float32 for a half-precision model
    without ``dtype=`` (whose way out is not ``dtype=None``).

    >>> with named_dtype_mix(torch.float64, [torch.zeros(1)]):  # doctest: +ELLIPSIS
    ...     torch.ones(1, 2) @ torch.ones(2, 1, dtype=torch.float64)
    Traceback (most recent call last):
    ...
    ValueError: dtype=torch.float64: the model's forward meets tensors of two dtypes ...
    """
    try:
        yield
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        if dtype is None or all(p.dtype == dtype for p in params) or not _DTYPE_MIX.search(first):
            raise
        what = ("a float16 / bfloat16 model is measured in float32 (half precision rounds above any useful tol), "
                "and its" if promoted else f"dtype={dtype}: the model's")
        way_out = "" if promoted else "pass dtype=None to measure the model in its own dtype, or "
        raise ValueError(f"{what} forward meets tensors of two dtypes once its parameters and inputs are cast to "
                         f"{str(dtype)[6:]} (torch: {first[:160]}): it casts a tensor to a dtype itself (x.float(), "
                         f".to(torch.bfloat16), a tensor it makes in one); {way_out}cast to the parameters' dtype "
                         f"(x.to(self.weight.dtype))") from err
