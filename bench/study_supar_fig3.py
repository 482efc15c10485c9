"""SμPar paper Fig. 3 at CPU scale, from an LR-transfer sweep's export (``catapult export``): the
loss each parametrization reaches at each density with the lr tuned on the dense model.

The paper trains 610M-parameter LLMs at several densities with the hyperparameters of a tuned
dense proxy, and finds SμPar's loss the lowest at every density (the "Pareto frontier"), the gap
growing with sparsity. Here each parametrization's lr is the optimum of its own seed-mean curve at
density 1 (the dense proxy), carried unchanged to every density; beside it, the best loss over the
lr grid at that density (per-density tuning, which the paper's recipe does not do). Diverged or
failed cells count as +inf; a density without the dense-optimal lr prints "not run". Several
exports (e.g. sweeps that added lrs or densities) are read as one. Prints Markdown tables;
``--out`` draws loss against density.

    python bench/study_supar_fig3.py bench/supar_bpe/lr_full.csv --out bench/figures/supar_bpe_fig3.png
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict

import numpy as np

ORDER = ["sp", "mup", "supar"]
LABEL = {"sp": "SP", "mup": "muP", "supar": "SμPar"}


def load(paths: list[str], metric: str, axes: tuple[str, ...] = ("optimizer.lr",)):
    """``{parametrization: {density: {lr: {seed: loss}}}}`` from one or more exports (a cell in
    several: the last file's), +inf where a cell did not finish; one level per column of ``axes``
    (rows with an empty value in one of them are left out)."""
    def level(depth: int):
        return defaultdict(lambda: level(depth - 1)) if depth else {}

    out = level(2 + len(axes))
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if not all(row.get(axis) for axis in axes):
                    continue
                try:
                    value = float(row[metric]) if row["status"] == "finished" else math.inf
                except ValueError:
                    value = math.inf
                node = out[row["model.parametrization"]][float(row["model.density"])]
                for axis in axes:
                    node = node[float(row[axis])]
                node[int(row["seed"])] = value if math.isfinite(value) else math.inf
    return out


def command_line(argv, doc: str) -> argparse.Namespace:
    """The studies' arguments: exports read as one, the metric, the figure file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="sweep exports (catapult export), read as one")
    parser.add_argument("--metric", default="test_loss", help="column to compare (default: final test loss)")
    parser.add_argument("--out", help="figure file")
    return parser.parse_args(argv)


def parametrizations(data) -> list[str]:
    """The parametrizations in ``data``: SP, muP, SμPar first, in that order."""
    return [p for p in ORDER if p in data] + sorted(set(data) - set(ORDER))


def mean_std(values):
    """Mean and sample std of the seeds' losses; +inf if any diverged, nan if none ran."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    if any(not math.isfinite(v) for v in values):
        return math.inf, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(argv=None) -> None:
    args = command_line(argv, __doc__)
    data = load(args.csv, args.metric)
    params = parametrizations(data)
    densities = sorted({d for p in params for d in data[p]}, reverse=True)
    if lacking := [LABEL.get(p, p) for p in params if 1.0 not in data[p]]:
        print(f"study_supar_fig3: no dense (model.density 1.0) cells for {', '.join(lacking)} in "
              f"{', '.join(args.csv)}: the dense lr is the one carried; add the export that has them", file=sys.stderr)
        raise SystemExit(2)
    transferred, tuned, dense_lr = {}, {}, {}
    for p in params:
        dense = data[p][1.0]
        dense_lr[p] = min(dense, key=lambda lr: mean_std(dense[lr].values())[0])
        for d in densities:
            by_lr = data[p].get(d, {})
            transferred[p, d] = mean_std(by_lr.get(dense_lr[p], {}).values())
            tuned[p, d] = min((mean_std(by_lr[lr].values()) + (lr,) for lr in by_lr), key=lambda t: t[0],
                              default=(math.nan, math.nan, math.nan))

    print(f"Final {args.metric}, mean ± std over seeds, at each parametrization's dense-optimal lr "
          f"(log2: {', '.join(f'{LABEL.get(p, p)} {math.log2(dense_lr[p]):g}' for p in params)}):\n")
    print("| parametrization | " + " | ".join(f"density 1/{round(1 / d)}" if d < 1 else "dense"
                                             for d in densities) + " |")
    print("|---" * (len(densities) + 1) + "|")
    for p in params:
        print(f"| {LABEL.get(p, p)} | " + " | ".join(
            f"{m:.3f} ± {s:.3f}" if math.isfinite(m) else "not run" if math.isnan(m) else "diverged" for m, s in
            (transferred[p, d] for d in densities)) + " |")
    print("| loss at the sparsest minus dense | " + " | ".join("" for _ in densities[:-1]) + " | " + ", ".join(
        f"{LABEL.get(p, p)} " + (f"{gap:+.3f}" if not math.isnan(gap := transferred[p, densities[-1]][0]
                                                          - transferred[p, 1.0][0]) else "not run")
        for p in params) + " |")
    if "supar" in params:
        for other in [p for p in params if p != "supar"]:
            gaps = [(transferred[other, d][0] - transferred["supar", d][0]) / transferred[other, d][0]
                    for d in densities]
            print(f"| SμPar better than {LABEL.get(other, other)} by | " + " | ".join(
                f"{100 * g:.1f}%" if math.isfinite(g) else "-" for g in gaps) + " |")
    per_density = any(len(data[p][d]) > 1 for p in params for d in densities if d < 1)
    if per_density:
        print_tuned(params, densities, tuned)
    if args.out:
        draw(args, params, densities, transferred, tuned if per_density else None, dense_lr)


def print_tuned(params, densities, tuned) -> None:
    print("\nBest over the lr grid at each density (per-density tuning), mean ± std, and its log2 lr:\n")
    print("| parametrization | " + " | ".join(f"1/{round(1 / d)}" if d < 1 else "dense" for d in densities) + " |")
    print("|---" * (len(densities) + 1) + "|")
    for p in params:
        print(f"| {LABEL.get(p, p)} | " + " | ".join(
            "not run" if math.isnan(lr) else f"{m:.3f} ± {s:.3f} ({math.log2(lr):g})"
            for m, s, lr in (tuned[p, d] for d in densities)) + " |")


def draw(args, params, densities, transferred, tuned, dense_lr) -> None:
    """Loss against density at the dense-tuned lr (error bars: seed std), and dotted, the
    per-density best where the sweep has more than one lr."""
    from matplotlib.figure import Figure

    from catapult.files import save_figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, p in enumerate(params):
        xs = densities
        ms = [transferred[p, d][0] for d in densities]
        ss = [transferred[p, d][1] for d in densities]
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=f"C{i}",
                    label=f"{LABEL.get(p, p)}, dense-tuned lr 2^{math.log2(dense_lr[p]):g}")
        if tuned is not None:
            ax.plot(xs, [tuned[p, d][0] for d in densities], ls=":", color=f"C{i}",
                    label=f"{LABEL.get(p, p)}, lr tuned per density")
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()   # sparser to the right, as the paper draws it
    ax.set_xticks(densities, [f"1/{round(1 / d)}" if d < 1 else "1" for d in densities])
    ax.set(xlabel="density (1 - sparsity)", ylabel=f"final {args.metric}",
           title="SμPar Fig. 3 at CPU scale: loss vs sparsity, lr from the dense model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, args.out, dpi=120)


if __name__ == "__main__":
    main()
