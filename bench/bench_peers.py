"""Benchmark: catapult.sharpness vs the maintained peers, one run, same machine load.

Peers (the ``bench`` extra; ``make bench`` installs it and runs this script at one thread. By
hand: ``pip install -e ".[bench]" torch==2.13.0``, naming the installed torch so that pip keeps
it: curvlinops' dependency backpack needs torchvision, whose newest release would pull a newer
CUDA build of torch):
  * hessian-eigenthings 1.0 (``lanczos(HessianOperator, k=1, which="LA", max_iter=m)``): a fixed
    number ``m`` of Lanczos steps, each HVP re-building the gradient graph. Its users must pick
    ``m``; it is given its *best* ``m`` here: per seed, the smallest ``m`` whose eigenvalue is
    within the target of the reference (an oracle no user has), timed on that run alone.
  * curvlinops 3 (``HessianLinearOperator(...).to_scipy()``) + ``scipy.sparse.linalg.eigsh``
    (ARPACK, ``k=1, which="LA", tol``; eigsh's ``tol`` is the relative accuracy of the eigenvalue).

Problems: the warmup paper's Fig. 1 FCN (3072-512x3-10, SP) with ``nn.MSELoss()`` (mean over
batch x outputs, one-hot targets) on 1,000 and 2,500 seeded per-sample-standardised Gaussian
inputs of CIFAR shape; a small GPT (``catapult.models.GPT``: vocab 65, d_model 64, 2 layers, 4
heads, context 32) with token cross-entropy on 16 seeded random sequences (``gpt``, the issue's
problem); and, not in the default list, ``gpt_bpe``: the Fig. 4 config's small GPT on 16 windows
of the embedded Shakespeare as BPE-4096 tokens. The reference
``lambda_max`` is ours in float64 at tol 1e-10. Every solver runs in float32 from a seeded
random start; ``--seeds`` seeds each.

Reported per problem: eigenvalue, relative error, HVPs (ours: exact products, "+ k" the cheaper
products of its coarse start: sub-batch or finite-difference), wall and CPU seconds (mean over
seeds), ``ours / peer`` wall-time ratios (the issue's target is <= 0.5), and the CPU cost of one
call of each kind of product.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_peers.py [--seeds 3] [--problems fcn1000,fcn2500,gpt]
        [--ours-tol 1e-2]   (ours also at looser tols, same interleave)
        [--hvp compiled]    (ours with that product mode; with ``compiled`` a first call per
                             problem compiles, outside the timed calls, and its time is printed;
                             ``--hvp gpt=compiled`` sets it for one problem, the others keep auto)
"""
from __future__ import annotations

import argparse
import os
import sys

# scipy's OpenBLAS threads keep spinning for a while after eigsh returns; with more than one
# torch thread they took a core from the next solver in the interleave (ours, the next seed):
# measured at 2 threads, the GPT's ratio 0.99-1.05 with them against 0.68 without (RESULTS,
# issue 16, 1c). The BLAS work of every solver here is tiny, so one BLAS thread costs nothing.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the BLAS thread setting)
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sharpness import Timer, make_batch, make_model  # noqa: E402  (same FCN problem, same clock)

from catapult.curvature import sharpness  # noqa: E402
from catapult.curvature.hessian import HVP_MODES, math_attention  # noqa: E402

TARGET = 1e-3


