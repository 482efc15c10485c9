"""Sweep specs: a grid over dotted config keys, expanded into validated cells.

A sweep config is an ordinary run config (see :mod:`catapult.config`) plus a top-level
``sweep:`` section. Every other key is the *base* config that all cells share::

    name: phase_digits
    model: {name: mlp, width: 64, depth: 3, parametrization: sp}
    optimizer: {name: sgd}
    train: {steps: 300}
    sweep:
      grid:                                   # cartesian product, first key varies slowest
        optimizer.lr: {log2_over_lambda0: [0, 6]}       # "2^0/lambda0" ... "2^6/lambda0"
        schedule.warmup_steps: {log2: [0, 8, 2]}          # 1, 4, 16, 64, 256
        model.activation: [relu, tanh]                    # an explicit list
      seeds: 3                                # a last axis `seed: [0, 1, 2]` (or a list: [0, 1])

Axis values (each axis is one dotted config key -> one of):

=============================================  ==============================================
``[v1, v2, ...]``                              the values as listed (any type the key accepts)
``{log2: [start, stop]}`` or                   ``2^x`` for ``x = start, start+step, ..., stop``
``{log2: [start, stop, step]}``                (stop inclusive; step default 1); integral
                                               powers >= 1 are ints, so integer keys work
``{log2_over_lambda0: [start, stop(, step)]}`` the strings ``"2^x/lambda0"``: the paper's
                                               ``lr_trgt = 2^x / lambda_0`` (lambda_0 = the
                                               sharpness at init, measured once per
                                               architecture, seed and data and cached)
``{range: [start, stop(, step)]}``             ``start, start+step, ..., stop`` (inclusive)
=============================================  ==============================================

``start``/``stop``/``step`` may also be given as a mapping ``{start: 0, stop: 8, step: 2}``; the
values (and ``x``) are counted in decimal from them as written: ``[0.7, 0.9, 0.1]`` is 0.7, 0.8, 0.9.
Each axis also carries *labels* in the config's own units (``2^3``, ``2^3/λ0``), used on plot
axes and in reports.

:func:`load_sweep` reads such a file and applies ``key=value`` overrides (base keys as for
``catapult train``; ``sweep.seeds=3``, ``sweep.seeds=[0,1,2]`` and ``sweep.grid.<dotted key>=<axis>`` change the
sweep), :func:`expand` validates *every* cell with :func:`catapult.config.validate` before any
work and raises one :class:`~catapult.config.ConfigError` naming each bad cell and key. A cell
whose swept variant does not read an option the base sets runs without it (a grid
``optimizer.name: [sgd, adam]`` with ``optimizer.momentum: 0.9``; rigl or gmp at a density axis's
1): :mod:`catapult.sweep.variants`.
"""
from __future__ import annotations

import copy
import decimal
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


from catapult import config as cfg
from catapult.config.io import located_problems, name_from_file, plain_data
from catapult.sweep.dotted import get_dotted, set_dotted
from catapult.sweep.store_rows import canonical_json   # one definition, where the store writes rows
from catapult.sweep.variants import SweepNote, cell_mapping, grid_notes, swept_key_hint

__all__ = [
    "Axis",
    "SweepSpec",
    "CellSpec",
    "parse_sweep",
    "load_sweep",
    "expand",
    "cell_problems",
    "cells_error",
    "canonical_json",
    "set_dotted",
    "get_dotted",
    "AXIS_FORMS",
    "MAX_CELLS",
]

#: The mapping forms an axis may take (besides a plain list).
AXIS_FORMS = ("log2", "log2_over_lambda0", "range")

#: The most cells one sweep may have. Cells are expanded (and each validated) in memory
#: before any work, so the grid's size is checked first, from the axis lengths alone.
MAX_CELLS = 100_000


# --------------------------------------------------------------------------------------------
# Small helpers


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# --------------------------------------------------------------------------------------------
# Axes


