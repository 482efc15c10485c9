"""Issue 14's small-scale evidence over seeds, from sweep stores written with ``sweep.seeds: 3``.

    python bench/study_seeds.py table1 STORE --out bench/figures/table1_seeds_small.png
    python bench/study_seeds.py fig5   STORE --out bench/figures/fig5_seeds_small.png
    python bench/study_seeds.py fig2   STORE --out bench/figures/fig2_seeds_small.png
    python bench/study_seeds.py fig1   STORE [STORE ...] --out bench/figures/fig1_seeds_small.png
    python bench/study_seeds.py runlength STORE [STORE ...] --out bench/figures/radam_runlength.png

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
  beside the paper's estimate ``T_wrm lr_c / lr_trgt - T_fp / 2``. With persistent warmup in
  the store, a second table sets it (charged its passes / 2 too) beside the best of linear and
  catapult warmup at each T_wrm, per seed.
* fig2 (configs/adam/fig2_mechanisms.yaml with sweep.seeds=3): per (optimizer, T_wrm), over the
  seeds, the statuses, the initial pre-conditioned sharpness and its ratio to the threshold
  ``38 / lr_0``, the first measured step at or below ``38 / lr_t``, the final ratio to it, the
  largest loss spike and the final training loss and accuracy (mean ± sample std), and Adam's
  initial pre-conditioned sharpness over GI-Adam's on the same seed.
* fig1 (configs/warmup/fig1_sp.yaml / fig1_mup.yaml with T_wrm in {1, 64, 256, 1024},
  train.steps=1024, sweep.seeds=3; one store per parametrization): per (parametrization, T_wrm),
  over the seeds, lambda_0, the natural trend (``lambda_t / lambda_0`` at the last measured step
  before ``lr_t lambda_t`` first exceeds 1: above 1 is progressive sharpening, below 1 sharpness
  reduction; the paper reads the regime from T_wrm = 1024, whose lr stays small longest), the
  number of loss catapults and the step of the first, the final sharpness over ``2 / lr_trgt``,
  the peak loss over the initial and the final training loss; the figure draws every seed's loss
  and sharpness, ``2 / lr_t`` dashed.
* runlength (configs/adam/table1_failure.yaml at several ``train.steps``, any number of stores):
  per run length T, the table1 accuracy table; then per (optimizer, T_wrm as 1 or a share of T)
  the failure boundary per seed (the smallest lr_trgt at which that seed failed) and its
  geometric mean over seeds, per T, by the paper's rule and counting only runs that failed
  without ever reaching 50% training accuracy (an early failure, not a collapse after training);
  when each failed run failed; per (T, optimizer, T_wrm, lr_trgt) the best and final test and
  training accuracy over every seed and how many seeds failed after reaching 50% training accuracy
  (a collapse, not an early failure); the figure draws both boundaries against T and RAdam's
  rectification r_t (b2 = 0.999) against step / T for each T.
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

from catapult.optim.rules import _radam_rect2  # the one copy of RAdam's r_t^2
from catapult.sweep.store import Store


def _ms(values, spec=".1f", scale=1.0):
    xs = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:{spec}} (1 seed)"
    return f"{statistics.mean(xs):{spec}} ± {statistics.stdev(xs):{spec}}"


def _acc_cell(members: list[dict]) -> tuple[str, bool, float]:
    """A Table 1 cell over seeds: (text, some seed failed, mean best test accuracy % of the others)."""
    failed = [c for c in members if c["status"] != "finished"]
    accs = [c["best_test_accuracy"] for c in members if c["status"] == "finished"]
    if failed:
        return ("F" if len(failed) == len(members) else f"F {len(failed)}/{len(members)}; "
                + _ms(accs, scale=100)), True, math.nan
    return _ms(accs, scale=100), False, 100 * statistics.mean(accs) if accs else math.nan


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
            text, failed, mean = _acc_cell(groups.get((opt, T, lr), []))
            cells.append(text)
            if failed:
                bad_lrs.append(lr)
            else:
                ok_lrs.append(lr)
                grid[i, j] = mean
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


def radam_rectification(t: int, beta2: float = 0.999) -> float:
    """RAdam's r_t (torch's ``RAdam``) at step ``t``: 0 while ``rho_t <= 5`` (the un-rectified
    steps), else the root of the library's r_t^2 (``catapult.optim.rules``, where the formula is)."""
    rectified, r2 = _radam_rect2(beta2, t, 1.0 - beta2 ** t)
    return math.sqrt(r2) if rectified else 0.0


