"""Fig. 1 of the warmup paper at small scale: which embedded settings start in sharpness
reduction and which in progressive sharpening, and when the loss spikes relative to the step
where the sharpness crosses 2/lr_t.

    nice -n 10 python bench/study_fig1.py search  --out bench/figures/fig1_search.csv   # part 1
    nice -n 10 python bench/study_fig1.py catapult --out bench/figures/fig1_catapult.png  # part 2
    nice -n 10 python bench/study_fig1.py output_scale --out bench/figures/fig1_output_scale.png  # part 3
    nice -n 10 python bench/study_fig1.py paper_setting --out bench/figures/fig1_paper_setting.png  # part 4
    nice -n 10 python bench/study_fig1.py paper_setting --cases warmup --steps 1024 --every 32 \
        --out bench/figures/fig1_paper_warmup.png                                        # part 4, full warmup

Which regime the paper assigns (its Sec. 4.1, cases C1/C2): muP (small initial output) starts
in *progressive sharpening* (top row of its Fig. 1), SP in *sharpness reduction* (bottom row).

Part 1 (the search). Full-batch GD on the embedded digits (first ``n_train`` images), MSE
(0.5 * mean) or cross-entropy, FCN without biases, for every (parametrization, width, depth,
loss) of the grid below and 3 seeds, at a *small* constant lr ``c / lambda_0`` (c = 0.5, well
inside the stable region, so that the sharpness moves by the dynamics, not by a catapult).
Measure ``r = lambda_T / lambda_0`` after T steps. The paper's claim (its Fig. 1 and Sec. 4.1):
muP starts in *progressive sharpening* (r > 1), SP in *sharpness reduction* (r < 1); issue 14
quoted it the other way round.
The criterion was fixed before looking at the results: a setting "shows the regime" when all
3 seeds agree on the side of 1 by more than 5% (r < 0.95 or r > 1.05).

Part 2 (catapults). For one muP and one SP setting, linear warmup to a large target
(muP: lr_trgt = 1/8 as in the paper, scaled to lambda_0 if needed; SP: 32/lambda_0), sharpness
every step: the first step ``t_cross`` with ``lambda_t > 2/lr_t``, the first loss spike
``t_spike`` (``L_t > 1.1 L_{t-1}`` after ``t_cross - 20``), and the lag ``t_spike - t_cross``,
over 3 seeds.

Part 3 (output scale). Width 256, depth 4, MSE, the part-1 protocol, with the readout weights
multiplied at init by ``s = 2^-4 .. 2^4`` in muP and SP (and, at s = 1, the digits tiled to 3072
features standardised per sample): is ``r`` set by the rms output at init?

Part 4 (paper setting). The authors' FCN as released (github.com/dayal-kalra/why-warmup,
``vision/mechanisms``: zero-initialised biases carrying the layer multiplier, truncated-normal
init, per-sample standardised inputs, one-hot targets, MSE ``0.5 * mean``), width 256 and 512,
depth 4, first 500 digits, 3 seeds: ``r = lambda_100 / lambda_0`` at constant ``0.5 / lambda_0``,
and under the paper's own Fig. 1 learning rates with the long warmup ``T_wrm = 1024`` whose
trajectories the paper reads the natural trend from (muP: ``lr_trgt = 1/lambda_0`` as its
App. D.5 says, and ``1/8`` as its caption says; SP: ``32 / lambda_0``); there ``r`` is taken at the
last measured step before ``lambda_t > 2 / lr_t`` (or at step 100 when it never crosses).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from catapult.engine import run

SEEDS = (0, 1, 2)


def write_rows(out, rows):
    """``rows`` (dicts with the same keys) to ``out`` with a ``.csv`` suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def base_config(param, width, depth, loss, *, lr, steps, warmup=1, every=20, seed=0, n_train=500):
    return {
        "name": f"fig1_{param}_w{width}_d{depth}_{loss}_s{seed}",
        "seed": seed,
        "data": {"name": "digits", "n_train": n_train, "n_test": None if n_train is None else 300},
        "model": {"name": "mlp", "width": width, "depth": depth, "parametrization": param, "bias": False},
        "loss": loss,
        "optimizer": {"name": "sgd", "lr": lr},
        "schedule": {"warmup": "linear", "warmup_steps": warmup},
        "train": {"steps": steps, "batch_size": None},
        "eval": {"sharpness_every": every, "test_every": 0, "sharpness_tol": 1e-3},
    }


