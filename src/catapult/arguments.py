"""Argument checks the Python API's constructors share: a real number in a range, named.

A model or a transform given ``weight_var=nan`` or ``init_std="0.02"`` failed later, inside
torch ("normal expects std >= 0.0", "'<' not supported"), or ran with an all-nan output. These
checks say which argument is wrong, before anything is built.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_real", "check_batch"]


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
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if low is None and high is None:
            where = ""
        elif high is None:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif low is None:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner} {label} must be a finite number{where}; got {value!r}")
    return float(value)


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
    shape = getattr(inputs, "shape", None)
    if not allow_empty and shape is not None and len(shape) > 0 and shape[0] == 0:
        raise ValueError(f"{owner}: batch is empty: its inputs have 0 samples")
    return inputs, targets