@dataclass(frozen=True)
class Axis:
    """One swept config key.

    ``key`` is the dotted config key (``"optimizer.lr"``); ``values`` the config values of the
    cells, in order; ``labels`` the same values in the config's own units (``"2^3/λ0"``), for
    plots; ``form`` how the axis was written (``"list"``, ``"log2"``, ``"log2_over_lambda0"``,
    ``"range"``); ``exponents`` the ``x`` of ``2^x`` for log axes (else ``None``).
    """

    key: str
    values: tuple
    labels: tuple[str, ...]
    form: str = "list"
    exponents: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.values)

    @property
    def title(self) -> str:
        """Axis title for a figure, in the config's units."""
        if self.form == "log2_over_lambda0":
            return f"{self.key}  (2^x / λ0)"
        if self.form == "log2":
            return f"{self.key}  (2^x)"
        return self.key

    def label_of(self, value: Any) -> str:
        """The label of one of this axis's values."""
        for v, lab in zip(self.values, self.labels):
            if v == value:
                return lab
        return str(value)


def _arange(bounds: Any, where: str) -> list[float]:
    """Inclusive ``start, start+step, ..., stop`` from ``[start, stop(, step)]`` or a mapping."""
    if isinstance(bounds, Mapping):
        unknown = set(bounds) - {"start", "stop", "step"}
        if unknown or "start" not in bounds or "stop" not in bounds:
            raise ValueError(f"{where}: expected {{start: a, stop: b, step: s}} (step optional), got {bounds!r}")
        start, stop, step = bounds["start"], bounds["stop"], bounds.get("step", 1)
    elif isinstance(bounds, (list, tuple)) and len(bounds) in (2, 3):
        start, stop, step = (list(bounds) + [1])[:3]
    else:
        raise ValueError(f"{where}: expected [start, stop] or [start, stop, step], got {bounds!r}")
    try:
        start, stop, step = (cfg.as_float(v, "a number") for v in (start, stop, step))
    except ValueError:
        raise ValueError(f"{where}: start, stop and step must be numbers, got {bounds!r}") from None
    if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0:
        raise ValueError(f"{where}: step must be a finite number > 0, got {bounds!r}")
    if stop < start:
        raise ValueError(f"{where}: stop ({_fmt_number(stop)}) is below start ({_fmt_number(start)})")
    span = (stop - start) / step  # inf for [0, 1e300, 1e-300]: too many, not an OverflowError
    count = int(math.floor(span + 1e-9)) + 1 if span <= MAX_CELLS else MAX_CELLS + 1
    if count > MAX_CELLS:
        raise ValueError(f"{where}: {count} values is too many for one axis")
    # in decimal from the numbers as written (their shortest repr): [0.7, 0.9, 0.1] is 0.7, 0.8, 0.9, not 0.7999999999999999
    with decimal.localcontext(decimal.Context(prec=40)):
        d_start, d_step = decimal.Decimal(repr(start)), decimal.Decimal(repr(step))
        return [float(d_start + i * d_step) for i in range(count)]


def _power_of_two(x: float) -> float | int:
    if x > 1023:  # 2.0 ** x would raise OverflowError
        raise ValueError(f"2^{_fmt_number(x)} is beyond the range of a float (at most 2^1023)")
    if x < -1022:  # below the normal floats: 2^-1100 is 0.0, and 2^-1074.2 == 2^-1074
        raise ValueError(f"2^{_fmt_number(x)} is below the range of a float's full precision (at least 2^-1022)")
    value = 2.0 ** x
    return int(value) if x >= 0 and float(x).is_integer() else value


def _parse_axis(key: str, raw: Any) -> Axis:
    where = f"sweep.grid.{key}"
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise ValueError(f"{where}: the list of values is empty")
        values = tuple(raw)
        return Axis(key, values, tuple(_value_label(v) for v in values), "list")
    if isinstance(raw, Mapping):
        if len(raw) != 1 or next(iter(raw)) not in AXIS_FORMS:
            raise ValueError(f"{where}: expected a list of values or one of "
                             + ", ".join(f"{{{form}: [start, stop, step]}}" for form in AXIS_FORMS)
                             + f", got {raw!r}")
        form, bounds = next(iter(raw.items()))
        xs = _arange(bounds, f"{where}.{form}")
        if form == "range":
            values = tuple(int(x) if float(x).is_integer() else x for x in xs)
            return Axis(key, values, tuple(_fmt_number(v) for v in values), "range")
        if form == "log2":
            values = tuple(_power_of_two(x) for x in xs)
            return Axis(key, values, tuple(f"2^{_fmt_number(x)}" for x in xs), "log2", tuple(xs))
        # log2_over_lambda0: only learning rates understand the "c/lambda0" grammar
        values = tuple(f"2^{_fmt_number(x)}/lambda0" for x in xs)
        return Axis(key, values, tuple(f"2^{_fmt_number(x)}/λ0" for x in xs), form, tuple(xs))
    raise ValueError(f"{where}: expected a list of values or a mapping like {{log2: [0, 8]}}, got {raw!r}")


