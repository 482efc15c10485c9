"""Fig. 3 at CPU scale (configs/warmup/fig3_wrn_small.yaml): where does a WRN diverge, with and
without warmup? Reads the sweep's store, prints one table per panel and draws
bench/figures/fig3_wrn_small.png.

Per panel (SP / muP x MSE / cross-entropy), per T_wrm and seed, the *divergence boundary* is the
smallest ``x`` of ``lr_trgt = 2^x / lambda_0`` whose run diverged (the engine's rule: a
non-finite loss or > 1000 x the initial loss); a seed with no diverged cell in the grid has its
boundary recorded as "> x_max". With cross-entropy a run at a too-large lr often does not blow
up but collapses to a constant output (finite loss, chance accuracy), so a second boundary is
printed: the *failure boundary*, the smallest ``x`` whose run diverged or ended with a best test
accuracy below 1.5x chance (0.15 for 10 classes: the paper's failure rule for its Adam study).
Printed: each seed's boundaries, their mean and range, and the mean best test accuracy at each
x (finished runs only).

    catapult sweep configs/warmup/fig3_wrn_small.yaml --store runs/fig3_wrn_small.db --executor ensemble --workers 3 --threads 1
    PYTHONPATH=src python bench/fig3_wrn_small.py runs/fig3_wrn_small.db
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from catapult.cli import main as cli_main  # noqa: E402

PANELS = [("sp", "mse"), ("sp", "cross_entropy"), ("mup", "mse"), ("mup", "cross_entropy")]


def read_cells(store: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cells.csv"
        if cli_main(["export", store, "--format", "csv", "--out", str(out)]) != 0:
            sys.exit(f"could not export {store}")
        with open(out, newline="") as f:
            return list(csv.DictReader(f))


def exponent(lr: str) -> float:
    match = re.fullmatch(r"2\^(-?[0-9.]+)/lambda0", lr.strip())
    if not match:
        raise ValueError(f"optimizer.lr {lr!r} is not 2^x/lambda0")
    return float(match.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures" / "fig3_wrn_small.png"))
    args = parser.parse_args(argv)
    cells = read_cells(args.store)
    xs = sorted({exponent(c["optimizer.lr"]) for c in cells})
    warmups = sorted({int(c["schedule.warmup_steps"]) for c in cells})
    runs = defaultdict(dict)   # (param, loss, T) -> {seed: {x: (status, best_acc)}}
    for c in cells:
        if c["status"] not in ("finished", "diverged"):   # not run yet (or failed): left out, counted as missing
            continue
        key = (c["model.parametrization"], c["loss"], int(c["schedule.warmup_steps"]))
        acc = c.get("best_test_accuracy") or c.get("test_accuracy") or ""
        runs[key].setdefault(int(c["seed"]), {})[exponent(c["optimizer.lr"])] = (
            c["status"], float(acc) if acc not in ("", "nan", "None") else math.nan)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    for ax, (param, loss) in zip(axes, PANELS):
        print(f"\n{param} / {loss}")
        for T in warmups:
            seeds = runs.get((param, loss, T), {})
            for label, failed in (("divergence", lambda r: r[0] == "diverged"),
                                  ("failure", lambda r: r[0] == "diverged" or not r[1] >= 1.5 / 10)):
                bounds, texts = [], []
                for seed in sorted({int(c["seed"]) for c in cells}):
                    row = seeds.get(seed, {})
                    missing = [x for x in xs if x not in row]
                    bad = [x for x in xs if x in row and failed(row[x])]
                    b = min(bad) if bad else math.inf
                    bounds.append(b)
                    texts.append(f"seed {seed}: {'>' + format(xs[-1], 'g') if b == math.inf else format(b, 'g')}"
                                 + (f" ({len(missing)} cells missing)" if missing else ""))
                finite = [b for b in bounds if b != math.inf]
                summary = (f"mean {statistics.mean(bounds):.2f}, range {min(bounds):g}-{max(bounds):g}"
                           if bounds and len(finite) == len(bounds) else "some seeds never reached it in the grid")
                print(f"  T_wrm={T:4d}: {label} boundary x  [{'; '.join(texts)}]  {summary}")
            frac = [statistics.mean([seeds[s][x][0] == "diverged" for s in seeds if x in seeds[s]] or [math.nan])
                    for x in xs]
            accs = []
            for x in xs:
                vals = [seeds[s][x][1] for s in seeds if x in seeds[s] and seeds[s][x][0] == "finished"]
                accs.append(statistics.mean(vals) if vals else math.nan)
            print("            best test acc (finished, mean over seeds): "
                  + ", ".join(f"2^{x:g}: {a:.3f}" if a == a else f"2^{x:g}: -" for x, a in zip(xs, accs)))
            ax.plot(xs, frac, marker="o", label=f"T_wrm={T}: fraction diverged")
            ax.plot(xs, accs, marker="s", linestyle="--", label=f"T_wrm={T}: best test acc")
        ax.set_title(f"{'muP' if param == 'mup' else 'SP'}, {'MSE' if loss == 'mse' else 'CE'}")
        ax.set_xlabel("x  (lr_trgt = 2^x / lambda_0)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of seeds diverged / accuracy")
    axes[-1].legend(fontsize=7, loc="center right")
    n_seeds = max((len(v) for v in runs.values()), default=0)
    fig.suptitle(f"WRN-10-1 on the digits, SGD batch 64, 100 steps, {n_seeds} seeds: divergence vs lr_trgt "
                 f"with and without warmup")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
