"""Why does muP + cross-entropy not show the warmup claim in the small Fig. 3
(configs/warmup/fig3_wrn_small.yaml)? Runs single cells of that config with the engine's own
build (``catapult.engine.build_run``: same seeds, data, model, lambda_0, schedule) in a loop that
mirrors the engine's (batch t, forward, loss, backward, step, schedule step) and records per step:

* train loss / accuracy, lr_t and 2/lr_t (the GD edge; paper-form muP under SGD has lr_mult 1),
* logits: rms over the batch, max |logit|, and their *spread across samples* (std over the batch
  of each class logit, averaged over classes: ~0 is the engine's "collapsed" output),
* the pooled features read by the readout: rms and spread across samples,
* dead units: fraction of post-ReLU channels (each block's output) that are zero on every sample
  and pixel of the batch, and fraction of zero activations,
* the Hessian sharpness of the batch loss every ``--sharp-every`` steps (the engine's solver).

Prints one line per cell (lambda_0, lr_trgt, final status, and the quantities at the collapse step
or the end) and writes every per-step row to ``--out`` (CSV).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/fig3_mupce_diag.py --panel mup:cross_entropy \\
        --twrm 1 128 --x 3 5 7 --seeds 0 1 2 --out bench/figures/fig3_mupce_diag.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import sys

import torch
import torch.nn.functional as F

from catapult.config import load_config
from catapult.engine.build import build_run
from catapult.engine.step import diverged


def cell_config(base: dict, par: str, loss: str, twrm: int, x: float, seed: int, steps: int, decay: str) -> dict:
    cfg = {k: v for k, v in base.items() if k != "sweep"}
    cfg["model"] = {**cfg["model"], "parametrization": par}
    cfg["loss"] = loss
    cfg["schedule"] = {**cfg["schedule"], "warmup_steps": twrm, "decay": decay}
    cfg["optimizer"] = {**cfg["optimizer"], "lr": f"{2 ** x:g}/lambda0"}
    cfg["train"] = {**cfg["train"], "steps": steps}
    cfg["seed"] = seed
    return cfg


def run_cell(cfg: dict, sharp_every: int, out_mult: float = 1.0) -> tuple[dict, list[dict]]:
    setup = build_run(cfg)
    if out_mult != 1.0:  # probe only: scale the readout's weight and bias multipliers before lambda_0 is measured
        setup.model.readout.multiplier *= out_mult
        setup.model.readout.bias_multiplier *= out_mult
    cfg_v = setup.config
    model, loss_fn, batches = setup.model, setup.loss_fn, setup.batches
    lam0, lr_trgt = setup.lambda_0, setup.lr_target
    optimizer, warm = setup.optimizer, setup.warmup
    from catapult import schedules
    scheduler = schedules.attach(optimizer, warm.schedule)
    acts: dict[str, torch.Tensor] = {}
    hooks = [blk.register_forward_hook(lambda m, i, o, n=f"b{j}": acts.__setitem__(n, o.detach()))
             for j, blk in enumerate(model.blocks)]
    hooks.append(model.readout.register_forward_pre_hook(lambda m, i: acts.__setitem__("feat", i[0].detach())))
    rows, vec, loss0 = [], setup.start_vector, None
    status = "finished"
    steps = cfg["train"]["steps"]
    for t in range(steps + 1):
        x, y = batches.batch(t)
        lr_t = float(warm.schedule(t))
        out = model(x)
        loss = loss_fn(out, y)
        lv = float(loss.detach())
        loss0 = lv if t == 0 else loss0
        o = out.detach()
        labels = y if y.dim() == 1 else y.argmax(-1)
        row = {"t": t, "lr": lr_t, "edge": 2 / lr_t if lr_t > 0 else math.inf, "loss": lv,
               "acc": float((o.argmax(-1) == labels).float().mean()),
               "logit_rms": float(o.pow(2).mean().sqrt()), "logit_max": float(o.abs().max()),
               "logit_spread": float(o.std(0).mean()),
               "feat_rms": float(acts["feat"].pow(2).mean().sqrt()),
               "feat_spread": float(acts["feat"].std(0).mean())}
        dead_ch, zero = [], []
        for j in range(len(model.blocks)):
            a = acts[f"b{j}"]
            dead_ch.append(float((a.amax(dim=(0, 2, 3)) <= 0).float().mean()))
            zero.append(float((a <= 0).float().mean()))
        row["dead_channels"] = sum(dead_ch) / len(dead_ch)
        row["dead_channels_last"] = dead_ch[-1]
        row["zero_frac"] = sum(zero) / len(zero)
        if diverged(lv, loss0, cfg_v["train"]["divergence_factor"]):
            status = "diverged"
            rows.append(row)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        row["grad_norm"] = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)))
        if sharp_every and (t % sharp_every == 0 or t == steps):
            est = setup.sharpness.hessian(model, loss_fn, (x, y), None, vec)
            vec = est.vector
            row["sharpness"] = float(est.value)
        rows.append(row)
        if t < steps:
            optimizer.step()
            scheduler.step()
    for h in hooks:
        h.remove()
    last = rows[-1]
    if status == "finished" and last["logit_spread"] < 1e-3 * max(last["logit_rms"], 1e-12):
        status = "collapsed"
    return {"lambda_0": lam0, "lr_trgt": lr_trgt, "status": status}, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/warmup/fig3_wrn_small.yaml")
    ap.add_argument("--panel", nargs="+", default=["mup:cross_entropy"])
    ap.add_argument("--twrm", type=int, nargs="+", default=[1, 128])
    ap.add_argument("--x", type=float, nargs="+", default=[3, 5, 7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--decay", default="cosine")
    ap.add_argument("--sharp-every", type=int, default=0)
    ap.add_argument("--out-mult", type=float, default=1.0,
                    help="multiply the readout's multipliers by this at init (a probe; 8 = SP's output scale at widen 1)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    base = load_config(a.config)
    torch.set_num_threads(1)
    allrows = []
    for panel in a.panel:
        par, loss = panel.split(":")
        for twrm in a.twrm:
            for x in a.x:
                for seed in a.seeds:
                    cfg = cell_config(base, par, loss, twrm, x, seed, a.steps, a.decay)
                    info, rows = run_cell(cfg, a.sharp_every, a.out_mult)
                    best = max(r["acc"] for r in rows)
                    sh = [r for r in rows if "sharpness" in r]
                    post = [r for r in sh if r["t"] >= twrm]
                    msg = (f"{panel} Twrm={twrm} x={x:g} seed={seed} lambda0={info['lambda_0']:.4g} "
                           f"lr={info['lr_trgt']:.4g} status={info['status']} steps={len(rows)} "
                           f"final: loss={rows[-1]['loss']:.3f} acc={rows[-1]['acc']:.2f} best_train_acc={best:.2f} "
                           f"logit_rms={rows[-1]['logit_rms']:.3g} logit_spread={rows[-1]['logit_spread']:.3g} "
                           f"feat_spread={rows[-1]['feat_spread']:.3g} dead_ch={rows[-1]['dead_channels']:.2f} "
                           f"dead_last={rows[-1]['dead_channels_last']:.2f} zero={rows[-1]['zero_frac']:.2f}")
                    if post:
                        r = post[0]
                        msg += f" | t={r['t']}: sharp={r['sharpness']:.4g} 2/lr={r['edge']:.4g}"
                    print(msg, flush=True)
                    for r in rows:
                        allrows.append({"panel": panel, "out_mult": a.out_mult, "twrm": twrm, "x": x, "seed": seed,
                                        "lambda_0": info["lambda_0"], "status": info["status"], **r})
    if a.out:
        keys = sorted({k for r in allrows for k in r}, key=lambda k: list(allrows[0]).index(k) if k in allrows[0] else 99)
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(allrows)


if __name__ == "__main__":
    sys.exit(main())