class FlatLogits(nn.Module):
    """GPT logits (B, T, V) -> (B*T, V), so one nn.CrossEntropyLoss serves every solver."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx):
        out = self.gpt(idx)
        return out.reshape(-1, out.shape[-1])


def problem(name: str, data_seed: int = 0):
    """(model, loss module, (inputs, targets)) with float targets for MSE; ``data_seed`` draws the
    FCN's synthetic batch (the same model)."""
    if name.startswith("fcn"):
        n = int(name[3:])
        model = make_model("sp")
        x, y = make_batch(n, seed=data_seed)
        return model, nn.MSELoss(), (x, F.one_hot(y, 10).float())
    if name == "gpt":
        from catapult.models import GPT
        torch.manual_seed(0)
        gpt = GPT(65, d_model=64, n_layers=2, n_heads=4, context=32)
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 65, (16, 33), generator=gen)
        return FlatLogits(gpt), nn.CrossEntropyLoss(), (tokens[:, :-1], tokens[:, 1:].reshape(-1))
    if name == "gpt_bpe":
        # the project's small GPT as its Fig. 4 config builds it (BPE-4096 Shakespeare, width 64,
        # 2 blocks, 2 heads, context 32), at init, on the first 16 training windows: real text
        from catapult.config import read_mapping
        from catapult.engine import build_run
        raw = read_mapping(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                        "sweeps", "fig4_gpt_small_bpe.yaml"))
        raw.pop("sweep")
        setup = build_run(raw)
        x, y = setup.data.x_train[:16], setup.data.y_train[:16]
        return FlatLogits(setup.model), nn.CrossEntropyLoss(), (x, y.reshape(-1))
    raise SystemExit(f"unknown problem {name!r}")


def run_ours(model, loss, batch, seed, tol=TARGET, hvp="auto"):
    with Timer() as t:
        est = sharpness(model, loss, batch, tol=tol, seed=seed, hvp=hvp)
    return est.value, est.matvecs, t.seconds, t.cpu, est.coarse_matvecs


def product_costs(model, loss, batch, reps=7):
    """Median CPU ms of one graph build, one exact product and one difference product of ours,
    and one hessian-eigenthings product (which re-builds the graph), interleaved."""
    import hessian_eigenthings as he
    from catapult.curvature import HessianOperator

    op = HessianOperator(model, loss, batch)
    v = torch.randn(op.numel, generator=torch.Generator().manual_seed(0))
    op.gradient()
    peer = he.HessianOperator(model, [batch], lambda m, b: loss(m(b[0]), b[1]))
    kinds = {"ours: build (forward + backward with graph)": lambda: HessianOperator(model, loss, batch),
             "ours: exact product": lambda: op(v),
             "ours: difference product (one gradient)": lambda: op.forward_difference(v),
             "hessian-eigenthings: product": lambda: peer.matvec(v)}
    times = {k: [] for k in kinds}
    with math_attention():
        for r in range(reps):
            for k, f in (kinds.items() if r % 2 else reversed(kinds.items())):
                with Timer() as t:
                    f()
                times[k].append(t.cpu)
    return {k: 1e3 * float(np.median(x)) for k, x in times.items()}


def run_eigenthings(model, loss, batch, seed, ref, max_m=60):
    """Smallest max_iter within TARGET of ref (scanned upward); that run's numbers."""
    import hessian_eigenthings as he

    def loss_of(m, b):
        return loss(m(b[0]), b[1])

    op = he.HessianOperator(model, [batch], loss_of)
    for m in range(2, max_m + 1):
        with Timer() as t:
            res = he.lanczos(op, k=1, max_iter=m, which="LA", seed=seed)
        value = float(res.eigenvalues[0])
        if abs(value - ref) / abs(ref) <= TARGET:
            return value, m, t.seconds, t.cpu
    return value, max_m, t.seconds, t.cpu


def run_curvlinops(model, loss, batch, seed, k=1):
    """curvlinops' Hessian through ``eigsh(k, which="LA", tol=TARGET)``: ``(value, products, wall,
    CPU)``, with ``value`` the top eigenvalue for ``k=1`` and the list of ``k`` values else."""
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    count = [0]
    with Timer() as t:
        H = HessianLinearOperator(model, loss, params, [batch]).to_scipy(np.float32)
        inner = H.matvec

        def matvec(v):
            count[0] += 1
            return inner(v)

        op = LinearOperator(H.shape, matvec=matvec, dtype=np.float32)
        v0 = np.random.default_rng(seed).standard_normal(H.shape[0]).astype(np.float32)
        values = [float(x) for x in eigsh(op, k=k, which="LA", tol=TARGET, v0=v0, return_eigenvectors=False)]
    return (values[0] if k == 1 else values), count[0], t.seconds, t.cpu


