"""Turn the Adam / catapult-warmup study stores into the warmup paper's figures and tables.

    python bench/study_adam.py fig2   STORE --out fig2.png     # configs/adam/fig2_mechanisms*.yaml
    python bench/study_adam.py table1 STORE --out table1.png   # configs/adam/table1_failure*.yaml
    python bench/study_adam.py fig5   STORE --out fig5.png     # configs/warmup/fig5_steps_saved*.yaml

Each prints a Markdown table (for bench/RESULTS.md) and writes a figure. STORE is the SQLite
file `catapult sweep CONFIG --store STORE` wrote.

* fig2: per (optimizer, T_wrm): status, initial and peak pre-conditioned sharpness, the ratio of
  Adam's to GI-Adam's initial value, the first step where it exceeds 38/lr_t (the Adam
  instability threshold), the loss spike; figure = loss and pre-conditioned sharpness vs step with
  each run's threshold dashed (the paper's Fig. 2).
* table1: final training accuracy per (optimizer, T_wrm) x lr_trgt, "F" where the run failed by
  the paper's rule: a non-finite loss (diverged) or final training accuracy < 1.5x chance; the
  largest lr_trgt that does not fail per row; figure = one heatmap per optimizer (Fig. 6).
* fig5: per (lr_trgt, T_wrm, warmup rule): lr_c, step at which lr_trgt is reached, search forward
  passes, steps to a target loss (``--target`` x the initial loss, default 0.05) and the same
  plus passes/2 (one training step ~ 2 forward passes); figure = lr and loss vs step.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from catapult.engine.records import critical_lr_relation
from catapult.sweep.store import Store


def _fmt(x, spec=".3g"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def failed(cell: dict, num_classes: int = 10) -> bool:
    """The paper's failure rule: non-finite loss / diverged, or final train accuracy < 1.5x chance."""
    s = cell["summary"] or {}
    if cell["status"] != "finished":
        return True
    acc = s.get("final_train_accuracy")
    loss = s.get("final_train_loss")
    return acc is None or loss is None or not math.isfinite(loss) or acc < 1.5 / num_classes


