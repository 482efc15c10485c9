"""Adam's pre-conditioned sharpness with float32 finite-difference products on a model with a
bias before a train-mode BatchNorm: how far off, why, and what the remedies give.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_bn_preconditioned_fd.py [--seeds 5]

A Linear(4, 16) -> BatchNorm1d(16) -> Tanh -> Linear(16, 3) classifier after 5 Adam steps
(lr 1e-2) on 64 samples. The BatchNorm subtracts the batch mean, so the loss does not depend on
the first Linear's bias: its gradient is 0 up to rounding (float32: ~5e-9), Adam's second
moment there ~1e-19, and ``P`` sits at ``eps`` (1e-8): ``P^-1/2`` ~ 1e4 on those 16 coordinates.
The operator ``P^-1/2 H P^-1/2`` is 0 there in exact arithmetic, but a difference product's
gradient rounding there (~eps_32 |g| / h) is multiplied by ``P^-1`` ~ 1e8. Columns: the value
against float64 double backprop (the truth), ``converged``, the reported relative error bound;
the same with the bias removed (``bias=False``, the usual choice before a BatchNorm), with
``dtype=torch.float64`` differences, and with exact float32 products.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

import catapult


def problem(seed: int, bias: bool):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16, bias=bias), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model, loss_fn, (x, y), opt


def cell(est, truth: float) -> str:
    return f"{est.value / truth:.4f} ({'yes' if est.converged else 'no'}, {est.error_bound:.2g})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| seed | bias | truth (float64 exact) | FD float32: ratio (converged, bound) | FD float64 | exact float32 |"
          " largest P^-1/2 |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        for bias in (True, False):
            model, loss_fn, batch, opt = problem(seed, bias)
            truth = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, dtype=torch.float64).value
            fd32 = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, hvp="finite_difference")
            fd64 = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, hvp="finite_difference",
                                                     dtype=torch.float64)
            exact32 = catapult.preconditioned_sharpness(model, loss_fn, batch, opt)
            # the pre-conditioner's largest P^-1/2 (step t + 1, as the next step applies it)
            b1, b2 = opt.param_groups[0]["betas"]
            eps = opt.param_groups[0]["eps"]
            largest = 0.0
            for p in model.parameters():
                state = opt.state[p]
                t = int(state["step"]) + 1
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                v = b2 * state["exp_avg_sq"] + (1 - b2) * g.square()
                pre = (1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + eps)
                largest = max(largest, float(pre.min().rsqrt()))
            print(f"| {seed} | {bias} | {truth:.6g} | {cell(fd32, truth)} | {cell(fd64, truth)} | "
                  f"{cell(exact32, truth)} | {largest:.3g} |")


if __name__ == "__main__":
    main()
