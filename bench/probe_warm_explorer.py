"""Probe: would carrying a second vector from one warm-started solve to the next stop warm starts
following an overtaken eigenvalue (bench/RESULTS.md, issue 16, 2b: "Left"), and at what cost?
Nothing in catapult is changed by it: the solver of catapult.sharpness / preconditioned_sharpness
is replaced, inside this process only, by a plain Rayleigh-Ritz Lanczos (full basis, the same
stop rule: relative residual <= tol) that can start from ``v0 + c e / ||e||``, ``e`` the carried
vector made orthogonal to the warm start ``v0`` (which already holds the seeded random part of
``min(100 tol, 1)``), and that carries, for the next solve:

  none      nothing (the prototype's own baseline: the library's behaviour; it matched the
            library's solver row for row on these problems, products within 1%)
  ritz2:C   the solve's second Ritz vector (a subspace of two tracked from solve to solve)
  next:C    the solve's next Lanczos direction (the residual of its basis: the Krylov process
            continued across solves)
  cold      every row from the run's own start vector (``eval.sharpness_start: cold``), no carry
  ...+drop:D  also a cold solve (a seeded random start) where the warm value falls below (1 - D)
            times the previous solve's value, the larger of the two kept (its products counted)

Problems (those of bench/probe_warm_start_trap.py): ``engine`` the coupled-weight-decay GPT cell
(Adam, wd 1e-3, lr 1e-2, Shakespeare characters, float64, 30 steps, sharpness every step, each row
checked against its eig_1, a cold solve of the same operator), seeds 0 .. N-1, or every setting of
ENGINE_SETTINGS with ``--settings``; ``fcn`` the Fig. 1 FCN under full-batch GD (the warm chain of
issue 16's item 2), products per warm call at steps 1-19.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_warm_explorer.py --problem engine --seeds 4 --variants none ritz2:0.5 next:0.5 ritz2:0.5+drop:0.15
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import catapult.curvature.start as start
from catapult.curvature.lanczos import EigenEstimate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe_warm_start_trap as trap  # noqa: E402

SOLVER = sys.modules["catapult.curvature.sharpness"]  # the module: the package exports a function of that name
STATE: dict = {}


def reset(variant: str) -> None:
    carry, _, drop = variant.partition("+drop:")
    mode, _, weight = carry.partition(":")  # "cold": nothing carried, as "none"
    STATE.clear()
    STATE.update(mode=mode, weight=float(weight or 0), drop=float(drop or 0), carried=None, previous=None)


def _rayleigh_ritz(matvec, q0, tol, max_iter):
    """Lanczos with a full basis and Rayleigh-Ritz on ``Q^T A Q``: (theta, vector, products,
    relative residual, the basis Q, A Q, the Ritz vectors of Q^T A Q)."""
    Q, AQ = [q0 / q0.norm()], []
    while True:
        AQ.append(matvec(Q[-1]).to(q0.dtype).clone())
        Qm, AQm = torch.stack(Q), torch.stack(AQ)
        T = Qm @ AQm.T
        values, vectors = torch.linalg.eigh((T + T.T) / 2)
        theta, s = float(values[-1]), vectors[:, -1]
        rel = float(((AQm.T @ s) - theta * (Qm.T @ s)).norm()) / abs(theta)
        w = AQm[-1] - Qm.T @ (Qm @ AQm[-1])
        w = w - Qm.T @ (Qm @ w)
        if rel <= tol or len(AQ) >= max_iter or float(w.norm()) <= 1e-12 * abs(theta):
            vector = Qm.T @ s
            return theta, vector / vector.norm(), len(AQ), rel, Qm, vectors, w
        Q.append(w / w.norm())


def solver(matvec, v0, *, tol=1e-3, max_iter=100, **_):
    start_vector = v0 / v0.norm()
    carried = STATE["carried"]
    if carried is not None and STATE["weight"] > 0:
        e = carried - (carried @ start_vector) * start_vector
        if float(e.norm()) > 1e-8:
            start_vector = start_vector + STATE["weight"] * e / e.norm()
    theta, vector, products, rel, Q, ritz, w = _rayleigh_ritz(matvec, start_vector, tol, max_iter)
    previous = STATE["previous"]
    if STATE["drop"] > 0 and previous is not None and theta < (1 - STATE["drop"]) * previous:
        gen = torch.Generator().manual_seed(12345 + products)
        cold = _rayleigh_ritz(matvec, torch.randn(v0.numel(), generator=gen, dtype=v0.dtype), tol, max_iter)
        products += cold[2]
        if cold[0] > theta:
            theta, vector, _, rel, Q, ritz, w = cold
    STATE["previous"] = theta
    if STATE["mode"] == "next":
        STATE["carried"] = w / w.norm() if float(w.norm()) > 0 else None
    elif STATE["mode"] == "ritz2" and Q.shape[0] >= 2:
        second = Q.T @ ritz[:, -2]
        STATE["carried"] = second / second.norm()
    return EigenEstimate(theta, vector, products, rel <= tol, rel, rel)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=["engine", "fcn"], default="engine")
    parser.add_argument("--variants", nargs="+", default=["none", "ritz2:0.5", "next:0.5", "ritz2:0.5+drop:0.15"],
                        help="what each solve carries to the next (module docstring)")
    parser.add_argument("--seeds", type=int, default=4, help="engine: seeds 0 .. N-1")
    parser.add_argument("--settings", type=int, nargs="+", default=[0],
                        help="engine: indices of probe_warm_start_trap.ENGINE_SETTINGS (0: the coupled-wd GPT)")
    parser.add_argument("--n", type=int, default=1000, help="fcn: samples")
    args = parser.parse_args(argv)
    SOLVER.lanczos_top_eigenpair = solver
    print(f"# probe_warm_explorer: {args.problem}, torch {torch.__version__}, threads {torch.get_num_threads()}",
          flush=True)
    for variant in args.variants:
        if args.problem == "fcn":
            reset(variant)
            counts = trap.fcn(start.WARM_START_MIX, args.n)
            print(f"{variant}: products per warm call (steps 1..19) {sum(counts[1:]) / 19:.2f}: {counts}", flush=True)
            continue
        total = off = products = 0
        worst = 0.0
        for setting in (trap.ENGINE_SETTINGS[i] for i in args.settings):
            for seed in range(args.seeds):
                reset(variant)
                n, bad, w, mv = trap.engine(start.WARM_START_MIX, seed, setting,
                                            "cold" if variant == "cold" else "warm")
                total, off, products, worst = total + n, off + bad, products + mv, max(worst, w)
                print(f"  {variant} {setting} seed {seed}: {bad}/{n} rows >1% off, worst {w:.3f}, {mv} products",
                      flush=True)
        print(f"{variant}: {off} of {total} rows >1% off eig_1, worst {worst:.3f}; {products} products", flush=True)


if __name__ == "__main__":
    main()
