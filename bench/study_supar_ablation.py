"""Why does the muP-init + SμPar-lr ablation (``supar_lr``) transfer like full SμPar at small scale?

Trains the GPT of ``configs/supar/lr_transfer_small.yaml`` (BPE tokens; same schedule, batch and
steps) under ``mup``, ``supar_init``, ``supar_lr`` and ``supar`` at several densities and seeds,
one learning rate, and at chosen steps ``t`` measures on a fixed probe batch, for every sparse
hidden matrix (attention qkv / out, MLP in / out; each is ``y = c x (W ⊙ M)^T``):

* ``init``   = rms of ``c x_t (W_0 ⊙ M)^T``       -- what the init contributes to the layer's output;
* ``update`` = rms of ``c x_t ((W_t - W_0) ⊙ M)^T`` -- what training (the lr rule) has added;
* ``out``    = rms of ``c x_t (W_t ⊙ M)^T``;

with ``x_t`` the layer's input at step ``t`` (the same probe batch for every model). SμPar's init
rule makes ``init`` density-invariant, its lr rule makes ``update`` density-invariant; muP's give
``init ~ sqrt(density)`` and ``update ~ density``. Whichever part dominates ``out`` decides how the
activations (and so the optimal lr) move with density. Prints a table of the log2-log2 slope of
each part against density per (parametrization, step) -- 0 = density-invariant -- and the dense
model's ``update / init`` ratio, and writes every measurement as JSON.

    OMP_NUM_THREADS=1 nice -n 10 python bench/study_supar_ablation.py --out bench/supar_ablation_bpe.json
    python bench/study_supar_ablation.py --from-json bench/supar_ablation_bpe.json   # reprint its tables
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from catapult import config as cfg
from catapult.engine.build import build_optimizer, build_run, build_schedule
from catapult.sparsity import MaskedLinear

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "supar" / "lr_transfer_small.yaml"


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def measure(config: dict, steps_at: list[int]) -> dict:
    """Train ``config`` for ``train.steps`` and measure the parts at ``steps_at`` (module docstring)."""
    run = build_run(config)
    model, c = run.model, run.config
    lr = float(cfg.parse_lr(c["optimizer"]["lr"]).resolve(None))
    optimizer = build_optimizer(c, model, lr)
    schedule = build_schedule(c, lr)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear) and n.startswith("blocks.")}
    w0 = {n: m.masked_weight().detach().clone() for n, m in layers.items()}
    probe = run.data.x_test[:16]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: inputs.__setitem__(n, inp[0].detach()))
             for n, m in layers.items()]
    records = []

    def record(t: int) -> None:
        with torch.no_grad():
            model.eval()
            model(probe)
            model.train()
            parts = {"init": [], "update": [], "out": []}
            for n, m in layers.items():
                mult = float(getattr(m, "multiplier", 1.0))
                w = m.masked_weight().detach()
                x = inputs[n]
                parts["init"].append(mult * _rms(F.linear(x, w0[n])))
                parts["update"].append(mult * _rms(F.linear(x, w - w0[n])))
                parts["out"].append(mult * _rms(F.linear(x, w)))
            records.append({"step": t, **{k: float(np.mean(v)) for k, v in parts.items()},
                            "update_over_init": float(np.mean([u / i for u, i in zip(parts["update"], parts["init"])]))})

    loss_fn = run.loss_fn
    for t in range(c["train"]["steps"] + 1):
        if t in steps_at:
            record(t)
        if t == c["train"]["steps"]:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(schedule(t)) * group.get("lr_mult", 1.0)
        x, y = run.batches.batch(t)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        model.eval()
        val = float(loss_fn(model(run.data.x_test), run.data.y_test))
    return {"records": records, "val_loss": val}


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


def _ms(values: list[float]) -> str:
    """'mean ± sample std' of the per-seed values."""
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{np.mean(values):.2f} ± {sd:.2f}"


def report(results: list[dict], parametrizations: list[str], densities: list[float], steps_at: list[int]) -> list[dict]:
    """Print the slope table (slopes of the seed-mean rms against density; update / init at the densest
    and the sparsest density as mean ± sample std over the seeds' ratios) and the final losses; return
    the table's rows."""
    print("log2-log2 slope against density of the mean rms over the sparse hidden layers (0 = invariant); "
          "update/init at density 1 and at the lowest density (mean ± std over seeds)")
    print("| parametrization | step | init slope | update slope | out slope | update/init dense | update/init sparsest |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for p in parametrizations:
        rows = [r for r in results if r["parametrization"] == p]
        for i, t in enumerate(steps_at):
            mean = {d: {k: float(np.mean([r["records"][i][k] for r in rows if r["density"] == d]))
                        for k in ("init", "update", "out", "update_over_init")} for d in densities}
            line = {"parametrization": p, "step": t}
            for k in ("init", "update", "out"):
                vals = [mean[d][k] for d in densities]
                line[k + "_slope"] = slope(densities, vals) if all(v > 0 for v in vals) else float("nan")
            line["ratio_dense"] = mean[max(densities)]["update_over_init"]
            line["ratio_sparse"] = mean[min(densities)]["update_over_init"]
            per_seed = {d: [r["records"][i]["update_over_init"] for r in rows if r["density"] == d]
                        for d in (max(densities), min(densities))}
            line["ratio_dense_seeds"], line["ratio_sparse_seeds"] = per_seed[max(densities)], per_seed[min(densities)]
            table.append(line)
            print(f"| {p} | {t} | {line['init_slope']:+.2f} | {line['update_slope']:+.2f} | {line['out_slope']:+.2f} "
                  f"| {_ms(per_seed[max(densities)])} | {_ms(per_seed[min(densities)])} |")
    print("\nfinal validation loss, mean ± std over seeds")
    for p in parametrizations:
        cells = []
        for d in densities:
            v = [r["val_loss"] for r in results if r["parametrization"] == p and r["density"] == d]
            cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else math.nan:.3f}")
        print(f"| {p} | " + " | ".join(cells) + " |")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parametrizations", default="mup,supar_init,supar_lr,supar")
    ap.add_argument("--densities", default="1,0.125,0.015625")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lr", type=float, default=2 ** -9)
    ap.add_argument("--steps-at", default="0,5,20,50,100,200")
    ap.add_argument("--set", nargs="*", default=["data.vocab_size=512"], help="config overrides key=value")
    ap.add_argument("--out", default=None)
    ap.add_argument("--from-json", default=None, help="print the tables of a JSON this script wrote; run nothing")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        a = saved["args"]
        report(saved["runs"], a["parametrizations"].split(","), [float(d) for d in a["densities"].split(",")],
               [int(s) for s in a["steps_at"].split(",")])
        return
    torch.set_num_threads(1)
    base = dict(cfg.load_config(CONFIG, args.set))
    base.pop("sweep", None)
    steps_at = [int(s) for s in args.steps_at.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    results = []
    started, cpu0 = time.perf_counter(), time.process_time()
    for p in args.parametrizations.split(","):
        for d in densities:
            for s in (int(x) for x in args.seeds.split(",")):
                c = copy.deepcopy(base)
                c["seed"] = s
                c["model"]["parametrization"], c["model"]["density"] = p, d
                c["optimizer"]["lr"] = args.lr
                r = measure(c, steps_at)
                results.append({"parametrization": p, "density": d, "seed": s, **r})
                print(f"{p:10s} density {d:<9g} seed {s}: val loss {r['val_loss']:.4f}", flush=True)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(f"\n{len(results)} runs, {wall:.0f} s wall, {cpu:.0f} s CPU\n")
    table = report(results, args.parametrizations.split(","), densities, steps_at)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "wall_s": wall, "cpu_s": cpu, "runs": results,
                                              "slopes": table}, indent=1))


if __name__ == "__main__":
    main()
