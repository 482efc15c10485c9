"""Summarise bench/fig3_mupce_diag.py CSVs: per (panel, T_wrm, x) over seeds, the failure
rate, the step and lr at which the features collapse (first step where every channel of the last
block is dead after ReLU), the sharpness vs 2/lr_t just before, and the dead fraction and final
train accuracy; per (panel, T_wrm) the failure boundary per seed on the CSV's x grid. Also draws
bench/figures/fig3_mupce_diag.png (sharpness and dead-channel fraction against step for T_wrm=128).

    PYTHONPATH=src python bench/fig3_mupce_summary.py bench/figures/fig3_mupce_diag_T1.csv.gz \\
        bench/figures/fig3_mupce_diag_T128.csv.gz
"""
from __future__ import annotations

import argparse
import csv
import gzip
import math
import statistics as st
from pathlib import Path
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ms(v):
    v = [a for a in v if a is not None and math.isfinite(a)]
    if not v:
        return "-"
    return f"{st.mean(v):.3g} ± {st.pstdev(v):.2g}" if len(v) > 1 else f"{v[0]:.3g}"


def main(paths, out="bench/figures/fig3_mupce_diag.png"):
    runs = defaultdict(list)
    for p in paths:
        for r in csv.DictReader(gzip.open(p, "rt") if p.endswith(".gz") else open(p)):
            runs[(r["panel"], int(r["twrm"]), float(r["x"]), int(r["seed"]))].append(r)
    cells = defaultdict(list)
    for (panel, tw, x, seed), rs in runs.items():
        status = rs[0]["status"]
        final_acc = st.mean(float(r["acc"]) for r in rs[-10:])
        coll = next((r for r in rs if float(r["dead_channels_last"]) >= 1.0), None)
        sh_before = [r for r in rs if r.get("sharpness") and (coll is None or int(r["t"]) < int(coll["t"]))]
        failed = status != "finished" or final_acc < 0.15 or coll is not None and float(rs[-1]["dead_channels_last"]) >= 1
        cells[(panel, tw, x)].append({
            "seed": seed, "failed": failed, "status": status, "final_acc": final_acc,
            "lambda_0": float(rs[0]["lambda_0"]),
            "t_coll": int(coll["t"]) if coll else None,
            "lr_coll": float(coll["lr"]) if coll else None,
            "max_logit": max(float(r["logit_max"]) for r in rs[: int(coll["t"]) + 1]) if coll else None,
            "sh_before": float(sh_before[-1]["sharpness"]) if sh_before and coll else None,
            "edge_before": float(sh_before[-1]["edge"]) if sh_before and coll else None,
            "sh_after": float(rs[-1]["sharpness"]) if rs[-1].get("sharpness") else None,
            "dead_all": float(rs[-1]["dead_channels"]),
        })
    print("| T_wrm | x | failed seeds | final train acc | collapse step | lr_t at collapse (x lr_trgt) "
          "| max abs logit before | last sharpness before / 2/lr_t | dead channels at end (all blocks) | sharpness at end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (panel, tw, x), cs in sorted(cells.items()):
        lam = st.mean(c["lambda_0"] for c in cs)
        ratio = [c["lr_coll"] / (2 ** x / c["lambda_0"]) for c in cs if c["lr_coll"]]
        sb = [c["sh_before"] / c["edge_before"] for c in cs if c["sh_before"]]
        print(f"| {tw} | {x:g} | {sum(c['failed'] for c in cs)}/{len(cs)} | {ms([c['final_acc'] for c in cs])} "
              f"| {ms([c['t_coll'] for c in cs])} | {ms([c['lr_coll'] for c in cs])} ({ms(ratio)}) "
              f"| {ms([c['max_logit'] for c in cs])} | {ms(sb)} | {ms([c['dead_all'] for c in cs])} "
              f"| {ms([c['sh_after'] for c in cs])} |")
    print()
    bounds = defaultdict(dict)
    for (panel, tw, x), cs in cells.items():
        for c in cs:
            if c["failed"]:
                b = bounds[(panel, tw)].get(c["seed"], math.inf)
                bounds[(panel, tw)][c["seed"]] = min(b, x)
    for key, b in sorted(bounds.items()):
        print(key, "failure boundary per seed:", dict(sorted(b.items())), "mean", st.mean(b.values()))
    lams = {c["seed"]: c["lambda_0"] for cs in cells.values() for c in cs}
    print("lambda_0 per seed:", lams)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for (panel, tw, x, seed), rs in sorted(runs.items()):
        if tw != 128 or seed != 0:
            continue
        sh = [(int(r["t"]), float(r["sharpness"]), float(r["edge"])) for r in rs if r.get("sharpness")]
        ln, = ax[0].semilogy([s[0] for s in sh], [s[1] for s in sh], label=f"x={x:g}")
        ax[0].semilogy([s[0] for s in sh], [s[2] for s in sh], ls=":", color=ln.get_color())
        ax[1].plot([int(r["t"]) for r in rs], [float(r["dead_channels_last"]) for r in rs], color=ln.get_color(),
                   label=f"x={x:g}")
    ax[0].axhline(0.1 / 64, color="k", lw=0.6, ls="--")  # CE Hessian of the readout bias at a uniform output: (1/10) x multiplier^2 (1/64)
    ax[0].set(xlabel="step", ylabel="batch Hessian sharpness (solid), 2/lr_t (dotted)",
              title="muP + CE, T_wrm = 128, seed 0")
    ax[1].set(xlabel="step", ylabel="fraction of dead channels, last block", title="feature death")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", help="bench/fig3_mupce_diag.py CSVs (.csv or .csv.gz)")
    parser.add_argument("--out", default="bench/figures/fig3_mupce_diag.png", help="figure path")
    args = parser.parse_args()
    missing = [p for p in args.csv if not Path(p).is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    main(args.csv, args.out)
