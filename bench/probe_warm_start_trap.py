"""Probe: warm-started sharpness solves trapped in an invariant subspace, and what the random part
of a warm start (catapult.curvature.start.WARM_START_MIX) costs.

Three problems, each for a list of mix values (the random part is ``min(mix * tol, 1)`` of the
start; 0 = the bare previous vector, as before stop 47):
  gpt   a 1-block muP GPT (d_model 16, or --width) under torch Adam with coupled weight decay 1e-3,
        lr 1e-2, float64, 8 x 16 random tokens, 14 steps; pre-conditioned sharpness every step,
        warm-started as a user's loop does (``init=est.vector``), against a cold solve at tol
        1e-8 (the truth) and a cold solve at the same tol (the cost of not warm-starting).
        "trapped": rows more than 1% off the truth.
  fcn   the Fig. 1 FCN of bench_sharpness.py (SP, MSE, --n samples), full-batch GD at 1.5/lambda_0,
        20 steps, Hessian sharpness every step (coarse=None throughout).
  engine  the training engine (`catapult.engine.run`, float64, 30 steps, sharpness every step with
        eval.spectrum_top_k: 1, whose eig_1 is a cold solve on the same operator at the same row) on
        6 settings x 2 seeds: a 1-block GPT on Shakespeare characters under Adam with coupled weight
        decay 1e-3, AdamW, Adam, SGD at 2/lambda0, and a 3-layer MLP on digits under SGD at
        1.9/lambda0 and Adam. "off": rows whose sharpness is more than 1% from eig_1.
  tiny  a 4-6-3 tanh MLP (51 parameters, 16 samples, float64) after one GD step of 0.01 from
        its own converged eigenvector, 5 seeds x tol 1e-3 / 1e-4: warm vs cold products.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_warm_start_trap.py --problem gpt --mix 0 30 100 300
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import catapult
import catapult.curvature.start as start

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def gpt(mix: float, seed: int, width: int, tol: float):
    from catapult.models.gpt import GPT

    start.WARM_START_MIX = mix
    torch.manual_seed(seed)
    V, T = 32, 16
    model = GPT(V, d_model=width, n_layers=1, n_heads=2, context=T, parametrization="mup",
                base_width=8).double()
    x, y = torch.randint(0, V, (8, T)), torch.randint(0, V, (8, T))

    def loss_fn(logits, t):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), t.reshape(-1))

    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    warm, warm_products, cold_products, trapped, worst = None, 0, 0, 0, 0.0
    for step in range(14):
        est = catapult.preconditioned_sharpness(model, loss_fn, (x, y), opt, init=warm, tol=tol, max_iter=400)
        truth = catapult.preconditioned_sharpness(model, loss_fn, (x, y), opt, tol=1e-8, max_iter=600)
        cold = catapult.preconditioned_sharpness(model, loss_fn, (x, y), opt, tol=tol, max_iter=400,
                                                 seed=step + 7)
        if step:
            warm_products += est.matvecs
            cold_products += cold.matvecs
        rel = abs(est.value - truth.value) / abs(truth.value)
        trapped += rel > 1e-2
        worst = max(worst, rel)
        warm = est.vector
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return warm_products / 13, cold_products / 13, trapped, worst


def fcn(mix: float, n: int):
    import bench_sharpness as bs

    start.WARM_START_MIX = mix
    torch.manual_seed(0)
    batch = bs.make_batch(n)
    model = bs.make_model("sp")
    lr = 1.5 / catapult.sharpness(model, bs.mse, batch, tol=1e-3, coarse=None).value
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    prev, counts = None, []
    for _ in range(20):
        est = catapult.sharpness(model, bs.mse, batch, tol=1e-3, init=prev, coarse=None)
        counts.append(est.matvecs)
        prev = est.vector
        opt.zero_grad()
        bs.mse(model(batch[0]), batch[1]).backward()
        opt.step()
    return counts


ENGINE_SETTINGS = [("adam", 0.001, 0.01, "gpt"), ("adamw", 0.0, 0.003, "gpt"), ("adam", 0.0, 0.03, "gpt"),
                   ("sgd", 0.0, "2/lambda0", "gpt"), ("sgd", 0.0, "1.9/lambda0", "mlp"), ("adam", 0.0, 0.001, "mlp")]


def engine(mix: float, seed: int, setting, start_kind: str = "warm"):
    from catapult import config as C
    from catapult.engine import run

    start.WARM_START_MIX = mix
    opt, wd, lr, kind = setting
    model = ({"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "parametrization": "mup", "base_width": 8}
             if kind == "gpt" else {"width": 32, "depth": 3, "parametrization": "mup"})
    data = ({"name": "shakespeare", "tokenizer": "char", "context": 8, "n_train": 64, "n_test": 16}
            if kind == "gpt" else {"name": "digits", "n_train": 200, "n_test": 50})
    cfg = C.validate({"name": "probe", "dtype": "float64", "seed": seed, "data": data, "model": model,
                      "loss": "cross_entropy",
                      "optimizer": {"name": opt, "lr": lr, **({"weight_decay": wd} if wd else {})},
                      "train": {"steps": 30, "batch_size": 8 if kind == "gpt" else None},
                      "eval": {"sharpness_every": 1, "test_every": 0, "spectrum_top_k": 1,
                               "sharpness_start": start_kind}})
    rows = [r for r in run(cfg, progress="none").metrics if r.get("sharpness") is not None]
    off = [abs(r["sharpness"] - r["eig_1"]) / abs(r["eig_1"]) for r in rows]
    return len(rows), sum(o > 1e-2 for o in off), max(off), sum(r["sharpness_matvecs"] for r in rows)


def tiny(mix: float):
    start.WARM_START_MIX = mix
    mse = torch.nn.MSELoss()
    pairs = []
    for seed in range(5):
        for tol in (1e-3, 1e-4):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
            x = torch.randn(16, 4, dtype=torch.float64)
            y = torch.nn.functional.one_hot(torch.randint(0, 3, (16,)), 3).double()
            first = catapult.sharpness(model, mse, (x, y), tol=1e-10)
            grads = torch.autograd.grad(mse(model(x), y), list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.01 * g
            cold = catapult.sharpness(model, mse, (x, y), tol=tol, seed=1, coarse=None)
            warm = catapult.sharpness(model, mse, (x, y), tol=tol, init=first.vector)
            pairs.append((cold.matvecs, warm.matvecs))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=["gpt", "fcn", "engine", "tiny"], default="gpt")
    parser.add_argument("--mix", type=float, nargs="+", default=[0.0, 30.0, 100.0, 300.0],
                        help="values of WARM_START_MIX (random part per unit tol; 0: none)")
    parser.add_argument("--seeds", type=int, default=4, help="gpt: seeds 0 .. N-1")
    parser.add_argument("--width", type=int, default=16, help="gpt: d_model")
    parser.add_argument("--tol", type=float, default=1e-3, help="gpt: the solves' tol")
    parser.add_argument("--n", type=int, default=1000, help="fcn: samples")
    parser.add_argument("--start", choices=["warm", "cold"], default="warm",
                        help="engine: eval.sharpness_start")
    parser.add_argument("--settings", type=int, nargs="+", default=None,
                        help="engine: indices of ENGINE_SETTINGS to run (default all)")
    args = parser.parse_args(argv)
    print(f"# probe_warm_start_trap: {args.problem}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", flush=True)
    for mix in args.mix:
        if args.problem == "gpt":
            rows = [gpt(mix, s, args.width, args.tol) for s in range(args.seeds)]
            k = len(rows)
            print(f"mix {mix:g} (part {min(mix * args.tol, 1.0):g}): products per warm call "
                  f"{sum(r[0] for r in rows) / k:.2f}, per cold call {sum(r[1] for r in rows) / k:.2f}; "
                  f"rows >1% off per seed {[r[2] for r in rows]} of 14; worst {max(r[3] for r in rows):.2e}",
                  flush=True)
        elif args.problem == "fcn":
            counts = fcn(mix, args.n)
            print(f"mix {mix:g}: products per warm call (steps 1..19) {sum(counts[1:]) / 19:.2f}: {counts}",
                  flush=True)
        elif args.problem == "engine":
            total = off = products = 0
            chosen = ENGINE_SETTINGS if args.settings is None else [ENGINE_SETTINGS[i] for i in args.settings]
            for setting in chosen:
                for seed in range(2):
                    n, bad, worst, mv = engine(mix, seed, setting, args.start)
                    total, off, products = total + n, off + bad, products + mv
                    print(f"  mix {mix:g} {setting} seed {seed}: {bad}/{n} rows >1% off, worst {worst:.2e}, "
                          f"{mv} products", flush=True)
            print(f"mix {mix:g}: {off} of {total} rows >1% off eig_1; {products} products", flush=True)
        else:
            pairs = tiny(mix)
            print(f"mix {mix:g}: (cold, warm) products {pairs}; warm/cold "
                  f"{sum(w for _, w in pairs) / sum(c for c, _ in pairs):.2f}", flush=True)


if __name__ == "__main__":
    main()