def _seed_boundaries(cells: list[dict], failed) -> dict:
    """seed -> the smallest lr_trgt at which ``failed(cell)`` (None: at no lr)."""
    out = {}
    for c in cells:
        seed, lr = c["config"]["seed"], c["config"]["optimizer"]["lr"]
        out.setdefault(seed, None)
        if failed(c) and (out[seed] is None or lr < out[seed]):
            out[seed] = lr
    return out


def _when(store: Store, cell: dict, good: float = 0.5) -> tuple[str, bool]:
    """When a failed run failed, and whether it ever trained (training accuracy >= ``good`` at some
    step): 'nan@t' (non-finite loss at step t), else the last step whose training accuracy was
    >= ``good`` ('never' if none was)."""
    rows = store.metrics(cell["id"])
    steps = [r["step"] for r in rows if r.get("train_accuracy") is not None and r["train_accuracy"] >= good]
    for r in rows:
        if r.get("train_loss") is not None and not math.isfinite(r["train_loss"]):
            return f"nan@{r['step']}", bool(steps)
    return (str(max(steps)) if steps else "never"), bool(steps)


def _trained_then_failed(store: Store, cell: dict, good: float = 0.5) -> str | None:
    """For a failed run that had trained (training accuracy >= ``good`` at some step): 'step @ lr x,
    min loss y' -- its last such step, the schedule's lr at that step and the lowest training loss
    up to it (which tells a collapse from ~0 loss from a failure while still fitting); None if it
    never trained."""
    rows = [r for r in store.metrics(cell["id"]) if r.get("train_accuracy") is not None]
    last = max((r["step"] for r in rows if r["train_accuracy"] >= good), default=None)
    if last is None:
        return None
    lr = next((r.get("lr") for r in rows if r["step"] == last), None)
    losses = [r["train_loss"] for r in rows if r["step"] <= last and r.get("train_loss") is not None
              and math.isfinite(r["train_loss"])]
    return (f"{last} @ lr " + (f"{lr:.3g}" if lr is not None else "?")
            + (f", min loss {min(losses):.1e}" if losses else ""))


def _boundary_text(per: dict, lrs: list) -> tuple[str, list, list]:
    """'geometric mean (per seed)', the per-seed values (a seed failed at no lr counts as the grid's
    largest) and which seeds are censored ('>': failed at no lr; '<=': failed at the grid's smallest)."""
    top, low = max(lrs), min(lrs)
    vals = [per[sd] if per[sd] is not None else top for sd in sorted(per)]
    marks = ["> " if per[sd] is None else "<= " if per[sd] == low else "" for sd in sorted(per)]
    mean = math.exp(statistics.mean(math.log(v) for v in vals))
    prefix = "> " if "> " in marks and "<= " not in marks else "<= " if "<= " in marks and "> " not in marks else ""
    prefix = "~ " if "> " in marks and "<= " in marks else prefix
    return (prefix + f"{mean:.3g} (" + ", ".join(m + f"{v:g}" for m, v in zip(marks, vals)) + ")"), vals, marks


def _accuracies(rows: list[dict]) -> dict:
    """A run's best and final training and test accuracy from its metric rows: best = the largest
    finite value logged, final = the last one logged (a test accuracy is logged only at
    evaluations, so 'final test' is the last evaluation's); None where none was logged."""
    out = {}
    for key in ("train_accuracy", "test_accuracy"):
        xs = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out["best_" + key], out["final_" + key] = (max(xs), xs[-1]) if xs else (None, None)
    return out


