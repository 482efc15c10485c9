"""Probe: the sharpness from ``hvp="finite_difference"`` with the kink check of
:mod:`catapult.curvature.difference` off and on, against exact double backprop.

MLPs 32-256-256-10 (ReLU, tanh, GELU), cross-entropy on 128 random samples of 10 classes, at
initialisation, float32 and float64, seeds 0..2; ``sharpness(tol=1e-4, coarse=None)`` with
``memory="fast"`` and ``"lean"``. With the check off every product is taken at the first step
``h = eps^(1/3)`` (what the code did before the check); with it on, a product whose forward and
backward differences disagree is retaken at ``h / 16`` and ``h / 256``, or the call is refused.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_fd_check.py [--seeds 3]
"""
from __future__ import annotations

import argparse

import torch

import catapult
from catapult.curvature import difference


def mlp(activation, dtype, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), activation(), torch.nn.Linear(256, 256),
                                activation(), torch.nn.Linear(256, 10)).to(dtype)
    return model, (torch.randn(128, 32, dtype=dtype), torch.randint(0, 10, (128,)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    loss_fn = torch.nn.CrossEntropyLoss()
    print("| activation | dtype | memory | check | rel. error per seed (or refused) | products per seed |")
    print("|---|---|---|---|---|---|")
    for activation in (torch.nn.ReLU, torch.nn.Tanh, torch.nn.GELU):
        for dtype in (torch.float32, torch.float64):
            for memory in ("fast", "lean"):
                for check in (False, True):
                    difference.MAX_GAP = 0.1 if check else float("inf")
                    errors, products = [], []
                    for seed in range(args.seeds):
                        model, batch = mlp(activation, dtype, seed)
                        exact = catapult.sharpness(model, loss_fn, batch, tol=1e-8, dtype=torch.float64,
                                                   max_iter=500).value
                        try:
                            est = catapult.sharpness(model, loss_fn, batch, tol=1e-4, hvp="finite_difference",
                                                     coarse=None, memory=memory)
                        except ValueError:
                            errors.append("refused")
                            products.append("-")
                            continue
                        errors.append(f"{abs(est.value - exact) / exact:.1e}")
                        products.append(str(est.matvecs))
                    print(f"| {activation.__name__} | {str(dtype).split('.')[-1]} | {memory} | "
                          f"{'on' if check else 'off'} | {', '.join(errors)} | {', '.join(products)} |", flush=True)
    difference.MAX_GAP = 0.1


if __name__ == "__main__":
    main()
