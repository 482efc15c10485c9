"""Read-out of the W7 interventions (why warmup makes Adam's collapse more likely; FCN, lr 0.015625, T = 30,000).

Reads the probes of ``bench/probe_adam_collapse.py`` named ``<arm>_T<twrm>_s<seed>.csv`` (arms ``base``,
``kill`` = units killed at init, ``b9999`` = b2 0.9999), stopped at the same step, and prints per run and
per arm the outcome and the two correlates the plan manipulates:

* collapsed: trained to >= 50% training accuracy and below 15% at the last step;
* alive ReLU units per hidden layer at steps 20 and 3,000;
* loss rises above 30x (and 1,000x) the previous 50 steps' minimum (``study_adam_collapse.spikes``), per 1,000
  steps over steps 1,000 .. min(7,000, the collapse), and the largest peak loss over the run before the collapse.

Per arm: collapses, one-sided Fisher exact p against the warmup baseline, the median (range) spike rate and
alive units. Figure: spike rate against alive units per run (filled = collapsed), the collapse share per arm,
and the alive units of every run against step. Seeds 0-2 of the two baselines are taken as printed in the
section before (``RECORDED``; the collapses there all by step 10,276) unless their probes are given as ``base_T*`` files.

    python bench/study_adam_collapse_cause.py runs/h6/*_T*_s*.csv --out bench/figures/adam_collapse_cause.png
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_adam_collapse import spikes  # noqa: E402

ARMS = {("base", 300): "warmup (T_wrm 300)", ("base", 1): "no warmup (T_wrm 1)",
        ("kill", 300): "(K) T_wrm 300, units killed", ("b9999", 300): "(S) T_wrm 300, b2 0.9999"}
COLOUR = {("base", 300): "tab:red", ("base", 1): "tab:blue", ("kill", 300): "tab:green",
          ("b9999", 300): "tab:purple"}


# Seeds 0-2 of the two baselines as printed in "Why Adam with T_wrm 300 collapses at lr 0.0156 where Adam T_wrm 1
# trains" (30,000-step probes, the same detector over steps 1,000-7,000; alive units at step 3,000 from its
# --units files, at step 20 from its dead counts); used for a (arm, seed) with no probe file given.
# The committed probe does not reproduce these runs past their first steps (warmup seed 1 survives to step 11,000 now,
# seed 2 collapses at 9,505; RESULTS, "The W7 interventions at 18 seeds an arm"): read new probes with --no-recorded.
RECORDED = [
    dict(arm="base", twrm=300, seed=0, collapsed=False, last=None, alive20=(63, 62, 62), alive3000=(63, 61, 64), rate30=2.8, rate1000=0.17),
    dict(arm="base", twrm=300, seed=1, collapsed=True, last=7757, alive20=(64, 63, 61), alive3000=(63, 64, 62), rate30=5.0, rate1000=0.0),
    dict(arm="base", twrm=300, seed=2, collapsed=True, last=10276, alive20=(62, 64, 61), alive3000=(61, 61, 61), rate30=5.0, rate1000=0.0),
    dict(arm="base", twrm=1, seed=0, collapsed=False, last=None, alive20=(30, 24, 31), alive3000=(28, 24, 28), rate30=1.5, rate1000=0.17),
    dict(arm="base", twrm=1, seed=1, collapsed=False, last=None, alive20=(36, 23, 23), alive3000=(29, 23, 21), rate30=1.7, rate1000=0.17),
    dict(arm="base", twrm=1, seed=2, collapsed=False, last=None, alive20=(30, 32, 44), alive3000=(24, 26, 27), rate30=0.2, rate1000=0.17),
]


def fisher_one_sided(a: int, n_a: int, b: int, n_b: int) -> float:
    """P(an arm of n_a runs gets <= a of the a + b collapses), the two arms' runs pooled (hypergeometric)."""
    k, n = a + b, n_a + n_b
    return sum(math.comb(n_a, i) * math.comb(n_b, k - i) for i in range(0, a + 1) if k - i <= n_b) / math.comb(n, k)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial share k of n, by bisection on the binomial tails."""
    tail = (1 - level) / 2

    def cdf(p: float, upto: int) -> float:  # P(X <= upto), X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(upto + 1))

    def solve(f) -> float:  # f increasing in p, root in [0, 1]
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2
    low = 0.0 if k == 0 else solve(lambda p: (1 - cdf(p, k - 1)) - tail)
    high = 1.0 if k == n else solve(lambda p: tail - cdf(p, k))
    return low, high


def read(path: Path) -> dict:
    m = re.fullmatch(r"(\w+?)_T(\d+)_s(\d+)", path.stem)
    if not m:
        raise SystemExit(f"{path}: expected <arm>_T<twrm>_s<seed>.csv")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    loss = [float(r["train_loss"]) for r in rows]
    acc = [float(r["train_accuracy"]) for r in rows]
    dead = [[int(r[f"dead_{i}"]) for i in range(3)] for r in rows]
    good = [t for t, x in enumerate(acc) if x >= 0.5]
    collapsed = bool(good) and acc[-1] < 0.15
    last = good[-1] if good else None
    end = min(7000, last) if collapsed else min(7000, len(rows) - 1)
    sp = [s for s in spikes(loss) if 1000 <= s[0] <= end]
    before = [s for s in spikes(loss) if s[0] >= 1000 and (not collapsed or s[0] < last - 50)]
    width = 64
    big = []  # spikes above 1e-2 before the collapse (or the fatal one): fewest alive units of layer 3 during each
    for st, _, peak, stop in spikes(loss):
        if peak > 1e-2 and st >= 300:
            big.append((st, peak, width - max(d[2] for d in dead[st:min(stop + 1, len(dead))])))

    def alive(t: int) -> tuple[int, ...]:
        return tuple(width - d for d in dead[min(t, len(dead) - 1)])
    return dict(arm=m.group(1), twrm=int(m.group(2)), seed=int(m.group(3)), steps=len(rows) - 1,
                collapsed=collapsed, last=last, min_loss=min(loss), alive20=alive(20), alive3000=alive(3000),
                rate30=len(sp) / ((end - 1000) / 1000), rate1000=len([s for s in sp if s[2] > 1000 * s[1]]) / ((end - 1000) / 1000),
                peak=max((s[2] for s in before), default=math.nan), dead=dead, loss=loss, big=big)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probes", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--no-recorded", action="store_true", help="leave out the recorded seeds 0-2 of the baselines")
    a = p.parse_args(argv)
    runs = [read(Path(x)) for x in a.probes]
    have = {(r["arm"], r["twrm"], r["seed"]) for r in runs}
    if not a.no_recorded:
        runs += [dict(r, steps="30000 (recorded)", min_loss=math.nan, peak=math.nan, dead=None, loss=None)
                 for r in RECORDED if (r["arm"], r["twrm"], r["seed"]) not in have]
    runs = sorted(runs, key=lambda r: (list(ARMS).index((r["arm"], r["twrm"])), r["seed"]))
    lines = ["| arm | seed | steps | collapsed (last step >= 50%) | lowest loss | alive at step 20 (layers 1 / 2 / 3) | "
             "alive at 3,000 | rises > 30x / > 1,000x per 1,000 steps (1,000 .. min(7,000, collapse)) | "
             "largest peak loss before the collapse (or the end) | spikes above 1e-2 from step 300: step, peak, fewest "
             "alive units of layer 3 during it |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {ARMS[(r['arm'], r['twrm'])]} | {r['seed']} | {r['steps']} | "
                     f"{'yes (' + str(r['last']) + ')' if r['collapsed'] else 'no'} | {r['min_loss']:.1e} | "
                     f"{' / '.join(map(str, r['alive20']))} | {' / '.join(map(str, r['alive3000']))} | "
                     f"{r['rate30']:.1f} / {r['rate1000']:.2f} | {r['peak']:.1e} | "
                     + ("; ".join(f"{b[0]}: {b[1]:.0e}, {b[2]}" for b in r["big"]) if r.get("big") is not None
                        else "see the section before") + " |")
    base = [r for r in runs if (r["arm"], r["twrm"]) == ("base", 300)]
    nb, cb = len(base), sum(r["collapsed"] for r in base)
    lines += ["", "| arm | runs | collapsed | one-sided Fisher p against the warmup baseline (fewer collapses) | "
              "rises > 30x per 1,000 steps, median (range) | rises > 1,000x, median | alive units at 3,000, mean a "
              "layer, median (range) over runs | share collapsed, exact 95% interval | collapse steps |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, name in ARMS.items():
        rs = [r for r in runs if (r["arm"], r["twrm"]) == key]
        if not rs:
            continue
        c = sum(r["collapsed"] for r in rs)
        fp = "-" if key == ("base", 300) or not nb else f"{fisher_one_sided(c, len(rs), cb, nb):.3f}"
        rate = [r["rate30"] for r in rs]
        al = [sum(r["alive3000"]) / 3 for r in rs]
        lo, hi = clopper_pearson(c, len(rs))
        lines.append(f"| {name} | {len(rs)} | {c} of {len(rs)} | {fp} | {statistics.median(rate):.1f} "
                     f"({min(rate):.1f}-{max(rate):.1f}) | {statistics.median(r['rate1000'] for r in rs):.2f} | "
                     f"{statistics.median(al):.1f} ({min(al):.1f}-{max(al):.1f}) | "
                     f"{c / len(rs):.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{', '.join(str(r['last']) for r in rs if r['collapsed']) or '-'} |")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.with_suffix(".txt").write_text(text + "\n")

    fig = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(fig)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    for key, name in ARMS.items():
        rs = [r for r in runs if (r["arm"], r["twrm"]) == key]
        if not rs:
            continue
        c = COLOUR[key]
        for r in rs:
            x, y = sum(r["alive3000"]) / 3, r["rate30"]
            ax0.plot([x], [y], "o", ms=8, color=c, mfc=c if r["collapsed"] else "none")
            ax0.annotate(str(r["seed"]), (x, y), fontsize=6, xytext=(4, 2), textcoords="offset points")
            if r["dead"] is not None:
                ax2.plot(range(len(r["dead"])), [192 - sum(d) for d in r["dead"]], color=c, lw=0.7, alpha=0.8)
        ax0.plot([], [], "o", color=c, label=name)
        k = sum(r["collapsed"] for r in rs)
        ax1.bar(name.replace(", ", ",\n").replace(" (", "\n("), k / len(rs), color=c)
        ax1.text(name.replace(", ", ",\n").replace(" (", "\n("), k / len(rs) + 0.02, f"{k} of {len(rs)}", ha="center", fontsize=8)
    ax0.set_xlabel("alive units at step 3,000 (mean of the 3 hidden layers, of 64)")
    ax0.set_ylabel("loss rises > 30x per 1,000 steps (1,000 .. min(7,000, collapse))")
    ax0.set_title("the two correlates per run (filled: collapsed by the last step)", fontsize=9)
    ax0.legend(fontsize=7)
    ax1.set_ylabel("share of runs collapsed")
    ax1.set_ylim(0, 1.1)
    ax1.tick_params(axis="x", labelsize=7)
    stops = sorted({r["steps"] for r in runs if isinstance(r["steps"], int)})
    recorded = any(isinstance(r["steps"], str) for r in runs)
    ax1.set_title(f"collapses by step {stops[-1] if stops else 30000:,} (lr 0.015625, cosine over 30,000"
                  + ("; recorded seeds by 11,000)" if recorded else ")"), fontsize=9)
    ax2.set_xscale("symlog", linthresh=10)
    ax2.set_xlabel("step")
    ax2.set_ylabel("alive ReLU units (of 192)")
    ax2.set_title("alive units against step", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
