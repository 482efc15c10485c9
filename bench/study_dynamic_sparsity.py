"""Does the optimal lr transfer across density under dynamic sparsity (SμPar Fig. 12)?

Reads ``catapult export STORE --out CSV`` of a ``configs/supar/dynamic_sparsity_small.yaml``
sweep (any subset of its grid), and prints per (method, parametrization, density) the mean ±
std over seeds of the final validation loss at each lr, the lr of the lowest mean, and the
drift of that optimum between the densities in log2 units; plots the curves with min-max bands.

    catapult sweep configs/supar/dynamic_sparsity_small.yaml --store runs/dyn.db --threads 1 \\
        'sweep.grid.model.sparsity.method=[rigl]' 'sweep.grid.model.parametrization=[sp,supar]' \\
        'sweep.grid.model.density=[0.5,0.0625]' 'sweep.grid.optimizer.lr=[0.0009765625,0.00390625,0.015625,0.0625]'
    catapult export runs/dyn.db --out runs/dyn.csv
    .venv/bin/python bench/study_dynamic_sparsity.py runs/dyn.csv --out bench/figures/supar_rigl_small.png

A static-sparsity export (no ``model.sparsity.method`` column, e.g. of
``configs/supar/lr_transfer_small.yaml``) reads as method ``static``. ``--dense-from PARAM`` lends
PARAM's density-1 cells to every parametrization that has none: at density 1 muP, SμPar and the
two ablations build the same model (``density_mult`` = 1), so their dense curve is run once. Each
group also prints the drift paired by seed (per seed: the optimum at the sparsest density minus
the one at the densest, argmin on the grid and fitted), mean ± sample std; the unpaired drift line's
± is the hypot of the two densities' seed stds, which treats seeds the densities share as
independent (it says so).
"""
from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict

import numpy as np


def fitted_optimum(lrs: list[float], by_seed: dict[int, dict[float, float]], window: float = 2.0) -> list[float]:
    """Per seed, the log2 lr at the vertex of a least-squares parabola through that seed's final
    losses at the lrs within ``window`` log2 units of the lowest mean loss (the argmin if the
    parabola opens downwards or its vertex leaves that window)."""
    return list(fitted_by_seed(lrs, by_seed, window).values())


def fitted_by_seed(lrs: list[float], by_seed: dict[int, dict[float, float]], window: float = 2.0) -> dict[int, float]:
    """:func:`fitted_optimum` keyed by seed (seeds with fewer than 3 finite points left out)."""
    means = [np.mean([by_seed[s][lr] for s in by_seed if lr in by_seed[s]]) for lr in lrs]
    centre = math.log2(lrs[int(np.argmin(means))])
    near = [lr for lr in lrs if abs(math.log2(lr) - centre) <= window]
    out = {}
    for s, losses in sorted(by_seed.items()):
        pts = [(math.log2(lr), losses[lr]) for lr in near if lr in losses and math.isfinite(losses[lr])]
        if len(pts) < 3:
            continue
        x, y = np.array(pts).T
        a, b, _ = np.polyfit(x, y, 2)
        vertex = -b / (2 * a) if a > 0 else math.nan
        if not (a > 0 and x.min() <= vertex <= x.max()):
            vertex = x[int(np.argmin(y))]
        out[s] = float(vertex)
    return out


