"""Two checkouts of catapult on the same bench_ensemble rows, alternating processes: new/old ratios.

Each round runs ``bench/bench_ensemble.py`` once for the new checkout and once for the old one
(order new, old in even rounds and old, new in odd rounds), each in a fresh process with
``PYTHONPATH=<checkout>/src`` and that checkout's own copy of the bench script (the script's
imports follow the layout of its version). Every process prints its table; the driver reads the
``local cells/s`` and ``ensemble cells/s`` columns and forms, per round and row, the ratio
new/old of each rate. It prints the median and the range of those per-round ratios (a ratio
above 1 means the new code is faster). The rounds run back to back, so a shared host's load
moves both versions alike within a round.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compare_versions.py --old /work/old-main \\
        --rounds 5 -- --models mlp64 mlp64-b128 fcn512-b128 --n 32 --reps 1 --threads 1

Everything after ``--`` goes to bench_ensemble.py unchanged (see its ``--help``).
"""
from __future__ import annotations

import argparse
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
    args = parser.parse_args(own)
    versions = {"new": args.new.resolve(), "old": args.old.resolve()}
    for name, path in versions.items():
        print(f"{name}: {path} (git {_head(path)})", flush=True)
    print(f"bench_ensemble.py {' '.join(bench_args)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
          flush=True)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {"new": [], "old": []}
    for r in range(args.rounds):
        order = ["new", "old"] if r % 2 == 0 else ["old", "new"]
        for name in order:
            rows, elapsed = run_version(versions[name], bench_args, args.python)
            results[name].append(rows)
            print(f"  round {r} {name} ({elapsed:.0f} s): " + "; ".join(
                f"{m} N={n} local {loc:.2f} ensemble {ens:.2f}" for (m, n), (loc, ens) in rows.items()), flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {args.rounds} rounds; ratio = new/old rate, "
          "median (min-max) over rounds; > 1 means new is faster\n")
    print("| model | N | old ensemble cells/s | new ensemble cells/s | ensemble new/old | old local cells/s "
          "| new local cells/s | local new/old |")
    print("|---|---|---|---|---|---|---|---|")
    for key in results["new"][0]:
        new = [rows[key] for rows in results["new"]]
        old = [rows[key] for rows in results["old"]]
        line = [key[0], str(key[1])]
        for i in (1, 0):  # ensemble, then local
            ratios = [a[i] / b[i] for a, b in zip(new, old)]
            line += [f"{statistics.median(b[i] for b in old):.2f}", f"{statistics.median(a[i] for a in new):.2f}",
                     f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"]
        print("| " + " | ".join(line) + " |")
    return 0


def _head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
