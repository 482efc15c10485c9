"""Fuzz: does ``error_bound`` hold against the exact Hessian? Small models with dense float64
Hessians, many seeds and tolerances; counts the solves whose actual relative error (to the
nearest eigenvalue of the dense Hessian) exceeds the reported bound, and how many of those
said ``converged``.

Two families (``bench/RESULTS.md``, section 1m):

* ``lanczos``: exact products (double backprop) in float32, tol down to 1e-9, below float32's
  rounding: the default solve, ``coarse=None``, ``memory="lean"``, and ``top_eigenpairs`` k=1 /
  k=2 with a block of 2, on tanh / GELU / softplus MLPs (MSE and cross-entropy, 17 or 64 samples);
* ``difference``: ``hvp="finite_difference"`` in float32 and float64 (the certificate of
  ``catapult.curvature.certify``) on one-parameter tanh units, linear models, a cubic loss and
  tanh / GELU / ReLU MLPs, at three weight scales.

Usage:
    .venv/bin/python bench/fuzz_error_bounds.py lanczos [--seeds 30]
    .venv/bin/python bench/fuzz_error_bounds.py difference [--seeds 4]
    (on an older version: the same with its src/ first on PYTHONPATH)
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import catapult  # noqa: E402
from dense_curvature import dense_hessian  # noqa: E402


def mlp(seed: int, widths, act, n: int, loss: str):
    torch.manual_seed(seed)
    layers, w = [], 3
    for h in widths:
        layers += [torch.nn.Linear(w, h), act()]
        w = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(w, 2))
    x = torch.randn(n, 3)
    if loss == "ce":
        return model, torch.nn.CrossEntropyLoss(), (x, torch.randint(0, 2, (n,)))
    return model, torch.nn.MSELoss(), (x, torch.randn(n, 2))


def solve(mode: str, model, loss_fn, batch, tol: float, seed: int, **kw):
    """(value, bound, converged) of the top eigenvalue by ``mode``."""
    if mode.startswith("top"):
        eig = catapult.top_eigenpairs(model, loss_fn, batch, k=1 if mode == "top1" else 2, tol=tol, seed=seed,
                                      block_size=1 if mode == "top1" else 2, **kw)
        return float(eig.values[0]), float(eig.residuals[0]), bool(eig.converged)
    extra = {"default": {}, "coarse=None": {"coarse": None}, "lean": {"memory": "lean"}}[mode]
    est = catapult.sharpness(model, loss_fn, batch, tol=tol, seed=seed, max_iter=300, **extra, **kw)
    return est.value, est.error_bound, est.converged


def lanczos_family(seeds: int) -> None:
    tols = (1e-5, 1e-7, 1e-8, 1e-9)
    print("mode          solves  violations  of them converged   converged per tol " + str(tols))
    for mode in ("default", "coarse=None", "lean", "top1", "top2b"):
        solves = violations = false_claims = 0
        converged = dict.fromkeys(tols, 0)
        for seed in range(seeds):
            model, loss_fn, batch = mlp(seed, [[4], [6, 5], [3, 3, 3]][seed % 3],
                                        [torch.nn.Tanh, torch.nn.GELU, torch.nn.Softplus][seed % 3],
                                        [17, 64][seed % 2], ["mse", "ce"][seed % 2])
            eig = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())
            for tol in tols:
                value, bound, conv = solve(mode, model, loss_fn, batch, tol, seed)
                error = float(np.abs(eig - value).min()) / abs(value)
                solves += 1
                converged[tol] += conv
                violations += error > bound
                false_claims += conv and error > bound
        print(f"{mode:12s} {solves:7d} {violations:11d} {false_claims:18d}   {list(converged.values())}")


class Cubic(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x @ self.w


def cubic_loss(out, y):
    return ((out - y) ** 3).mean() + ((out - y) ** 2).mean()


def difference_problem(kind: str, seed: int, dtype, scale: float):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(16, 3, generator=g)
    if kind == "one":
        model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Tanh())
        x, y, loss_fn = torch.randn(16, 1, generator=g), scale * torch.randn(16, 1, generator=g), torch.nn.MSELoss()
    elif kind == "linear":
        model, y, loss_fn = torch.nn.Linear(3, 1), scale * torch.randn(16, 1, generator=g), torch.nn.MSELoss()
    elif kind == "cubic":
        model, y, loss_fn = Cubic(3), scale * torch.randn(16, generator=g), cubic_loss
    else:
        act = {"tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "relu": torch.nn.ReLU}[kind]
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), act(), torch.nn.Linear(4, 1))
        y, loss_fn = scale * torch.randn(16, 1, generator=g), torch.nn.MSELoss()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.to(dtype), loss_fn, (x.to(dtype), y.to(dtype))


def difference_family(seeds: int) -> None:
    print("kind    dtype    solves  refused  violations  of them converged  worst error/bound")
    for kind, dtype in itertools.product(("one", "linear", "cubic", "tanh", "gelu", "relu"),
                                         (torch.float32, torch.float64)):
        solves = refused = violations = false_claims = 0
        worst = 0.0
        for tol, seed, scale in itertools.product((1e-2, 1e-4, 1e-6), range(seeds), (0.5, 1.5, 3.0)):
            model, loss_fn, batch = difference_problem(kind, seed, dtype, scale)
            eig = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())
            try:
                est = catapult.sharpness(model, loss_fn, batch, tol=tol, seed=seed, hvp="finite_difference")
            except ValueError:  # steps across kinks (difference.py): refused, not measured
                refused += 1
                continue
            error = float(np.abs(eig - est.value).min()) / abs(est.value) if est.value else math.inf
            solves += 1
            if error > est.error_bound:
                violations += 1
                false_claims += est.converged
                worst = max(worst, error / max(est.error_bound, 1e-300))
        print(f"{kind:7s} {str(dtype)[6:]:8s} {solves:6d} {refused:8d} {violations:11d} {false_claims:18d}  "
              f"{worst:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=("lanczos", "difference"))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (lanczos 30, difference 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("catapult from", os.path.dirname(catapult.__file__))
    if args.family == "lanczos":
        lanczos_family(args.seeds or 30)
    else:
        difference_family(args.seeds or 4)


if __name__ == "__main__":
    main()
