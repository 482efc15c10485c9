"""Start-up time of catapult: wall seconds of a fresh ``import catapult`` and of ``catapult --help``
in new interpreters, for two checkouts alternated run for run (every CLI call, sweep worker and
distributed rank pays it).

    python bench/bench_startup.py --old /tmp/old-checkout --new . [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(checkout: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--new", type=Path, default=Path("."), help="this checkout (default: .)")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    probes = {"import catapult": ["-c", "import catapult"], "catapult --help": ["-m", "catapult", "--help"]}
    times = {(name, which): [] for name in probes for which in ("old", "new")}
    for _ in range(opts.rounds):
        for which, checkout in (("old", opts.old), ("new", opts.new)):
            for name, args in probes.items():
                times[name, which].append(wall(checkout.resolve(), args))
    print("| probe | old s, median (min-max) | new s, median (min-max) | new / old |")
    print("|---|---|---|---|")
    for name in probes:
        old, new = times[name, "old"], times[name, "new"]
        print(f"| {name} | {statistics.median(old):.2f} ({min(old):.2f}-{max(old):.2f}) | "
              f"{statistics.median(new):.2f} ({min(new):.2f}-{max(new):.2f}) | "
              f"{statistics.median(new) / statistics.median(old):.2f} |")


if __name__ == "__main__":
    main()
