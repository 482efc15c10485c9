"""Benchmark: how often ``top_eigenpairs(memory="lean")`` converges, against dense Hessians.

Small MLPs (tanh and ReLU, 2-3 layers, 244-2,632 parameters, MSE and cross-entropy) and a small
GPT (1 block, width 16, 3,984 parameters), float32 as a run measures them, at the engine's
setting (``eval.sharpness_tol`` 1e-3, ``max_iter = max(eval.sharpness_max_iter = 100, 3 k)``,
blocks of 1), top 3 and top 5, seeds 0-4: memory ``lean`` with its basis floored as before
(``k + 2``), at ``2 k + 1`` and as it is (``restart_floor``: ``3 k + 1``), and ``fast``. Per
problem: the basis each solve kept, converged solves, products (mean), and the largest relative
error of the top k against the dense Hessian's (float64 ``eigvalsh``; a converged solve off by
more than ``tol`` missed a copy of a repeated eigenvalue: one start vector sees one copy).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lean_topk.py [--seeds 5] [--ks 3,5]
"""
from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
import torch.nn as nn

import catapult
from catapult.curvature import HessianOperator
from catapult.curvature.hessian import math_attention
from catapult.curvature import spectrum
from catapult.curvature.sharpness import memory_setting
from catapult.curvature.top_k import restart_floor


class SequenceCrossEntropy(nn.Module):
    """Cross-entropy of logits (B, T, V) against tokens (B, T): samples stay whole, so lean's
    micro-batches split inputs and targets alike."""

    def forward(self, logits, targets):
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mlp(widths, act, loss, n=64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    model = nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, widths[0], generator=gen)
    if loss == "mse":
        return model, nn.MSELoss(), (x, torch.randn(n, widths[-1], generator=gen))
    return model, nn.CrossEntropyLoss(), (x, torch.randint(0, widths[-1], (n,), generator=gen))


def gpt():
    from catapult.models import GPT

    torch.manual_seed(0)
    model = GPT(17, d_model=16, n_layers=1, n_heads=2, context=8)
    tokens = torch.randint(0, 17, (16, 9), generator=torch.Generator().manual_seed(0))
    return model, SequenceCrossEntropy(), (tokens[:, :-1], tokens[:, 1:])


PROBLEMS = {
    "mlp-tanh-10x16x4-mse": lambda: mlp([10, 16, 4], nn.Tanh, "mse"),
    "mlp-tanh-20x32x32x10-ce": lambda: mlp([20, 32, 32, 10], nn.Tanh, "ce"),
    "mlp-relu-20x32x32x10-ce": lambda: mlp([20, 32, 32, 10], nn.ReLU, "ce"),
    "mlp-relu-32x64x8-mse": lambda: mlp([32, 64, 8], nn.ReLU, "mse", n=128),
    "gpt-1x16": gpt,
}


def dense_top(model, loss, batch, k):
    with math_attention():
        op = HessianOperator(model, loss, batch, dtype=torch.float64)
        eye = torch.eye(op.numel, dtype=torch.float64)
        H = torch.stack([op(eye[i]) for i in range(op.numel)])
    H = 0.5 * (H + H.T)
    return np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:k], op.numel


@contextlib.contextmanager
def floor_of(floor):
    """``top_eigenpairs(memory="lean")`` with its basis floored by ``floor(k, block)`` instead of
    :func:`~catapult.curvature.top_k.restart_floor` (``None``: as it is)."""
    kept = spectrum.restart_floor
    if floor is not None:
        spectrum.restart_floor = lambda k, block, own: floor(k, block)
    try:
        yield
    finally:
        spectrum.restart_floor = kept


#: (label, memory, floor of the lean basis): the floor lean had before (k + block + 1), 2 k + 1,
#: lean as it is (restart_floor: 3 k + block), and the fast setting
VARIANTS = [("lean, floor k+2 (before)", "lean", lambda k, b: k + b + 1),
            ("lean, floor 2k+1", "lean", lambda k, b: 2 * k + b),
            ("lean (floor 3k+1)", "lean", None),
            ("fast", "fast", None)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ks", default="3,5")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--max-iter", type=int, default=100)
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    print("| problem | params | k | memory | basis | converged | products (mean) | max rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.problems.split(","):
        model, loss, batch = PROBLEMS[name]()
        truth, n = dense_top(model, loss, batch, max(ks))
        _, lean_basis = memory_setting("lean", batch, None, None, model, loss)
        for k in ks:
            for label, memory, floor in VARIANTS:
                conv, prods, err = 0, [], 0.0
                for seed in range(args.seeds):
                    with math_attention(), floor_of(floor):
                        eig = catapult.top_eigenpairs(model, loss, batch, k=k, tol=1e-3, seed=seed,
                                                      max_iter=max(args.max_iter, 3 * k), memory=memory)
                    conv += int(eig.converged)
                    prods.append(eig.matvecs)
                    scale = abs(truth[0])
                    err = max(err, float(np.max(np.abs(np.array(eig.values) - truth[:k]))) / scale)
                kept = (max(lean_basis, (floor or (lambda k, b: restart_floor(k, b)))(k, 1)) if memory == "lean"
                        else max(2 * k + 10, 32))
                print(f"| {name} | {n} | {k} | {label} | {kept} | {conv}/{args.seeds} | "
                      f"{np.mean(prods):.1f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
