"""``catapult coord-check CONFIG``: see :mod:`catapult.engine.coord_check_study`."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from catapult.cli.common import (add_config_arguments, apply_threads, check_study_dir, overrides_from_args, path_option,
                                 partial_of_ours, sweep_ignored_note)
from catapult.engine.coord_check_study import (CSV_COLUMNS, TABLE_TITLE, load_coord_check, result_groups,
                                               run_coord_check, slope_table)
from catapult.files import PARTIAL_PREFIX, PNG_START, cut_off_mapping, written_by_catapult


def register(subparsers) -> None:
    """Add ``catapult coord-check``."""
    p = subparsers.add_parser(
        "coord-check", help="coordinate check: each block's activation scale over widths and/or densities",
        description="Train each model of the config's coord_check: section (widths, densities, "
                    "parametrizations, seeds) for a few steps at the constant optimizer.lr and record "
                    "each block's mean |output| per step; writes coord_check.csv, one log-log figure per "
                    "parametrization and axis, and prints the slopes (0 = flat = the scale is stable). "
                    "Overrides: run keys as for `train`, plus coord_check.<key>=...",
    )
    add_config_arguments(p)
    p.add_argument("--out", type=path_option, metavar="DIR", help="output directory (default: runs/<name>/)")
    p.add_argument("--panels", choices=("block", "step"), default="block",
                   help="figure layout: one panel per block with a line per step (default), or one panel "
                        "per step with a line per block")
    p.set_defaults(func=_command)


def _command(args) -> int:
    set_aside: dict = {}
    config, spec = load_coord_check(args.config, overrides_from_args(args), set_aside=set_aside)
    apply_threads(args)
    if "sweep" in set_aside:  # its models are the base config's, at its lr: say so, as train does
        print(sweep_ignored_note("coord-check", set_aside["sweep"], config), file=sys.stderr)
    out = check_study_dir("coord-check", Path(args.out) if args.out else Path("runs") / config["name"],
                          owned=_owned, marker=_marker)
    earlier = set(out.glob("coord_check_*.png")) if out.is_dir() else set()  # all its own (checked above)
    rows = run_coord_check(config, spec, out_dir=out, progress=args.progress != "none", panels=args.panels)
    # a figure of an earlier check this one did not redraw (another parametrization or axis)
    # would sit beside a coord_check.csv that no longer holds its rows
    drawn = {out / f"coord_check_{axis}_{parametrization}.png" for parametrization, axis, _ in result_groups(rows)}
    for stale in earlier - drawn:
        stale.unlink()
    for leftover in out.glob(PARTIAL_PREFIX + "*"):   # of an earlier check stopped mid-write, not rewritten now
        if _owned(leftover):
            leftover.unlink()
    print(slope_table(rows))
    print(f"wrote {out}/ (coord_check.csv, coord_check_table.md, config.yaml, "
          f"{len(list(result_groups(rows)))} figure(s) coord_check_<axis>_<parametrization>.png)")
    return 0


def _owned(entry: Path) -> bool:
    """Whether ``entry`` is a file coord-check wrote (so a rerun may replace it), judged by its
    contents as ``train`` judges its run records: a name alone let a user's ``config.yaml`` or
    ``coord_check_table.md`` be overwritten in a folder that also held a ``coord_check.csv``. A
    link is not (the file written would be the one it points to). A ``.partial-`` file that a
    stopped write left is judged by the same content under its real name, or as a cut-off start."""
    if entry.name.startswith(PARTIAL_PREFIX):
        return partial_of_ours(entry, _written_or_cut_off, _start)
    return _owned_as(entry, entry.name)


def _written_or_cut_off(entry: Path, name: str) -> bool:
    """A partial file of coord-check's ``name``: written whole, or a config cut off mid-write
    (YAML that a cut leaves is no config, so judged as a whole one it refused the folder)."""
    return _owned_as(entry, name) or (name == "config.yaml" and _cut_off_config(entry))


def _config_keys() -> tuple[str, ...]:
    """The top-level keys of the config.yaml coord-check writes, in the order it writes them
    (:func:`catapult.config.dump_config`: the run's keys in schema order, then its own section).
    Asked when a folder is judged, so that the parser's build (``--help``) imports no pydantic."""
    from catapult.config import RunConfig

    return (*RunConfig.model_fields, "coord_check")


def _cut_off_config(entry: Path) -> bool:
    """Whether ``entry`` holds the start of a config.yaml as coord-check writes it, cut off
    mid-write (:func:`catapult.files.cut_off_mapping` of :func:`_config_keys`; some may be
    missing)."""
    if entry.is_symlink() or not entry.is_file() or entry.stat().st_size > 1 << 20:
        return False
    try:
        return cut_off_mapping(entry.read_bytes(), _config_keys())
    except OSError:
        return False


def _start(name: str) -> bytes | None:
    """How coord-check's file ``name`` starts, for a write cut off before it could be judged."""
    if name == "coord_check.csv":
        return (",".join(CSV_COLUMNS) + "\r\n").encode()   # the csv module ends lines with \r\n
    if name == "coord_check_table.md":
        return TABLE_TITLE.encode()
    return PNG_START if name.startswith("coord_check_") and name.endswith(".png") else None


def _owned_as(entry: Path, name: str) -> bool:
    """Whether the file ``entry`` holds what coord-check writes under ``name``."""
    import yaml  # here, not at the module's import: the parser's build (``--help``) reads no YAML

    from catapult.config.io import safe_yaml

    if entry.is_symlink() or not entry.is_file():
        return False
    try:
        if name == "coord_check.csv":
            with open(entry, newline="") as fh:
                return next(csv.reader([fh.readline(1 << 16)]), []) == list(CSV_COLUMNS)
        if name == "coord_check_table.md":
            with open(entry, encoding="utf-8") as fh:
                return fh.readline(1 << 10).rstrip("\n") == TABLE_TITLE
        if name == "config.yaml":
            if entry.stat().st_size > 1 << 20:
                return False
            # bounded, and every PyYAML error a YAMLError: a user's config.yaml there nested 3,000 deep
            # (RecursionError) or with `a: !!bool maybe` (KeyError) was a traceback, not "not ours"
            text = safe_yaml(entry.read_text(encoding="utf-8"))
            return isinstance(text, dict) and isinstance(text.get("coord_check"), dict) and "model" in text
        return name.startswith("coord_check_") and name.endswith(".png") and written_by_catapult(entry)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False


def _marker(entry: Path) -> bool:
    return entry.name == "coord_check.csv" and _owned(entry)
