"""Seed statistics of a SμPar transfer sweep (``catapult export`` CSVs): the optimum per seed.

``catapult transfer`` takes the optimum of the seed-mean curve. This adds what a single optimum
hides: for every (panel, series) the optimum ``x*`` of each seed's own curve, their mean ± std in
log2 units, and the shift of the mean optimum from the first series value (density 1, the
smallest width). Cells that diverged or failed count as +inf loss; a seed with no finished cell
in a row has no optimum and is left out of that row (named there). Prints one Markdown table.

    python bench/study_supar_bpe.py runs/bpe/lr_main.csv [runs/bpe/lr_abl.csv] --x optimizer.lr --series model.density

The init-std sweep (``init_std.csv``) has no ``optimizer.lr`` column: pass ``--x model.init_std``;
the width sweep (``width.csv``) has no ``model.density``: pass ``--series model.width``. A file
without a column the options name, or with a value there that is not a number, is refused with
one line naming the file, the column and the columns it has (exit 2); so is a cell (panel,
series, seed, x) met twice with two losses, which means the rows vary a column not named (the
proxy searches' alpha_in, init_std, ...): before, the last row silently won.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict

import numpy as np


def _num(v: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


class CsvRefused(ValueError):
    """A CSV that lacks a column the options name, or holds a value there that is not a number."""


def _float(v: str, path, line: int, key: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise CsvRefused(f"{path}, line {line}: {key} is {v!r}, not a number") from None


def load(paths, x_key, series_key, panel_key, metric):
    """``{panel: {series: {seed: {x: metric}}}}``. A file without one of the columns named (x,
    series, panel, metric, ``seed``, ``status``), with a non-number in x, series or seed, or
    with one cell met twice with two losses raises
    :class:`CsvRefused` naming the file (and the line), before the table is printed."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    needed = {x_key: "--x", series_key: "--series", panel_key: "--panel", metric: "--metric",
              "seed": None, "status": None}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [k for k in needed if k not in header]
            if missing:
                named = ", ".join(f"{k!r}" + (f" ({needed[k]})" if needed[k] else "") for k in missing)
                swept = ", ".join(k for k in header if "." in k) or "none"
                raise CsvRefused(f"{path}: no column {named}; its config columns: {swept}")
            for line, row in enumerate(reader, start=2):
                value = _num(row[metric]) if row["status"] == "finished" else math.inf
                seed = _float(row["seed"], path, line, "seed")
                if not math.isfinite(seed) or seed != int(seed):
                    raise CsvRefused(f"{path}, line {line}: seed is {row['seed']!r}, not a whole number")
                panel, series = row[panel_key], _float(row[series_key], path, line, series_key)
                x = _float(row[x_key], path, line, x_key)
                cell = out[panel][series][int(seed)]
                if x in cell and cell[x] != value:
                    raise CsvRefused(f"{path}, line {line}: {panel_key} {panel}, {series_key} {series:g}, seed "
                                     f"{int(seed)}, {x_key} {x:g} met again with {metric} {value} (was "
                                     f"{cell[x]}): the rows vary another column too; give one sweep's rows")
                cell[x] = value
    return out


def fmt_log2(x: float) -> str:
    return f"2^{math.log2(x):g}"


def optima(seeds: dict) -> tuple:
    """For ``{seed: {x: loss}}``: the xs, the seed-mean curve and its std, the index of its
    optimum, each seed's own optimum (log2) and the seeds left out. A seed none of whose cells
    finished with a finite loss has no optimum (argmin over an all-inf curve would say the
    lowest x): it is left out of the per-seed optima and the seed-mean curve, and named."""
    failed = sorted(k for k in seeds if not any(math.isfinite(v) for v in seeds[k].values()))
    kept = sorted(k for k in seeds if k not in failed)
    if not kept:
        return [], np.array([]), np.array([]), None, [], failed
    xs = sorted(set().union(*(seeds[k].keys() for k in kept)))
    curves = np.array([[seeds[k].get(x, math.inf) for x in xs] for k in kept])
    with np.errstate(invalid="ignore"):
        mean = curves.mean(axis=0)
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.full(len(xs), math.nan)
    per_seed = [math.log2(xs[int(np.argmin(c))]) for c in curves]
    return xs, mean, std, int(np.argmin(mean)), per_seed, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--x", default="optimizer.lr")
    ap.add_argument("--series", default="model.density")
    ap.add_argument("--panel", default="model.parametrization")
    ap.add_argument("--metric", default="test_loss")
    ap.add_argument("--descending", action="store_true", help="series in descending order (density 1 first)")
    args = ap.parse_args()
    try:
        data = load(args.csv, args.x, args.series, args.panel, args.metric)
    except (CsvRefused, OSError) as err:
        print(f"study_supar_bpe.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"| {args.panel} | {args.series} | optimum of the seed-mean curve | loss there (mean ± std) | "
          f"per-seed optima (log2) | their mean ± std (log2) | shift of the mean-curve optimum (log2) | edge |")
    print("|---|---|---|---|---|---|---|---|")
    for panel in data:
        series = sorted(data[panel], reverse=args.series == "model.density" or args.descending)
        first = None
        for s in series:
            xs, mean, std, i, per_seed, failed = optima(data[panel][s])
            left_out = f" (left out, no finished cell: seed {', '.join(map(str, failed))})" if failed else ""
            if i is None:
                print(f"| {panel} | {s:g} | - | - | -{left_out} | - | - | |")
                continue
            opt = math.log2(xs[i])
            first = opt if first is None else first
            edge = "low edge" if i == 0 else "high edge" if i == len(xs) - 1 else ""
            print(f"| {panel} | {s:g} | {fmt_log2(xs[i])} | {mean[i]:.3f} ± {std[i]:.3f} | "
                  f"{', '.join(f'{p:g}' for p in per_seed)}{left_out} | {np.mean(per_seed):.2f} ± "
                  f"{np.std(per_seed, ddof=1) if len(per_seed) > 1 else math.nan:.2f} | {opt - first:+g} | {edge} |")


if __name__ == "__main__":
    main()
