"""The coordinate check of a run config, over widths, densities or both (``catapult coord-check``).

The run config says what to build and train (model, data, loss, optimizer and its lr); a
``coord_check:`` section says what to vary::

    coord_check:
      widths: [64, 128, 256, 512]          # model.width values, two or more (null: no width sweep)
      densities: [1, 0.5, 0.25, 0.125]     # model.density values, two or more (null: none)
      parametrizations: [sp, mup, supar]   # null: just model.parametrization
      seeds: [0, 1, 2]
      steps: 10                            # training steps recorded (t = 0 .. steps-1)

A width axis under muP or SμPar needs ``model.base_width`` (the MLP's ``mup`` excepted: its
warmup-paper form scales by itself); without it each width is its own base and is refused.

For every parameterization, every axis given (``widths`` with the config's density,
``densities`` with its width) and every seed, the model is built exactly as ``catapult train``
builds it (same init seed rule, same masks, same per-layer learning rates; masks are not updated,
and a ``model.sparsity.method: gmp`` config, whose masks start all ones, gets static masks of
the density checked, or every density would be measured dense; a rigl config's masks are the
static ones, density 1.0 included), trained for
``steps`` steps at the constant learning rate ``optimizer.lr`` (the schedule is not used: a
coordinate check compares parameterizations at one lr) on the run's first ``steps`` training
batches (the same batches for every model: ``catapult train``'s, augmented as training augments
them when ``data.augment`` is set, per sample from the data seed), and
:func:`catapult.coord_check.coord_check` records each block's mean |output| at every step.

Writes ``<out>/coord_check.csv`` (one row per parameterization, axis, value, seed, step and
module: ``pandas.read_csv`` reads it), one figure per parameterization and axis
(``coord_check_<axis>_<parametrization>.png``, log-log, one panel per block, one line per step),
``config.yaml`` (the resolved run config and the ``coord_check`` section), ``coord_check_table.md``
(mean |activation| per block and value at the first and last step, and the slopes), and prints a table of
the log-log slope of mean |activation| against the varied value per block at the first and last
step: 0 means flat, what a correct parameterization shows.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from catapult import config as cfg
from catapult.arguments import check_flag
from catapult.writing import csv_text, write_text_whole

__all__ = ["parse_coord_check", "load_coord_check", "run_coord_check", "slope_table", "activation_tables",
           "result_groups", "COORD_CHECK_DEFAULTS", "CSV_COLUMNS", "TABLE_TITLE"]

COORD_CHECK_DEFAULTS: dict[str, Any] = {
    "widths": None,
    "densities": None,
    "parametrizations": None,
    "seeds": [0, 1, 2],
    "steps": 10,
}
CSV_COLUMNS = ("parametrization", "axis", "value", "seed", "step", "block", "module", "mean_abs", "loss")
#: The first line of ``coord_check_table.md``.
TABLE_TITLE = "# Mean |activation| per block"


def _number_list(key: str, value: Any, *, integer: bool, low: float, high: float | None,
                 problems: list) -> list | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        problems.append((key, f"expected a non-empty list of numbers or null, got {value!r}"))
        return None
    option = (cfg.integer(None, low=int(low), high=None if high is None else int(high)) if integer
              else cfg.number(None, low=low, high=high, low_open=True))
    out, first = [], {}   # first: the place each number was first given
    for place, item in enumerate(value, 1):   # named by place: "entry 2: 2 is out of range" read as both
        try:
            number = option.validate(item)
        except Exception as err:  # _Invalid: message says what is allowed (and the value)
            problems.append((key, f"entry {place} of {len(value)}: {err}"))
            continue
        if number in out:  # measured twice, and drawn as one point (a sweep grid refuses it too)
            problems.append((key, f"entry {place} of {len(value)}: {item!r} repeats entry {first[number]}"))
        first.setdefault(number, place)
        out.append(number)
    return out


def parse_coord_check(section: Mapping[str, Any] | None) -> dict:
    """Validate a ``coord_check:`` section (defaults filled); :class:`ConfigError` names each bad key."""
    from catapult.param_rules import PARAMETRIZATIONS  # not catapult.parametrize: no torch for a refusal

    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise cfg.ConfigError([("coord_check", f"expected a mapping with keys {', '.join(COORD_CHECK_DEFAULTS)}, "
                                               f"got {section!r}")])
    problems: list[tuple[str, str]] = []
    unknown = [k for k in section if k not in COORD_CHECK_DEFAULTS]
    for key in unknown:
        problems.append((f"coord_check.{key}", f"unknown key; allowed: {', '.join(COORD_CHECK_DEFAULTS)}"))
    out = dict(COORD_CHECK_DEFAULTS, **{k: v for k, v in section.items() if k not in unknown})
    given = {axis: out[axis] for axis in ("widths", "densities")}
    out["widths"] = _number_list("coord_check.widths", out["widths"], integer=True, low=1, high=None,
                                 problems=problems)
    out["densities"] = _number_list("coord_check.densities", out["densities"], integer=False, low=0.0,
                                    high=1.0, problems=problems)
    for axis, model_key in (("widths", "model.width"), ("densities", "model.density")):
        # its slopes would be nan, its figure one point; [8.5, 16] is two values, one refused above (it
        # was also told "got one (16)", and to set model.width=16)
        if out[axis] is not None and len(out[axis]) == 1 and len(given[axis]) == 1:
            problems.append((f"coord_check.{axis}", f"a slope needs two values or more, got one ({out[axis][0]}); "
                                                    f"for that one value set {model_key}={out[axis][0]} and "
                                                    f"coord_check.{axis}=null"))
    # at most torch.manual_seed's 2^64 - 1: a larger seed was its ValueError "Overflow when unpacking long long"
    seeds = _number_list("coord_check.seeds", out["seeds"], integer=True, low=0, high=2 ** 64 - 1, problems=problems)
    if out["seeds"] is None:
        problems.append(("coord_check.seeds", "expected a non-empty list of seeds (integers >= 0)"))
    out["seeds"] = seeds
    try:
        out["steps"] = cfg.integer(10, low=1).validate(out["steps"])
    except Exception as err:
        problems.append(("coord_check.steps", str(err)))
    params = out["parametrizations"]
    if params is not None:
        if isinstance(params, str):
            params = [params]
        if not isinstance(params, (list, tuple)) or not params:
            problems.append(("coord_check.parametrizations", f"expected a list of {', '.join(PARAMETRIZATIONS)}"))
        else:
            bad = [p for p in params if p not in PARAMETRIZATIONS]
            if bad:
                problems.append(("coord_check.parametrizations",
                                 f"{bad} not allowed; allowed values: {', '.join(PARAMETRIZATIONS)}"))
            repeated = [] if bad else sorted({p for p in params if list(params).count(p) > 1}, key=str)
            if repeated:
                problems.append(("coord_check.parametrizations", f"{repeated} repeated; list each once"))
            params = list(params)
    out["parametrizations"] = params
    if not problems and out["widths"] is None and out["densities"] is None:
        problems.append(("coord_check", "set coord_check.widths, coord_check.densities or both"))
    if problems:
        raise cfg.ConfigError(problems)
    return out


def _split_overrides(overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    base, section = [], []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        (section if key == "coord_check" or key.startswith("coord_check.") else base).append(text)
    return base, section


def load_coord_check(path: str | Path, overrides: Iterable[str] = (),
                     set_aside: dict | None = None) -> tuple[dict, dict]:
    """``(run_config, coord_check_section)`` from a config file with ``key=value`` overrides
    (``coord_check.<key>=...`` change the section). Everything is validated first, including
    each model the check will build (an invalid width/density/parameterization, or a model too
    large for this machine, is an error naming the key), so nothing runs on bad input.
    ``set_aside`` receives the file's sections the run config leaves out (``sweep``), as
    :func:`catapult.config.load_config`'s does."""
    base_overrides, section_overrides = _split_overrides(overrides)
    mapping = cfg.read_mapping(path)
    section = mapping.get("coord_check") or {}
    for text in section_overrides:
        key, value = cfg.parse_override(text)
        if key == "coord_check":  # the whole section at once
            section = value
            continue
        if not isinstance(section, Mapping):
            break  # refused below
        section = {**section, key.split(".", 1)[1]: value}
    if not isinstance(section, Mapping):
        raise cfg.ConfigError([("coord_check", f"expected a mapping, got {section!r}")])
    section = dict(section)
    spec = parse_coord_check(section)
    config = _base_config(path, base_overrides, spec, set_aside)
    if cfg.parse_lr(config["optimizer"]["lr"]).relative:
        raise cfg.ConfigError([("optimizer.lr", f"{config['optimizer']['lr']!r}: a coordinate check compares "
                                                "models at one absolute lr; give a number")])
    from catapult.engine.model_size import check_model_fits  # torch, only once the config is read

    problems = _baseless_widths(config, spec)
    for parametrization, axis, value in _models(config, spec):
        try:  # valid, and small enough for this machine's memory whatever the data
            check_model_fits(cfg.validate(_variant(config, parametrization, axis, value)))
        except cfg.ConfigError as err:
            where = f"coord_check.{'widths' if axis == 'width' else 'densities'}={value}"
            problems.extend((f"{key} ({where}, {parametrization})", msg) for key, msg in err.problems)
    if problems:
        raise cfg.ConfigError(problems)
    return config, spec


