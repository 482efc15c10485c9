"""Issue 14's small-scale evidence over seeds, from sweep stores written with ``sweep.seeds: 3``.

    python bench/study_seeds.py table1 STORE --out bench/figures/table1_seeds_small.png
    python bench/study_seeds.py fig5   STORE --out bench/figures/fig5_seeds_small.png

* table1 (configs/adam/table1_failure.yaml with eval.test_every=25 sweep.seeds=3): best *test*
  accuracy, mean ± sample std over the seeds, per (optimizer, T_wrm) x lr_trgt; ``F`` where a
  seed failed by the paper's rule (status diverged: a non-finite loss, or the Adam-family final
  training accuracy < 1.5x chance; the engine applies it); ``F k/3`` when k of 3 seeds failed.
  The failure boundary of a row is its largest lr_trgt at which no seed failed; the smallest
  lr_trgt at which some seed failed is printed beside it (they differ where failures are
  scattered: a chaotic seed inside the stable range).
* fig5 (configs/warmup/fig5_steps_saved.yaml, warmup in {linear, catapult}, sweep.seeds=3):
  steps to reach ``--target`` x the initial loss, per seed; steps saved by catapult warmup =
  linear's steps - (catapult's steps + its search's forward passes / 2), mean ± std over seeds,
  beside the paper's estimate ``T_wrm lr_c / lr_trgt - T_fp / 2``.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catapult.sweep.store import Store


def _ms(values, spec=".1f", scale=1.0):
    xs = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:{spec}} (1 seed)"
    return f"{statistics.mean(xs):{spec}} ± {statistics.stdev(xs):{spec}}"


def table1(store: Store, out: Path) -> str:
    groups = defaultdict(list)
    for c in store.cells():
        cfg = c["config"]
        groups[(cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"], cfg["optimizer"]["lr"])].append(c)
    rows = sorted({(o, t) for o, t, _ in groups})
    lrs = sorted({lr for _, _, lr in groups})
    head = ("| optimizer | T_wrm | " + " | ".join(f"lr {lr:g}" for lr in lrs)
            + " | largest lr with no failed seed | smallest lr with a failed seed |")
    lines = [head, "|" + "---|" * (len(lrs) + 4)]
    fig = Figure(figsize=(9 + 1.1 * len(lrs), 1.5 + 0.45 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bax = fig.subplots(1, 2, width_ratios=[2.5, 1])
    import numpy as np

    grid = np.full((len(rows), len(lrs)), np.nan)
    boundary = {}  # optimizer -> [(T_wrm, largest lr with no failed seed)]
    for i, (opt, T) in enumerate(rows):
        cells, ok_lrs, bad_lrs = [], [], []
        for j, lr in enumerate(lrs):
            members = groups.get((opt, T, lr), [])
            failed = [c for c in members if c["status"] != "finished"]
            accs = [c["best_test_accuracy"] for c in members if c["status"] == "finished"]
            if failed:
                bad_lrs.append(lr)
                cells.append("F" if len(failed) == len(members) else f"F {len(failed)}/{len(members)}; "
                             + _ms(accs, scale=100))
            else:
                cells.append(_ms(accs, scale=100))
                ok_lrs.append(lr)
                grid[i, j] = 100 * statistics.mean(accs)
        lines.append(f"| {opt} | {T} | " + " | ".join(cells) + f" | {max(ok_lrs):g} |" if ok_lrs else
                     f"| {opt} | {T} | " + " | ".join(cells) + " | - |")
        lines[-1] += f" {min(bad_lrs):g} |" if bad_lrs else f" > {max(lrs):g} |"
        boundary.setdefault(opt, []).append((T, max(ok_lrs) if ok_lrs else math.nan))
    mesh = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(lrs)):
            ax.text(j, i, "F" if not np.isfinite(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center",
                    fontsize=7, color="k" if not np.isfinite(grid[i, j]) else "w")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(rows)), [f"{o}, T={t}" for o, t in rows])
    ax.set_xlabel("lr_trgt")
    ax.set_title("best test accuracy (%), mean over 3 seeds; F = a seed failed (paper's rule)", fontsize=9)
    fig.colorbar(mesh, ax=ax)
    for k, (opt, pts) in enumerate(sorted(boundary.items())):
        bax.plot([t for t, _ in pts], [b for _, b in pts], marker="o", color=f"C{k}", label=opt)
    bax.set(xscale="log", yscale="log", xlabel="T_wrm", ylabel="largest lr_trgt with no failed seed",
            title="failure boundary")
    bax.legend(fontsize=8)
    bax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


def fig5(store: Store, out: Path, target: float) -> str:
    per = defaultdict(dict)  # (lr, T) -> seed -> rule -> (steps, passes, lr_c, lr_trgt)
    curves = defaultdict(list)
    for c in store.cells():
        cfg, s = c["config"], c["summary"] or {}
        m = store.metrics(c["id"])
        loss0 = m[0]["train_loss"] if m else None
        hit = next((r["step"] for r in m if loss0 and r["train_loss"] is not None
                    and r["train_loss"] <= target * loss0), None)
        key = (cfg["optimizer"]["lr"], cfg["schedule"]["warmup_steps"])
        per[key].setdefault(cfg["seed"], {})[cfg["schedule"]["warmup"]] = (
            hit, s.get("search_forward_passes") or 0, s.get("lr_critical"), c.get("lr_target"))
        curves[(key, cfg["schedule"]["warmup"])].append(m)
    lines = [f"| lr_trgt | T_wrm | seeds | steps to {target:g} L0, linear | catapult (+ passes/2) | steps saved "
             f"| paper's estimate T lr_c/lr_trgt - T_fp/2 |", "|---|---|---|---|---|---|---|"]
    for key in sorted(per):
        lin, cat, saved, est = [], [], [], []
        for seed, rules in sorted(per[key].items()):
            if "linear" not in rules or "catapult" not in rules:
                continue
            (hl, _, _, _), (hc, passes, lrc, lrt) = rules["linear"], rules["catapult"]
            if hl is None or hc is None:
                continue
            lin.append(hl)
            cat.append(hc + passes / 2)
            saved.append(hl - (hc + passes / 2))
            if lrc and lrt:
                est.append(key[1] * min(lrc, lrt) / lrt - passes / 2)
        lines.append(f"| {key[0]} | {key[1]} | {len(saved)} | {_ms(lin)} | {_ms(cat)} | {_ms(saved)} | {_ms(est)} |")
    keys = sorted({k for k, _ in curves})
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for rule, color in (("linear", "C0"), ("catapult", "C1")):
            for n, m in enumerate(curves.get((key, rule), [])):
                pts = [(r["step"], r["train_loss"]) for r in m if r["train_loss"] and math.isfinite(r["train_loss"])]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1, alpha=0.8,
                        label=rule if n == 0 else None)
        ax.set(yscale="log", xlabel="step", ylabel="training loss", title=f"lr_trgt={key[0]}, T_wrm={key[1]} ({len(curves.get((key, 'linear'), []))} seeds)")
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=("table1", "fig5"))
    p.add_argument("store")
    p.add_argument("--out", required=True)
    p.add_argument("--target", type=float, default=0.05)
    a = p.parse_args(argv)
    if not Path(a.store).exists():
        print(f"study_seeds: error: no store at {a.store}", file=sys.stderr)
        return 2
    with Store(a.store, create=False) as store:
        print(table1(store, Path(a.out)) if a.study == "table1" else fig5(store, Path(a.out), a.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
