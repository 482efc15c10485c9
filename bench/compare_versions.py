"""Two checkouts of catapult on the same bench_ensemble rows, alternating processes: new/old ratios.

Each round runs one process for the new checkout and one for the old one (order new, old in
even rounds and old, new in odd rounds), each with ``PYTHONPATH=<checkout>/src`` and that
checkout's own copy of ``bench/bench_ensemble.py`` (its imports follow the layout of its
version). Per round and row the driver forms the ratio new/old of each rate and prints the
median and range of those per-round ratios (above 1: the new code is faster). Rounds run back
to back, so a shared host's load moves both versions alike within a round.

Two modes:

* default (``--rows``): the child imports the checkout's ``bench_ensemble`` and times its own
  ``time_local`` / ``time_ensemble`` on its own ``make_cells(model, N)`` cells (the bench's
  rows: the same cells, the same timed calls, after the bench's warm-up), reading both the wall
  clock and the process's CPU time (``time.process_time``). With one torch thread the CPU time
  leaves out the waits of a CPU shared with other jobs, so its ratio is the steadier one.
* ``--full``: the child runs ``bench_ensemble.py`` itself with the arguments after ``--`` and
  the driver reads its table (wall-clock rates only, plus its matmul peaks).

    OMP_NUM_THREADS=1 .venv/bin/python bench/compare_versions.py --old /work/old-main --rounds 5 \\
        --models mlp64 mlp64-b128 fcn512-b128 --n 32 --reps 2 --local-cells 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/compare_versions.py --old /work/old-main --rounds 5 --full \\
        -- --models mlp64 mlp64-b128 fcn512-b128 --n 32 --reps 1 --local-cells 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_table(text: str) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(model, N): (local cells/s, ensemble cells/s)}`` from bench_ensemble.py's result table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]))] = (float(cells[2]), float(cells[3]))
    return rows


#: The child of the default mode: argv = bench_ensemble.py path, JSON options; prints JSON
#: ``[[model, N, kind, wall s, CPU s, cells], ...]`` for every timed call.
_ROWS_CHILD = r"""
import importlib.util, json, sys, time
import torch
spec = importlib.util.spec_from_file_location("bench_ensemble", sys.argv[1])
be = importlib.util.module_from_spec(spec)
spec.loader.exec_module(be)
o = json.loads(sys.argv[2])
torch.set_num_threads(o["threads"])
warm = be.make_cells("mlp64", 2)          # the bench's own warm-up
be.time_local(warm[:1])
be.time_ensemble(warm)
out = []
for model in o["models"]:
    cells = be.make_cells(model, max(o["n"]))
    for rep in range(o["reps"]):
        for kind, n in [("local", o["local_cells"])] + [("ensemble", n) for n in o["n"]]:
            w0, c0 = time.perf_counter(), time.process_time()
            (be.time_local if kind == "local" else be.time_ensemble)(cells[:n])
            out.append([model, n, kind, time.perf_counter() - w0, time.process_time() - c0, n])
print(json.dumps(out))
"""


def run_rows(checkout: Path, options: dict, python: str) -> tuple[dict, float]:
    """Default mode, one process: ``{(model, N, kind): (wall cells/s, CPU cells/s)}`` (medians
    over the process's repetitions) and its wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", _ROWS_CHILD, str(checkout / "bench" / "bench_ensemble.py"),
                           json.dumps(options)], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{checkout}: the bench child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    samples: dict[tuple, list] = {}
    for model, n, kind, wall, cpu, cells in json.loads(proc.stdout.strip().splitlines()[-1]):
        samples.setdefault((model, n, kind), []).append((cells / wall, cells / cpu))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for k, v in samples.items()}, elapsed


def run_version(checkout: Path, bench_args: list[str], python: str) -> tuple[dict, float]:
    """One bench_ensemble.py process of ``checkout``: its parsed table and its wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(checkout / "bench" / "bench_ensemble.py"), *bench_args], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{checkout}: bench_ensemble.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rows = parse_table(proc.stdout)
    if not rows:
        sys.exit(f"{checkout}: no result table in the output:\n{proc.stdout}")
    return rows, elapsed


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout of the new code (default: this one)")
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--full", action="store_true", help="run bench_ensemble.py itself (args after --)")
    parser.add_argument("--models", nargs="*", default=["mlp64", "mlp64-b128", "fcn512-b128"])
    parser.add_argument("--n", nargs="*", type=int, default=[32])
    parser.add_argument("--reps", type=int, default=2, help="repetitions inside each process (median)")
    parser.add_argument("--local-cells", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(own)
    versions = {"new": args.new.resolve(), "old": args.old.resolve()}
    for name, path in versions.items():
        print(f"{name}: {path} (git {_head(path)})", flush=True)
    options = dict(models=args.models, n=args.n, reps=args.reps, local_cells=args.local_cells, threads=args.threads)
    print(("bench_ensemble.py " + " ".join(bench_args)) if args.full else f"rows mode {json.dumps(options)}",
          f"; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {"new": [], "old": []}
    for r in range(args.rounds):
        order = ["new", "old"] if r % 2 == 0 else ["old", "new"]
        for name in order:
            if args.full:  # {(model, N): (local, ensemble)} -> {(model, N, kind): (wall rate,)}
                table, elapsed = run_version(versions[name], bench_args, args.python)
                rows = {(m, n, kind): (rates[i],) for (m, n), rates in table.items()
                        for i, kind in enumerate(("local", "ensemble"))}
            else:
                rows, elapsed = run_rows(versions[name], options, args.python)
            results[name].append(rows)
            print(f"  round {r} {name} ({elapsed:.0f} s): " + "; ".join(
                f"{m} N={n} {kind} " + "/".join(f"{v:.2f}" for v in rates) for (m, n, kind), rates in rows.items()),
                flush=True)
    clocks = ("wall",) if args.full else ("wall", "cpu")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {args.rounds} rounds; rates in cells/s ({', '.join(clocks)}"
          " clock); ratio = new/old rate, median (min-max) over rounds; > 1 means new is faster\n")
    print("| model | N | engine | clock | old cells/s | new cells/s | new/old |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(results["new"][0], key=lambda k: (args.models.index(k[0]) if k[0] in args.models else 0,
                                                        k[1], k[2] != "ensemble")):
        for i, clock in enumerate(clocks):
            new = [rows[key][i] for rows in results["new"]]
            old = [rows[key][i] for rows in results["old"]]
            ratios = [a / b for a, b in zip(new, old)]
            print(f"| {key[0]} | {key[1]} | {key[2]} | {clock} | {statistics.median(old):.2f} | "
                  f"{statistics.median(new):.2f} | {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0


def _head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
