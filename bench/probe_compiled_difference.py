"""Probe (issue 16, the GPT speed item): would a ``torch.compile``d gradient for the
finite-difference level bring the small GPT to half the oracle peer's time?

The level's products are one gradient each (``HessianOperator.forward_difference``); only first
derivatives, which ``torch.compile`` handles (the exact certifying products need double
backward, which it does not). This swaps ``forward_difference`` for one whose gradient, at
``theta + h u`` and at its base point ``theta``, is ``torch.compile(torch.func.grad(loss))``, and
times, in one process and alternating per seed: ``sharpness`` as shipped, ``sharpness`` with the
compiled level, and hessian-eigenthings at its oracle ``max_iter`` (11, 13, 14). Round 1 warms up
(and compiles; its time is printed), rounds 2-3 are timed (CPU and wall, mean per call).
Nothing in the library is changed.

A fourth arm adds compiled exact products to the compiled level: ``jvp(grad(loss))`` (forward
over reverse, ``--products forward``, the default) or ``vjp(grad(loss))`` (reverse over reverse,
``--products reverse``, which compiles on the one-hot MSE loss where the forward one crashes:
``bench/probe_compiled_forward_ad.py``).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_compiled_difference.py [--threads 1] [--level-tol 3e-3]
            [--products forward|reverse]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402

from catapult.curvature import HessianOperator, sharpness  # noqa: E402
from catapult.curvature.hessian import math_attention  # noqa: E402

ORACLE = (11, 13, 14)
SHIPPED = HessianOperator.forward_difference
SHIPPED_PRODUCT = HessianOperator.__call__


def compiled_level(model, loss_fn, inputs, targets):
    """A ``forward_difference`` replacement whose gradients come from one compiled function."""
    def loss(params):
        return loss_fn(torch.func.functional_call(model, params, (inputs,)), targets)
    grad = torch.compile(torch.func.grad(loss))
    bases = {}

    def forward_difference(self, v):
        v = v.to(device=self.device, dtype=self.dtype)
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0:
            return torch.zeros_like(v)
        if id(self) not in bases:   # the base point through the same kernels as the shifted ones
            bases.clear()
            bases[id(self)] = torch.cat([g.reshape(-1) for g in grad(dict(self._params)).values()])
        h = self._eps ** 0.5
        shifted = {n: p + (h / norm) * c for (n, p), c in zip(self._params.items(), self.split(v))}
        flat = torch.cat([g.reshape(-1) for g in grad(shifted).values()])
        return flat.sub_(bases[id(self)]).mul_(norm / h)
    return forward_difference


def compiled_products(model, loss_fn, inputs, targets, kind="forward"):
    """A ``__call__`` replacement for ``hvp="forward_over_reverse"``: ``H v`` from
    ``torch.compile`` of ``jvp(grad(loss))`` (``kind="forward"``) or of ``vjp(grad(loss))``
    (``"reverse"``): exact products, no graph kept between them."""
    def loss(params):
        return loss_fn(torch.func.functional_call(model, params, (inputs,)), targets)
    grad = torch.func.grad(loss)
    if kind == "forward":
        hvp = torch.compile(lambda params, tangents: torch.func.jvp(grad, (params,), (tangents,))[1])
    else:
        hvp = torch.compile(lambda params, tangents: torch.func.vjp(grad, params)[1](tangents)[0])

    def product(self, v):
        v = v.to(device=self.device, dtype=self.dtype)
        self.matvecs += 1
        with math_attention():   # the fused CPU attention has no forward-AD formula nor double backward
            out = hvp(dict(self._params), dict(zip(self.names, self.split(v))))
        return torch.cat([out[n].reshape(-1) for n in self.names])
    return product


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--level-tol", type=float, default=None,
                        help="the difference level's tol for both arms (default: coarse='auto', 3e-3)")
    parser.add_argument("--products", choices=("forward", "reverse"), default="forward",
                        help="the compiled exact products: jvp(grad) or vjp(grad) (default forward)")
    args = parser.parse_args()
    import hessian_eigenthings as he

    torch.set_num_threads(args.threads)
    model, loss_fn, batch = problem("gpt")
    peer = he.HessianOperator(model, [batch], lambda m, b: loss_fn(m(b[0]), b[1]))
    compiled = compiled_level(model, loss_fn, *batch)
    products = compiled_products(model, loss_fn, *batch, kind=args.products)
    times = {"shipped": [], "compiled": [], "compiled products": [], "peer": []}
    answers = {}
    for round_ in range(3):
        for seed, m in enumerate(ORACLE):
            for arm in ("shipped", "compiled", "compiled products", "peer"):
                HessianOperator.forward_difference = SHIPPED if arm in ("shipped", "peer") else compiled
                HessianOperator.__call__ = products if arm == "compiled products" else SHIPPED_PRODUCT
                wall, cpu = time.perf_counter(), time.process_time()
                if arm == "peer":
                    with math_attention():
                        he.lanczos(peer, k=1, max_iter=m, which="LA", seed=seed)
                else:
                    coarse = "auto" if args.level_tol is None else [("finite_difference", args.level_tol)]
                    hvp = "forward_over_reverse" if arm == "compiled products" else "auto"
                    est = sharpness(model, loss_fn, batch, tol=1e-3, seed=seed, coarse=coarse, hvp=hvp)
                    answers[arm, seed] = (est.matvecs, est.coarse_matvecs, round(est.value, 6), est.converged)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if round_ == 0 and arm != "peer" and seed == 0:
                    print(f"first {arm} call: {wall:.1f} s wall")
                if round_:
                    times[arm].append((cpu, wall))
    HessianOperator.forward_difference, HessianOperator.__call__ = SHIPPED, SHIPPED_PRODUCT
    for seed in range(3):
        print(f"seed {seed}: shipped (exact, level products, value, converged) {answers['shipped', seed]}, "
              f"compiled level {answers['compiled', seed]}, and products {answers['compiled products', seed]}")
    peer_cpu = statistics.mean(t[0] for t in times["peer"])
    peer_wall = statistics.mean(t[1] for t in times["peer"])
    for arm in ("shipped", "compiled", "compiled products", "peer"):
        cpu = statistics.mean(t[0] for t in times[arm])
        wall = statistics.mean(t[1] for t in times[arm])
        print(f"| {arm} | {args.threads} | {cpu * 1e3:.0f} | {wall * 1e3:.0f} | {cpu / peer_cpu:.2f} | {wall / peer_wall:.2f} |")


if __name__ == "__main__":
    main()