_RELATIVE_LR = re.compile(r"^\s*(?P<c>[^/]+?)\s*/\s*lambda_?0\s*$", re.IGNORECASE)


def _value_label(value: Any) -> str:
    if isinstance(value, str):
        m = _RELATIVE_LR.match(value)
        return f"{m['c'].replace(' ', '')}/λ0" if m else value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class SweepSpec:
    """A parsed ``sweep:`` section: ``axes`` in order (the ``seeds`` shorthand is the last
    axis, key ``seed``) and ``raw``, the section as normalized plain data (what is stored and
    hashed)."""

    axes: tuple[Axis, ...]
    raw: dict = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """The swept dotted keys, in axis order."""
        return [axis.key for axis in self.axes]

    @property
    def size(self) -> int:
        """Number of cells: the product of the axis lengths."""
        return math.prod(len(axis) for axis in self.axes) if self.axes else 1

    def axis(self, key: str) -> Axis:
        for axis in self.axes:
            if axis.key == key:
                return axis
        raise KeyError(f"{key!r} is not swept; swept keys: {', '.join(self.keys) or '(none)'}")


def parse_sweep(section: Any) -> SweepSpec:
    """Parse a ``sweep:`` mapping (``grid`` and/or ``seeds``) into a :class:`SweepSpec`.

    Axis keys must be config keys (checked against :data:`catapult.config.SCHEMA`); values are
    checked later, cell by cell, by :func:`expand`. Raises :class:`~catapult.config.ConfigError`
    listing every problem with its ``sweep.*`` key.
    """
    problems: list[tuple[str, str]] = []
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise cfg.ConfigError([("sweep", f"expected a mapping with keys grid and seeds, got {section!r}")])
    for key in section:
        if key not in ("grid", "seeds"):
            import difflib

            match = difflib.get_close_matches(str(key), ["grid", "seeds"], n=1, cutoff=0.6)
            hint = f" (did you mean 'sweep.{match[0]}'?)" if match else ""
            problems.append((f"sweep.{key}", f"unknown key{hint}; valid keys here: grid, seeds"))
    grid = section.get("grid")
    if grid is None:  # `grid:` left empty; 0, '' or [] are no mapping, and were read as one
        grid = {}
    if not isinstance(grid, Mapping):
        problems.append(("sweep.grid", f"expected a mapping of dotted config keys to values, got {grid!r}"))
        grid = {}
    axes: list[Axis] = []
    raw_grid: dict[str, Any] = {}
    for key, raw in grid.items():
        key = str(key)
        try:
            option = cfg.get(key)
        except KeyError:
            problems.append((f"sweep.grid.{key}", _unknown_key(key)))
            continue
        del option
        if key == "seed" and "seeds" in section:
            problems.append((f"sweep.grid.{key}", "seed is swept by sweep.seeds; give it only once"))
            continue
        if key == "name":  # its cells were one run under several labels, stored and averaged as distinct
            problems.append((f"sweep.grid.{key}", "name labels the sweep (and its default store runs/<name>/); it "
                                                  "changes no cell's run, so every value would run the same run: "
                                                  "sweep keys that change the run"))
            continue
        try:
            axis = _parse_axis(key, raw)
        except ValueError as err:
            msg = str(err)
            problems.append((f"sweep.grid.{key}", msg.split(": ", 1)[1] if msg.startswith("sweep.grid.") else msg))
            continue
        if axis.form == "log2_over_lambda0" and key != "optimizer.lr":
            problems.append((f"sweep.grid.{key}", "log2_over_lambda0 gives learning rates \"2^x/lambda0\"; "
                                                  "only optimizer.lr accepts them"))
            continue
        axes.append(axis)
        raw_grid[key] = plain_data(raw)
    raw_out: dict[str, Any] = {"grid": raw_grid}
    raw_count = None
    if "seeds" in section:
        seeds = section["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            # ``seeds: K`` repeats every cell with the seeds 0 .. K-1
            if not 1 <= seeds <= MAX_CELLS:
                problems.append(("sweep.seeds", f"expected a number of seeds K >= 1 (seeds 0 .. K-1) or a list "
                                                f"of integer seeds, got {seeds!r}"))
                seeds = None
            else:
                raw_count = seeds
                seeds = list(range(seeds))
        if seeds is None:
            pass
        elif not isinstance(seeds, (list, tuple)) or not seeds:
            problems.append(("sweep.seeds", f"expected a number of seeds K >= 1 or a non-empty list of integer "
                                            f"seeds, got {seeds!r}"))
        elif bad := _bad_seeds(seeds):
            # named once here, not once per cell of the grid by each cell's own `seed`
            problems.append(("sweep.seeds", bad))
        else:
            axes.append(Axis("seed", tuple(seeds), tuple(str(s) for s in seeds), "list"))
            raw_out["seeds"] = raw_count if raw_count is not None else list(seeds)
    for axis in axes:
        if len(set(map(canonical_json, axis.values))) != len(axis.values):
            problems.append((f"sweep.grid.{axis.key}" if axis.key != "seed" or "seeds" not in raw_out
                             else "sweep.seeds", f"repeats a value: {list(axis.values)!r}"))
    if not problems and math.prod(len(axis) for axis in axes) > MAX_CELLS:
        sizes = " x ".join(f"{len(axis)} ({axis.key})" for axis in axes)
        problems.append(("sweep", f"the grid has {math.prod(len(axis) for axis in axes):,} cells ({sizes}), "
                                  f"more than the {MAX_CELLS:,} one sweep may have; use fewer values or "
                                  f"split it into several sweeps"))
    if problems:
        raise cfg.ConfigError(problems)
    return SweepSpec(tuple(axes), raw_out)


def _bad_seeds(seeds: Sequence[Any]) -> str:
    """What is wrong with the first seed of ``seeds`` that ``seed`` refuses ("" if none is)."""
    for value in seeds:
        try:
            cfg.get("seed").validate(value)
        except ValueError as err:
            return f"{value!r} is no seed: {err}"
    return ""


def _unknown_key(key: str) -> str:
    import difflib

    leaves = cfg.leaf_keys()
    match = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"{key!r} is not a config key{hint}; a grid sweeps dotted config keys such as optimizer.lr"


# --------------------------------------------------------------------------------------------
# Loading a sweep config


def _split_overrides(overrides: Iterable[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    base, sweep = [], []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key == "sweep" or key.startswith("sweep."):
            sweep.append(cfg.parse_override(text))
        else:
            base.append(text)
    return base, sweep


def _apply_sweep_overrides(section: dict, overrides: Sequence[tuple[str, Any]]) -> dict:
    section = copy.deepcopy(section)
    problems = []
    for key, value in overrides:
        if key == "sweep.seeds":
            section["seeds"] = value
        elif key.startswith("sweep.grid.") and len(key) > len("sweep.grid."):
            section.setdefault("grid", {})
            if section["grid"] is None:
                section["grid"] = {}
            if isinstance(section["grid"], dict):  # any other grid is named by parse_sweep, not a TypeError here
                section["grid"][key[len("sweep.grid."):]] = value
        else:
            problems.append((key, "a sweep override is sweep.seeds=[...] or sweep.grid.<dotted key>=<values>"))
    if problems:
        raise cfg.ConfigError(problems)
    return section


def load_sweep(path: str | Path, overrides: Iterable[str] = (),
               set_aside: dict | None = None) -> tuple[dict, SweepSpec]:
    """Read a sweep config: ``(base_config, spec)``.

    The base config (everything but ``sweep:``) gets the non-``sweep.`` overrides and is
    validated like a ``catapult train`` config (``name`` defaults to the file's stem), as the grid
    runs it: a swept key's base value is not checked, and a problem between keys only where every
    cell has it (:func:`expand` names the cells that keep one); the
    ``sweep:`` section gets the ``sweep.*`` overrides. Raises :class:`~catapult.config.ConfigError`.
    Cells are validated by :func:`expand`. ``set_aside`` (a dict) receives the other study
    sections the file had (``coord_check:``), which a sweep does not run.
    """
    path = Path(path)
    mapping, positions = cfg.read_yaml(path)
    overrides = list(overrides)
    base_overrides, sweep_overrides = _split_overrides(overrides)
    section = mapping.pop("sweep", None)
    for other in cfg.STUDY_SECTIONS:
        if other in mapping and set_aside is not None:
            set_aside[other] = mapping[other]
        mapping.pop(other, None)
    if section is not None and not isinstance(section, Mapping):
        raise cfg.ConfigError(located_problems([("sweep", f"expected a mapping with keys grid and seeds, got "
                                                          f"{section!r}")], positions, path.name, overrides))
    section = _apply_sweep_overrides(dict(section or {}), sweep_overrides)
    problems: list[tuple[str, str]] = []
    try:
        spec = parse_sweep(section)
    except cfg.ConfigError as err:
        problems.extend(err.problems)
        spec = None
    base = None
    try:
        mapping = cfg.apply_overrides(mapping, base_overrides)
        problems.extend(name_from_file(mapping, path, "sweep"))   # 'ü.yaml' was refused as got '_'
        base = _validate_base(mapping, spec)
    except cfg.ConfigError as err:
        problems.extend(err.problems)
    if spec is not None:
        overridden = {text.split("=", 1)[0].strip() for text in base_overrides}
        for key in spec.keys:
            if key in overridden:
                axis = "sweep.seeds" if key == "seed" and "seeds" in spec.raw else f"sweep.grid.{key}"
                problems.append((key, f"is swept by {axis}; override the axis instead ({axis}=[...])"))
    if problems:  # a key written in the file: its line and column there, as catapult train says
        raise cfg.ConfigError(located_problems(problems, positions, path.name, overrides))
    return base, spec


def _validate_base(mapping: dict, spec: SweepSpec | None) -> dict:
    """The validated base config of a sweep, checked as the grid runs it: a swept key's base value,
    which no cell runs, is not checked, and a cross-key problem of the base is refused here only
    where every cell of the grid has it too (a base ``train.steps: 10`` under ``decay: cosine,
    warmup_steps: 50`` with the grid ``train.steps: [100, 200]`` is no cell's problem);
    :func:`expand` names the cells that keep one."""
    if spec is None or not spec.axes:
        return cfg.validate(mapping)
    try:
        cfg.validate(mapping, checks=False)
    except cfg.ConfigError as err:
        unswept = [(key, msg) for key, msg in err.problems if key not in spec.keys]
        if unswept:  # a key no cell replaces
            raise cfg.ConfigError(unswept) from None
        mapping = copy.deepcopy(mapping)
        for key, _ in err.problems:  # each cell sets its own value: the base's is never used
            _drop_dotted(mapping, key)
    try:
        return cfg.validate(mapping)
    except cfg.ConfigError as err:
        problems = err.problems
    swept, dense = {}, None
    for combo in itertools.product(*(axis.values for axis in spec.axes)):
        swept = dict(zip(spec.keys, combo))
        cell, dense = cell_mapping(mapping, swept)
        try:
            cfg.validate(cell)
        except cfg.ConfigError as err:
            problems = [p for p in problems if p in err.problems]  # the base's: every cell has it
        else:
            problems = []
        if not problems:
            return cfg.validate(mapping, checks=False)
    # every cell's (the last one's hint: a swept key's is the grid's to act on)
    raise cfg.ConfigError([(key, swept_key_hint(msg, swept, dense)) for key, msg in problems])


def _drop_dotted(mapping: dict, key: str) -> None:
    """Remove ``mapping["a"]["b"]`` for ``key = "a.b"`` where it is there."""
    *sections, leaf = key.split(".")
    node: Any = mapping
    for part in sections:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


# --------------------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True)
class CellSpec:
    """One grid point: ``id`` (0-based, grid order), ``config`` (validated, in the config's own
    units, e.g. ``optimizer.lr = "2^3/lambda0"``) and ``swept`` (dotted key -> value).
    ``same_as``: the id of an earlier cell whose config is this one's (all but its name), else
    ``None``: the dense reference of a grid over ``model.sparsity.method: [rigl, gmp]`` and
    ``model.density: [1, ...]`` is one run at two grid positions; a sweep runs it once and records
    its result at both."""

    id: int
    config: dict
    swept: dict
    same_as: int | None = None


def expand(base: Mapping[str, Any], spec: SweepSpec) -> list[CellSpec]:
    """All cells of the grid, in order (first axis slowest), each validated.

    Cell ``i`` is named ``<base name>-<i>``. Raises one :class:`~catapult.config.ConfigError`
    listing every invalid cell, e.g. ``cell 3 (schedule.warmup_steps=0) schedule.warmup_steps:
    ... out of range``, before any work starts. Each note of
    :func:`~catapult.sweep.variants.grid_notes` (cells that run without an option the base sets,
    ...) is issued as a :class:`~catapult.sweep.variants.SweepNote` warning.
    """
    cells: list[CellSpec] = []
    problems: list[tuple[str, str]] = []
    first_of: dict[str, int] = {}  # a config (but its name) -> the first cell that has it
    name = base.get("name") or "sweep"
    for index, combo in enumerate(itertools.product(*(axis.values for axis in spec.axes))):
        swept = {axis.key: value for axis, value in zip(spec.axes, combo)}
        mapping, dense = cell_mapping(base, swept)
        mapping["name"] = f"{name}-{index}"
        try:
            config = cfg.validate(mapping)
        except cfg.ConfigError as err:   # (a hint to remove a swept key: one the grid can act on)
            hinted = cfg.ConfigError([(key, swept_key_hint(msg, swept, dense)) for key, msg in err.problems])
            problems += cell_problems(index, swept, hinted)
            continue
        # keep the swept values as the config normalized them (e.g. 2000.0 -> 2000)
        swept = {key: get_dotted(config, key) for key in swept}
        if dense is not None and "model.sparsity.method" in swept:
            swept["model.sparsity.method"] = dense  # its grid position (what --where selects); the config ran static
        same = canonical_json({k: v for k, v in config.items() if k != "name"})
        cells.append(CellSpec(index, config, swept, first_of.get(same)))
        first_of.setdefault(same, index)
    if problems:
        raise cells_error(problems)
    _refuse_equal_values(spec, cells)
    for note in grid_notes(base, {axis.key: axis.values for axis in spec.axes}):  # what catapult sweep prints
        warnings.warn(note, SweepNote, stacklevel=2)
    return cells


def _value_meaning(key: str, value: Any) -> str:
    """What a normalized swept value of ``key`` means, for the duplicate test: ``"1/lambda0"``
    and ``"1.0/lambda0"`` are one learning rate; other values compare as their canonical JSON
    (the config has already turned ``16.0`` into ``16`` and ``"2^-1"`` into ``0.5``), so two
    folders ``"1e3"`` and ``"1000"`` stay two."""
    if isinstance(value, str) and key == "optimizer.lr":
        try:
            lr = cfg.parse_lr(value)
        except ValueError:
            return canonical_json(value)
        return canonical_json(["lr", lr.value, lr.relative])
    return canonical_json(value)


def _refuse_equal_values(spec: SweepSpec, cells: Sequence[CellSpec]) -> None:
    """Refuse an axis two of whose values, spelled differently, mean the same once validated
    (``[16, 16.0]``, ``[0.5, "2^-1"]``): every such cell would train twice under two ids."""
    problems = []
    for position, axis in enumerate(spec.axes):
        stride = math.prod(len(later) for later in spec.axes[position + 1:])
        meanings: dict[str, int] = {}
        for i, raw in enumerate(axis.values):
            meaning = _value_meaning(axis.key, cells[i * stride].swept[axis.key])
            if meaning in meanings:
                first = axis.values[meanings[meaning]]
                where = "sweep.seeds" if axis.key == "seed" and "seeds" in spec.raw else f"sweep.grid.{axis.key}"
                problems.append((where, f"{first!r} and {raw!r} are the same value once read as a config "
                                        f"value; each such cell would run twice. Keep one"))
                break
            meanings[meaning] = i
    if problems:
        raise cfg.ConfigError(problems)


def cell_problems(index: int, swept: Mapping[str, Any], err: cfg.ConfigError) -> list[tuple[str, str]]:
    """``err``'s problems, each key prefixed with the cell it belongs to: ``cell 3 (a=1, b=2) key``."""
    where = ", ".join(f"{k}={v}" for k, v in swept.items())
    return [(f"cell {index} ({where}) {key}", msg) for key, msg in err.problems]


def cells_error(problems: list[tuple[str, str]], shown: int = 20) -> cfg.ConfigError:
    """One :class:`~catapult.config.ConfigError` for the problems of many cells, the first ``shown``
    listed and the rest counted (a 168-cell grid with one bad key is one line, not 168)."""
    if len(problems) > shown:
        problems = problems[:shown] + [("", f"... and {len(problems) - shown} more problems")]
    return cfg.ConfigError(problems)
