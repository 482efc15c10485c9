"""Fig. 4 (warmup paper) at CPU scale: the search for a setting where Adam without warmup fails,
and the 3-seed heatmap study of the setting found.

Every run starts from ``configs/sweeps/fig4_gpt_small_bpe.yaml`` (its ``sweep`` section dropped)
with the overrides of ``--set`` (dotted keys, YAML values), then ``seed``, ``optimizer.name``,
``optimizer.lr = 1e-4 * 2^(x/2)`` and ``schedule.warmup_steps`` per cell. One JSON line per run
goes to ``--out`` (appended, and a run already there is skipped, so an interrupted study resumes):
the tag, the overrides, the cell, the status, the initial / largest / final training loss, the
step of the largest, the final test loss, the unigram loss of the test windows, the training loss
every 10 steps, and wall and CPU seconds.

A run *failed to train* when its final test loss is not below the unigram loss of the test
windows (the loss of predicting token frequencies and nothing else), or it diverged (non-finite
loss). See bench/RESULTS.md, "Fig. 4 ... failures", for why this rule.

    # search (one seed, a few cells per setting):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/study_fig4_search.py run --tag v1k \\
        --set data.vocab_size=1024 --set train.steps=500 --x 8,12,16,20 --warmups 1 --seeds 0
    # the table of runs, grouped by tag and cell:
    .venv/bin/python bench/study_fig4_search.py table --out bench/fig4_search.jsonl
    # heatmaps (Adam vs GI-Adam, failed cells marked) and failure boundaries for one tag:
    .venv/bin/python bench/study_fig4_search.py heatmap --tag study --fig bench/figures/fig4_bpe_heatmap.png
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "sweeps" / "fig4_gpt_small_bpe.yaml"
DEFAULT_OUT = ROOT / "bench" / "fig4_search.jsonl"


def lr_of(x: float) -> float:
    return 1e-4 * 2 ** (x / 2)


def base_config(sets: list[str]) -> dict:
    from catapult.config import read_mapping

    raw = read_mapping(BASE)
    raw.pop("sweep")
    for item in sets:
        key, value = item.split("=", 1)
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return raw


def unigram_loss(cfg: dict) -> float:
    """Cross-entropy of the test windows under the training windows' token frequencies (add-one)."""
    from catapult.engine import build_run

    setup = build_run(dict(cfg, train=dict(cfg["train"], steps=2)))
    counts = np.bincount(setup.data.y_train.reshape(-1).numpy(), minlength=setup.data.num_classes) + 1.0
    p = counts / counts.sum()
    return float(-np.log(p[setup.data.y_test.reshape(-1).numpy()]).mean())


def failed(rec: dict) -> bool:
    """The failure rule: diverged, or final test loss not below the unigram loss."""
    t = rec["test_loss"]
    return rec["status"] != "finished" or t is None or not math.isfinite(t) or t >= rec["unigram"]


def cmd_run(args) -> None:
    from catapult.engine import run

    out = Path(args.out)
    cfg0 = base_config(args.set)
    uni = unigram_loss(cfg0)
    print(f"unigram loss {uni:.4f}", flush=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["tag"], r["optimizer"], r["warmup_steps"], r["x"], r["seed"]))
    xs = [float(v) for v in args.x.split(",")]
    with out.open("a") as fh:
        for x in xs:
            for warm in [int(v) for v in args.warmups.split(",")]:
                for opt in args.optimizers.split(","):
                    for seed in [int(v) for v in args.seeds.split(",")]:
                        if (args.tag, opt, warm, x, seed) in done:
                            continue
                        c = copy.deepcopy(cfg0)
                        c["seed"] = seed
                        c["optimizer"].update(name=opt, lr=lr_of(x))
                        c["schedule"]["warmup_steps"] = warm
                        t, cpu = time.time(), time.process_time()
                        r = run(c, progress="none")
                        losses = [m["train_loss"] for m in r.metrics]
                        finite = [v if v is not None and math.isfinite(v) else math.inf for v in losses]
                        test = r.metrics[-1].get("test_loss")
                        rec = dict(tag=args.tag, sets=args.set, optimizer=opt, warmup_steps=warm, x=x, lr=lr_of(x),
                                   seed=seed, status=r.status, test_loss=test, unigram=uni,
                                   initial_loss=losses[0], max_train_loss=max(finite),
                                   argmax_step=int(np.argmax(finite)),
                                   final_train_loss=float(np.mean(finite[-10:])),
                                   trajectory=[round(v, 3) if math.isfinite(v) else None for v in finite[::10]],
                                   wall_s=round(time.time() - t, 1), cpu_s=round(time.process_time() - cpu, 1))
                        rec["failed"] = failed(rec)
                        fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                        print({k: rec[k] for k in ("tag", "optimizer", "warmup_steps", "x", "seed", "status",
                                                   "test_loss", "max_train_loss", "argmax_step", "failed",
                                                   "wall_s", "cpu_s")}, flush=True)


