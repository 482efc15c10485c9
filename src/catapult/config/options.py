"""Value checks: one :class:`Option` per kind of config value (integer, number, choice, ...).

An :class:`Option` checks and normalizes one value and says, in its error, what the value
should be ("expected an integer >= 1, got 0"). It is also pydantic field metadata: in
``Annotated[int | None, integer(low=1)]`` it runs before pydantic's own type check, so the
config models (:mod:`catapult.config.sections`) keep these messages and their leniencies
(numeric text such as ``"1e-3"``, integral floats such as ``2e3`` for integers, never bools
for numbers). Whether ``None`` is allowed and which strings a choice allows are read from the
annotated type (``X | None``, ``Literal[...]``), so each is declared once.
"""
from __future__ import annotations

import decimal
import math
import numbers as _numbers
import re
import types
import typing
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from pydantic_core import PydanticCustomError, core_schema

from catapult.config.errors import InvalidValue, describe, short_repr, suggest

__all__ = ["Option", "integer", "number", "choice", "string", "boolean", "numbers", "as_float",
           "NUMBER_TEXT"]


@dataclass(frozen=True)
class Option:
    """One config entry's check.

    ``check(value) -> normalized value`` raises ``ValueError`` with a message that says what
    the value should be; ``None`` is accepted without calling ``check`` iff ``nullable``.
    ``kind`` is the human-readable type ("integer >= 1", "one of: sgd, adam"), used in docs and
    error messages; ``choices`` is set for enumerations. ``bind`` (internal) completes an
    option from the type it annotates (a choice without values takes the ``Literal``'s).
    """

    default: Any
    check: Callable[[Any], Any]
    kind: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    doc: str = ""
    bind: Callable[[Any], "Option"] | None = None

    def validate(self, value: Any) -> Any:
        """The normalized ``value``; :class:`InvalidValue` saying what is allowed otherwise."""
        if value is None:
            if self.nullable:
                return None
            raise InvalidValue(f"must not be null; expected {self.kind}")
        try:
            return self.check(value)
        except (ValueError, TypeError) as err:
            raise InvalidValue(str(err)) from None

    def for_type(self, annotation: Any) -> "Option":
        """This option completed from the annotated type: nullable iff it admits ``None``."""
        option = self.bind(annotation) if self.bind is not None else self
        if type(None) in _union_args(annotation) and not option.nullable:
            option = replace(option, nullable=True)
        return option

    def __get_pydantic_core_schema__(self, source_type: Any, handler: Any) -> core_schema.CoreSchema:
        option = self.for_type(source_type)

        def check(value: Any) -> Any:
            try:
                return option.validate(value)
            except InvalidValue as err:
                # a custom error keeps the message as written (no "Value error, " prefix)
                raise PydanticCustomError("config", "{message}", {"message": str(err)}) from None

        return core_schema.no_info_before_validator_function(check, handler(source_type))