def ratio(metrics, steps):
    sharp = [(r["step"], r["sharpness"]) for r in metrics if r["sharpness"] is not None]
    lam0 = sharp[0][1]
    at = [v for s, v in sharp if s <= steps]
    return at[-1] / lam0, min(v for _, v in sharp) / lam0, max(v for _, v in sharp) / lam0


def search(out: Path, steps: int) -> None:
    grid = list(itertools.product(("mup", "sp"), (64, 256, 512), (2, 4, 6), ("mse", "cross_entropy")))
    rows = []
    started = time.time()
    for param, width, depth, loss in grid:
        rs = []
        for seed in SEEDS:
            res = run(base_config(param, width, depth, loss, lr="0.5/lambda0", steps=steps, seed=seed), progress="none")
            r_end, r_min, r_max = ratio(res.metrics, steps)
            rs.append((r_end, r_min, r_max, res.summary["lambda_0"]))
        ends = [r[0] for r in rs]
        verdict = ("reduction" if all(e < 0.95 for e in ends) else
                   "sharpening" if all(e > 1.05 for e in ends) else "flat/mixed")
        row = dict(param=param, width=width, depth=depth, loss=loss,
                   lambda0_mean=statistics.mean(r[3] for r in rs),
                   ratio_mean=statistics.mean(ends), ratio_std=statistics.stdev(ends),
                   ratio_min_mean=statistics.mean(r[1] for r in rs), verdict=verdict)
        rows.append(row)
        print(f"{param:4s} w{width:5d} d{depth} {loss:13s} lambda0 {row['lambda0_mean']:9.4g} "
              f"lambda_T/lambda_0 {row['ratio_mean']:.3f} ± {row['ratio_std']:.3f}  {verdict}"
              f"   [{time.time() - started:.0f}s]", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def crossing_and_spike(metrics):
    """``(t_cross, t_spike)``: the first measured step with ``lambda_t > threshold_t`` (2/lr_t), and
    the start of the first loss spike (:func:`catapult.analysis.detect_catapults`'s rule:
    ``L_t > 1.5 x`` the running minimum) at or after ``t_cross - 20``; ``None`` where absent."""
    t_cross = next((r["step"] for r in metrics if r["sharpness"] is not None and r["threshold"] is not None
                    and r["sharpness"] > r["threshold"]), None)
    if t_cross is None:
        return None, None
    low, t_spike = math.inf, None
    for r in metrics:
        loss = r["train_loss"]
        if loss is None:
            continue
        if r["step"] >= t_cross - 20 and (not math.isfinite(loss) or loss > 1.5 * low):
            t_spike = r["step"]
            break
        low = min(low, loss)
    return t_cross, t_spike


def catapult(out: Path, args) -> None:
    """Part 2: demo settings (width 256, depth 4, MSE, digits), T_wrm = 64, sharpness every ``--every`` steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = {"mup": 16.0, "sp": "32/lambda0"}
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    lines = ["| setting | seed | lambda_0 | t_cross (lambda_t > 2/lr_t) | t_spike (L > 1.5 min) | lag | lambda_0 -> min over steps < t_cross |",
             "|---|---|---|---|---|---|---|"]
    lags = {}
    dump = []
    for col, (param, lr) in enumerate(settings.items()):
        for seed in SEEDS:
            config = base_config(param, 256, 4, "mse", lr=lr, steps=args.steps, warmup=64, every=args.every,
                                 seed=seed, n_train=args.n_train)
            config["eval"]["test_every"] = 0
            res = run(config, progress="none")
            m = res.metrics
            t_cross, t_spike = crossing_and_spike(m)
            lam0 = res.summary["lambda_0"]
            before = [r["sharpness"] for r in m if r["sharpness"] is not None and (t_cross is None or r["step"] < t_cross)]
            lag = None if t_cross is None or t_spike is None else t_spike - t_cross
            lags.setdefault(param, []).append(lag)
            lines.append(f"| {param} lr={lr} | {seed} | {lam0:.4g} | {t_cross} | {t_spike} | {lag} | "
                         f"{min(before) / lam0:.3f} |")
            steps = [r["step"] for r in m]
            axes[0][col].plot(steps, [r["train_loss"] for r in m], lw=1, label=f"seed {seed}")
            measured = [(r["step"], r["sharpness"]) for r in m if r["sharpness"] is not None]
            axes[1][col].plot([q[0] for q in measured], [q[1] for q in measured], lw=1, label=f"seed {seed}")
            dump.append({"param": param, "seed": seed, "metrics": m})
            axes[1][col].plot(steps, [r["threshold"] for r in m], lw=0.8, ls="--", color="k")
            if t_cross is not None:
                axes[1][col].axvline(t_cross, color=f"C{seed}", lw=0.6, ls=":")
            print(lines[-1], flush=True)
        axes[0][col].set(yscale="log", title=f"{param.upper() if param == 'sp' else 'muP'}: training loss "
                                             f"(lr_trgt={lr}, T_wrm=64)", xlabel="step")
        axes[1][col].set(yscale="log", title="sharpness (dashed: 2/lr_t; dotted: t_cross)", xlabel="step")
        lam = [r["sharpness"] for r in m if r["sharpness"]]
        axes[1][col].set_ylim(min(lam) / 2, max(lam) * 4)
        axes[0][col].legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    import json

    out.with_suffix(".json").write_text(json.dumps(dump, default=lambda x: None))
    print("\n".join(lines))
    for param, values in lags.items():
        got = [v for v in values if v is not None]
        if got:
            print(f"{param}: lag t_spike - t_cross = {statistics.mean(got):.1f} ± "
                  f"{statistics.stdev(got) if len(got) > 1 else 0:.1f} steps over {len(got)} seeds")


def top_hessian_eig(model, loss_fn, x, y, v=None, iters=40):
    """Largest Hessian eigenvalue of ``L(theta)`` by power iteration on ``H v`` (double backward),
    ``lambda = v^T H v`` with ``v <- Hv/||Hv||``; returns ``(lambda, v)`` for a warm start."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    if v is None:
        v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(123), dtype=p.dtype) for p in params]
    norm = math.sqrt(sum(float((t * t).sum()) for t in v))
    v = [t / norm for t in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v))
        norm = math.sqrt(sum(float((t * t).sum()) for t in hv))
        v = [t / norm for t in hv]
    return lam, v


