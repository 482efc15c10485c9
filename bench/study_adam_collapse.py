"""Read-out of ``bench/probe_adam_collapse.py`` (W7, FCN, Adam T_wrm 1 vs 300 at lr 0.015625, T = 30,000)
and of the eps / float64 sweep stores of the same cells.

    python bench/study_adam_collapse.py --probes runs/collapse/probe_T*_s*.csv --stores runs/collapse/eps.db runs/collapse/f64.db --out bench/figures/adam_collapse.png

Per probe run: whether and when it collapsed (the last step with >= 50% training accuracy, where
the run ends below 1.5x chance), its lowest loss, its loss spikes (rises above 30x and above 1,000x
the previous 50 steps' minimum, per 1,000 steps after step 1,000), the median Hessian sharpness and
the median pre-conditioned sharpness over 38 / lr_t between step 1,000 and the collapse (or step
10,000), the largest share of coordinates with sqrt(v_hat) < eps and the median sqrt(v_hat) in the 500
steps before it, and the dead ReLU units per hidden layer at the end and at the worst point of each
spike above 1e-2. Per store cell: status, the last step with >= 50% training accuracy, the lowest
loss. The figure: per seed (columns), the training loss, the pre-conditioned sharpness over
38 / lr_t, the Hessian sharpness, median sqrt(v_hat) and the dead units of all hidden layers against
step, T_wrm 1 and T_wrm 300 (a collapsed run's rows below the loss up to 100 steps after its collapse).
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


def _f(v):
    return None if v in ("", None) else float(v)


def load(path: Path) -> dict:
    with open(path) as fh:
        rows = [{k: _f(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    m = re.search(r"T(\d+)_s(\d+)", path.stem)
    return dict(twrm=int(m.group(1)), seed=int(m.group(2)), rows=rows, path=path)


def spikes(losses: list[float], start: int = 400, rise: float = 30.0) -> list[tuple[int, float, float, int]]:
    """(step, previous 50 steps' minimum, peak, end step) of each rise above ``rise`` x that minimum."""
    out, t, n = [], start, len(losses)
    while t < n:
        pre = min(losses[max(0, t - 50):t])
        if losses[t] > rise * pre:
            end = t
            while end < n and losses[end] > 3 * pre:
                end += 1
            out.append((t, pre, max(losses[t:end]), end))
            t = end + 1
        else:
            t += 1
    return out


def summary(run: dict) -> dict:
    rows = run["rows"]
    loss = [r["train_loss"] for r in rows]
    acc = [r["train_accuracy"] for r in rows]
    good = [r["step"] for r in rows if r["train_accuracy"] >= 0.5]
    last = int(good[-1]) if good else None
    collapsed = acc[-1] < 0.15 and last is not None
    end = last if collapsed else min(10000, len(rows) - 1)
    sp = spikes(loss)
    after = [s for s in sp if s[0] >= 1000]
    span = (len(rows) - 1 - 1000) / 1000 if not collapsed else (last - 1000) / 1000
    window = [r for r in rows if 1000 <= r["step"] <= end]
    hess = [r["hessian_sharpness"] for r in window if r["hessian_sharpness"] is not None]
    pre = [r["precond_sharpness"] / r["threshold"] for r in window if r["precond_sharpness"] is not None]
    before = [r for r in rows if end - 500 <= r["step"] <= end and r["frac_below_eps"] is not None]
    big = [s for s in sp if s[2] > 1e-2]
    dead_at = []
    for s in big:
        seg = rows[s[0]:min(s[3] + 1, len(rows))]
        dead_at.append((s[0], max(int(sum(r[f"dead_{i}"] for i in range(3))) for r in seg),
                        max(int(r["dead_0"]) for r in seg), max(int(r["dead_1"]) for r in seg),
                        max(int(r["dead_2"]) for r in seg), min(r["train_accuracy"] for r in seg),
                        max((r["update_max_over_lr"] or 0) for r in seg), s[2]))
    return dict(collapsed=collapsed, last=last, min_loss=min(loss), n30=len([s for s in after if s[0] <= end]),
                n1000=len([s for s in after if s[2] > 1000 * s[1] and s[0] <= end]), span=max(span, 1e-9),
                hess=statistics.median(hess) if hess else math.nan,
                pre=statistics.median(pre) if pre else math.nan,
                pre_max=max(pre) if pre else math.nan,
                below_eps=max(r["frac_below_eps"] for r in before) if before else math.nan,
                below_10eps=max(r["frac_below_10eps"] for r in before) if before else math.nan,
                vmed=statistics.median(r["sqrt_vhat_median"] for r in before) if before else math.nan,
                vp01=min(r["sqrt_vhat_p01"] for r in before) if before else math.nan,
                dead_end=(int(rows[-1]["dead_0"]), int(rows[-1]["dead_1"]), int(rows[-1]["dead_2"])),
                dead_at=dead_at, end=end)


def store_rows(paths: list[str]) -> list[str]:
    from catapult.sweep.store import Store

    out = ["| store | dtype | eps | T_wrm | seed | status | final train acc | last step >= 50% train acc | lowest train loss |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        store = Store(p, create=False)
        for c in store.cells():
            if c["status"] in ("pending", "running", "interrupted"):
                continue
            m = store.metrics(c["id"])
            good = [r["step"] for r in m if (r["train_accuracy"] or 0) >= 0.5]
            cfg = c["config"]
            out.append(f"| {Path(p).stem} | {cfg.get('dtype', 'float32')} | {cfg['optimizer']['eps']:g} | "
                       f"{cfg['schedule']['warmup_steps']} | {cfg['seed']} | {c['status']} | {c['train_accuracy']:.3f} | "
                       f"{good[-1] if good else 'never'} | "
                       f"{min(r['train_loss'] for r in m if r['train_loss'] is not None):.1e} |")
    return out


def figure(runs: list[dict], out: Path) -> None:
    seeds = sorted({r["seed"] for r in runs})
    fig = Figure(figsize=(5 * len(seeds), 13))
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, len(seeds), sharex=True, squeeze=False)
    colour = {1: "tab:blue", 300: "tab:red"}
    for run in runs:
        col = seeds.index(run["seed"])
        rows, c = run["rows"], colour.get(run["twrm"], "k")
        label = f"T_wrm {run['twrm']}"
        st = [r["step"] for r in rows]
        axes[0][col].semilogy(st, [r["train_loss"] for r in rows], color=c, lw=0.4, label=label)
        s = summary(run)
        if s["collapsed"]:  # a dead net's curvature and moments say nothing: up to 100 steps after it
            rows = rows[:s["last"] + 101]
        ms = [r for r in rows if r["precond_sharpness"] is not None]
        axes[1][col].semilogy([r["step"] for r in ms], [r["precond_sharpness"] / r["threshold"] for r in ms],
                              ".", color=c, ms=2, label=label)
        hs = [r for r in rows if r["hessian_sharpness"] is not None]
        axes[2][col].semilogy([r["step"] for r in hs], [r["hessian_sharpness"] for r in hs], ".", color=c, ms=2,
                              label=label)
        vs = [r for r in rows if r["sqrt_vhat_median"] is not None]
        axes[3][col].semilogy([r["step"] for r in vs], [r["sqrt_vhat_median"] for r in vs], color=c, lw=0.6,
                              label=label + " median")
        axes[3][col].semilogy([r["step"] for r in vs], [max(r["sqrt_vhat_p01"], 1e-14) for r in vs], color=c,
                              lw=0.6, ls=":", label=label + " 1st pct")
        axes[4][col].plot(st[:len(rows)], [r["dead_0"] + r["dead_1"] + r["dead_2"] for r in rows], color=c, lw=0.6, label=label)
    for col, seed in enumerate(seeds):
        axes[0][col].set_title(f"seed {seed}, lr_trgt 0.015625, T = 30,000")
        axes[1][col].axhline(1.0, color="k", ls="--", lw=0.6)
        axes[3][col].axhline(1e-8, color="k", ls="--", lw=0.6)
        axes[4][col].set_xlabel("step")
    for row, name in enumerate(["training loss", "pre-cond. sharpness / (38 / lr_t)", "Hessian sharpness",
                                "sqrt(v_hat) (eps dashed)", "dead ReLU units (of 192)"]):
        axes[row][0].set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    axes[3][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", nargs="+", required=True)
    p.add_argument("--stores", nargs="*", default=[])
    p.add_argument("--units", nargs="*", default=[], help="probe_adam_collapse.py --units JSON files")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    runs = sorted((load(Path(x)) for x in a.probes), key=lambda r: (r["twrm"], r["seed"]))
    lines = ["| T_wrm | seed | collapsed (last step >= 50%) | lowest loss | spikes > 30x / > 1000x per 1,000 steps "
             "(1,000 .. end) | median Hessian sharpness | pre-cond. / (38/lr_t) median (max) | "
             "max share sqrt(v_hat) < eps (< 10 eps), 500 steps before end | median sqrt(v_hat) there (min 1st pct) | "
             "dead units at the end (layers 1-3) | spikes above 1e-2: step, peak loss, most dead units (layers 1 / 2 / 3), lowest train acc, largest step / lr_t |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = summary(run)
        dead = "; ".join(f"{d[0]}: peak {d[7]:.0e}, {d[1]} ({d[2]} / {d[3]} / {d[4]}), {d[5]:.2f}, {d[6]:.0f}"
                         for d in s["dead_at"]) or "-"
        lines.append(f"| {run['twrm']} | {run['seed']} | {'yes (' + str(s['last']) + ')' if s['collapsed'] else 'no'} | "
                     f"{s['min_loss']:.1e} | {s['n30'] / s['span']:.1f} / {s['n1000'] / s['span']:.2f} | "
                     f"{s['hess']:.1f} | {s['pre']:.2f} ({s['pre_max']:.2f}) | {s['below_eps']:.1e} "
                     f"({s['below_10eps']:.1e}) | {s['vmed']:.1e} ({s['vp01']:.1e}) | {s['dead_end']} | {dead} |")
    if a.stores:
        lines += [""] + store_rows(a.stores)
    if a.units:
        import json
        lines += ["", "| T_wrm | seed | step | layer | alive units | active on (median share of inputs) | largest "
                  "pre-activation (median) | mean positive pre-activation (median) | bias (median) | weight row norm (median) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        docs = sorted((json.loads(Path(u).read_text()) for u in a.units), key=lambda d: (d["seed"], d["twrm"]))
        for d in docs:
            for name, u in d["units"].items():
                lines.append(f"| {d['twrm']} | {d['seed']} | {d['step']} | {name[-1]} | {u['alive']} | "
                             f"{u['active_share']:.2f} | {u['max_pre']:.2f} | {u['mean_pos_pre']:.3f} | {u['bias']:+.3f} | "
                             f"{u['weight_norm']:.2f} |")
    text = "\n".join(lines)
    print(text)
    figure(runs, Path(a.out))
    Path(a.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
