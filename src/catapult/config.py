"""Run configs: the schema, validation, ``key=value`` overrides and the ``c/lambda0`` lr grammar.

A config is a nested mapping (usually a YAML file)::

    name: fig1_mup
    seed: 0
    data:      {name: digits, n_train: null, ...}
    model:     {name: mlp, width: 512, depth: 4, parametrization: mup, ...}
    loss: mse
    optimizer: {name: sgd, lr: 0.125, ...}      # lr may be "32/lambda0" or "2^5/lambda0"
    schedule:  {warmup: linear, warmup_steps: 64, ...}
    train:     {steps: 2000, batch_size: null, divergence_factor: 1000}
    eval:      {sharpness_every: 10, test_every: 100, ...}

:func:`validate` checks *every* key before any work starts: unknown keys (with a close-match
suggestion), types, allowed values and numeric ranges. Problems raise :class:`ConfigError`,
whose message names each offending dotted key and what it accepts. Defaults fill the rest.

The schema is data, not code: :data:`SCHEMA` maps section -> key -> :class:`Option`.
Later features extend it without rewriting anything::

    add_choices("optimizer.name", "gi-adam", "radam")
    add_option("model.n_heads", integer(None, low=1, nullable=True, doc="..."))
    add_section("sweep", {"grid": Option(...)})
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

__all__ = [
    "ConfigError",
    "Option",
    "SCHEMA",
    "CHECKS",
    "defaults",
    "validate",
    "load_config",
    "read_mapping",
    "STUDY_SECTIONS",
    "apply_overrides",
    "parse_override",
    "dump_config",
    "get",
    "add_choices",
    "add_option",
    "add_section",
    "integer",
    "number",
    "choice",
    "string",
    "numbers",
    "learning_rate",
    "LR",
    "parse_lr",
    "resolve_lr",
    "lr_needs_lambda0",
]


# --------------------------------------------------------------------------------------------
# Errors


class ConfigError(ValueError):
    """A config problem, raised before any work starts.

    ``problems`` is a list of ``(dotted_key, message)``; ``str(err)`` has one line per
    problem, ``"<dotted.key>: <what is wrong>; <what is allowed>"``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]] | str, key: str | None = None):
        if isinstance(problems, str):
            problems = [(key or "", problems)]
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"{key}: {msg}" if key else msg for key, msg in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in the config:\n" + "\n".join("  " + line for line in lines)

    @property
    def keys(self) -> list[str]:
        """The dotted keys with a problem, in order."""
        return [key for key, _ in self.problems]


class _Invalid(Exception):
    """Raised by an option's check with a message saying what was wrong and what is allowed."""


# --------------------------------------------------------------------------------------------
# Options: one typed, documented entry of the schema


