"""Argument checks the Python API's constructors share: a real number in a range, a positive
integer size, a density, an ``(inputs, targets)`` batch, each named.

A model or a transform given ``weight_var=nan`` or ``init_std="0.02"`` failed later, inside
torch ("normal expects std >= 0.0", "'<' not supported"), or ran with an all-nan output. These
checks say which argument is wrong, before anything is built.
"""
from __future__ import annotations

import math
import numbers
import sys
from typing import Any

__all__ = ["check_real", "check_std", "check_batch", "check_module", "check_positive_int", "check_densities", "as_integer",
           "check_integer", "as_real", "check_seed", "check_flag", "one_flag", "caller_stacklevel", "max_threads",
           "max_workers"]


def check_real(owner: str, label: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float once it is a finite real number in the range; a ValueError naming
    ``owner`` and ``label`` otherwise (a bool or a string is no number here).

    >>> check_real("MLP", "weight_var", 2, low=0.0, low_open=True)
    2.0
    >>> check_real("GPT", "dropout", 1.0, low=0.0, high=1.0, high_open=True)
    Traceback (most recent call last):
    ValueError: GPT dropout must be a finite number in [0, 1); got 1.0
    """
    value, real = _scalar(value), as_real(value)
    ok = real is not None
    ok = ok and (low is None or (real > low if low_open else real >= low))
    ok = ok and (high is None or (real < high if high_open else real <= high))
    if not ok:
        where = _range_text(low, high, low_open, high_open, "g")
        raise ValueError(f"{owner} {label} must be a finite number{where}; got {value!r}")
    return real


def _range_text(low, high, low_open: bool = False, high_open: bool = False, spec: str = "") -> str:
    """The range a check names in its message: ``" >= 1"``, ``" < 2"``, ``" in (0, 1]"``, or ``""``
    (no bound); ``spec`` formats the bounds (``"g"`` for reals)."""
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:{spec}}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:{spec}}"
    return f" in {'(' if low_open else '['}{low:{spec}}, {high:{spec}}{')' if high_open else ']'}"


#: The largest standard deviation whose square (a variance) is a finite float.
STD_MAX = math.sqrt(sys.float_info.max)


def check_std(owner: str, label: str, value: Any) -> float:
    """``value`` as a float once it is a standard deviation whose square, a variance, is a
    finite float (``0 < value <= sqrt(max float)``, about 1.34e154); a ValueError naming ``owner``
    and ``label`` otherwise (``init_std**2`` raised OverflowError beyond it).

    >>> check_std("GPT", "init_std", 0.02)
    0.02
    >>> check_std("GPT", "init_std", 1e200)
    Traceback (most recent call last):
    ValueError: GPT init_std must be at most 1.34078e+154 (its square, the init variance, must be a finite float); got 1e+200
    """
    std = check_real(owner, label, value, low=0.0, low_open=True)
    if std > STD_MAX:
        raise ValueError(f"{owner} {label} must be at most {STD_MAX:g} (its square, the init variance, must be a "
                         f"finite float); got {_scalar(value)!r}")
    return std


def as_integer(value: Any) -> int | None:
    """``value`` as an int when it is an integer: a Python or NumPy integer, or a 0-d integer
    tensor; None for anything else (a bool, ``2.0``, a string). The solvers' counts (``k``,
    ``max_iter``, ``steps``, ...) take it, so ``k=np.int64(3)`` is the integer it is (it was
    refused as "k must be an integer, got np.int64(3)").

    >>> as_integer(3), as_integer(2.0), as_integer(True), as_integer("3")
    (3, None, None, None)
    """
    value = _scalar(value)
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


#: The most optimizer steps a run or a schedule takes (``train.steps``, ``schedule.warmup_steps``, a
#: schedule's ``total_steps``/``warmup_steps``): 10**9, a round number below int32's 2**31 - 1 (so a
#: step index fits every integer type it meets) and far beyond any run (11.6 days at 1,000 steps a
#: second); ``train.steps: 1e26`` was accepted and trained forever. ``catapult.config`` keeps the
#: same number (it imports no other catapult package; a test holds them equal).
MAX_STEPS = 10 ** 9

#: The most curvature-operator products one call may spend (a solver's ``max_iter``, a trace's
#: ``matvecs``, a density's ``runs`` and ``steps``; ``eval.sharpness_max_iter`` and
#: ``eval.trace_matvecs``): 10**5, 1,000x the solvers' default of 100 and 10x the most the
#: project's tests and benchmarks ask (an exact 10,000-product trace); a Hessian-vector product
#: costs about two training steps, so beyond it one measurement outlasts the training it measures,
#: and the basis-free solver's tridiagonal matrix (``max_iter / 2`` rows, an eigh a step) would
#: outgrow memory. ``max_iter=1e9`` was taken and ran until killed. ``catapult.config`` keeps the
#: same number (a test holds them equal).
MAX_PRODUCTS = 10 ** 5


def check_integer(owner: str, label: str, value: Any, *, low: int | None = 1, high: int | None = None,
                  optional: bool = False) -> int | None:
    """``value`` as an int once it is an integer (:func:`as_integer`'s rule: a Python or NumPy
    integer or a 0-d integer tensor; not a bool, not ``3.0``, not a string) in ``[low, high]``
    (None: no bound); None when ``optional`` and ``value`` is None; a ValueError naming ``owner``
    and ``label`` otherwise. The one check behind the library's counts, sizes and steps, so
    ``True`` is no count anywhere and ``np.int64(3)`` is one everywhere.

    >>> import numpy as np
    >>> check_integer("LocalExecutor", "threads", np.int64(2)), check_integer("LocalExecutor", "threads", None, optional=True)
    (2, None)
    >>> check_integer("LocalExecutor", "threads", True, optional=True)
    Traceback (most recent call last):
    ValueError: LocalExecutor threads must be None or an integer >= 1; got True
    >>> check_integer("top_eigenpairs", "block_size", 6, high=5)
    Traceback (most recent call last):
    ValueError: top_eigenpairs block_size must be an integer in [1, 5]; got 6
    """
    if optional and value is None:
        return None
    count = as_integer(value)
    if count is None or (low is not None and count < low) or (high is not None and count > high):
        where = _range_text(low, high)
        who = f"{owner} {label}" if owner else label
        raise ValueError(f"{who} must be {'None or ' if optional else ''}an integer{where}; got {_scalar(value)!r}")
    return count


def max_threads() -> int:
    """The most torch threads a process is given (``--threads``, an executor's ``threads``): 4 per
    CPU of this machine, at least 64. Far more made OpenMP fail to create its threads (a segfault,
    or libgomp's message and exit code 1), and 2**31 failed in torch's words.

    >>> max_threads() >= 64
    True
    """
    import os

    return max(64, 4 * (os.cpu_count() or 1))


def max_workers() -> int:
    """The most worker processes a sweep is given (``--workers``, ``EnsembleExecutor(workers=)``,
    ``StreamPool``): 4 per CPU of this machine. Each is a process that imports torch and holds its
    own chunk of cells; past the CPUs they only contend (``--workers 1000`` on 2 cores spawned a
    process per chunk, and ``EnsembleExecutor(workers=10**6)`` tried to).

    >>> max_workers() >= 4
    True
    """
    import os

    return 4 * (os.cpu_count() or 1)


def as_real(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (Python, NumPy, a 0-d tensor; not a
    bool, not a string), else None.

    >>> as_real(0.5), as_real(2), as_real(float("nan")), as_real(True), as_real("0.1")
    (0.5, 2.0, None, None, None)
    """
    value = _scalar(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number (``torch.tensor(0.5)`` is a density too)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def check_batch(owner: str, batch: Any, *, allow_empty: bool = False) -> tuple[Any, Any]:
    """``batch`` as ``(inputs, targets)``: a ValueError naming ``owner`` unless it is a pair, or
    when its inputs are a tensor of 0 samples (whose mean loss is nan, not a result), unless
    ``allow_empty`` (one rank's shard of a distributed batch may hold no samples).

    >>> check_batch("critical_lr", ([[1.0]], [0]))
    ([[1.0]], [0])
    >>> check_batch("critical_lr", {"x": 1, "y": 2})
    Traceback (most recent call last):
    ValueError: critical_lr: batch must be a pair (inputs, targets); got a dict of 2 items
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = (f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list, dict))
               else f"a tensor of shape {tuple(batch.shape)}" if hasattr(batch, "shape") else type(batch).__name__)
        raise ValueError(f"{owner}: batch must be a pair (inputs, targets); got {got}")
    inputs, targets = batch
    if not allow_empty and any(len(getattr(t, "shape", ())) > 0 and t.shape[0] == 0 for t in _leaves(inputs)):
        raise ValueError(f"{owner}: batch is empty: its inputs have 0 samples")
    return inputs, targets


def _leaves(tree: Any):
    """The leaves of inputs nested in tuples, lists and dicts (a model taking several inputs)."""
    if isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _leaves(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _leaves(item)
    else:
        yield tree


def check_module(owner: str, model: Any) -> None:
    """A TypeError naming ``owner`` unless ``model`` is a ``torch.nn.Module`` (``model.parameters()``
    gave "'generator' object has no attribute 'modules'" deep inside).

    >>> check_module("critical_lr", lambda x: x)
    Traceback (most recent call last):
    TypeError: critical_lr: model must be a torch.nn.Module (the model itself, not its parameters), got function
    """
    import torch  # here, not at the top: the rest of this module needs no torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{owner}: model must be a torch.nn.Module (the model itself, not its parameters), "
                        f"got {type(model).__name__}")


def check_positive_int(model: str, label: str, value: Any, *, optional: bool = False) -> None:
    """A constructor's size argument: ValueError naming ``model`` and ``label`` unless ``value`` is
    a positive integer (or, with ``optional``, None). Shared by the MLP, the WRN and the GPT.

    >>> check_positive_int("MLP", "width", 8); check_positive_int("MLP", "base_width", None, optional=True)
    >>> check_positive_int("MLP", "base_width", 2.5, optional=True)
    Traceback (most recent call last):
    ValueError: MLP base_width must be a positive integer or None; got 2.5
    """
    if optional and value is None:
        return
    # an integral float (8.0) passes, as the models convert with int(); nan, inf and non-numbers do not
    value = _scalar(value)
    integral = as_integer(value) is not None or (isinstance(value, float) and value.is_integer())
    if not integral or value < 1:
        raise ValueError(f"{model} {label} must be a positive integer{' or None' if optional else ''}; got {value!r}")


def check_densities(model: str, density: float, base_density: float) -> None:
    """ValueError naming ``model`` unless ``density`` and ``base_density`` are both in ``(0, 1]``.

    >>> check_densities("GPT", 0.5, 1.0)
    >>> check_densities("GPT", 0.0, 1.0)
    Traceback (most recent call last):
    ValueError: GPT density and base_density must be in (0, 1]; got 0.0, 1.0
    """
    density, base_density = _scalar(density), _scalar(base_density)
    real = all(as_real(v) is not None for v in (density, base_density))  # nan is no density either
    if not real or not (0.0 < density <= 1.0) or not (0.0 < base_density <= 1.0):
        raise ValueError(f"{model} density and base_density must be in (0, 1]; got {density!r}, {base_density!r}")


def check_seed(model: str, label: str, value: Any, *, optional: bool = True) -> int | None:
    """``value`` as an int, or None (with ``optional``, the default), once it is an integer a torch
    generator takes (``-2**63 <= value < 2**64``, :func:`as_integer`'s rule); a ValueError naming
    ``model`` and ``label`` otherwise: ``mask_seed=1.5`` was the seed 1, and ``"a"`` or ``2**64``
    raised int()'s or torch's words, naming no argument.

    >>> check_seed("MLP", "mask_seed", None), check_seed("MLP", "mask_seed", -1)
    (None, -1)
    >>> check_seed("GPT", "mask_seed", 1.5)
    Traceback (most recent call last):
    ValueError: GPT mask_seed must be an integer in [-2**63, 2**64) or None; got 1.5
    """
    try:
        return check_integer(model, label, value, low=-2 ** 63, high=2 ** 64 - 1, optional=optional)
    except ValueError:  # the range as torch's generators state it, not [-9223372036854775808, ...]
        raise ValueError(f"{model} {label} must be an integer in [-2**63, 2**64){' or None' if optional else ''}; "
                         f"got {_scalar(value)!r}") from None


def check_flag(owner: str, label: str, value: Any) -> bool:
    """``value`` as a bool, or a TypeError naming ``owner`` and ``label``: True, False, a NumPy bool
    or the integers 0 and 1 (as ``torch.optim`` flags take them). Python's truthiness took
    ``scale_by_group_lr="no"`` as True and ``[]`` as False, silently.

    >>> check_flag("sharpness", "distributed", 1)
    True
    >>> check_flag("preconditioned_sharpness", "scale_by_group_lr", "no")
    Traceback (most recent call last):
    TypeError: preconditioned_sharpness: scale_by_group_lr must be True or False, got 'no'
    """
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{owner}: {label} must be True or False, got {_scalar(value)!r}")


def one_flag(owner: str, label: str, value: Any) -> Any:
    """``value`` as it came, or a ValueError naming ``owner`` and ``label`` where it is a tensor (or
    array) of more than one value: a flag that picks a formula (an optimizer rule's ``maximize``,
    ``amsgrad``, ``nesterov``, ``decoupled_weight_decay``) takes one value for all it is applied to. A
    per-member tensor of them (the rules take per-member tensors of numbers) failed in torch's words,
    "Boolean value of Tensor with more than one value is ambiguous".

    >>> import numpy as np
    >>> one_flag("rules", "maximize", True), one_flag("rules", "maximize", np.array([True]))
    (True, array([ True]))
    >>> one_flag("rules", "maximize", np.array([True, False]))
    Traceback (most recent call last):
    ValueError: rules: maximize takes one value for all members (True or False), got 2 values of shape (2,): members that differ in maximize cannot step together; run them apart
    """
    size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 1)
    if isinstance(size, int) and size > 1:
        raise ValueError(f"{owner}: {label} takes one value for all members (True or False), got {size} values of "
                         f"shape {tuple(value.shape)}: members that differ in {label} cannot step together; "
                         f"run them apart")
    return value


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called from the function that calls this,
    point at the first frame outside catapult and torch: the user's line. A fixed
    ``stacklevel=2`` under a decorator pointed at the decorator's wrapper, one location for every
    call site, so the default filter showed the warning once per process.

    >>> import warnings
    >>> def api():                      # a function of catapult's that warns its caller
    ...     warnings.warn("careful", UserWarning, stacklevel=caller_stacklevel())
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     api()
    >>> str(caught[0].message)
    'careful'
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("catapult.", "torch.")):
        frame, level = frame.f_back, level + 1
    return level
