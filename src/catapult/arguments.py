"""Argument checks the Python API's constructors share: a real number in a range, named.

A model or a transform given ``weight_var=nan`` or ``init_std="0.02"`` failed later, inside
torch ("normal expects std >= 0.0", "'<' not supported"), or ran with an all-nan output. These
checks say which argument is wrong, before anything is built.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_real"]


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