def _union_args(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def literal_values(annotation: Any) -> tuple[str, ...]:
    """The strings of a ``Literal[...]`` (also inside ``Literal[...] | None``)."""
    values: list[str] = []
    for arg in _union_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            values.extend(typing.get_args(arg))
    return tuple(values)


def _bound_text(bound) -> str:
    # an integer bound in full: ``:g`` wrote data.vocab_size's 1 << 20 as 1.04858e+06
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _range_text(low, high, low_open, high_open) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_bound_text(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {_bound_text(high)}")
    return " and ".join(parts)


def _check_range(x: float, low, high, low_open, high_open, kind: str, given: Any = None) -> None:
    if (low is not None and (x < low or (low_open and x == low))) or (
        high is not None and (x > high or (high_open and x == high))
    ):
        raise ValueError(f"{short_repr(x if given is None else given)} is out of range; expected {kind}")


NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def as_float(value: Any, kind: str) -> float:
    """``value`` as a float: ints, floats and numeric text (``"1e-3"``, ``"inf"``); never bools or nan.

    PyYAML (YAML 1.1) reads ``1e-3`` as a string, so numeric text is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {kind}, got {describe(value)}")
    if isinstance(value, _numbers.Real):  # NumPy scalars too (np.float32(0.5), np.int64(3): a generated grid's values)
        try:
            x = float(value)
        except OverflowError:  # an int beyond any float: out of every range
            x = math.inf if value > 0 else -math.inf
    elif isinstance(value, str) and (NUMBER_TEXT.match(value) or value.strip().lower() in ("inf", "+inf", ".inf")):
        x = float(value.strip().lstrip("+").replace(".inf", "inf"))
    else:
        raise ValueError(f"expected {kind}, got {describe(value)}")
    if math.isnan(x):
        raise ValueError(f"expected {kind}, got nan")
    return x


#: Numeric text with an exponent: what PyYAML (YAML 1.1) leaves as a string when written unquoted (``2e3``).
EXPONENT_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")
#: Digits after a leading zero (``09``, ``-007``), which YAML 1.1 reads as text, or as octal (``010``).
_LEADING_ZERO = re.compile(r"^\s*[-+]?0\d")


#: The most optimizer steps a config asks for (``train.steps``, ``schedule.warmup_steps``): 10**9,
#: below int32's 2**31 - 1 and far beyond any run (11.6 days at 1,000 steps a second); the same
#: number as :data:`catapult.arguments.MAX_STEPS` (this package imports no other; a test holds
#: them equal). ``train.steps: 1e26`` was accepted and trained forever.
MAX_STEPS = 10 ** 9

#: The most curvature products one measurement asks for (``eval.sharpness_max_iter``,
#: ``eval.trace_matvecs``, 3 per ``eval.spectrum_top_k`` eigenvalue): 10**5, the same number as
#: :data:`catapult.arguments.MAX_PRODUCTS` (a test holds them equal): 1,000x the default of 100; a
#: product costs about two training steps, so beyond it one measurement outlasts the run it measures.
#: ``eval.sharpness_max_iter: 1e9`` was taken and ran until killed.
MAX_PRODUCTS = 10 ** 5

#: The most training batches lambda_0 averages over (``eval.lambda0_batches``): 1,000, 100x the
#: paper's 10 (the mean's sampling error a tenth of theirs) and, at the default 100 products a solve,
#: ``MAX_PRODUCTS`` products; the batches are held in memory together while it is measured, so
#: ``eval.lambda0_batches: 1e9`` filled memory before its first solve.
MAX_LAMBDA0_BATCHES = 1000


def integer(default=None, *, low=None, high=None, nullable=False, doc="") -> Option:
    """An integer in ``[low, high]`` (either bound optional): a Python or NumPy integer, an integral
    float (``2000.0``) or the exponent text YAML leaves unparsed (``2e3``). Other text, ``"50"``,
    is refused: YAML reads an unquoted 50 as the integer, so the string was quoted (a typo).

    >>> integer(low=1).check("2e3"), integer(low=1).check(2000.0)
    (2000, 2000)
    >>> integer(low=1).check("50")
    Traceback (most recent call last):
    ...
    ValueError: expected an integer >= 1, got '50' (str): a quoted number is text; write it unquoted
    """
    kind = "an integer" + (f" {_range_text(low, high, False, False)}" if low is not None or high is not None else "")

    def check(value):
        if isinstance(value, _numbers.Integral) and not isinstance(value, bool):
            x = int(value)  # exact: a float would round integers above 2**53 (a seed would change)
        elif isinstance(value, str) and NUMBER_TEXT.match(value) and not EXPONENT_TEXT.match(value):
            # "50" in the YAML (quoted, or train.steps='"50"') ran as 50 without a word
            if _LEADING_ZERO.match(value):   # 09: YAML 1.1 keeps it as text (010 it reads as octal 8)
                raise ValueError(f"expected {kind}, got {describe(value)}: YAML reads digits after a leading zero "
                                 f"as text (and 010 as octal 8); write the number without leading zeros")
            raise ValueError(f"expected {kind}, got {describe(value)}: a quoted number is text; write it unquoted")
        else:
            x = as_float(value, kind)
            if not math.isfinite(x) or x != int(x):
                raise ValueError(f"expected {kind}, got {describe(value)}")
            if not isinstance(value, str) and abs(x) > 2 ** 53:
                # seed: 1.0e+30 (a YAML float: it has a '.') ran seed 1000000000000000019884624838656, where
                # seed: 1e30 (text) is read exactly: past 2**53 a float is not the integer written
                raise ValueError(f"expected {kind}, got {describe(value)}: a float is exact only up to 2**53 and "
                                 f"this one is {int(x)}; write the integer's digits, or an exponent without a "
                                 f"'.' (1e30), which is read exactly")
            if isinstance(value, str):
                # the number written, not its float: seed 1e30 ran seed 1000000000000000019884624838656,
                # and 1e-400 (0.0 as a float) ran 0 (finite as a float, so the text is at most ~309 digits)
                exact = decimal.Decimal(value.strip())
                if exact != exact.to_integral_value():
                    raise ValueError(f"expected {kind}, got {describe(value)}")
                x = int(exact)
        _check_range(x, low, high, False, False, kind, value)
        return int(x)

    return Option(default, check, kind, nullable=nullable, doc=doc)


def number(default=None, *, low=None, high=None, low_open=False, high_open=False, nullable=False,
           allow_inf=False, doc="") -> Option:
    """A real number in the given range (open or closed ends); numeric text like ``1e-3`` accepted.

    Infinity (``.inf``, ``1e400``) is refused unless ``allow_inf``: a schedule or solver fed
    ``inf`` would otherwise fail late, after the run directory was written.
    """
    rng = _range_text(low, high, low_open, high_open)
    kind = ("a number" if allow_inf else "a finite number") + (f" {rng}" if rng else "")

    def check(value):
        x = as_float(value, kind)
        if not allow_inf and math.isinf(x):
            raise ValueError(f"{short_repr(value)} is not finite; expected {kind}")
        _check_range(x, low, high, low_open, high_open, kind, value)
        return x

    return Option(default, check, kind, nullable=nullable, doc=doc)


def choice(default=None, values: Iterable[str] | None = None, *, aliases: Mapping[str, str] | None = None,
           nullable=False, doc="") -> Option:
    """One of ``values`` (strings, matched case-insensitively and stored as listed). A boolean
    stands for ``on``/``yes``/``true`` or ``off``/``no``/``false`` where those are values: YAML
    reads ``train.accuracy_failure: off`` unquoted as ``False``.

    ``values=None``: the values of the ``Literal`` the option annotates. ``aliases`` maps
    other spellings to a value (``giadam -> gi-adam``).
    """
    if values is None:
        return Option(default, _unbound, "one of the listed values", nullable=nullable, doc=doc,
                      bind=lambda tp: choice(default, literal_values(tp), aliases=aliases, nullable=nullable,
                                             doc=doc))
    values = tuple(values)
    kind = "one of: " + ", ".join(values)
    lookup = {v.lower(): v for v in values}
    lookup.update({k.lower(): v for k, v in (aliases or {}).items()})

    def check(value):
        if isinstance(value, str) and value.strip().lower() in lookup:
            return lookup[value.strip().lower()]
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted on/off/yes/no as a boolean
            for word in (("on", "yes", "true") if value else ("off", "no", "false")):
                if word in lookup:
                    return lookup[word]
        hint = suggest(value if isinstance(value, str) else short_repr(value), values)
        raise ValueError(f"{short_repr(value)} is not allowed; allowed values: {', '.join(values)}{hint}")

    return Option(default, check, kind, nullable=nullable, choices=values, doc=doc)


def _unbound(value: Any) -> Any:
    raise TypeError("a choice without values must annotate a Literal type")


def string(default=None, *, pattern: str | None = None, what: str = "a string", nullable=False, doc="") -> Option:
    """A string, optionally matching the regular expression ``pattern`` (described by ``what``)."""
    regex = re.compile(pattern) if pattern else None

    def check(value):
        if not isinstance(value, str) or (regex is not None and not regex.fullmatch(value)):
            raise ValueError(f"expected {what}, got {describe(value)}")
        return value

    return Option(default, check, what, nullable=nullable, doc=doc)


def boolean(default=None, *, nullable=False, doc="") -> Option:
    """``true`` or ``false``."""

    def check(value):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {describe(value)}")
        return value

    return Option(default, check, "true or false", nullable=nullable, doc=doc)


def numbers(default=(), *, length: int, low=None, high=None, low_open=False, high_open=False, doc="") -> Option:
    """A list of exactly ``length`` numbers, each in the given range."""
    rng = _range_text(low, high, low_open, high_open)
    kind = f"a list of {length} numbers" + (f", each {rng}" if rng else "")

    def check(value):
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ValueError(f"expected {kind}, got {describe(value)}")
        out = []
        for item in value:
            x = as_float(item, kind)
            _check_range(x, low, high, low_open, high_open, kind, item)
            out.append(x)
        return out

    return Option(list(default), check, kind, doc=doc)