# -------------------------------------------------------------------------------------- fig2
def fig2(store: Store, out: Path) -> str:
    cells = store.cells()
    rows, curves = [], {}
    initial = {}
    for c in cells:
        cfg, s = c["config"], c["summary"] or {}
        name, T = cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"]
        m = store.metrics(c["id"])
        curves[(name, T)] = (m, c["status"])
        sharp = [(r["step"], r["sharpness"], r["threshold"]) for r in m if r["sharpness"] is not None]
        first_below = next((t for t, v, th in sharp if th is not None and v <= th), None)
        final_ratio = sharp[-1][1] / sharp[-1][2] if sharp and sharp[-1][2] else None
        init = sharp[0][1] if sharp else None
        initial[(name, T)] = init
        losses = [r["train_loss"] for r in m if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
        spike = max(losses) / losses[0] if losses else None
        thr0 = sharp[0][2] if sharp else None
        rows.append((name, T, c["status"], init, init / thr0 if init and thr0 else None, first_below,
                     final_ratio, spike, s.get("final_train_loss"), s.get("final_train_accuracy")))
    lines = ["| optimizer | T_wrm | status | initial pre-cond. sharpness | initial / (38/lr_0) "
             "| first step at or below 38/lr_t | final / (38/lr_t) | peak loss / initial loss "
             "| final train loss | final train acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {_fmt(r[3])} | {_fmt(r[4])} "
                     f"| {_fmt(r[5], 'd') if r[5] is not None else 'never'} | {_fmt(r[6])} "
                     f"| {_fmt(r[7])} | {_fmt(r[8])} | {_fmt(r[9])} |")
    ratios = [initial[("adam", T)] / initial[("gi-adam", T)] for (n, T) in initial
              if n == "adam" and initial.get(("gi-adam", T))]
    if ratios:
        lines.append("")
        lines.append(f"Initial pre-conditioned sharpness, Adam / GI-Adam: {_fmt(min(ratios))} .. {_fmt(max(ratios))} "
                     f"(1/sqrt(1 - b2) = {1 / math.sqrt(1 - 0.999):.3g})")

    names = sorted({k[0] for k in curves})
    fig = Figure(figsize=(11, 4 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names):
        keys = sorted(k for k in curves if k[0] == name)
        for i, key in enumerate(keys):
            m, status = curves[key]
            color = f"C{i}"
            label = f"T_wrm={key[1]}" + (" (diverged)" if status == "diverged" else "")
            xs = [r["step"] for r in m if r["train_loss"] is not None and math.isfinite(r["train_loss"]) and r["train_loss"] > 0]
            ys = [r["train_loss"] for r in m if r["train_loss"] is not None and math.isfinite(r["train_loss"]) and r["train_loss"] > 0]
            row[0].plot(xs, ys, color=color, lw=1.2, label=label)
            pts = [(r["step"], r["sharpness"]) for r in m if r["sharpness"] is not None and r["sharpness"] > 0]
            row[1].plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.2, marker=".", ms=3, label=label)
            th = [(r["step"], r["threshold"]) for r in m if r["threshold"] is not None and math.isfinite(r["threshold"])]
            row[1].plot([p[0] for p in th], [p[1] for p in th], color=color, lw=1.0, ls="--", alpha=0.8)
        vals = [r["sharpness"] for k in keys for r in curves[k][0] if r["sharpness"] is not None and r["sharpness"] > 0]
        if vals:
            row[1].set_ylim(min(vals) / 3, max(vals) * 5)
        row[0].set(yscale="log", xlabel="step", ylabel="training loss", title=f"{name}: loss")
        row[1].set(yscale="log", xlabel="step", ylabel="$\\lambda_{max}(P^{-1}H)$",
                   title=f"{name}: pre-conditioned sharpness (dashed: 38/lr_t)")
        row[0].legend(fontsize=8)
        for ax in row:
            ax.grid(True, alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ table1
def table1(store: Store, out: Path) -> str:
    cells = store.cells()
    grid = defaultdict(dict)
    lrs = sorted({c["config"]["optimizer"]["lr"] for c in cells})
    for c in cells:
        cfg = c["config"]
        key = (cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"])
        acc = (c["summary"] or {}).get("final_train_accuracy")
        grid[key][cfg["optimizer"]["lr"]] = None if failed(c) else acc
    order = {"adam": 0, "gi-adam": 1, "radam": 2}
    keys = sorted(grid, key=lambda k: (order.get(k[0], 9), k[1]))
    lines = ["| optimizer | T_wrm | " + " | ".join(f"{lr:.4g}" for lr in lrs) + " | largest lr_trgt not failed |",
             "|---|---|" + "---|" * len(lrs) + "---|"]
    boundary = {}
    for k in keys:
        ok = [lr for lr in lrs if grid[k].get(lr) is not None]
        boundary[k] = max(ok) if ok else None
        cells_txt = ["F" if grid[k].get(lr) is None else f"{100 * grid[k][lr]:.1f}" for lr in lrs]
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(cells_txt) + f" | {_fmt(boundary[k], '.4g')} |")
    fails = {n: sum(grid[k].get(lr) is None for k in keys if k[0] == n for lr in lrs) for n in order}
    lines.append("")
    lines.append("Failed cells per optimizer (of " + str(len(lrs) * len({k[1] for k in keys})) + "): "
                 + ", ".join(f"{n} {fails[n]}" for n in order if any(k[0] == n for k in keys)))

    import numpy as np

    names = [n for n in order if any(k[0] == n for k in keys)]
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        Ts = sorted(k[1] for k in keys if k[0] == name)
        Z = np.array([[np.nan if grid[(name, T)].get(lr) is None else 100 * grid[(name, T)][lr] for lr in lrs]
                      for T in Ts])
        im = ax.imshow(Z, origin="lower", aspect="auto", vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(lrs)), [f"{lr:.3g}" for lr in lrs], rotation=45, fontsize=7)
        ax.set_yticks(range(len(Ts)), [str(T) for T in Ts])
        ax.set(xlabel="lr_trgt", ylabel="T_wrm", title=f"{name} (white = failed)")
    fig.colorbar(im, ax=list(axes), label="final train accuracy %")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- fig5
def _bound(summary: dict) -> str:
    """``">= "`` where the run's critical-lr search saw the loss fall up to lr_trgt (``lower == upper``: its
    lr_critical is lr_trgt, the critical lr lies above), ``"<= "`` where it rose at the first trial
    (``lower == 0``), else ``""`` (a measured lr_c). Unmarked, a capped cell's lr_c * lambda_0 read as
    a measurement: x itself at lr_trgt = 2^x / lambda_0."""
    lower, upper = summary.get("lr_critical_lower"), summary.get("lr_critical_upper")
    if lower is None or upper is None:
        return ""
    relation = critical_lr_relation(lower, upper)
    return "" if relation == "=" else relation + " "


def fig5(store: Store, out: Path, target: float = 0.05) -> str:
    cells = store.cells()
    lines = [f"| lr_trgt | T_wrm | warmup | status | lr_c | lr_c * lambda_0 | lr_trgt reached at | search passes "
             f"| steps to loss <= {target:g} x initial | same + passes/2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    curves = defaultdict(dict)
    for c in cells:
        cfg, s = c["config"], c["summary"] or {}
        m = store.metrics(c["id"])
        loss0 = m[0]["train_loss"] if m else None
        hit = next((r["step"] for r in m if loss0 and r["train_loss"] is not None
                    and r["train_loss"] <= target * loss0), None)
        passes = s.get("search_forward_passes") or 0
        lr_label = cfg["optimizer"]["lr"]
        if c.get("lr_target"):
            lr_label = f"{lr_label} = {c['lr_target']:.3g}"
        rule, T = cfg["schedule"]["warmup"], cfg["schedule"]["warmup_steps"]
        lam0 = s.get("lambda_0") or c.get("lambda_0")
        lrc = s.get("lr_critical")
        bound = _bound(s)   # a search that saw no rise up to lr_trgt (or rose at its first trial): a bound
        lines.append(f"| {lr_label} | {T if rule != 'persistent' else '-'} | {rule} | {c['status']} | {bound}{_fmt(lrc)} "
                     f"| {bound if lrc and lam0 else ''}{_fmt(lrc * lam0 if lrc and lam0 else None)} | {_fmt(s.get('lr_target_reached_at'), 'd') if s.get('lr_target_reached_at') is not None else 'never'} "
                     f"| {passes} | {hit if hit is not None else 'never'} | {_fmt(hit + passes / 2, '.1f') if hit is not None else '-'} |")
        curves[(lr_label, T)][rule] = m
    keys = sorted(curves)
    fig = Figure(figsize=(4 * len(keys), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(keys), squeeze=False)
    colors = {"linear": "C0", "catapult": "C1", "persistent": "C2"}
    for j, key in enumerate(keys):
        for rule, m in curves[key].items():
            steps = [r["step"] for r in m]
            axes[0][j].plot(steps, [r["lr"] for r in m], color=colors.get(rule), label=rule)
            pts = [(r["step"], r["train_loss"]) for r in m if r["train_loss"] is not None
                   and math.isfinite(r["train_loss"]) and r["train_loss"] > 0]
            axes[1][j].plot([p[0] for p in pts], [p[1] for p in pts], color=colors.get(rule), label=rule)
        axes[0][j].set(title=f"lr_trgt={key[0]}, T_wrm={key[1]}", xlabel="step", ylabel="lr")
        axes[1][j].set(yscale="log", xlabel="step", ylabel="training loss")
        axes[0][j].legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=("fig2", "table1", "fig5"))
    p.add_argument("store", help="SQLite store written by `catapult sweep`")
    p.add_argument("--out", required=True, help="figure path (PNG)")
    p.add_argument("--target", type=float, default=0.05, help="fig5: target loss as a fraction of the initial loss")
    args = p.parse_args(argv)
    if not Path(args.store).exists():
        print(f"study_adam: error: no store at {args.store}", file=sys.stderr)
        return 2
    store = Store(args.store, create=False)
    if args.study == "fig2":
        text = fig2(store, Path(args.out))
    elif args.study == "table1":
        text = table1(store, Path(args.out))
    else:
        text = fig5(store, Path(args.out), args.target)
    print(text)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