@dataclass(frozen=True)
class Option:
    """One config entry.

    ``check(value) -> normalized value`` raises ``ValueError`` with a message that says what
    the value should be; ``None`` is accepted without calling ``check`` iff ``nullable``.
    ``kind`` is the human-readable type ("integer >= 1", "one of: sgd, adam"), used in docs and
    error messages; ``choices`` is set for enumerations so tables can be extended.
    """

    default: Any
    check: Callable[[Any], Any]
    kind: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    doc: str = ""

    def validate(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise _Invalid(f"must not be null; expected {self.kind}")
        try:
            return self.check(value)
        except (ValueError, TypeError) as err:
            raise _Invalid(str(err)) from None


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _range_text(low, high, low_open, high_open) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _check_range(x: float, low, high, low_open, high_open, kind: str, given: Any = None) -> None:
    if (low is not None and (x < low or (low_open and x == low))) or (
        high is not None and (x > high or (high_open and x == high))
    ):
        raise ValueError(f"{x if given is None else given!r} is out of range; expected {kind}")


_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _as_float(value: Any, kind: str) -> float:
    # YAML 1.1 (PyYAML) reads "1e-3" as a string: accept numeric text, never bools.
    if isinstance(value, bool):
        raise ValueError(f"expected {kind}, got {_describe(value)}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str) and (_NUMBER_TEXT.match(value) or value.strip().lower() in ("inf", "+inf", ".inf")):
        x = float(value.strip().lstrip("+").replace(".inf", "inf"))
    else:
        raise ValueError(f"expected {kind}, got {_describe(value)}")
    if math.isnan(x):
        raise ValueError(f"expected {kind}, got nan")
    return x


def integer(default, *, low=None, high=None, nullable=False, doc="") -> Option:
    """An integer in ``[low, high]`` (either bound optional). ``2e3`` and ``2000.0`` are accepted."""
    kind = "an integer" + (f" {_range_text(low, high, False, False)}" if low is not None or high is not None else "")

    def check(value):
        x = _as_float(value, kind)
        if not math.isfinite(x) or x != int(x):
            raise ValueError(f"expected {kind}, got {_describe(value)}")
        _check_range(x, low, high, False, False, kind, value)
        return int(x)

    return Option(default, check, kind, nullable=nullable, doc=doc)


def number(default, *, low=None, high=None, low_open=False, high_open=False, nullable=False, doc="") -> Option:
    """A real number in the given range (open or closed ends); numeric text like ``1e-3`` accepted."""
    rng = _range_text(low, high, low_open, high_open)
    kind = "a number" + (f" {rng}" if rng else "")

    def check(value):
        x = _as_float(value, kind)
        _check_range(x, low, high, low_open, high_open, kind, value)
        return x

    return Option(default, check, kind, nullable=nullable, doc=doc)


def choice(default, values: Iterable[str], *, nullable=False, doc="") -> Option:
    """One of ``values`` (strings, matched case-insensitively and stored as listed)."""
    values = tuple(values)
    kind = "one of: " + ", ".join(values)
    lookup = {v.lower(): v for v in values}

    def check(value):
        if isinstance(value, str) and value.strip().lower() in lookup:
            return lookup[value.strip().lower()]
        hint = _suggest(str(value), values)
        raise ValueError(f"{value!r} is not allowed; allowed values: {', '.join(values)}{hint}")

    return Option(default, check, kind, nullable=nullable, choices=values, doc=doc)


def string(default, *, pattern: str | None = None, what: str = "a string", nullable=False, doc="") -> Option:
    """A string, optionally matching the regular expression ``pattern`` (described by ``what``)."""
    regex = re.compile(pattern) if pattern else None

    def check(value):
        if not isinstance(value, str) or (regex is not None and not regex.fullmatch(value)):
            raise ValueError(f"expected {what}, got {_describe(value)}")
        return value

    return Option(default, check, what, nullable=nullable, doc=doc)


def boolean(default, *, nullable=False, doc="") -> Option:
    """``true`` or ``false``."""

    def check(value):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_describe(value)}")
        return value

    return Option(default, check, "true or false", nullable=nullable, doc=doc)


def numbers(default, *, length: int, low=None, high=None, low_open=False, high_open=False, doc="") -> Option:
    """A list of exactly ``length`` numbers, each in the given range."""
    rng = _range_text(low, high, low_open, high_open)
    kind = f"a list of {length} numbers" + (f", each {rng}" if rng else "")

    def check(value):
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ValueError(f"expected {kind}, got {_describe(value)}")
        out = []
        for item in value:
            x = _as_float(item, kind)
            _check_range(x, low, high, low_open, high_open, kind, item)
            out.append(x)
        return out

    return Option(list(default), check, kind, doc=doc)


# --------------------------------------------------------------------------------------------
# Learning rates: a number, or "<c>/lambda0" meaning c / lambda_0


@dataclass(frozen=True)
class LR:
    """A parsed learning rate: ``value`` itself, or ``value / lambda_0`` when ``relative``."""

    value: float
    relative: bool = False

    def resolve(self, lambda_0: float | None = None) -> float:
        """The learning rate in absolute units (needs ``lambda_0`` when relative)."""
        if not self.relative:
            return self.value
        if lambda_0 is None or not math.isfinite(lambda_0) or lambda_0 <= 0:
            raise ValueError(f"a learning rate relative to lambda_0 needs a positive finite lambda_0, got {lambda_0!r}")
        return self.value / lambda_0


_LR_RELATIVE = re.compile(r"^\s*(?P<c>[^/]+?)\s*/\s*lambda_?0\s*$", re.IGNORECASE)
_POWER = re.compile(r"^\s*(?P<b>[0-9.]+)\s*(\^|\*\*)\s*(?P<x>[-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")
LR_GRAMMAR = 'a number > 0, or "<c>/lambda0" with c a number > 0 or a power like 2^5 or 2^-1.5'


def _parse_coefficient(text: str) -> float:
    m = _POWER.match(text)
    if m:
        return float(m["b"]) ** float(m["x"])
    return float(text) if _NUMBER_TEXT.match(text) else float("nan")


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
                raise ValueError(f"expected {LR_GRAMMAR}, got {value!r}")
            return LR(c, relative=True)
        if not (_NUMBER_TEXT.match(value) or _POWER.match(value)):
            raise ValueError(f"expected {LR_GRAMMAR}, got {value!r}")
        x = _parse_coefficient(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
    else:
        raise ValueError(f"expected {LR_GRAMMAR}, got {_describe(value)}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"expected {LR_GRAMMAR}, got {value!r}")
    return LR(x)


def lr_needs_lambda0(value: Any) -> bool:
    """True if the lr spec is relative (``"<c>/lambda0"``) and so needs lambda_0 measured first."""
    return parse_lr(value).relative


def resolve_lr(value: Any, lambda_0: float | None = None) -> float:
    """The absolute learning rate for a spec: ``c / lambda_0`` for ``"<c>/lambda0"``, else the number."""
    return parse_lr(value).resolve(lambda_0)


def learning_rate(default, *, doc="") -> Option:
    """A learning rate in the :func:`parse_lr` grammar; stored as a float or the (stripped) string."""

    def check(value):
        spec = parse_lr(value)
        if spec.relative:
            return value.strip()
        return spec.value

    return Option(default, check, LR_GRAMMAR, doc=doc)


# --------------------------------------------------------------------------------------------
# The schema. Tables of choices are plain tuples: extend with add_choices().

_RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+=-]*"


def _check_v0(value: Any) -> str | float:
    """GI-Adam's ``optimizer.v0``: ``"grad"``, ``"random"`` or a number ``a >= 1`` (v_0 = a g^2)."""
    if isinstance(value, str) and value.strip().lower() in ("grad", "random"):
        return value.strip().lower()
    if isinstance(value, str) and not _NUMBER_TEXT.match(value):
        raise ValueError(f"{value!r} is not allowed; expected one of: grad, random, or a number a >= 1")
    x = _as_float(value, "one of: grad, random, or a number a >= 1")
    if not (math.isfinite(x) and x >= 1):
        raise ValueError(f"{value!r} is out of range; expected grad, random, or a number a >= 1 "
                         "(v_0 = a * g^2; the paper studies a >= 1)")
    return x

SCHEMA: dict[str, Any] = {
    "name": string(None, pattern=_RUN_NAME, nullable=True,
                   what="a run name of letters, digits and _ . + = - (used as a directory name)",
                   doc="run name -> runs/<name>/ (default: the config file's stem)"),
    "seed": integer(0, low=0, doc="seeds model init, batch order and the sharpness start vector"),
    "device": string("cpu", pattern=r"cpu|cuda|auto|cuda:\d+", what="one of: cpu, cuda, cuda:<n>, auto",
                     doc="auto = cuda if available else cpu"),
    "dtype": choice("float32", ("float32", "float64"), doc="parameters, data and training arithmetic"),
    "data": {
        "name": choice("digits", ("digits", "cifar10", "cifar100", "shakespeare", "text"),
                       doc="dataset: digits/cifar10/cifar100 (images, model mlp); shakespeare "
                           "(embedded) or text (your files at data.root) for the gpt"),
        "root": string(None, nullable=True, what="a path (directory or archive)",
                       doc="where the dataset files are (cifar: a directory or the .tar.gz; text: a "
                           "file or a directory with wiki.train.raw / wiki.valid.raw or *.txt)"),
        "n_train": integer(None, low=1, nullable=True,
                           doc="first N training samples (text: N windows of data.context tokens; null = all)"),
        "n_test": integer(None, low=1, nullable=True,
                          doc="first N test samples (text: N validation windows; null = all)"),
        "context": integer(64, low=1, doc="text only: tokens per window (the gpt's context)"),
        "val_fraction": number(0.1, low=0.0, high=1.0, low_open=True, high_open=True,
                               doc="text only: tail of the characters held out for validation "
                                   "(unless the files have their own split)"),
    },
    "model": {
        "name": choice("mlp", ("mlp", "gpt"), doc="architecture: mlp (the warmup paper's FCN) or gpt "
                                                   "(Pre-LN Transformer LM, text data)"),
        "width": integer(512, low=1, doc="hidden width (gpt: d_model)"),
        "depth": integer(4, low=1, doc="number of Linear layers (gpt: number of blocks)"),
        "parametrization": choice("mup", ("sp", "mup", "supar", "supar_init", "supar_lr"),
                                  doc="init and multiplier rules; supar_init / supar_lr are the SμPar "
                                      "ablations (SμPar init + muP lr / muP init + SμPar lr)"),
        "activation": choice("relu", ("relu", "tanh", "gelu", "linear"),
                             doc="hidden nonlinearity (gpt: relu or gelu)"),
        "bias": boolean(True, doc="layers have (zero-initialized) biases; the paper's reference FCN has none"),
        "init": choice("normal", ("normal", "trunc_normal"), doc="weight init distribution"),
        "base_width": integer(None, low=1, nullable=True, doc="muP base width (null = the model's default)"),
        "density": number(1.0, low=0.0, high=1.0, low_open=True, doc="fraction of hidden weights kept"),
        "base_density": number(1.0, low=0.0, high=1.0, low_open=True, doc="density of the tuned proxy"),
        "mask_method": choice("exact", ("exact", "bernoulli"),
                              doc="sparsity masks: exactly round(density * n) nonzeros per matrix, or Bernoulli"),
        "alpha_in": number(1.0, low=0.0, low_open=True,
                           doc="muP/SμPar input multiplier (mlp: table form, i.e. supar* or mup with "
                               "base_width; not used under sp)"),
        "alpha_out": number(1.0, low=0.0, low_open=True,
                            doc="muP/SμPar output multiplier, applied as alpha_out / m_d (not used under sp)"),
        "init_std": number(None, low=0.0, low_open=True, nullable=True,
                           doc="gpt only: base init std sigma (null = 0.02)"),
        "n_heads": integer(4, low=1, doc="gpt only: attention heads (width must be divisible by it)"),
        "positions": choice("learned", ("learned", "sinusoidal"), doc="gpt only: position encoding"),
        "tie_embeddings": boolean(False, doc="gpt only: unembedding = token embedding"),
    },
    "loss": choice("mse", ("mse", "cross_entropy"), doc="mse = 0.5 * mean over (batch x outputs)"),
    "optimizer": {
        "name": choice("sgd", ("sgd", "adam", "adamw", "radam", "gi-adam"),
                       doc="sgd = GD/SGD with optional heavy-ball momentum; radam = torch.optim.RAdam; "
                           "gi-adam = catapult.optim.GIAdam (v_0 = g^2; also spelled giadam)"),
        "lr": learning_rate(0.125, doc='lr_trgt: a number or "<c>/lambda0"'),
        "momentum": number(0.0, low=0.0, high=1.0, high_open=True, doc="heavy-ball momentum (sgd)"),
        "betas": numbers((0.9, 0.999), length=2, low=0.0, high=1.0, high_open=True, doc="Adam betas"),
        "eps": number(1e-8, low=0.0, doc="Adam epsilon"),
        "weight_decay": number(0.0, low=0.0, doc="L2 (sgd, adam, radam) or decoupled (adamw, gi-adam) weight decay"),
        "v0": Option("grad", lambda v: _check_v0(v), 'one of: grad, random, or a number a >= 1',
                     doc='gi-adam only: v_0 = g^2 ("grad"), a random positive v_0 with the norm of '
                         'g^2 ("random", the paper\'s control) or a * g^2'),
        "v_bias_correction": boolean(True, doc="gi-adam only: divide v by 1 - b2^t (true: the paper's "
                                               "code, an implicit warmup; false: the paper's text)"),
    },
    "schedule": {
        "warmup": choice("linear", ("linear", "catapult", "persistent"),
                         doc="linear = polynomial warmup from lr_init; catapult = linear warmup started at "
                             "lr_c = critical_lr at step 0; persistent = PersistentCatapultWarmup (no T_wrm)"),
        "delta": number(None, low=0.0, low_open=True, nullable=True,
                        doc="catapult/persistent: loss rise accepted at lr_c (null = 0.1 for sgd, 0.01 for Adam-family)"),
        "lr_start": number(None, low=0.0, low_open=True, nullable=True,
                           doc="catapult/persistent: first lr of the critical-lr search (null = min(1e-4, lr_trgt))"),
        "warmup_steps": integer(1, low=1, doc="T_wrm; 1 = no warmup"),
        "lr_init": number(0.0, low=0.0, doc="lr at the start of warmup"),
        "power": number(1.0, low=0.0, low_open=True, doc="warmup exponent (1 = linear)"),
        "decay": choice("constant", ("constant", "cosine", "linear"), doc="after warmup, until train.steps"),
        "lr_final": number(None, low=0.0, nullable=True, doc="lr at the end of the decay (null = the schedule's default)"),
    },
    "train": {
        "steps": integer(2000, low=0, doc="optimizer steps"),
        "batch_size": integer(None, low=1, nullable=True, doc="null = full-batch GD"),
        "divergence_factor": number(1000.0, low=1.0, low_open=True,
                                    doc="diverged if the loss is non-finite or > factor * initial loss"),
    },
    "eval": {
        "sharpness_every": integer(10, low=0, doc="measure sharpness every k steps (0 = never)"),
        "sharpness_tol": number(1e-3, low=0.0, low_open=True, doc="relative tolerance of the eigen-solver"),
        "sharpness_max_iter": integer(100, low=1, doc="most Hessian-vector products per measurement"),
        "sharpness_kind": choice("auto", ("auto", "hessian", "preconditioned"),
                                 doc="auto = pre-conditioned for Adam-family optimizers, else the Hessian's"),
        "sharpness_hvp": choice("auto", ("auto", "double_backprop", "forward_over_reverse"),
                                doc="how Hessian-vector products are computed"),
        "sharpness_dtype": choice(None, ("float32", "float64"), nullable=True,
                                  doc="solver precision (null = the run's dtype)"),
        "sharpness_max_basis": integer(20, low=2, doc="Krylov vectors kept (memory: one parameter-"
                                       "sized vector each; thick restart beyond)"),
        "sharpness_chunk_size": integer(None, low=1, nullable=True,
                                        doc="HVPs over micro-batches of at most this many samples "
                                            "(less memory, ~a gradient more per HVP; null = whole batch)"),
        "test_every": integer(100, low=0, doc="test loss/accuracy every m steps (0 = only at the end)"),
    },
}

#: Cross-key checks: each ``check(config) -> iterable of (dotted_key, message)``, run on a
#: config whose keys already validated individually.
CHECKS: list[Callable[[dict], Iterable[tuple[str, str]]]] = []


def _check_decay(config: dict) -> Iterable[tuple[str, str]]:
    """A decay needs room after warmup; lr_final only means something with a decay."""
    sched, steps = config["schedule"], config["train"]["steps"]
    if sched["decay"] == "constant" and sched["lr_final"] is not None:
        yield ("schedule.lr_final", "is only used with schedule.decay cosine or linear; set it to null "
                                    "or choose a decay")
    if sched["decay"] != "constant" and steps <= sched["warmup_steps"]:
        yield ("schedule.decay", f"{sched['decay']} decay needs train.steps ({steps}) > "
                                 f"schedule.warmup_steps ({sched['warmup_steps']})")


def _check_data_root(config: dict) -> Iterable[tuple[str, str]]:
    if config["data"]["name"] == "digits" and config["data"]["root"] is not None:
        yield ("data.root", "digits ship with scikit-learn and take no root; set data.root to null")


def _check_model_data(config: dict) -> Iterable[tuple[str, str]]:
    """Text data go with the gpt, images with the mlp; model options only where they apply."""
    from catapult.data import TEXT_DATASETS

    data, model = config["data"], config["model"]
    text = data["name"] in TEXT_DATASETS
    if text and model["name"] != "gpt":
        yield ("model.name", f"data.name {data['name']!r} is text; it trains model.name: gpt")
    if not text and model["name"] == "gpt":
        yield ("data.name", f"model.name gpt trains on text: data.name one of {', '.join(TEXT_DATASETS)}")
    if data["name"] == "text" and data["root"] is None:
        yield ("data.root", "data.name text reads your files: set data.root to a text file or a directory "
                            "with wiki.train.raw / wiki.valid.raw or *.txt")
    if data["name"] == "shakespeare" and data["root"] is not None:
        yield ("data.root", "shakespeare is embedded and takes no root; set data.root to null "
                            "(or data.name: text for your own files)")
    if not text:
        for key in ("context", "val_fraction"):
            if data[key] != SCHEMA["data"][key].default:
                yield (f"data.{key}", f"is a text-data option (data.name is {data['name']!r}); remove it")
    table_form = model["parametrization"].startswith("supar") or (
        model["parametrization"] == "mup" and (model["base_width"] is not None or model["name"] == "gpt"))
    # Under sp the multipliers are not used (so one study config can sweep sp, mup and supar);
    # the mlp's muP without base_width is the warmup paper's form, which has none either.
    if model["parametrization"] != "sp" and not table_form:
        for key in ("alpha_in", "alpha_out"):
            if model[key] != 1.0:
                yield (f"model.{key}", "is a multiplier of the SμPar-table form: use parametrization "
                                       "supar (or its ablations), or mup with model.base_width")
    if model["name"] == "gpt":
        if model["width"] % model["n_heads"]:
            yield ("model.n_heads", f"{model['n_heads']} does not divide model.width ({model['width']})")
        if model["activation"] not in ("relu", "gelu"):
            yield ("model.activation", f"{model['activation']!r} is not a gpt activation; allowed: relu, gelu")
        if model["init"] != "normal":
            yield ("model.init", "the gpt initializes from a normal distribution; remove model.init")
    else:
        for key in ("init_std", "n_heads", "positions", "tie_embeddings"):
            if model[key] != SCHEMA["model"][key].default:
                yield (f"model.{key}", f"is a gpt option (model.name is {model['name']!r}); remove it")


CHECKS.append(_check_decay)
CHECKS.append(_check_data_root)
CHECKS.append(_check_model_data)


def _with_aliases(option: Option, aliases: Mapping[str, str]) -> Option:
    """``option`` that also accepts each alias (case-insensitive), stored as its canonical value."""
    table = {k.lower(): v for k, v in aliases.items()}

    def check(value):
        if isinstance(value, str) and value.strip().lower() in table:
            return table[value.strip().lower()]
        return option.check(value)

    return Option(option.default, check, option.kind, nullable=option.nullable, choices=option.choices,
                  doc=option.doc)


SCHEMA["optimizer"]["name"] = _with_aliases(SCHEMA["optimizer"]["name"], {"giadam": "gi-adam", "gi_adam": "gi-adam"})

#: Optimizers whose curvature is the pre-conditioned sharpness (Adam, AdamW, GI-Adam).
PRECONDITIONED_OPTIMIZERS = ("adam", "adamw", "gi-adam")


def _check_adam_family(config: dict) -> Iterable[tuple[str, str]]:
    """GI-Adam options only with gi-adam; pre-conditioned sharpness only where it is defined."""
    opt = config["optimizer"]
    if opt["name"] != "gi-adam":
        for key in ("v0", "v_bias_correction"):
            if opt[key] != SCHEMA["optimizer"][key].default:
                yield (f"optimizer.{key}", f"is a GI-Adam option; set optimizer.name: gi-adam or remove "
                                           f"optimizer.{key} (optimizer.name is {opt['name']!r})")
    if config["eval"]["sharpness_kind"] == "preconditioned" and opt["name"] not in PRECONDITIONED_OPTIMIZERS:
        yield ("eval.sharpness_kind", f"preconditioned needs optimizer.name one of: "
                                      f"{', '.join(PRECONDITIONED_OPTIMIZERS)} (got {opt['name']!r}); "
                                      f"use auto or hessian")


def _check_catapult_warmup(config: dict) -> Iterable[tuple[str, str]]:
    """Options that only one warmup rule reads must not be set for another."""
    sched = config["schedule"]
    rule = sched["warmup"]
    if rule != "linear":
        for key in ("lr_init", "power"):
            if sched[key] != SCHEMA["schedule"][key].default:
                yield (f"schedule.{key}", f"is only used by schedule.warmup: linear (warmup is {rule!r}, "
                                          f"which starts at the critical lr); remove it")
    if rule == "persistent" and sched["decay"] != "constant":
        yield ("schedule.decay", "persistent warmup ends at lr_trgt and keeps it; use decay: constant")
    if sched["lr_start"] is not None:
        try:
            lr = parse_lr(config["optimizer"]["lr"])
        except ValueError:
            return
        if not lr.relative and sched["lr_start"] > lr.value:
            yield ("schedule.lr_start", f"{sched['lr_start']:g} exceeds optimizer.lr ({lr.value:g}); "
                                        "the search starts below lr_trgt")


CHECKS.append(_check_adam_family)
CHECKS.append(_check_catapult_warmup)




# --------------------------------------------------------------------------------------------
# Schema access and extension


def _split(key: str) -> list[str]:
    return [part for part in key.split(".")]


def _lookup(key: str) -> Any:
    node: Any = SCHEMA
    for part in _split(key):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def get(key: str) -> Option:
    """The :class:`Option` at dotted ``key`` (``KeyError`` if there is none)."""
    node = _lookup(key)
    if not isinstance(node, Option):
        raise KeyError(key)
    return node


def add_option(key: str, option: Option) -> None:
    """Add (or replace) the option at dotted ``key``; its section must exist."""
    *sections, leaf = _split(key)
    node = SCHEMA
    for part in sections:
        node = node[part]
    node[leaf] = option


def add_section(name: str, options: Mapping[str, Any]) -> None:
    """Add a top-level section ``name`` with the given options (nested dicts allowed)."""
    if name in SCHEMA:
        raise ValueError(f"section {name!r} exists; use add_option to extend it")
    SCHEMA[name] = dict(options)


def add_choices(key: str, *values: str) -> None:
    """Allow more values for the enumeration at ``key``, e.g. ``add_choices("optimizer.name", "radam")``."""
    opt = get(key)
    if opt.choices is None:
        raise TypeError(f"{key} is not an enumeration")
    new = choice(opt.default, opt.choices + tuple(v for v in values if v not in opt.choices),
                 nullable=opt.nullable, doc=opt.doc)
    add_option(key, new)


def _leaf_keys(node: Mapping[str, Any] = None, prefix: str = "") -> list[str]:
    node = SCHEMA if node is None else node
    out = []
    for name, sub in node.items():
        dotted = f"{prefix}{name}"
        if isinstance(sub, dict):
            out.extend(_leaf_keys(sub, dotted + "."))
        else:
            out.append(dotted)
    return out


def _suggest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _exists(key: str) -> bool:
    try:
        _lookup(key)
        return True
    except KeyError:
        return False


def _unknown_key_message(dotted: str, siblings: Iterable[str], level: int | None = None) -> str:
    """'unknown key' plus the closest valid key.

    ``level`` is the index of the dotted part that is unknown (default: the last one) and
    ``siblings`` the valid names at that level. Tries, in order: a close sibling (keeping the
    rest of the key), a close full dotted key, the same leaf name in another section.
    """
    parts = dotted.split(".")
    level = len(parts) - 1 if level is None else level
    siblings = list(siblings)
    match = difflib.get_close_matches(parts[level], siblings, n=1, cutoff=0.6)
    if match:
        fixed = ".".join(parts[:level] + [match[0]] + parts[level + 1:])
        if not _exists(fixed):
            fixed = ".".join(parts[:level] + [match[0]])
        return f"unknown key (did you mean {fixed!r}?)"
    leaves = _leaf_keys()
    match = difflib.get_close_matches(dotted, leaves, n=1, cutoff=0.75)
    if match:
        return f"unknown key (did you mean {match[0]!r}?)"
    same_name = [k for k in leaves if k.rsplit(".", 1)[-1] == parts[-1]]
    if same_name:
        return f"unknown key (did you mean {same_name[0]!r}?)"
    return "unknown key; valid keys here: " + ", ".join(siblings)


def defaults(node: Mapping[str, Any] | None = None) -> dict:
    """The full default config (a fresh nested dict)."""
    node = SCHEMA if node is None else node
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in node.items()}


# --------------------------------------------------------------------------------------------
# Validation


def _validate_node(value: Any, schema: Mapping[str, Any], prefix: str, problems: list) -> dict:
    out = {}
    if not isinstance(value, Mapping):
        problems.append((prefix.rstrip(".") or "<config>",
                         f"expected a mapping of keys ({', '.join(schema)}), got {_describe(value)}"))
        return defaults(schema)
    for key in value:
        if not isinstance(key, str) or key not in schema:
            problems.append((f"{prefix}{key}", _unknown_key_message(f"{prefix}{key}", schema)))
    for key, sub in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(sub, dict):
            out[key] = _validate_node(value.get(key, {}) if value.get(key) is not None else {}, sub, dotted + ".", problems)
            continue
        if key not in value:
            out[key] = copy.deepcopy(sub.default)
            continue
        try:
            out[key] = sub.validate(value[key])
        except _Invalid as err:
            problems.append((dotted, str(err)))
            out[key] = copy.deepcopy(sub.default)
    return out


def validate(mapping: Mapping[str, Any]) -> dict:
    """Check a whole config and return it normalized, with every default filled in.

    Collects every problem (unknown key, wrong type, value not allowed, out of range, and the
    cross-key :data:`CHECKS`) and raises one :class:`ConfigError` listing them all, each with
    its dotted key and what the key accepts. The input is not modified.
    """
    problems: list[tuple[str, str]] = []
    config = _validate_node(mapping if mapping is not None else {}, SCHEMA, "", problems)
    if not problems:
        for check in CHECKS:
            problems.extend(check(config))
    if problems:
        raise ConfigError(problems)
    if config.get("name") is None:
        config["name"] = "run"
    return config


# --------------------------------------------------------------------------------------------
# Overrides and files


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key.sub=value"`` and read the value as a YAML scalar/list (``null``, ``1e-3``,
    ``[0.9, 0.95]``, ``32/lambda0``). Raises :class:`ConfigError` on a malformed override."""
    if "=" not in text:
        raise ConfigError([(text, "an override must look like key=value (e.g. optimizer.lr=0.1)")])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError([(text, "an override must look like key=value (e.g. optimizer.lr=0.1)")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(mapping: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """Return a copy of ``mapping`` with each ``key.sub=value`` override set.

    Keys are checked against the schema here (unknown key -> :class:`ConfigError` with a
    suggestion); values are checked later by :func:`validate`.
    """
    config = copy.deepcopy(dict(mapping))
    problems = []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        parts = _split(key)
        node, schema = config, SCHEMA
        for i, part in enumerate(parts):
            dotted = ".".join(parts[: i + 1])
            if not isinstance(schema, dict) or part not in schema:
                siblings = schema if isinstance(schema, dict) else []
                problems.append((key, _unknown_key_message(key, siblings, level=i)))
                break
            schema = schema[part]
            if i == len(parts) - 1:
                if isinstance(schema, dict):
                    problems.append((key, f"is a section; set one of its keys, e.g. {key}.{next(iter(schema))}=..."))
                else:
                    node[part] = value
                break
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    if problems:
        raise ConfigError(problems)
    return config


#: Top-level sections that belong to a study command, not to the run: ``sweep:`` (read by
#: ``catapult sweep``) and ``coord_check:`` (``catapult coord-check``). :func:`load_config`
#: sets them aside, so a study config also trains as its base run.
STUDY_SECTIONS = ("sweep", "coord_check")


def read_mapping(path: str | Path) -> dict:
    """The YAML mapping in ``path`` (empty file: ``{}``); :class:`ConfigError` naming the file
    when it is missing, unreadable, not YAML or not a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([("<file>", f"config file not found: {path}")]) from None
    except OSError as err:
        raise ConfigError([("<file>", f"cannot read config file {path}: {err.strerror}")]) from None
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([("<file>", f"{path} is not valid YAML: {err}")]) from None
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError([("<file>", f"{path} must hold a mapping of keys, got {type(mapping).__name__}")])
    return mapping


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML config, apply ``key=value`` overrides, validate, fill defaults.

    ``name`` defaults to the file's stem. The :data:`STUDY_SECTIONS` (``sweep:``, what
    ``catapult sweep`` grids over, and ``coord_check:``) are set aside, so a study config also
    trains as its base run. Raises
    :class:`ConfigError` for a missing or unreadable file, bad YAML, or any invalid key/value.
    """
    path = Path(path)
    mapping = read_mapping(path)
    for section in STUDY_SECTIONS:
        mapping.pop(section, None)
    mapping = apply_overrides(mapping, overrides)
    if mapping.get("name") is None:
        mapping["name"] = re.sub(r"[^A-Za-z0-9_.+=-]", "_", path.stem) or "run"
    return validate(mapping)


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML, keys in schema order (what a run writes as ``config.yaml``)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
