"""Fig. 4 (warmup paper) at CPU scale on BPE tokens: Adam vs GI-Adam without and with warmup.

Runs cells of ``configs/sweeps/fig4_gpt_small_bpe.yaml`` (the base config; the grid here is a
subset the 2-core host allows) with ``catapult.engine.run``, 3 seeds each, and records per cell
the final test loss, the largest training loss of the run (the early loss spike) and the status.
Writes ``bench/fig4_bpe_small.json`` (appended cell by cell, so an interrupted study keeps what
it ran) and ``bench/figures/fig4_bpe_small.png``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/study_fig4_bpe.py [--x 14,18,22] [--final-norm 1]
    .venv/bin/python bench/study_fig4_bpe.py --plot-only
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "fig4_bpe_small.json"
FIG = ROOT / "bench" / "figures" / "fig4_bpe_small.png"


def unigram_loss(base) -> float:
    """Cross-entropy of the test windows under the training tokens' unigram frequencies (add-one):
    the loss of a model that learned token frequencies and nothing else."""
    from catapult.engine import build_run

    setup = build_run(dict(base, train=dict(base["train"], steps=2)))
    counts = np.bincount(setup.data.y_train.reshape(-1).numpy(), minlength=setup.data.num_classes) + 1.0
    p = counts / counts.sum()
    return float(-np.log(p[setup.data.y_test.reshape(-1).numpy()]).mean())


def run_cells(xs, final_norms, seeds, warmups):
    from catapult.config import read_mapping
    from catapult.engine import run

    raw = read_mapping(ROOT / "configs" / "sweeps" / "fig4_gpt_small_bpe.yaml")
    raw.pop("sweep")
    done = set()
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            r = json.loads(line)
            done.add((r["final_norm"], r["optimizer"], r["warmup_steps"], r["x"], r["seed"]))
    with OUT.open("a") as out:
        for fn in final_norms:
            for x in xs:
                for warm in warmups:
                    for opt in ("adam", "gi-adam"):
                        for seed in seeds:
                            if (fn, opt, warm, x, seed) in done:
                                continue
                            c = copy.deepcopy(raw)
                            c.update(seed=seed)
                            c["model"]["final_norm"] = fn
                            c["optimizer"].update(name=opt, lr=1e-4 * 2 ** (x / 2))
                            c["schedule"]["warmup_steps"] = warm
                            t = time.time()
                            r = run(c, progress="none")
                            losses = [m["train_loss"] for m in r.metrics]
                            # a non-finite loss (the divergence rule's stop) as inf: max() skipped a nan
                            # after the first entry, so a diverged run's peak read as its last finite loss
                            peak = max(v if v is not None and math.isfinite(v) else math.inf for v in losses)
                            rec = dict(final_norm=fn, optimizer=opt, warmup_steps=warm, x=x, lr=1e-4 * 2 ** (x / 2),
                                       seed=seed, status=r.status, test_loss=r.metrics[-1]["test_loss"],
                                       max_train_loss=peak, initial_loss=losses[0],
                                       seconds=round(time.time() - t, 1))
                            out.write(json.dumps(rec) + "\n")
                            out.flush()
                            print(rec, flush=True)


def table(unigram: float) -> None:
    """Markdown table: per cell mean ± std over seeds of the final test loss and of the largest
    training loss, and how many seeds spiked (max train loss > 1.2 x initial) or ended above the
    unigram loss (learned no more than token frequencies)."""
    rows = [json.loads(l) for l in OUT.read_text().splitlines()]
    keys = sorted({(r["final_norm"], r["x"], r["warmup_steps"], r["optimizer"]) for r in rows},
                  key=lambda k: (not k[0], k[1], k[2], k[3]))
    print("| final LN | x (lr) | T_wrm | optimizer | test loss | max train loss | spiked | above unigram | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fn, x, warm, opt in keys:
        cell = [r for r in rows if (r["final_norm"], r["x"], r["warmup_steps"], r["optimizer"]) == (fn, x, warm, opt)]
        test = np.array([r["test_loss"] if r["test_loss"] is not None else math.inf for r in cell])
        peak = np.array([r["max_train_loss"] for r in cell])
        spiked = sum(r["max_train_loss"] > 1.2 * r["initial_loss"] for r in cell)
        above = int((test > unigram).sum())
        print(f"| {fn} | {x} ({1e-4 * 2 ** (x / 2):.4g}) | {warm} | {opt} | {spread(test, 3)} | "
              f"{spread(peak, 2)} | {spiked}/{len(cell)} | {above}/{len(cell)} | {len(cell)} |")


def spread(values: np.ndarray, digits: int) -> str:
    """``mean ± sample std`` of ``values``; one value as itself with ``(1 seed)`` (a sample std of one
    value printed nan, with a NumPy warning); values with a non-finite one (a run without a final
    test loss reads inf) as their mean and how many are not finite."""
    if values.size == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    bad = int((~np.isfinite(values)).sum())
    if bad:
        return f"{values.mean():.{digits}f} ({bad} of {values.size} not finite)"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def plot(unigram: float | None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in OUT.read_text().splitlines()]
    fns = sorted({r["final_norm"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(2, len(fns), figsize=(5.5 * len(fns), 7), squeeze=False)
    for j, fn in enumerate(fns):
        for (opt, warm), style in {("adam", 1): "C3-o", ("gi-adam", 1): "C0-s", ("adam", 64): "C3:^",
                                   ("gi-adam", 64): "C0:v"}.items():
            cell = [r for r in rows if r["final_norm"] == fn and r["optimizer"] == opt and r["warmup_steps"] == warm]
            xs = sorted({r["x"] for r in cell})
            for i, key in enumerate(("test_loss", "max_train_loss")):
                vals = [[r[key] if r[key] is not None and r["status"] == "finished" else math.nan
                         for r in cell if r["x"] == x] for x in xs]
                mean = np.array([np.mean(v) for v in vals])
                lo, hi = np.array([np.min(v) for v in vals]), np.array([np.max(v) for v in vals])
                ax = axes[i][j]
                ax.plot(xs, mean, style, label=f"{opt}, T_wrm={warm}")
                ax.fill_between(xs, lo, hi, color=style[:2], alpha=0.15)
        axes[0][j].set_title(f"final LayerNorm: {fn}")
        axes[0][j].set_ylabel("final test loss (mean, min-max band, 3 seeds)")
        axes[1][j].set_ylabel("largest training loss of the run")
        axes[1][j].set_yscale("log")
        if unigram is not None:
            axes[0][j].axhline(unigram, color="gray", lw=0.8, ls="--", label=f"unigram loss {unigram:.2f}")
        for i in range(2):
            axes[i][j].set_xlabel("x in lr = 1e-4 * 2^(x/2)")
        axes[0][j].legend(fontsize=8)
    fig.suptitle("Fig. 4, CPU scale: GPT, Shakespeare BPE-4096, 300 steps", fontsize=10)
    fig.tight_layout()
    FIG.parent.mkdir(exist_ok=True)
    fig.savefig(FIG, dpi=110)
    print(f"wrote {FIG}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x", default="14,18,22")
    ap.add_argument("--final-norm", default="1")
    ap.add_argument("--warmups", default="1,64")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if not args.plot_only:
        run_cells([int(v) for v in args.x.split(",")], [v == "1" for v in args.final_norm.split(",")],
                  [int(v) for v in args.seeds.split(",")], [int(v) for v in args.warmups.split(",")])
    from catapult.config import read_mapping

    raw = read_mapping(ROOT / "configs" / "sweeps" / "fig4_gpt_small_bpe.yaml")
    raw.pop("sweep")
    u = unigram_loss(raw)
    print(f"unigram loss of the test windows: {u:.4f}")
    table(u)
    plot(u)


if __name__ == "__main__":
    main()