def _base_config(path: str | Path, overrides: list[str], spec: Mapping[str, Any], set_aside: dict | None) -> dict:
    """The run config of a coordinate check, checked as the check builds it: a problem between
    its keys is refused here only where every model of the check has it (a rigl config at the
    default density 1 with ``coord_check.densities``, whose models each set their own density and
    static masks, was refused for the density it never builds); the models that keep one are
    named by :func:`load_coord_check`."""
    try:
        return cfg.load_config(path, overrides, set_aside=set_aside)
    except cfg.ConfigError as err:
        refused = err
    try:
        config = cfg.load_config(path, overrides, checks=False)
    except cfg.ConfigError:
        raise refused from None
    own = [problem for check in cfg.CHECKS for problem in check(config)]  # refused's, without the lines
    if len(own) != len(refused.problems):
        raise refused
    common = set(own)
    for parametrization, axis, value in _models(config, spec):
        try:
            cfg.validate(_variant(config, parametrization, axis, value))
        except cfg.ConfigError as err:
            common &= set(err.problems)
        else:
            common = set()
        if not common:
            return config
    raise cfg.ConfigError([shown for shown, problem in zip(refused.problems, own) if problem in common])


def _baseless_widths(config: Mapping[str, Any], spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A width axis under muP or SμPar without ``model.base_width``: each width would be its own
    base (``m_d = 1``: no multiplier, init or lr scaling), so muP would be measured as SP. (The
    MLP's ``mup`` without a base width is the warmup paper's form, which scales by itself.)"""
    model = config["model"]
    if spec["widths"] is None or model.get("base_width") is not None:
        return []
    baseless = [p for p in _parametrizations(config, spec)
                if p != "sp" and not (model.get("name") == "mlp" and p == "mup")]
    if not baseless:
        return []
    return [("model.base_width", f"a coordinate check over coord_check.widths under {', '.join(baseless)} needs "
                                 "the base width the multipliers are relative to: without it every width is its own "
                                 f"base (m_d = 1) and is measured as SP; set model.base_width (e.g. "
                                 f"model.base_width={min(spec['widths'])})")]


def _axes(spec: Mapping[str, Any]) -> list[tuple[str, list]]:
    axes = []
    if spec["widths"] is not None:
        axes.append(("width", spec["widths"]))
    if spec["densities"] is not None:
        axes.append(("density", spec["densities"]))
    return axes


def _parametrizations(config: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    return spec["parametrizations"] or [config["model"]["parametrization"]]


def _models(config: Mapping[str, Any], spec: Mapping[str, Any]):
    for parametrization in _parametrizations(config, spec):
        for axis, values in _axes(spec):
            for value in values:
                yield parametrization, axis, value


def _variant(config: Mapping[str, Any], parametrization: str, axis: str, value, seed: int | None = None) -> dict:
    variant = copy.deepcopy(dict(config))
    variant["model"] = dict(variant["model"], parametrization=parametrization, **{axis: value})
    sparsity = variant["model"].get("sparsity")
    if isinstance(sparsity, Mapping) and sparsity.get("method", "static") != "static":
        # no mask is updated here: gmp builds all-ones masks (it prunes from dense later), so every
        # density would be dense; rigl's are static's, and its density-1.0 models were refused
        # (the schedule's keys go too: static masks read none, and refuse them set)
        variant["model"]["sparsity"] = {"method": "static"}
    if seed is not None:
        variant["seed"] = int(seed)
    return variant


def run_coord_check(config: Mapping[str, Any], spec: Mapping[str, Any], *, out_dir: str | Path | None = None,
                    progress: bool = False, panels: str = "block") -> list[dict]:
    """Run the check a validated ``(config, spec)`` describes; returns the rows (also written
    to ``out_dir`` with the figures when given). See the module docstring."""
    import torch

    progress = check_flag("run_coord_check", "progress", progress)

    from catapult import engine as train
    from catapult.coord_check import coord_check, plot_coord_check
    from catapult.losses import get_loss
    from catapult.engine.run_dir import made_out_dir

    device = train.resolve_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    data = train.load_data(config, device, dtype)
    steps = spec["steps"]
    stream = train.batch_stream(config, data)   # catapult train's batch order and data.augment
    _check_batches_fit(stream, steps, device)
    batches = [stream.batch(t) for t in range(steps)]
    loss_fn = get_loss(config["loss"])
    lr = cfg.parse_lr(config["optimizer"]["lr"]).value
    rows: list[dict] = []
    for parametrization in _parametrizations(config, spec):
        for axis, values in _axes(spec):
            for seed in spec["seeds"]:
                def make_model(value, _p=parametrization, _a=axis, _s=seed):
                    variant = cfg.validate(_variant(config, _p, _a, value, _s))
                    return train.build_model(variant, data.in_features, data.num_classes, device, dtype)

                def make_optimizer(model, _s=seed):  # per-layer lrs come from the model itself
                    return train.build_optimizer({**config, "seed": _s}, model, lr)

                part = coord_check(make_model, values, batch=lambda t: batches[t], steps=steps, seeds=[seed],
                                   optimizer=make_optimizer, loss_fn=loss_fn)
                for row in part:
                    row.update(parametrization=parametrization, axis=axis)
                rows.extend(part)
                if progress:
                    print(f"[coord-check] {parametrization} over {axis}: seed {seed} done", file=sys.stderr,
                          flush=True)
    if out_dir is not None:
        out = Path(out_dir)
        # a full disk, Ctrl-C: a folder it made goes, as train's does; once coord_check.csv is written
        # a figure or table that fails keeps it (results_kept)
        with made_out_dir(out):
            _write_results(out, config, spec, rows, panels, plot_coord_check)
    return rows


def _machine_memory(device) -> int | None:
    """Total memory of ``device`` in bytes (the machine's RAM for the CPU); None where unknown."""
    import os

    import torch

    try:
        if torch.device(device).type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def _check_batches_fit(stream, steps: int, device) -> None:
    """A ConfigError naming ``coord_check.steps`` where the ``steps`` batches the check keeps (every
    model trains on the same ones) would take more than the device's memory: coord_check.steps=1e9
    (the engine's step limit) was 'accepted' and then filled the RAM building batches (10 GB and
    growing) before the first model, until the kernel killed it. A full-batch stream keeps one."""
    if steps < 2 or getattr(stream, "batch_size", 0) is None:   # full batch: the same tensors every step
        return
    x, y = stream.batch(0)   # batch 0 is taken again next (a stream goes forward: batch(1) first refused it)
    per_batch = sum(t.numel() * t.element_size() for t in (x, y) if hasattr(t, "numel"))
    have = _machine_memory(device)
    if have is not None and per_batch * steps > have // 2:
        raise cfg.ConfigError([("coord_check.steps", f"{steps} steps keep {steps} batches of {per_batch} bytes "
                                                     f"({per_batch * steps / 2 ** 30:.3g} GiB), more than half of "
                                                     f"this machine's memory ({have / 2 ** 30:.3g} GiB); "
                                                     f"a coordinate check needs a few steps (e.g. 10)")])


def _write_results(out: Path, config, spec, rows: list[dict], panels: str, plot_coord_check) -> None:
    from catapult.engine.run_dir import results_kept

    table = csv_text(CSV_COLUMNS, ([row.get(column) for column in CSV_COLUMNS] for row in rows))
    write_text_whole(out / "coord_check.csv", table)
    write_text_whole(out / "config.yaml", cfg.dump_config(config) + cfg.dump_config({"coord_check": dict(spec)}))
    # the measurements are written: a figure or the table that fails keeps them (ResultsKept)
    kept = ["coord_check.csv", "config.yaml"]
    for parametrization, axis, part in result_groups(rows):
        name = f"coord_check_{axis}_{parametrization}.png"
        with results_kept(out, name, kept):
            plot_coord_check(part, out / name, xlabel=axis, panels=panels,
                             title=f"{config['name']}: {parametrization}, mean |activation| vs {axis}")
        kept.append(name)
    with results_kept(out, "coord_check_table.md", kept):
        write_text_whole(out / "coord_check_table.md", TABLE_TITLE + "\n\n" + activation_tables(rows)
                         + "\n# Log-log slope vs the varied value (0 = flat)\n\n" + slope_table(rows) + "\n")


def result_groups(rows: list[dict]):
    keys = list(dict.fromkeys((r["parametrization"], r["axis"]) for r in rows))
    for parametrization, axis in keys:
        yield parametrization, axis, [r for r in rows if r["parametrization"] == parametrization and r["axis"] == axis]


def activation_tables(rows: list[dict]) -> str:
    """Markdown: :func:`catapult.coord_check.activation_table` per (parameterization, axis)."""
    from catapult.coord_check import activation_table

    return "\n\n".join(f"{parametrization}, over {axis}:\n\n{activation_table(part)}"
                       for parametrization, axis, part in result_groups(rows)) + "\n"


def slope_table(rows: list[dict]) -> str:
    """Markdown table: log-log slope of mean |activation| vs the varied value, per
    (parameterization, axis, block), at the first and the last recorded step; where the mean at
    some value is no finite number > 0 (a diverged run, a dead block) the cell says which
    (``n/a (inf at width 512)``) instead of a slope over the other values."""
    from catapult.coord_check import block_order, coord_slopes, unfit_values

    lines = ["| parametrization | axis | block | slope at step 0 | slope at last step |", "|---|---|---|---|---|"]
    for parametrization, axis, part in result_groups(rows):
        slopes, unfit = coord_slopes(part), unfit_values(part)
        last = max(step for _, step in slopes)
        for block in block_order(b for b, _ in slopes):
            cells = [_slope_cell(slopes.get((block, step), math.nan), unfit.get((block, step)), axis)
                     for step in (0, last)]
            lines.append(f"| {parametrization} | {axis} | {block} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _slope_cell(slope: float, unfit: list[tuple[float, float]] | None, axis: str) -> str:
    """A slope, or why there is none: "n/a (inf at width 512)" where a run diverged or a block's
    output was all 0 at some value (the slope was fitted over the other values, or printed "+nan")."""
    if unfit:
        said = ", ".join(f"{mean:g} at {axis} {value:g}" for value, mean in unfit[:3])
        return f"n/a ({said}{', ...' if len(unfit) > 3 else ''})"
    return f"{slope:+.3f}"
