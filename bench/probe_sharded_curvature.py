"""Probe: the sharpness of a GPT sharded by FSDP2 (``catapult.curvature.sharded``: central
differences of FSDP's own gradient, with the forward/backward gap check) against exact double
backprop in float64 on the same weights.

A small GPT (BPE-sized vocab 257, width 32, 2 blocks, 2 heads, context 16) after 3 Adam steps
(lr 1e-3) on 8 random sequences, sharded with :func:`catapult.engine.fsdp.shard_model` in a gloo
group of world size 1 (the products and the check are the same on W ranks; the 2-rank equality
is ``tests/test_sharded_curvature.py`` and ``tests/test_fsdp.py``). For ReLU and GELU, float32 and
float64, seeds 0..2: the Hessian's and Adam's pre-conditioned sharpness at ``tol=1e-3``, their
relative error against the exact float64 value, how many seeds' errors are within their
``error_bound`` and how many converged, the products, the retries at a smaller step,
the largest accepted gap and the wall time, beside the unsharded model's exact solve. ``--no-check``
also runs the float64 solves with the check off (``MAX_GAP = inf``), to show what it prevents.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_sharded_curvature.py [--seeds 3]
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F

import catapult
from catapult.curvature import difference, sharded
from catapult.curvature.distributed import single_process_group
from catapult.engine.fsdp import shard_model
from catapult.models import GPT


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def trained(seed, activation, dtype, shard):
    torch.manual_seed(seed)
    model = GPT(257, d_model=32, n_layers=2, n_heads=2, context=16, activation=activation).to(dtype)
    gen = torch.Generator().manual_seed(1000 + seed)
    tokens = torch.randint(0, 257, (8, 17), generator=gen)
    batch = (tokens[:, :-1], tokens[:, 1:])
    if shard:
        shard_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        token_loss(model(batch[0]), batch[1]).backward()
        opt.step()
    opt.zero_grad()
    return model, opt, batch


def exact_values(seed, activation):
    """float64 double backprop on the float32-trained weights (and on the float64-trained ones)."""
    out = {}
    for dtype in (torch.float32, torch.float64):
        model, opt, batch = trained(seed, activation, dtype, shard=False)
        m64 = copy.deepcopy(model).double()
        opt64 = torch.optim.Adam(m64.parameters(), lr=1e-3)
        opt64.load_state_dict(opt.state_dict())
        start = time.perf_counter()
        h = catapult.sharpness(m64, token_loss, batch, tol=1e-10, coarse=None, max_iter=300)
        out[dtype] = {"hessian": h.value,
                      "preconditioned": catapult.preconditioned_sharpness(m64, token_loss, batch, opt64,
                                                                          tol=1e-10, max_iter=300).value}
        model, opt, batch = trained(seed, activation, dtype, shard=False)
        start = time.perf_counter()
        est = catapult.sharpness(model, token_loss, batch, tol=1e-3)
        out[dtype]["plain_wall"] = time.perf_counter() - start
        out[dtype]["plain_products"] = est.matvecs + getattr(est, "coarse_matvecs", 0)
    return out


def sharded_values(seed, activation, dtype):
    model, opt, batch = trained(seed, activation, dtype, shard=True)
    out = {}
    try:
        ops = []
        original = sharded.ShardedHessianOperator

        class Recording(original):   # keep the operators, for their retry counts and gaps
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                ops.append(self)

        sharded.ShardedHessianOperator = Recording
        try:
            start = time.perf_counter()
            h = catapult.sharpness(model, token_loss, batch, tol=1e-3, distributed=True)
            out["wall"] = time.perf_counter() - start
            p = catapult.preconditioned_sharpness(model, token_loss, batch, opt, tol=1e-3, distributed=True)
        finally:
            sharded.ShardedHessianOperator = original
        out.update(hessian=h.value, preconditioned=p.value, products=h.matvecs + p.matvecs,
                   bounds=(h.error_bound, p.error_bound), converged=(h.converged, p.converged),
                   retries=sum(op.shrunk_steps for op in ops), gap=max(op.difference_gap for op in ops))
    except ValueError as refused:
        out["refused"] = str(refused).split(":")[1].strip()[:60]
    return out


def spread(values):
    return f"{statistics.mean(values):.2e} (max {max(values):.2e})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="also run float64 with the check off")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| activation | dtype | check | Hessian: rel. error, mean (max) | pre-conditioned: rel. error | "
          "within error_bound (H, P) | converged (H, P) | "
          "products (H + P) per seed | retries | largest gap | wall s per H call: sharded / unsharded exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with single_process_group():
        for activation in ("gelu", "relu"):
            exact = [exact_values(s, activation) for s in range(args.seeds)]
            runs = [(torch.float64, True), (torch.float32, True)]
            if args.no_check:
                runs.insert(1, (torch.float64, False))
            for dtype, check in runs:
                difference.MAX_GAP = 0.1 if check else math.inf
                got = [sharded_values(s, activation, dtype) for s in range(args.seeds)]
                name = str(dtype).replace("torch.", "")
                if any("refused" in g for g in got):
                    print(f"| {activation} | {name} | {'on' if check else 'off'} | refused on "
                          f"{sum('refused' in g for g in got)} of {len(got)} seeds: {got[0].get('refused', '')} | | | | | | | |")
                    continue
                err_h = [abs(g["hessian"] - e[dtype]["hessian"]) / e[dtype]["hessian"] for g, e in zip(got, exact)]
                err_p = [abs(g["preconditioned"] - e[dtype]["preconditioned"]) / e[dtype]["preconditioned"]
                         for g, e in zip(got, exact)]
                within = [sum(err[i] <= g["bounds"][k] for i, g in enumerate(got)) for k, err in enumerate((err_h, err_p))]
                converged = [sum(g["converged"][k] for g in got) for k in range(2)]
                wall = statistics.mean(g["wall"] for g in got)
                plain = statistics.mean(e[dtype]["plain_wall"] for e in exact)
                print(f"| {activation} | {name} | {'on' if check else 'off'} | {spread(err_h)} | {spread(err_p)} | "
                      f"{within[0]}/{len(got)}, {within[1]}/{len(got)} | {converged[0]}/{len(got)}, {converged[1]}/{len(got)} | "
                      f"{', '.join(str(g['products']) for g in got)} | {sum(g['retries'] for g in got)} | "
                      f"{max(g['gap'] for g in got):.2g} | {wall:.2f} / {plain:.2f} |")
        difference.MAX_GAP = 0.1


if __name__ == "__main__":
    main()
