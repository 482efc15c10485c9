"""Fig. 3 at CPU scale (configs/warmup/fig3_wrn_small.yaml): where does a WRN diverge, with and
without warmup, with the cosine decay after warmup and with a constant lr? Reads one or more
sweep stores, prints one markdown table (a row per panel x schedule x T_wrm) and draws
bench/figures/fig3_wrn_small.png.

Per panel (SP / muP x MSE / cross-entropy), per schedule (``schedule.decay``), T_wrm and seed, the
*divergence boundary* is the smallest ``x`` of ``lr_trgt = 2^x / lambda_0`` whose run diverged
(the engine's rule, the paper's: a non-finite loss); a seed with no diverged cell
in the grid has its boundary recorded as ``> x_max`` (counted as x_max + 1 in the mean, and the
mean is then marked ``>=``). With cross-entropy a run at a too-large lr often does not blow up
but collapses to a constant output (finite loss, chance accuracy), so a second boundary is
printed: the *failure boundary*, the smallest ``x`` whose run diverged, collapsed (the engine's
constant-output status) or ended with a best test accuracy below 1.5x chance (0.15 for 10 classes: the paper's failure rule for its Adam study).
Printed per row: the two boundaries' mean over seeds with each seed's value, and the best test
accuracy (mean ± std over seeds) at the largest x where no seed failed.

    catapult sweep configs/warmup/fig3_wrn_small.yaml --store runs/fig3_wrn_small.db --executor local --threads 1
    catapult sweep configs/warmup/fig3_wrn_small.yaml --store runs/fig3_wrn_small_const.db --executor local \\
        --threads 1 schedule.decay=constant "sweep.grid.schedule.warmup_steps=[128]" \\
        "sweep.grid.optimizer.lr={log2_over_lambda0: [5, 10]}"
    catapult sweep configs/warmup/fig3_wrn_small.yaml --store runs/fig3_wrn_small_const32.db --executor local \\
        --threads 1 schedule.decay=constant "sweep.grid.schedule.warmup_steps=[32]" \\
        "sweep.grid.optimizer.lr={log2_over_lambda0: [4, 9]}"
    PYTHONPATH=src python bench/fig3_wrn_small.py runs/fig3_wrn_small.db runs/fig3_wrn_small_const.db \\
        runs/fig3_wrn_small_const32.db
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from catapult.sweep.store import Store  # noqa: E402

PANELS = [("sp", "mse"), ("sp", "cross_entropy"), ("mup", "mse"), ("mup", "cross_entropy")]
CHANCE_FAIL = 1.5 / 10


def read_cells(store: str) -> list[dict]:
    """The store's cells as flat rows: the swept keys, ``schedule.decay``, ``train.steps``, status
    and best test accuracy (from the stored configs: the export lists only swept keys)."""
    if not Path(store).exists():
        sys.exit(f"fig3_wrn_small: error: no store at {store}")
    with Store(store, create=False) as st:
        return [{**c["swept"], "schedule.decay": c["config"]["schedule"]["decay"],
                 "train.steps": c["config"]["train"]["steps"], "status": c["status"],
                 "best_test_accuracy": c["best_test_accuracy"]} for c in st.cells()]


def exponent(lr: str) -> float:
    match = re.fullmatch(r"2\^(-?[0-9.]+)/lambda0", lr.strip())
    if not match:
        raise ValueError(f"optimizer.lr {lr!r} is not 2^x/lambda0")
    return float(match.group(1))


def boundary(row: dict, xs: list[float], failed) -> float:
    """Smallest x whose run ``failed``; inf when none did."""
    bad = [x for x in xs if x in row and failed(row[x])]
    return min(bad) if bad else math.inf


def fmt_bounds(bounds: list[float], x_max: float) -> str:
    shown = [x_max + 1 if b == math.inf else b for b in bounds]
    each = ", ".join(f">{x_max:g}" if b == math.inf else f"{b:g}" for b in bounds)
    prefix = ">=" if any(b == math.inf for b in bounds) else ""
    return f"{prefix}{statistics.mean(shown):.2f} ({each})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures" / "fig3_wrn_small.png"))
    args = parser.parse_args(argv)
    cells = [c for store in args.stores for c in read_cells(store)]
    xs = sorted({exponent(c["optimizer.lr"]) for c in cells})
    seeds_all = sorted({int(c["seed"]) for c in cells})
    steps = sorted({int(c["train.steps"]) for c in cells if c.get("train.steps")})
    runs = defaultdict(dict)   # (param, loss, decay, T) -> {seed: {x: (status, best_acc)}}
    missing = 0
    for c in cells:
        if c["status"] not in ("finished", "diverged", "collapsed"):   # not run yet (or failed): counted as missing
            missing += 1
            continue
        key = (c["model.parametrization"], c["loss"], c["schedule.decay"], int(c["schedule.warmup_steps"]))
        acc = c["best_test_accuracy"]
        runs[key].setdefault(int(c["seed"]), {})[exponent(c["optimizer.lr"])] = (
            c["status"], float(acc) if acc is not None else math.nan)
    rules = {"divergence": lambda r: r[0] == "diverged",
             "failure": lambda r: r[0] in ("diverged", "collapsed") or not r[1] >= CHANCE_FAIL}

    print(f"{len(cells)} cells read, {missing} not run; x = {xs[0]:g}..{xs[-1]:g}; seeds {seeds_all}; steps {steps}\n")
    print("| panel | decay after warmup | T_wrm | divergence x: mean (seeds) | failure x: mean (seeds) "
          "| best test acc at the largest x with no failed seed |")
    print("|---|---|---|---|---|---|")
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), sharex=True)
    variants = sorted({k[2:] for k in runs}, key=lambda v: (v[0] != "cosine", v[1]))
    styles = {v: (f"C{i}", "-" if v[0] == "cosine" else ":") for i, v in enumerate(variants)}
    for col, (param, loss) in enumerate(PANELS):
        panel = f"{'muP' if param == 'mup' else 'SP'}, {'MSE' if loss == 'mse' else 'CE'}"
        for decay, T in variants:
            seeds = runs.get((param, loss, decay, T), {})
            if not seeds:
                continue
            texts = {}
            for name, failed in rules.items():
                texts[name] = fmt_bounds([boundary(seeds.get(s, {}), xs, failed) for s in seeds_all], xs[-1])
            safe = [x for x in xs if all(x in seeds.get(s, {}) and not rules["failure"](seeds[s][x]) for s in seeds_all)]
            if safe:
                accs = [100 * seeds[s][safe[-1]][1] for s in seeds_all]
                # (one seed, a store swept with sweep.seeds=[0]: stdev raised StatisticsError)
                spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else " (1 seed)"
                acc_text = f"{statistics.mean(accs):.1f}{spread} (x = {safe[-1]:g})"
            else:
                acc_text = "-"
            print(f"| {panel} | {decay} | {T} | {texts['divergence']} | {texts['failure']} | {acc_text} |")
            frac = [statistics.mean([rules["failure"](seeds[s][x]) for s in seeds if x in seeds[s]] or [math.nan])
                    for x in xs]
            accs = [statistics.mean([seeds[s][x][1] for s in seeds if x in seeds[s] and seeds[s][x][0] != "diverged"]
                                    or [math.nan]) for x in xs]
            color, ls = styles[(decay, T)]
            label = f"T_wrm={T}, {decay}"
            axes[0, col].plot(xs, frac, marker="o", color=color, linestyle=ls, label=label)
            axes[1, col].plot(xs, accs, marker="s", color=color, linestyle=ls, label=label)
        axes[0, col].set_title(panel)
        axes[1, col].set_xlabel("x  (lr_trgt = 2^x / lambda_0)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("fraction of seeds failed\n(diverged or best test acc < 0.15)")
    axes[1, 0].set_ylabel("best test accuracy\n(finished runs, mean over seeds)")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"WRN-10-1 on the digits, SGD batch 64, {'/'.join(map(str, steps))} steps, {len(seeds_all)} seeds: "
                 f"failure vs lr_trgt for each warmup length")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
