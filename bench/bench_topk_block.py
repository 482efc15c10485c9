"""Benchmark: top-k by block Lanczos (``top_eigenpairs(block_size=b)``), what a block costs and
what it finds.

1. Cost, where no eigenvalue repeats: the top 5 of the Fig. 1 FCN (n = 1000) and of the small
   GPT (``bench_peers``' problems), ``tol=1e-3``, ``block_size`` 1, 2, 3, seeds 0-2, one
   thread; products, CPU seconds per call (second of two rounds), the values.
2. What it finds, where eigenvalues repeat: a linear model 30 -> 3 under MSE on 200 Gaussian
   inputs, whose Hessian ``(2 / (N d)) I_3 (x) [X 1]^T [X 1]`` has every eigenvalue three times
   (closed form, float64), top 6 at ``tol=1e-6`` from seeds 0-2: the largest error against the
   closed form, per block size.

3. With ``--peers``: top 5 at ``tol=1e-3`` against scipy's block solver, ``lobpcg`` (block 5,
   ``largest=True``), on curvlinops' Hessian operator (the ``bench`` extra), seeds 0-2.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_topk_block.py [--problems fcn1000,gpt]
        OMP_NUM_THREADS=1 .venv/bin/python bench/bench_topk_block.py --peers --problems gpt
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scipy's spinning BLAS threads: see bench_peers.py

import numpy as np  # noqa: E402  (after the BLAS thread setting)
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402  (the same problems)

import catapult  # noqa: E402
from catapult.curvature.hessian import math_attention  # noqa: E402


def cost(names: list[str], blocks=(1, 2, 3), seeds=3) -> None:
    print("| problem | block_size | products per seed | CPU s per call (mean) | top 5 (seed 0) |")
    print("|---|---|---|---|---|")
    for name in names:
        model, loss, batch = problem(name)
        for b in blocks:
            rows = []
            for round_ in range(2):
                for seed in range(seeds):
                    start = time.process_time()
                    eig = catapult.top_eigenpairs(model, loss, batch, k=5, tol=1e-3, seed=seed,
                                                  block_size=b)
                    if round_:
                        rows.append((eig.matvecs, time.process_time() - start, eig.values, eig.converged))
            assert all(r[3] for r in rows)
            print(f"| {name} | {b} | {', '.join(str(r[0]) for r in rows)} | "
                  f"{np.mean([r[1] for r in rows]):.2f} | {', '.join(f'{v:.4f}' for v in rows[0][2])} |",
                  flush=True)


def multiplicity(blocks=(1, 2, 3), seeds=3) -> None:
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, N = 30, 3, 200
    x = torch.randn(N, d_in, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 3.0, d_in, dtype=torch.float64)
    y = torch.randn(N, d_out, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(d_in, d_out).double()
    X1 = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)
    gram = np.sort(np.linalg.eigvalsh((X1.T @ X1).numpy() * 2 / (N * d_out)))[::-1]
    truth = np.repeat(gram, d_out)[:6]
    print(f"\nlinear {d_in} -> {d_out}, MSE, N = {N}: top 6 (closed form) {np.round(truth, 4).tolist()}")
    print("| block_size | top 6 (seed 0) | max error / lambda_1, seeds 0-2 | products per seed |")
    print("|---|---|---|---|")
    for b in blocks:
        errors, products, first = [], [], None
        for seed in range(seeds):
            eig = catapult.top_eigenpairs(model, torch.nn.MSELoss(), (x, y), k=6, tol=1e-6, seed=seed,
                                          block_size=b)
            errors.append(np.max(np.abs(np.array(eig.values) - truth)) / truth[0])
            products.append(eig.matvecs)
            first = first or eig.values
        print(f"| {b} | {np.round(first, 4).tolist()} | {max(errors):.1e} | {', '.join(map(str, products))} |")


def run_lobpcg(model, loss, batch, seed, k, tol):
    """scipy's block solver, ``lobpcg(largest=True)``, on curvlinops' Hessian operator from a
    seeded random block of ``k``: ``(values, products, CPU s, converged)``. Its ``tol`` is on each
    residual norm ``||A x - lambda x||`` (absolute), so the caller passes ``tol * lambda``."""
    import warnings

    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, lobpcg

    params = [p for p in model.parameters() if p.requires_grad]
    dtype = np.float64 if params[0].dtype == torch.float64 else np.float32
    count = [0]
    start = time.process_time()
    H = HessianLinearOperator(model, loss, params, [batch]).to_scipy(dtype)

    def matmat(X):
        count[0] += X.shape[1]
        return np.stack([H.matvec(X[:, j]) for j in range(X.shape[1])], axis=1)

    op = LinearOperator(H.shape, matvec=lambda v: matmat(v[:, None])[:, 0], matmat=matmat, dtype=dtype)
    X = np.random.default_rng(seed).standard_normal((H.shape[0], k)).astype(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, _ = lobpcg(op, X, tol=tol, maxiter=500, largest=True)
    converged = not any("not reach" in str(w.message) or "Exited" in str(w.message) for w in caught)
    return sorted(map(float, values), reverse=True), count[0], time.process_time() - start, converged


def peers(names: list[str], seeds=3) -> None:
    """Top 5 at tol 1e-3: ours (block 1 and 5) against scipy's lobpcg (block 5) on curvlinops."""
    print("| problem | solver | products per seed | CPU s per call (mean) | max rel. error of the 5 | converged |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model, loss, batch = problem(name)
        ref = catapult.top_eigenpairs(model, loss, batch, k=5, tol=1e-8, max_iter=2000,
                                      dtype=torch.float64).values
        rows = {"ours, block_size 1": [], "ours, block_size 5": [], "lobpcg (scipy), block 5": []}
        for seed in range(seeds):
            for label in rows:
                if label.startswith("ours"):
                    start = time.process_time()
                    eig = catapult.top_eigenpairs(model, loss, batch, k=5, tol=1e-3, seed=seed,
                                                  block_size=int(label[-1]))
                    got = (eig.values, eig.matvecs, time.process_time() - start, eig.converged)
                else:
                    with math_attention():  # the peer's forward-over-reverse needs it
                        got = run_lobpcg(model, loss, batch, seed, 5, 1e-3 * ref[0])
                rows[label].append(got)
        for label, got in rows.items():
            error = max(abs(v - r) / abs(r) for g in got for v, r in zip(g[0], ref))
            print(f"| {name} | {label} | {', '.join(str(g[1]) for g in got)} | "
                  f"{np.mean([g[2] for g in got]):.2f} | {error:.1e} | {all(g[3] for g in got)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="fcn1000,gpt")
    parser.add_argument("--peers", action="store_true",
                        help="instead: top 5 against scipy's lobpcg on curvlinops' operator (the bench extra)")
    args = parser.parse_args()
    if args.peers:
        peers(args.problems.split(","))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    multiplicity()
    print()
    cost(args.problems.split(","))


if __name__ == "__main__":
    main()
