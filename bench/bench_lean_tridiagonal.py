"""lean_top_eigenpair's per-step Ritz pair: ``lanczos.tridiagonal_top_pair`` on T_m's diagonals
(O(m) a step) against the dense ``numpy.linalg.eigh`` of the m x m T_m it replaced (O(m^3) a
step), same run, alternating: products, seconds (min over ``--reps``), the ratio, and the two
results' differences. The operator is diagonal (Lanczos from a random start sees only its
spectrum) with ``n`` = 20,000 eigenvalues, the top two 1e-5 apart relative, so the solves are
long (hundreds of steps a cycle); its products are cheap, so the solver's own cost shows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_lean_tridiagonal.py [--reps 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from catapult.curvature import lean
from catapult.curvature.lean import lean_top_eigenpair


def dense_top_pair(alphas, betas):
    """The path before: numpy's eigh of the dense m x m T_m."""
    d = np.asarray(alphas)
    T = np.diag(d) + np.diag(np.asarray(betas), 1) + np.diag(np.asarray(betas), -1)
    values, vectors = np.linalg.eigh(T)
    s = vectors[:, -1]
    return float(values[-1]), s * np.sign(s[np.argmax(np.abs(s))]), float(values[0])


def operator(n: int):
    g = torch.Generator().manual_seed(0)
    spectrum = torch.cat([torch.tensor([10.0, 9.9999], dtype=torch.float64),
                          torch.linspace(-5.0, 9.999, n - 2, dtype=torch.float64)])
    return spectrum, torch.randn(n, generator=g, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)  # the dense path at 2000 products: ~2 min
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    A, v0 = operator(args.n)
    print("| tol | max_iter | products | dense eigh s | tridiagonal s | ratio | value diff | vector diff |")
    print("|---|---|---|---|---|---|---|---|")
    fast_pair = lean.tridiagonal_top_pair
    fast_pair([1.0, 2.0], [0.5])  # scipy.linalg's import (~0.1 s, once a process) is not timed
    for tol, max_iter in ((1e-6, 200), (1e-9, 1000), (1e-12, 2000)):
        seconds = {"dense": [], "tridiagonal": []}
        results = {}
        for _ in range(args.reps):
            for name, pair in (("dense", dense_top_pair), ("tridiagonal", fast_pair)):
                lean.tridiagonal_top_pair = pair
                try:
                    start = time.perf_counter()
                    est = lean_top_eigenpair(lambda v: A * v, v0, tol=tol, max_iter=max_iter)
                    seconds[name].append(time.perf_counter() - start)
                finally:
                    lean.tridiagonal_top_pair = fast_pair
                results[name] = est
        d, t = results["dense"], results["tridiagonal"]
        assert d.matvecs == t.matvecs
        slow, fast = min(seconds["dense"]), min(seconds["tridiagonal"])
        print(f"| {tol:g} | {max_iter} | {t.matvecs} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x | "
              f"{abs(d.value - t.value):.1e} | {float((d.vector - t.vector).abs().max()):.1e} |")


if __name__ == "__main__":
    main()