def _accuracy_rows(store_cells: list[tuple[Store, dict]], trained: dict) -> list[str]:
    """One line per (T, optimizer, T_wrm, lr_trgt): best and final test and training accuracy (%),
    mean ± std over every seed (failed ones included), and how many seeds failed after training."""
    groups = defaultdict(list)
    for store, c in store_cells:
        cfg = c["config"]
        groups[(cfg["train"]["steps"], cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"],
                cfg["optimizer"]["lr"])].append((c, _accuracies(store.metrics(c["id"]))))
    lines = ["| T | optimizer | T_wrm | lr | best test | final test | best train | final train | failed |"
             " failed after training |", "|" + "---|" * 10]
    for key in sorted(groups):
        members = groups[key]
        cols = [_ms([a[k] for _, a in members], scale=100)
                for k in ("best_test_accuracy", "final_test_accuracy", "best_train_accuracy", "final_train_accuracy")]
        failed = [c for c, _ in members if c["status"] != "finished"]
        late = [c for c in failed if trained[id(c)]]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | " + " | ".join(cols)
                     + f" | {len(failed)}/{len(members)} | {len(late)}/{len(members)} |")
    return lines


def runlength(stores: list[Store], out: Path) -> str:
    groups = defaultdict(list)  # (steps, optimizer, T_wrm) -> cells
    when = {}  # id(cell) -> (text, trained) for failed cells
    store_cells = []  # (store, cell) of every outcome
    for store in stores:
        for c in store.cells():
            if c["status"] not in ("finished", "diverged", "collapsed"):
                continue  # not run (pending, interrupted) or an error: not a training outcome
            if c["status"] != "finished":
                when[id(c)] = _when(store, c)
            store_cells.append((store, c))
            cfg = c["config"]
            groups[(cfg["train"]["steps"], cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"])].append(c)
    lengths = sorted({n for n, _, _ in groups})
    kind_of = {key: "1" if key[2] == 1 else f"{100 * key[2] / key[0]:g}% of T" for key in groups}
    kinds = sorted({(key[1], kind) for key, kind in kind_of.items()})
    lines = []
    for n in lengths:
        rows = sorted((o, w) for m, o, w in groups if m == n)
        lrs = sorted({c["config"]["optimizer"]["lr"] for (m, _, _), cs in groups.items() if m == n for c in cs})
        lines += ["", f"T = {n} steps (RAdam's r_T = {radam_rectification(n):.3f} at b2 0.999): best test accuracy"
                  " (%), mean ± std over seeds; F k/3 = k seeds failed", "",
                  "| optimizer | T_wrm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                  "|" + "---|" * (len(lrs) + 2)]
        for o, w in rows:
            by_lr = defaultdict(list)
            for c in groups[(n, o, w)]:
                by_lr[c["config"]["optimizer"]["lr"]].append(c)
            lines.append(f"| {o} | {w} | " + " | ".join(_acc_cell(by_lr[lr])[0] for lr in lrs) + " |")
    rules = [("failed by the paper's rule", lambda c: c["status"] != "finished"),
             ("failed without ever reaching 50% training accuracy", lambda c: c["status"] != "finished"
              and not when[id(c)][1])]
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for (title, failed), bax in zip(rules, axes):
        lines += ["", f"Boundary = the smallest lr_trgt at which a seed {title}: geometric mean over seeds"
                  " (seeds in order; '> x': at no lr of the grid, counted as its largest x; '<= x': already at"
                  " its smallest)", "",
                  "| optimizer | T_wrm | " + " | ".join(f"T = {n}" for n in lengths) + " |",
                  "|" + "---|" * (len(lengths) + 2)]
        for k, (o, kind) in enumerate(kinds):
            texts, xs, means = [], [], []
            for n in lengths:
                keys = [key for key in groups if key[0] == n and key[1] == o and kind_of[key] == kind]
                if not keys:
                    texts.append("-")
                    continue
                cells = groups[keys[0]]
                text, vals, marks = _boundary_text(_seed_boundaries(cells, failed),
                                                   [c["config"]["optimizer"]["lr"] for c in cells])
                texts.append(text)
                for j, (v, mk) in enumerate(zip(vals, marks)):
                    bax.scatter(n * 2 ** (0.06 * (j - 1) + 0.03 * (k - 1.5)), v, color=f"C{k}", s=22, alpha=0.7,
                                marker="^" if mk == "> " else "v" if mk == "<= " else "o")
                xs.append(n)
                means.append(math.exp(statistics.mean(math.log(v) for v in vals)))
            bax.plot(xs, means, color=f"C{k}", label=f"{o}, T_wrm {kind}")
            lines.append(f"| {o} | {kind} | " + " | ".join(texts) + " |")
        bax.set(xscale="log", yscale="log", xlabel="run length T (steps), cosine decay",
                ylabel="smallest lr_trgt at which a seed failed")
        bax.set_title(f"boundary: {title}\n(dots: seeds; ^ none failed; v failed at the grid's smallest)", fontsize=9)
        bax.legend(fontsize=7)
        bax.grid(alpha=0.3)
    lines += ["", "Failed runs, by when they failed: the last step at which the training accuracy was >= 50%"
              " ('never': it never trained; 'nan@t': non-finite loss at step t; seeds in order, '-' = did not fail)", ""]
    for n in lengths:
        for (m, o, w), cells in sorted(groups.items()):
            if m != n:
                continue
            failed_at = defaultdict(dict)
            for c in cells:
                if c["status"] != "finished":
                    failed_at[c["config"]["optimizer"]["lr"]][c["config"]["seed"]] = when[id(c)][0]
            seeds = sorted({c["config"]["seed"] for c in cells})
            if failed_at:
                lines.append(f"- T = {n}, {o}, T_wrm {w}: " + "; ".join(
                    f"lr {lr:g}: " + ", ".join(failed_at[lr].get(sd, "-") for sd in seeds) for lr in sorted(failed_at)))
    lines += ["", "Failed runs that had trained: the last step with training accuracy >= 50%, the schedule's lr"
              " there and the lowest training loss up to it (seeds in order; '-' = did not fail or never trained)", ""]
    for n in lengths:
        for (m, o, w), cells in sorted(groups.items()):
            if m != n:
                continue
            detail, ids = defaultdict(dict), {id(c) for c in cells}
            for store, c in store_cells:
                if id(c) in ids and c["status"] != "finished" and when[id(c)][1]:
                    detail[c["config"]["optimizer"]["lr"]][c["config"]["seed"]] = _trained_then_failed(store, c)
            seeds = sorted({c["config"]["seed"] for c in cells})
            if detail:
                lines.append(f"- T = {n}, {o}, T_wrm {w}: " + "; ".join(
                    f"lr {lr:g}: " + ", ".join(detail[lr].get(sd, "-") for sd in seeds) for lr in sorted(detail)))
    lines += ["", "Best and final accuracy (%) per cell, mean ± std over every seed (failed ones included; a"
              " training accuracy is one batch's where the run is minibatch); 'failed after training': failed"
              " seeds that had reached 50% training accuracy", ""]
    lines += _accuracy_rows(store_cells, {k: v[1] for k, v in when.items()})
    import numpy as np

    rax = axes[2]
    for n in lengths:
        ts = np.unique(np.geomspace(1, n, 400).astype(int))
        rax.plot(ts / n, [radam_rectification(int(t)) for t in ts], label=f"T = {n}")
    rax.set(xscale="log", xlabel="step / T", ylabel="r_t", ylim=(0, 1.05),
            title="RAdam's rectification r_t at b2 = 0.999 over the run")
    rax.axhline(0.9, color="grey", ls=":", lw=1)
    rax.legend(fontsize=8)
    rax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines[1:])


def fig5(store: Store, out: Path, target: float) -> str:
    per = defaultdict(dict)  # (lr, T) -> seed -> rule -> (steps, passes, lr_c, lr_trgt)
    curves = defaultdict(list)
    reached = {}
    for c in store.cells():
        cfg, s = c["config"], c["summary"] or {}
        m = store.metrics(c["id"])
        loss0 = m[0]["train_loss"] if m else None
        hit = next((r["step"] for r in m if loss0 and r["train_loss"] is not None
                    and r["train_loss"] <= target * loss0), None)
        key = (cfg["optimizer"]["lr"], cfg["schedule"]["warmup_steps"])
        per[key].setdefault(cfg["seed"], {})[cfg["schedule"]["warmup"]] = (
            hit, s.get("search_forward_passes") or 0, s.get("lr_critical"), c.get("lr_target"))
        reached[(key, cfg["seed"], cfg["schedule"]["warmup"])] = s.get("lr_target_reached_at")
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
    lines += _persistent_rows(per, reached)
    lines += _loss_shape_rows(store)
    keys = sorted({k for k, _ in curves})
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for rule, color in (("linear", "C0"), ("catapult", "C1"), ("persistent", "C2")):
            for n, m in enumerate(curves.get((key, rule), [])):
                pts = [(r["step"], r["train_loss"]) for r in m if r["train_loss"] and math.isfinite(r["train_loss"])]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1, alpha=0.8,
                        label=rule if n == 0 else None)
        ax.set(yscale="log", xlabel="step", ylabel="training loss", title=f"lr_trgt={key[0]}, T_wrm={key[1]} ({len(curves.get((key, 'linear'), []))} seeds)")
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return "\n".join(lines)


def _fig2_cell(metrics: list[dict]) -> dict:
    """One Fig. 2 run's numbers (see the module docstring) from its metrics rows."""
    sharp = [(r["step"], r["sharpness"], r["threshold"]) for r in metrics if r["sharpness"] is not None]
    losses = [r["train_loss"] for r in metrics if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
    first = sharp[0] if sharp else None
    return dict(initial=first[1] if first else None,
                initial_ratio=first[1] / first[2] if first and first[2] else None,
                first_below=next((t for t, v, th in sharp if th is not None and v <= th), None),
                final_ratio=sharp[-1][1] / sharp[-1][2] if sharp and sharp[-1][2] else None,
                spike=max(losses) / losses[0] if losses and losses[0] > 0 else None)


def _trajectories(runs: dict, names: list, out: Path, sharpness: str, threshold: str,
                  loss_cap: float | None = None) -> None:
    """Every seed's training loss (left) and sharpness (right, its threshold dashed) per row name,
    one colour per T_wrm: the figure of fig2 and fig1. ``loss_cap``: the loss axis ends at that
    multiple of the largest initial loss (a diverged run's 1e28 squeezes every other curve)."""
    fig = Figure(figsize=(11, 4 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names):
        for i, key in enumerate(sorted(k for k in runs if k[0] == name)):
            for n, (seed, (c, m)) in enumerate(sorted(runs[key].items())):
                label = f"T_wrm={key[1]}" if n == 0 else None
                pts = [(r["step"], r["train_loss"]) for r in m
                       if r["train_loss"] is not None and math.isfinite(r["train_loss"]) and r["train_loss"] > 0]
                row[0].plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i}", lw=1, alpha=0.7, label=label)
                sh = [(r["step"], r["sharpness"]) for r in m if r["sharpness"] is not None and r["sharpness"] > 0]
                row[1].plot([p[0] for p in sh], [p[1] for p in sh], color=f"C{i}", lw=1, alpha=0.7, label=label)
                if n == 0:
                    th = [(r["step"], r["threshold"]) for r in m
                          if r["threshold"] is not None and math.isfinite(r["threshold"])]
                    row[1].plot([p[0] for p in th], [p[1] for p in th], color=f"C{i}", lw=1, ls="--")
        row[0].set(yscale="log", xlabel="step", ylabel="training loss", title=f"{name}: loss, every seed")
        if loss_cap is not None:
            first = [m[0]["train_loss"] for k in runs if k[0] == name for _, (_, m) in runs[k].items()
                     if m and m[0]["train_loss"] is not None and math.isfinite(m[0]["train_loss"])]
            if first:
                row[0].set_ylim(top=loss_cap * max(first))
        row[1].set(yscale="log", xlabel="step", ylabel=sharpness, title=f"{name}: {threshold}")
        for ax in row:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def fig2(store: Store, out: Path) -> str:
    runs = defaultdict(dict)  # (optimizer, T_wrm) -> seed -> (cell, metrics)
    for c in store.cells():
        cfg = c["config"]
        runs[(cfg["optimizer"]["name"], cfg["schedule"]["warmup_steps"])][cfg["seed"]] = (c, store.metrics(c["id"]))
    lines = ["| optimizer | T_wrm | seeds: status | initial pre-cond. sharpness | initial / (38/lr_0) "
             "| first step at or below 38/lr_t | final / (38/lr_t), finished seeds | peak loss / initial "
             "| final train loss, finished seeds | final train acc, finished seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    initial = {}
    for key in sorted(runs, key=lambda k: (k[0] != "adam", k[1])):
        cells = [(c, _fig2_cell(m)) for _, (c, m) in sorted(runs[key].items())]
        done = [(c, n) for c, n in cells if c["status"] == "finished"]
        statuses = defaultdict(int)
        for c, _ in cells:
            statuses[c["status"]] += 1
        initial.update({(key, seed): _fig2_cell(m)["initial"] for seed, (_, m) in runs[key].items()})
        firsts = [n["first_below"] for _, n in cells]
        first_txt = ", ".join("never" if f is None else str(f) for f in firsts)
        lines.append(
            f"| {key[0]} | {key[1]} | {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} "
            f"| {_ms([n['initial'] for _, n in cells], '.3g')} | {_ms([n['initial_ratio'] for _, n in cells], '.3g')} "
            f"| {first_txt} | {_ms([n['final_ratio'] for _, n in done], '.2f')} "
            f"| {_ms([n['spike'] for _, n in cells], '.3g')} "
            f"| {_ms([(c['summary'] or {}).get('final_train_loss') for c, _ in done], '.2g')} "
            f"| {_ms([(c['summary'] or {}).get('final_train_accuracy') for c, _ in done], '.3f')} |")
    per_seed = defaultdict(list)  # seed -> Adam / GI-Adam at each T_wrm (step 0 is before warmup acts)
    for ((name, T), seed) in initial:
        if name == "adam" and initial[((name, T), seed)] and initial.get((("gi-adam", T), seed)):
            per_seed[seed].append(initial[((name, T), seed)] / initial[(("gi-adam", T), seed)])
    # The seeds are the replicates: every T_wrm row of a seed repeats its step-0 pair, so the
    # spread is over one ratio per seed (their mean over T_wrm), not over the repeated pairs.
    ratios = [statistics.mean(v) for _, v in sorted(per_seed.items())]
    pairs = sum(len(v) for v in per_seed.values())
    lines += ["", f"Initial pre-conditioned sharpness, Adam / GI-Adam on the same seed: {_ms(ratios, '.3g')} "
                  f"over {len(ratios)} seeds ({pairs} pairs) (1/sqrt(1 - b2) = {1 / math.sqrt(1 - 0.999):.3g})"]

    _trajectories(runs, sorted({k[0] for k in runs}), out, "$\\lambda_{max}(P^{-1}H)$",
                  "pre-conditioned sharpness (dashed: 38/lr_t)")
    return "\n".join(lines)


def _natural_trend(metrics: list[dict]) -> float | None:
    """``lambda_t / lambda_0`` at the last measured step before ``lr_t lambda_t`` first exceeds
    1 (half the stability threshold ``2 / lr_t``): how the sharpness moved while the lr was too
    small to push it, i.e. by training itself. Above 1: progressive sharpening; below: reduction."""
    points = [(r["sharpness"], r["threshold"]) for r in metrics
              if r["sharpness"] is not None and r["threshold"] is not None and math.isfinite(r["threshold"])]
    if len(points) < 2:
        return None
    last = None
    for sharp, threshold in points[1:]:
        if sharp > threshold / 2:
            break
        last = sharp
    return None if last is None else last / points[0][0]


def fig1(stores: list[Store], out: Path) -> str:
    runs = defaultdict(dict)  # (parametrization, T_wrm) -> seed -> (cell, metrics)
    for store in stores:
        for c in store.cells():
            cfg = c["config"]
            runs[(cfg["model"]["parametrization"], cfg["schedule"]["warmup_steps"])][cfg["seed"]] = \
                (c, store.metrics(c["id"]))
    lines = ["| parametrization | T_wrm | seeds: status | lr_trgt lambda_0 | lambda_0 "
             "| natural trend: lambda_t / lambda_0 while lr_t lambda_t <= 1 "
             "| catapults (first at step) | final sharpness / (2 / lr_trgt), finished seeds "
             "| peak loss / initial | final train loss, finished seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(runs, key=lambda k: (k[0] != "mup", k[1])):
        cells = [(c, m, c["summary"] or {}) for _, (c, m) in sorted(runs[key].items())]
        statuses = defaultdict(int)
        for c, _, _ in cells:
            statuses[c["status"]] += 1
        done = [(c, m, s) for c, m, s in cells if c["status"] == "finished"]
        lam0 = [s.get("lambda_0") for _, _, s in cells]
        trend = [_natural_trend(m) for _, m, _ in cells]
        catapults = [s.get("catapults") or [] for _, _, s in cells]
        first = ", ".join(str(c[0]["start"]) if c else "-" for c in catapults)
        final = [s["final_sharpness"] * s["lr_target"] / 2 for _, _, s in done
                 if s.get("final_sharpness") and s.get("lr_target")]
        spike = [s["peak_train_loss"] / s["initial_train_loss"] for _, _, s in cells
                 if s.get("peak_train_loss") and s.get("initial_train_loss")]
        lines.append(
            f"| {key[0]} | {key[1]} | {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} "
            f"| {_ms([s.get('lr_target_times_lambda_0') for _, _, s in cells], '.3g')} | {_ms(lam0, '.3g')} "
            f"| {_ms(trend, '.3g')} | {_ms([len(c) for c in catapults], '.3g')} ({first}) | {_ms(final, '.2f')} "
            f"| {_ms(spike, '.3g')} | {_ms([s.get('final_train_loss') for _, _, s in done], '.2g')} |")

    _trajectories(runs, sorted({k[0] for k in runs}, key=lambda n: n != "mup"), out,
                  "sharpness (top Hessian eigenvalue)", "sharpness (dashed: 2/lr_t)", loss_cap=100.0)
    return "\n".join(lines)


def _largest_rise(losses: list[float], after: int = 5) -> float:
    """The largest ``L_t / min_{s < t} L_s`` for ``t > after``: how far the loss spikes above
    its lowest value so far (1 for a loss that never rises)."""
    best, worst = losses[0], 1.0
    for t, loss in enumerate(losses):
        if t > after:
            worst = max(worst, loss / best)
        best = min(best, loss)
    return worst


def _loss_shape_rows(store: Store) -> list[str]:
    """Final loss and largest rise after step 5 (:func:`_largest_rise`), mean ± std over seeds,
    per (lr_trgt, warmup, T_wrm); persistent warmup once (no T_wrm). Empty without persistent."""
    final, rise = defaultdict(list), defaultdict(list)
    cells = store.cells()
    first_T = min(c["config"]["schedule"]["warmup_steps"] for c in cells) if cells else None
    for c in cells:
        cfg = c["config"]
        rule = cfg["schedule"]["warmup"]
        T = "-" if rule == "persistent" else cfg["schedule"]["warmup_steps"]
        if rule == "persistent" and cfg["schedule"]["warmup_steps"] != first_T:
            continue  # the same run again
        losses = [r["train_loss"] for r in store.metrics(c["id"])]
        if not losses or not all(x is not None and math.isfinite(x) for x in losses):
            continue
        final[(cfg["optimizer"]["lr"], rule, T)].append(losses[-1])
        rise[(cfg["optimizer"]["lr"], rule, T)].append(_largest_rise(losses))
    if not any(k[1] == "persistent" for k in final):
        return []
    out = ["", "| lr_trgt | warmup | T_wrm | final loss | largest rise after step 5 |", "|---|---|---|---|---|"]
    for key in sorted(final, key=lambda k: (k[0], k[1], str(k[2]))):
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {_ms(final[key], '.2e')} | {_ms(rise[key], '.2f')} |")
    return out


def _persistent_rows(per: dict, reached: dict) -> list[str]:
    """Fig. 5's persistent warmup (no T_wrm: the grid's T_wrm values run it alike) beside the best
    of linear and catapult warmup at each T_wrm, per lr_trgt, over seeds; empty without it."""
    lrs = sorted({lr for (lr, _T), seeds in per.items() for rules in seeds.values() if "persistent" in rules})
    if not lrs:
        return []
    out = ["", "Persistent catapult warmup (its rows are the same run at every T_wrm; + passes/2 charges "
               "its searches), against the best of linear and catapult (+ passes/2) per seed:", "",
           "| lr_trgt | seeds | lr_trgt reached at | search passes | steps to target | + passes/2 "
           "| best other, T_wrm = each | persistent fastest (seed x T_wrm) |", "|---|---|---|---|---|---|---|---|"]
    for lr in lrs:
        keys = sorted(k for k in per if k[0] == lr)
        steps, charged, passes, at, wins, total, best = [], [], [], [], 0, 0, defaultdict(list)
        for seed in sorted(per[keys[0]]):
            hit, n, _, _ = per[keys[0]][seed].get("persistent", (None, 0, None, None))
            if hit is None:
                continue
            steps.append(hit)
            passes.append(n)
            charged.append(hit + n / 2)
            at.append(reached.get((keys[0], seed, "persistent")))
            for key in keys:
                others = [h + p / 2 for rule, (h, p, _, _) in per[key][seed].items()
                          if rule != "persistent" and h is not None]
                if others:
                    best[key[1]].append(min(others))
                    total += 1
                    wins += hit + n / 2 < min(others)
        other = "; ".join(f"{T}: {_ms(v)}" for T, v in sorted(best.items()))
        out.append(f"| {lr} | {len(steps)} | {_ms(at)} | {_ms(passes)} | {_ms(steps)} | {_ms(charged)} "
                   f"| {other} | {wins} of {total} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=("table1", "fig5", "fig2", "fig1", "runlength"))
    p.add_argument("store", nargs="+", help="sweep store(s); fig1 takes one per parametrization, "
                   "runlength any number (one per run length and warmup rule)")
    p.add_argument("--out", required=True)
    p.add_argument("--target", type=float, default=0.05)
    a = p.parse_args(argv)
    missing = [path for path in a.store if not Path(path).exists()]
    if missing:
        print(f"study_seeds: error: no store at {missing[0]}", file=sys.stderr)
        return 2
    if a.study not in ("fig1", "runlength") and len(a.store) > 1:
        print(f"study_seeds: error: {a.study} reads one store", file=sys.stderr)
        return 2
    stores = [Store(path, create=False) for path in a.store]
    try:
        store = stores[0]
        studies = {"table1": lambda: table1(store, Path(a.out)), "fig2": lambda: fig2(store, Path(a.out)),
                   "fig5": lambda: fig5(store, Path(a.out), a.target), "fig1": lambda: fig1(stores, Path(a.out)),
                   "runlength": lambda: runlength(stores, Path(a.out))}
        print(studies[a.study]())
    finally:
        for s in stores:
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