def spread(values, digits: int = 3) -> str:
    """``mean ± sample std (n)`` of ``values``; one value as itself with ``(1 seed)`` (a sample std
    of one value is nan, with a NumPy warning); values with a non-finite one (a diverged seed's
    inf) as their mean and how many are not finite."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.{digits}f} (1 seed)"
    bad = int((~np.isfinite(v)).sum())
    if bad:
        return f"{v.mean():.{digits}f} ({v.size}, {bad} not finite)"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} ({v.size})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--out", default="bench/figures/supar_rigl_small.png")
    ap.add_argument("--dense-from", default=None, metavar="PARAM",
                    help="use PARAM's density-1 cells for every parametrization without its own")
    args = ap.parse_args()
    cells = defaultdict(list)
    seeds = defaultdict(dict)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["status"] not in ("finished", "diverged"):  # not run (yet)
            continue
        loss = float(row["test_loss"]) if row["status"] == "finished" and row["test_loss"] else math.inf
        key = (row.get("model.sparsity.method", "static"), row["model.parametrization"], float(row["model.density"]),
               float(row["optimizer.lr"]))
        cells[key].append(loss)
        seeds[key[:3]].setdefault(int(row["seed"]), {})[key[3]] = loss
    if args.dense_from:
        for method, param in sorted({k[:2] for k in cells}):
            if param == args.dense_from or any(k[:3] == (method, param, 1.0) for k in cells):
                continue
            lent = [k for k in cells if k[:3] == (method, args.dense_from, 1.0)]
            if lent:
                print(f"({method}, {param}: density 1 from {args.dense_from})")
            for k in lent:
                cells[(method, param, 1.0, k[3])] = cells[k]
                seeds[(method, param, 1.0)] = seeds[k[:3]]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k[:2] for k in cells})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    print("| method | parametrization | density | lr: mean ± std (n) ... | optimal lr |")
    print("|---|---|---|---|---|")
    for ax, (method, param) in zip(axes[0], groups):
        optima, fitted, paired = {}, {}, {}
        for density in sorted({k[2] for k in cells if k[:2] == (method, param)}, reverse=True):
            # the lrs every seed of the group has run (a sweep still running leaves some short); a fixed
            # 3 printed an empty table, silently, for a store of 2 seeds (sweep.seeds=[0,1])
            group = [k for k in cells if k[:3] == (method, param, density)]
            n_seeds = max(len(cells[k]) for k in group)
            lrs = sorted(k[3] for k in group if len(cells[k]) == n_seeds)
            if not lrs:
                continue
            vals = [np.array(cells[(method, param, density, lr)]) for lr in lrs]
            mean = np.array([v.mean() for v in vals])
            best = lrs[int(np.argmin(mean))]
            optima[density] = best
            fits = fitted_optimum(lrs, seeds[(method, param, density)])
            fitted[density] = fits
            by_seed = seeds[(method, param, density)]
            fit = fitted_by_seed(lrs, by_seed)
            for s in fit:
                curve = {lr: by_seed[s][lr] for lr in lrs if lr in by_seed[s]}
                paired.setdefault(density, {})[s] = (math.log2(min(curve, key=curve.get)), fit[s])
            text = ", ".join(f"2^{math.log2(lr):g}: {spread(v)}" for lr, v in zip(lrs, vals))
            # a parabola needs 3 finite losses near the optimum: with fewer lrs run, say so (np.mean of
            # no fit printed nan, with a NumPy warning)
            fit_text = (f"fitted {spread(fits, 2)}" if fits else
                        f"fitted: - (no seed has 3 finite losses within 2 log2 units of the optimum; {len(lrs)} lrs run)")
            print(f"| {method} | {param} | {density:g} | {text} | 2^{math.log2(best):g}; {fit_text} |")
            x = np.log2(lrs)
            line, = ax.plot(x, mean, "o-", label=f"density {density:g}")
            ax.fill_between(x, [v.min() for v in vals], [v.max() for v in vals], color=line.get_color(), alpha=0.2)
        if not optima:
            continue
        drift = max(math.log2(v) for v in optima.values()) - min(math.log2(v) for v in optima.values())
        fm = {d: np.mean(v) for d, v in fitted.items() if v}
        fs = {d: (np.std(v, ddof=1) if len(v) > 1 else None) for d, v in fitted.items() if v}
        dense = max(fm) if fm else max(optima)
        if len(fm) < 2:  # max / min of no fitted optimum raised ValueError; one density has no drift
            print(f"| {method} | {param} | drift of the optimum across densities | | argmin {drift:g} log2 units; "
                  f"fitted: - (a fitted optimum at {len(fm)} of {len(optima)} densities; the drift needs two) |")
        else:
            sparse = min(fm)
            # the densities share their seeds: this ± treats them as independent; the paired-by-seed
            # lines below give the sample std of the per-seed drift
            err = (f"± {math.hypot(fs[sparse], fs[dense]):.2f} (hypot of the two densities' seed stds, unpaired)"
                   if fs[sparse] is not None and fs[dense] is not None else "(1 seed)")
            print(f"| {method} | {param} | drift of the optimum across densities | | argmin {drift:g} log2 units; "
                  f"fitted, density {sparse:g} minus {dense:g}: {fm[sparse] - fm[dense]:+.2f} {err} |")
        for other in sorted((d for d in paired if d != dense), reverse=True):
            common = sorted(set(paired[other]) & set(paired.get(dense, {})))
            if len(common) < 2:
                continue
            d_arg = [paired[other][s][0] - paired[dense][s][0] for s in common]
            d_fit = [paired[other][s][1] - paired[dense][s][1] for s in common]
            print(f"| {method} | {param} | drift {dense:g} -> {other:g} paired by seed ({len(common)} seeds) | | argmin "
                  f"{', '.join(f'{d:+g}' for d in d_arg)}: {np.mean(d_arg):+.2f} ± {np.std(d_arg, ddof=1):.2f}; "
                  f"fitted {', '.join(f'{d:+.2f}' for d in d_fit)}: {np.mean(d_fit):+.2f} ± "
                  f"{np.std(d_fit, ddof=1):.2f} |")
        ax.set_title(f"{method}, {param}")
        ax.set_xlabel("log2 lr")
        ax.set_ylabel("final validation loss (mean, min-max band)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
