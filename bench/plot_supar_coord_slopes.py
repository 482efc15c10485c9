"""Density slope of the attention / MLP output scale against the training step, per
parametrization, from a ``catapult coord-check`` CSV: the log2-log2 slope of mean |output|
against density fitted per seed, then mean ± std over seeds (0 = density-invariant).

    python bench/plot_supar_coord_slopes.py runs/bpe/coord/coord_check.csv --out bench/figures/supar_bpe_coord_slopes.png

The CSV may be gzipped (``.csv.gz``): the recorded one is ``bench/supar_bpe/coord_check.csv.gz``.
"""
from __future__ import annotations

import argparse
import csv
import gzip
from collections import defaultdict

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def slopes(path: str) -> dict:
    """``{(parametrization, block): array (seeds, steps)}`` of per-seed density slopes."""
    d = defaultdict(dict)
    rows = gzip.open(path, "rt", newline="") if str(path).endswith(".gz") else open(path, newline="")
    for r in csv.DictReader(rows):
        if r["axis"] == "density" and r["block"] in ("attention", "mlp"):
            key = (r["parametrization"], r["block"], int(r["seed"]), int(r["step"]))
            d[key].setdefault(float(r["value"]), []).append(float(r["mean_abs"]))
    out = defaultdict(dict)
    for (p, b, s, t), by_density in d.items():
        xs = sorted(by_density)
        out[(p, b)].setdefault(s, {})[t] = np.polyfit(np.log2(xs), np.log2([np.mean(by_density[x]) for x in xs]), 1)[0]
    return {k: np.array([[v[s][t] for t in sorted(v[s])] for s in sorted(v)]) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    table = slopes(args.csv)
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    for i, block in enumerate(("attention", "mlp")):
        ax = fig.add_subplot(1, 2, i + 1)
        for p in ("sp", "mup", "supar_init", "supar_lr", "supar"):
            if (p, block) not in table:
                continue
            a = table[(p, block)]
            steps = np.arange(a.shape[1])
            mean, std = a.mean(0), a.std(0, ddof=1)
            ax.plot(steps, mean, marker="o", ms=3, label=p)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
            print(f"{p:10s} {block:9s} " + " ".join(f"{m:+.2f}±{s:.2f}" for m, s in zip(mean, std)))
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("Adam step")
        ax.set_ylabel("slope of log2 mean|output| vs log2 density")
        ax.set_title(f"{block} output (mean ± std over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