def spectrum_figure(path: str) -> None:
    """Top-5, Hutch++ trace and SLQ density of the Hessian and the Gauss-Newton matrix of the
    FCN on 1,000 inputs; the densities go to ``path`` (one panel each)."""
    from catapult import hessian_trace, spectral_density, top_eigenpairs
    from catapult.plots import plot_spectral_density

    model, loss, batch = problem("fcn1000")
    for curvature in ("hessian", "ggn"):
        with Timer() as t:
            eig = top_eigenpairs(model, loss, batch, k=5, curvature=curvature)
            trace = hessian_trace(model, loss, batch, matvecs=60, curvature=curvature)
            dens = spectral_density(model, loss, batch, runs=4, steps=30, curvature=curvature)
        print(f"{curvature}: top-5 {[round(v, 3) for v in eig.values]} ({eig.matvecs} products), "
              f"trace {trace:.4g} (Hutch++, 60 products), SLQ 4 x 30 products; "
              f"{t.cpu:.1f} CPU s", flush=True)
        out = path.replace(".png", f"_{curvature}.png")
        plot_spectral_density(dens, out, title=f"Fig. 1 FCN, n=1000: {curvature} spectrum (SLQ)")
        print(f"figure: {out}")


def hvp_modes(text: str) -> dict:
    """``--hvp``: one mode for every problem (``{"*": mode}``) or ``problem=mode`` pairs."""
    pairs = [part.split("=", 1) if "=" in part else ("*", part) for part in text.split(",")]
    for _, mode in pairs:
        if mode not in HVP_MODES:
            raise argparse.ArgumentTypeError(f"{mode!r} is not one of {', '.join(HVP_MODES)}")
    return dict(pairs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", default="fcn1000,fcn2500,gpt")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="the FCN problems' synthetic batch (make_batch's seed; default 0)")
    parser.add_argument("--ours-tol", default="",
                        help="also run ours at these looser tols (comma-separated, e.g. 1e-2), in the "
                             "same interleave: its residual certificate against the peers' eigenvalue "
                             "error (a residual r bounds the eigenvalue error by r, and by ~r^2/gap)")
    parser.add_argument("--hvp", default="auto", type=hvp_modes,
                        help="ours' product mode (default auto), for every problem or as "
                             "problem=mode pairs (e.g. gpt=compiled; the others keep auto); with "
                             "'compiled' each problem's first call compiles, outside the timed "
                             "calls, and its time is printed")
    parser.add_argument("--spectrum-figure", default=None,
                        help="instead: top-5, trace and SLQ density of the FCN (Hessian and GGN), "
                             "figures at this path (suffixed _hessian / _ggn)")
    args = parser.parse_args(argv)
    if args.spectrum_figure:
        spectrum_figure(args.spectrum_figure)
        return
    import hessian_eigenthings
    import curvlinops
    import scipy
    print(f"# bench_peers: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"hessian-eigenthings {hessian_eigenthings.__version__}, curvlinops "
          f"{getattr(curvlinops, '__version__', '3')}, scipy {scipy.__version__}, "
          f"load avg at start {os.getloadavg()[0]:.2f}", flush=True)
    summary = []
    for name in args.problems.split(","):
        model, loss, batch = problem(name, args.data_seed)
        n_params = sum(p.numel() for p in model.parameters())
        with Timer() as t:
            ref = sharpness(model, loss, batch, tol=1e-10, max_iter=1000, dtype=torch.float64,
                            max_basis=64).value
        print(f"\n## {name}: {n_params} parameters, reference lambda_max {ref:.8g} "
              f"({t.seconds:.1f} s)", flush=True)
        hvp = args.hvp.get(name, args.hvp.get("*", "auto"))
        if hvp != "auto":  # a first call's compile is not one of the timed calls
            with Timer() as t:
                run_ours(model, loss, batch, 0, hvp=hvp)
            print(f"first call with hvp={hvp!r}: wall {t.seconds:.1f} s, CPU {t.cpu:.1f} s", flush=True)
        rows = {"catapult.sharpness tol 1e-3": [], "hessian-eigenthings, best max_iter": [],
                "curvlinops + eigsh tol 1e-3": []}
        looser = [float(x) for x in args.ours_tol.split(",") if x]
        rows.update({f"catapult.sharpness tol {tol:g}": [] for tol in looser})
        for seed in range(args.seeds):
            # interleaved per seed so the solvers share the machine's load
            rows["catapult.sharpness tol 1e-3"].append(run_ours(model, loss, batch, seed, hvp=hvp))
            for tol in looser:
                rows[f"catapult.sharpness tol {tol:g}"].append(run_ours(model, loss, batch, seed, tol,
                                                                        hvp=hvp))
            # the peers need the twice-differentiable (math) attention kernel, as ours uses
            with math_attention():
                rows["hessian-eigenthings, best max_iter"].append(
                    run_eigenthings(model, loss, batch, seed, ref))
                rows["curvlinops + eigsh tol 1e-3"].append(run_curvlinops(model, loss, batch, seed))
            for label, r in rows.items():
                v, k, s, c = r[-1][:4]
                extra = f" (+ {r[-1][4]} coarse)" if len(r[-1]) > 4 else ""
                print(f"  seed {seed} {label}: {v:.6g} err {abs(v - ref) / abs(ref):.1e} "
                      f"HVPs {k}{extra} wall {s:.2f} s CPU {c:.2f} s", flush=True)
        print("\n| solver | rel. error (max) | HVPs (per seed) | wall s (mean) | CPU s (mean) | "
              "ours / solver, wall | ours / solver, CPU |\n|---|---|---|---|---|---|---|")
        ours = rows["catapult.sharpness tol 1e-3"]
        ow, oc = np.mean([r[2] for r in ours]), np.mean([r[3] for r in ours])
        for label, r in rows.items():
            err = max(abs(x[0] - ref) / abs(ref) for x in r)
            w, c = np.mean([x[2] for x in r]), np.mean([x[3] for x in r])
            counts = ", ".join(str(x[1]) + (f" (+{x[4]})" if len(x) > 4 else "") for x in r)
            print(f"| {label} | {err:.1e} | {counts} | {w:.2f} | "
                  f"{c:.2f} | {ow / w:.2f} | {oc / c:.2f} |")
            if not label.startswith("catapult.sharpness"):
                summary.append((name, label, ow / w, oc / c))
        for tol in looser:
            mine = rows[f"catapult.sharpness tol {tol:g}"]
            mw, mc = np.mean([r[2] for r in mine]), np.mean([r[3] for r in mine])
            for label, r in rows.items():
                if not label.startswith("catapult.sharpness"):
                    w, c = np.mean([x[2] for x in r]), np.mean([x[3] for x in r])
                    print(f"ours at tol {tol:g} / {label}: wall {mw / w:.2f}, CPU {mc / c:.2f}")
        costs = product_costs(model, loss, batch)
        print("\nCPU ms per call (median of 7, interleaved): " + "; ".join(
            f"{k} {v:.1f}" for k, v in costs.items()), flush=True)
    print("\n| problem | peer | ours / peer, wall | ours / peer, CPU | target <= 0.5 |\n"
          "|---|---|---|---|---|")
    for name, label, w, c in summary:
        print(f"| {name} | {label} | {w:.2f} | {c:.2f} | {'met' if w <= 0.5 else 'NOT met'} |")
    print(f"\nload avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