def load(out: str, tag: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    return [r for r in rows if tag is None or r["tag"] == tag]


def cmd_table(args) -> None:
    rows = load(args.out, args.tag)
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    print("| tag | overrides | optimizer | T_wrm | x (lr) | test loss | max train loss (step) | failed | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tag in tags:
        rs = [r for r in rows if r["tag"] == tag]
        keys = sorted({(r["optimizer"], r["warmup_steps"], r["x"]) for r in rs})
        sets = " ".join(s.split("=", 1)[0].split(".")[-1] + "=" + s.split("=", 1)[1] for s in rs[0]["sets"])
        for opt, warm, x in keys:
            cell = [r for r in rs if (r["optimizer"], r["warmup_steps"], r["x"]) == (opt, warm, x)]
            test = np.array([r["test_loss"] if r["test_loss"] is not None else math.inf for r in cell])
            sd = f" ± {test.std(ddof=1):.3f}" if len(cell) > 1 and np.isfinite(test).all() else ""
            peak = ", ".join(f"{r['max_train_loss']:.3g} ({r['argmax_step']})" for r in cell)
            print(f"| {tag} | {sets} | {opt} | {warm} | {x:g} ({lr_of(x):.3g}) | {test.mean():.3f}{sd} | {peak} | "
                  f"{sum(r['failed'] for r in cell)}/{len(cell)} | {len(cell)} |")
    print(f"\ntotal wall {sum(r['wall_s'] for r in rows) / 60:.1f} min, CPU {sum(r['cpu_s'] for r in rows) / 60:.1f} min")


def boundary(rows: list[dict], opt: str, warm: int, seed: int) -> float | None:
    """Largest x at which the run trained, below the smallest x at which it failed (None: never trained)."""
    rs = sorted((r for r in rows if r["optimizer"] == opt and r["warmup_steps"] == warm and r["seed"] == seed),
                key=lambda r: r["x"])
    best = None
    for r in rs:
        if r["failed"]:
            break
        best = r["x"]
    return best


def cmd_heatmap(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(args.out, args.tag)
    if args.x:
        keep = {float(v) for v in args.x.split(",")}
        rows = [r for r in rows if r["x"] in keep]
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    xs = sorted({r["x"] for r in rows})
    warms = sorted({r["warmup_steps"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    uni = rows[0]["unigram"]
    vmax = max(uni + 0.3, max(r["initial_loss"] for r in rows))
    finite = [r["test_loss"] for r in rows if r["test_loss"] is not None and math.isfinite(r["test_loss"])]
    vmin = min(finite)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.8 * len(opts) + 1, 0.55 * len(warms) + 2.6), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        grid = np.full((len(warms), len(xs)), np.nan)
        nfail = np.zeros_like(grid)
        for i, w in enumerate(warms):
            for j, x in enumerate(xs):
                cell = [r for r in rows if (r["optimizer"], r["warmup_steps"], r["x"]) == (opt, w, x)]
                if not cell:
                    continue
                vals = [min(r["test_loss"], vmax) if r["test_loss"] is not None and math.isfinite(r["test_loss"])
                        else vmax for r in cell]
                grid[i, j] = np.mean(vals)
                nfail[i, j] = sum(r["failed"] for r in cell)
                ax.text(j, i, f"{grid[i, j]:.2f}" + ("\n" + "x" * int(nfail[i, j]) if nfail[i, j] else ""),
                        ha="center", va="center", fontsize=7, color="w" if grid[i, j] > (vmin + vmax) / 2 else "k")
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(warms)), [str(w) for w in warms])
        ax.set_xlabel("x in lr_trgt = 1e-4 * 2^(x/2)")
        ax.set_ylabel("T_wrm")
        ax.set_title(f"{opt}: final test loss, mean of {len(seeds)} seeds\n(each clipped at {vmax:.2f}; "
                     f"x = a failed seed:\ntest loss >= unigram loss {uni:.2f})", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9, label="test loss (clipped)")
    if args.title:
        fig.suptitle(args.title, fontsize=9, y=1.06)
    Path(args.fig).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.fig, dpi=110, bbox_inches="tight")
    print(f"wrote {args.fig}")
    print("\n| optimizer | T_wrm | largest x that trains, per seed | mean ± std of x | lr_trgt at the mean |")
    print("|---|---|---|---|---|")
    for opt in opts:
        for w in warms:
            ran = [s for s in seeds if any((r["optimizer"], r["warmup_steps"], r["seed"]) == (opt, w, s) for r in rows)]
            if not ran:
                continue  # no run of this optimizer at this T_wrm: nothing to report (not "never trained")
            b = [boundary(rows, opt, w, s) for s in ran]
            lowest = {s: min(r["x"] for r in rows if (r["optimizer"], r["warmup_steps"], r["seed"]) == (opt, w, s))
                      for s in ran}
            per_seed = ", ".join(f"< {lowest[s]:g}" if v is None else f"{v:g}" for s, v in zip(ran, b))
            if any(v is None for v in b):
                # a seed that fails at its smallest x has a boundary below the grid: a mean over
                # the other seeds would be too high, so none is given
                stats = f"- ({sum(v is None for v in b)} of {len(b)} seeds fail at every x) | - |"
            elif len(b) == 1:
                stats = f"{b[0]:.2f} (1 seed) | {lr_of(b[0]):.3g} |"
            else:
                mean = float(np.mean(b))
                stats = f"{mean:.2f} ± {float(np.std(b, ddof=1)):.2f} | {lr_of(mean):.3g} |"
            print(f"| {opt} | {w} | {per_seed} | {stats}")


def cmd_mechanism(args) -> None:
    """The first ``--steps`` updates at constant lr_trgt (no warmup, no decay) of Adam and GI-Adam
    from the same init and batches: per step the training loss, the gradient norm relative to
    step 0's, and the RMS update per element relative to lr (Adam's first step: 1; GI-Adam's with
    the v bias correction: sqrt(1 - b2) = 0.032)."""
    import torch

    from catapult.engine.build import build_optimizer, build_run

    cfg0 = base_config(args.set)
    cfg0["seed"] = args.seed
    lr = lr_of(args.x)
    print(f"x = {args.x:g} (lr {lr:.4g}), overrides {args.set}")
    print("| optimizer | " + " | ".join(f"step {t}" for t in args.show) + " |")
    print("|---|" + "---|" * len(args.show))
    for opt in ("adam", "gi-adam"):
        c = copy.deepcopy(cfg0)
        c["optimizer"].update(name=opt, lr=lr)
        setup = build_run(c)
        model, optim = setup.model, build_optimizer(setup.config, setup.model, lr)
        params = [p for p in model.parameters() if p.requires_grad]
        rows = []
        g0 = None
        for t in range(args.steps):
            x, y = setup.batches.batch(t)
            optim.zero_grad()
            loss = setup.loss_fn(model(x), y)
            loss.backward()
            g = torch.sqrt(sum((p.grad ** 2).sum() for p in params)).item()
            g0 = g if g0 is None else g0
            before = [p.detach().clone() for p in params]
            optim.step()
            n = sum(p.numel() for p in params)
            upd = math.sqrt(sum(((p.detach() - b) ** 2).sum().item() for p, b in zip(params, before)) / n)
            rows.append((loss.item(), g / g0, upd / lr))
        cells = [f"{rows[t][0]:.3g} / {rows[t][1]:.3g} / {rows[t][2]:.3g}" for t in args.show]
        print(f"| {opt} | " + " | ".join(cells) + " |")
    print("(each cell: training loss / gradient norm over step 0's / RMS update per element over lr)")


def cmd_sharpness(args) -> None:
    """The paper's quantities at initialisation, per ``model.init_std``: the sharpness
    ``lambda_0`` (top Hessian eigenvalue of the first training batch's loss) and the
    pre-conditioned sharpness ``lambda^P_0`` that Adam's and GI-Adam's first step would see,
    as a multiple of their stability threshold ``(2 + 2 b1) / ((1 - b1) lr)`` at ``--x``."""
    import numpy as np

    import catapult
    from catapult.engine.build import build_optimizer, build_run

    lr = lr_of(args.x)
    print(f"x = {args.x:g} (lr {lr:.4g}), overrides {args.set}, seeds {args.seeds}")
    print("| init_std | lambda_0 | Adam lambda^P_0 | GI-Adam lambda^P_0 | Adam lambda^P_0 lr / 38 | GI-Adam lambda^P_0 lr / 38 |")
    print("|---|---|---|---|---|---|")
    for std in args.init_stds:
        rows = []
        for seed in args.seeds:
            cfg = base_config(args.set + [f"model.init_std={std}"])
            cfg["seed"] = seed
            row = []
            for opt in ("adam", "gi-adam"):
                c = copy.deepcopy(cfg)
                c["optimizer"].update(name=opt, lr=lr)
                setup = build_run(c)
                batch = setup.batches.batch(0)
                if opt == "adam":
                    row.append(catapult.sharpness(setup.model, setup.loss_fn, batch, tol=1e-3).value)
                optim = build_optimizer(setup.config, setup.model, lr)
                row.append(catapult.preconditioned_sharpness(setup.model, setup.loss_fn, batch, optim,
                                                             tol=1e-3).value)
                threshold = catapult.instability_threshold(optim)
            rows.append(row + [row[1] / threshold, row[2] / threshold])
        a = np.array(rows)
        cells = [f"{m:.4g} ± {s:.2g}" for m, s in zip(a.mean(0), a.std(0, ddof=1) if len(a) > 1 else 0 * a[0])]
        print(f"| {std:g} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--tag", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--x", required=True)
    p.add_argument("--warmups", default="1")
    p.add_argument("--optimizers", default="adam,gi-adam")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p = sub.add_parser("table")
    p.add_argument("--tag")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p = sub.add_parser("heatmap")
    p.add_argument("--tag", required=True)
    p.add_argument("--fig", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--x", default="", help="only these x (comma-separated; default: all)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p = sub.add_parser("mechanism")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--x", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=31)
    p.add_argument("--show", default="0,1,2,5,10,20,30")
    p = sub.add_parser("sharpness")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--x", type=float, default=20.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--init-stds", default="0.02,0.125")
    args = ap.parse_args()
    if args.cmd == "sharpness":
        args.seeds = [int(v) for v in args.seeds.split(",")]
        args.init_stds = [float(v) for v in args.init_stds.split(",")]
    if args.cmd == "mechanism":
        args.show = [int(v) for v in args.show.split(",")]
    {"run": cmd_run, "table": cmd_table, "heatmap": cmd_heatmap, "mechanism": cmd_mechanism,
     "sharpness": cmd_sharpness}[args.cmd](args)


if __name__ == "__main__":
    main()