def tiled_features(x, n_features=3072):
    """Digits tiled to ``n_features`` (repeat the 64 pixels), then standardised per sample:
    ``x_i <- (x_i - mean_j x_ij) / std_j x_ij`` (CIFAR-like input size and per-input scale)."""
    reps = -(-n_features // x.shape[1])
    t = x.repeat(1, reps)[:, :n_features]
    return (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True).clamp_min(1e-8)


def output_scale_run(param, scale, seed, *, width=256, depth=4, loss="mse", steps=100, c=0.5, tiled=False):
    """One full-batch GD run with the readout weights multiplied by ``scale`` at init; lr = c/lambda_0.
    Returns (rms output at init, lambda_0, lambda_T / lambda_0, rms input entry, input features)."""
    from catapult.engine.build import build_model, build_optimizer, build_run

    setup = build_run(base_config(param, width, depth, loss, lr=0.1, steps=steps, seed=seed))
    x, y = setup.data.x_train.flatten(1), setup.data.y_train
    model = setup.model
    if tiled:
        x = tiled_features(x)
        torch.manual_seed(seed)
        model = build_model(setup.config, x.shape[1], setup.data.num_classes, setup.device, setup.dtype)
    out_layer = [m for m in model.modules() if getattr(m, "catapult_role", None) == "output"][-1]
    with torch.no_grad():
        out_layer.weight.mul_(scale)
        f0 = float(model(x).pow(2).mean().sqrt())
    lam0, v = top_hessian_eig(model, setup.loss_fn, x, y)
    opt = build_optimizer(setup.config, model, c / lam0)
    for _ in range(steps):
        opt.zero_grad()
        setup.loss_fn(model(x), y).backward()
        opt.step()
    lam_t, _ = top_hessian_eig(model, setup.loss_fn, x, y, v)
    return f0, lam0, lam_t / lam0, float(x.pow(2).mean().sqrt()), x.shape[1]


def output_scale(out: Path, steps: int) -> None:
    """Hypothesis test: the regime (r < 1 or r > 1) is set by the output scale at init."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scales = tuple(2.0 ** k for k in range(-4, 5))
    cases = [(p, s, False) for p in ("mup", "sp") for s in scales] + [(p, 1.0, True) for p in ("mup", "sp")]
    rows = []
    for param, scale, tiled in cases:
        got = [output_scale_run(param, scale, seed, steps=steps, tiled=tiled) for seed in SEEDS]
        row = dict(param=param, scale=scale, tiled=tiled, in_features=got[0][4], x_rms=got[0][3],
                   f0_mean=statistics.mean(g[0] for g in got), f0_std=statistics.stdev(g[0] for g in got),
                   lam0_mean=statistics.mean(g[1] for g in got), lam0_std=statistics.stdev(g[1] for g in got),
                   r_mean=statistics.mean(g[2] for g in got), r_std=statistics.stdev(g[2] for g in got))
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    write_rows(out, rows)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for param, marker in (("mup", "o"), ("sp", "s")):
        for tiled in (False, True):
            sel = [r for r in rows if r["param"] == param and r["tiled"] == tiled]
            ax.errorbar([r["f0_mean"] for r in sel], [r["r_mean"] for r in sel], yerr=[r["r_std"] for r in sel],
                        marker=marker, ls="-" if not tiled else "none", mfc="none" if tiled else None,
                        label=f"{'muP' if param == 'mup' else 'SP'}{' tiled 3072' if tiled else ' digits 64'}")
    ax.axhline(1, color="k", lw=0.7, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="rms output at init (readout x s, s = 2^-4..2^4)",
           ylabel="r = lambda_100 / lambda_0", title="w256 d4 MSE, GD lr=0.5/lambda_0, 3 seeds")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=100)


#: Part 4 cases: (label, width, bias, init, lr rule, T_wrm). Lr rules: ("c", c) is
#: ``c / lambda_0``; ("abs", v) is the absolute ``v`` (the paper's muP 1/8).
PAPER_CASES = (
    ("ours as built (no bias, normal init)", 256, False, "normal", ("c", 0.5), 1),
    ("authors' FCN (zero bias, trunc-normal)", 256, True, "trunc_normal", ("c", 0.5), 1),
    ("authors' FCN, width 512", 512, True, "trunc_normal", ("c", 0.5), 1),
    ("authors' FCN, paper lr, T_wrm=1024", 256, True, "trunc_normal", "paper", 1024),
)
#: The paper's Fig. 1 target lrs per parametrization (App. D.5 and the caption for muP).
PAPER_LRS = {"mup": (("c", 1.0), ("abs", 0.125)), "sp": (("c", 32.0),)}


def paper_setting_run(param, seed, *, width, bias, init, lr_rule, warmup, steps=100, every=10):
    """Full-batch GD on the first 500 digits with linear warmup ``lr_t = lr_trgt * min(1, (t+1)/T_wrm)``
    (the authors' schedule: step t+1 at update t), sharpness every ``every`` steps. Returns
    ``(lambda_0, r, t_cross, lr_trgt, [(step, lambda_t / lambda_0)])`` with ``r`` the last measured
    ``lambda_t / lambda_0`` before the first ``lambda_t > 2 / lr_t`` (step ``steps`` if none)."""
    from catapult.engine.build import build_optimizer, build_run

    config = base_config(param, width, 4, "mse", lr=0.1, steps=steps, seed=seed)
    config["model"].update(bias=bias, init=init)
    setup = build_run(config)
    x, y, model = setup.data.x_train.flatten(1), setup.data.y_train, setup.model
    lam0, v = top_hessian_eig(model, setup.loss_fn, x, y)
    kind, value = lr_rule
    lr_trgt = value / lam0 if kind == "c" else value
    opt = build_optimizer(setup.config, model, lr_trgt)
    mults = [g["lr"] / lr_trgt for g in opt.param_groups]
    track, r, t_cross = [(0, 1.0)], 1.0, None
    for t in range(steps):
        lr_t = lr_trgt * min(1.0, (t + 1) / warmup)
        for g, m in zip(opt.param_groups, mults):
            g["lr"] = lr_t * m
        opt.zero_grad()
        loss = setup.loss_fn(model(x), y)
        if not math.isfinite(float(loss.detach())):
            break
        loss.backward()
        opt.step()
        if (t + 1) % every == 0:
            lam, v = top_hessian_eig(model, setup.loss_fn, x, y, v)
            track.append((t + 1, lam / lam0))
            if t_cross is None and lam > 2.0 / lr_t:
                t_cross = t + 1
            if t_cross is None:
                r = lam / lam0
    return lam0, r, t_cross, lr_trgt, track


def paper_setting(out: Path, steps: int, cases: str = "all", every: int = 0) -> None:
    """Part 4: the regime in the authors' own FCN and under the paper's Fig. 1 learning rates.
    ``cases``: "all", "const" (constant-lr cases) or "warmup" (the T_wrm=1024 ones); ``every``:
    sharpness every k steps (0: 25 for constant lr, 10 for warmup)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, curves = [], {}
    started, cpu0 = time.time(), time.process_time()
    for label, width, bias, init, rule, warmup in PAPER_CASES:
        if cases != "all" and (cases == "warmup") != (warmup > 1):
            continue
        for param in ("mup", "sp"):
            for lr_rule in (PAPER_LRS[param] if rule == "paper" else (rule,)):
                got = [paper_setting_run(param, seed, width=width, bias=bias, init=init, lr_rule=lr_rule,
                                         warmup=warmup, steps=steps,
                                         every=every or (10 if warmup > 1 else 25))
                       for seed in SEEDS]
                rs = [g[1] for g in got]
                crosses = [g[2] for g in got]
                lr_txt = f"{lr_rule[1]:g}/lambda0" if lr_rule[0] == "c" else f"{lr_rule[1]:g}"
                row = dict(case=label, param=param, width=width, bias=bias, init=init, lr_trgt=lr_txt,
                           T_wrm=warmup, lam0_mean=statistics.mean(g[0] for g in got),
                           lam0_std=statistics.stdev(g[0] for g in got),
                           lr_trgt_lam0_mean=statistics.mean(g[3] * g[0] for g in got),
                           r_mean=statistics.mean(rs), r_std=statistics.stdev(rs),
                           r_min=min(rs), r_max=max(rs), t_cross=";".join(str(c) for c in crosses))
                rows.append(row)
                curves[(label, param, lr_txt)] = [g[4] for g in got]
                print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                      + f"   [{time.time() - started:.0f}s wall, {time.process_time() - cpu0:.0f}s cpu]", flush=True)
    write_rows(out, rows)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, param in zip(axes, ("mup", "sp")):
        for i, ((label, p, lr_txt), tracks) in enumerate(k for k in curves.items() if k[0][1] == param):
            for j, tr in enumerate(tracks):
                ax.plot([q[0] for q in tr], [q[1] for q in tr], color=f"C{i}", lw=1, marker=".",
                        label=f"{label}, lr_trgt={lr_txt}" if j == 0 else None)
        ax.axhline(1, color="k", lw=0.7, ls="--")
        if cases == "warmup":
            ax.set_xscale("log")
        ax.set(yscale="log", xlabel="GD step", title=f"{'muP' if param == 'mup' else 'SP'}: lambda_t / lambda_0 "
               "(3 seeds)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("lambda_t / lambda_0")
    fig.savefig(out, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["search", "catapult", "output_scale", "paper_setting"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=1, help="catapult: sharpness every k steps")
    p.add_argument("--cases", choices=["all", "const", "warmup"], default="all", help="paper_setting: which cases")
    p.add_argument("--n-train", type=int, default=None, help="catapult: first N digits (default all)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.part == "search":
        search(a.out, a.steps)
    elif a.part == "output_scale":
        output_scale(a.out, a.steps)
    elif a.part == "paper_setting":
        paper_setting(a.out, a.steps, a.cases, a.every if a.every != 1 else 0)
    else:
        catapult(a.out, a)


if __name__ == "__main__":
    sys.exit(main())
