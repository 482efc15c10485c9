"""Learning rates: a number, or ``"<c>/lambda0"`` meaning ``c / lambda_0``.

lambda_0 is the sharpness at initialization on the training batch, so ``"2^5/lambda0"`` is a
learning rate 32 times the stability threshold's ``1/lambda_0`` (GD is stable below ``2/lambda_0``).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from catapult.config.errors import describe, short_repr
from catapult.config.options import NUMBER_TEXT, Option

__all__ = ["LR", "LR_GRAMMAR", "parse_lr", "resolve_lr", "lr_needs_lambda0", "learning_rate"]


@dataclass(frozen=True)
class LR:
    """A parsed learning rate: ``value`` itself, or ``value / lambda_0`` when ``relative``."""

    value: float
    relative: bool = False

    def resolve(self, lambda_0: float | None = None) -> float:
        """The learning rate in absolute units: ``value / lambda_0`` if relative, else ``value``."""
        if not self.relative:
            return self.value
        # lambda_0=True was 1 (the lr was c itself), "2.0" a TypeError in Python's words; a 0-d tensor gave a tensor lr
        if getattr(lambda_0, "ndim", None) == 0 and hasattr(lambda_0, "item"):
            lambda_0 = lambda_0.item()
        real = isinstance(lambda_0, numbers.Real) and not isinstance(lambda_0, bool)
        if not real or not math.isfinite(lambda_0) or lambda_0 <= 0:
            raise ValueError(f"a learning rate relative to lambda_0 needs a positive finite lambda_0, got {lambda_0!r}")
        return self.value / lambda_0


_LR_RELATIVE = re.compile(r"^\s*(?P<c>[^/]+?)\s*/\s*lambda_?0\s*$", re.IGNORECASE)
_POWER = re.compile(r"^\s*(?P<b>[0-9.]+)\s*(\^|\*\*)\s*(?P<x>[-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")
LR_GRAMMAR = 'a number > 0, or "<c>/lambda0" with c a number > 0 or a power like 2^5 or 2^-1.5'


def _parse_coefficient(text: str) -> float:
    """``b^x`` (or ``b**x``) -> ``b ** x``; numeric text -> its value; anything else, and a
    power that is not a finite real number (``2^2000`` overflows, ``0^-1`` divides by zero,
    ``1.2.3`` is no number) -> nan, which the caller refuses."""
    m = _POWER.match(text)
    try:
        if m:
            return float(m["b"]) ** float(m["x"])
        return float(text) if NUMBER_TEXT.match(text) else float("nan")
    except (OverflowError, ZeroDivisionError, ValueError):
        return float("nan")


def parse_lr(value: Any) -> LR:
    """Parse a learning-rate spec.

    Grammar: a number ``> 0`` (``0.125``, ``"1e-3"``); or ``"<c>/lambda0"`` (also
    ``lambda_0``) with ``c`` a number or a power ``b^x`` / ``b**x`` (``"32/lambda0"``,
    ``"2^5/lambda0"``, ``"2^-1/lambda0"``), meaning ``c / lambda_0`` where lambda_0 is the
    sharpness at initialization on the training batch. Raises ``ValueError`` otherwise.
    """
    if isinstance(value, LR):
        return value
    if isinstance(value, str):
        m = _LR_RELATIVE.match(value)
        if m:
            c = _parse_coefficient(m["c"])
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"expected {LR_GRAMMAR}, got {short_repr(value)}")
            return LR(c, relative=True)
        if not (NUMBER_TEXT.match(value) or _POWER.match(value)):
            raise ValueError(f"expected {LR_GRAMMAR}, got {short_repr(value)}")
        x = _parse_coefficient(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # NumPy scalars too (a generated grid)
        x = float(value) if not isinstance(value, numbers.Integral) or abs(value) < 2 ** 1000 else math.inf
    else:
        raise ValueError(f"expected {LR_GRAMMAR}, got {describe(value)}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"expected {LR_GRAMMAR}, got {short_repr(value)}")
    return LR(x)


def lr_needs_lambda0(value: Any) -> bool:
    """True if the lr spec is relative (``"<c>/lambda0"``) and so needs lambda_0 measured first."""
    return parse_lr(value).relative


def resolve_lr(value: Any, lambda_0: float | None = None) -> float:
    """The absolute learning rate for a spec: ``c / lambda_0`` for ``"<c>/lambda0"``, else the number."""
    return parse_lr(value).resolve(lambda_0)


def learning_rate(default=None, *, doc="") -> Option:
    """A learning rate in the :func:`parse_lr` grammar; stored as a float or the (stripped) string."""

    def check(value):
        spec = parse_lr(value)
        if spec.relative:
            return value.strip()
        return spec.value

    return Option(default, check, LR_GRAMMAR, doc=doc)
