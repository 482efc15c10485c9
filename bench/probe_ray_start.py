"""Where the start of ``catapult sweep --executor ray`` goes: a timeline of one 2-cell sweep (the
digits MLP of width 8, one step per cell) run by ``catapult.cli.main`` in this process, with marks
at the driver's import, its impossible-cell check (the model size on the meta device), ``ray.init``
(a private local instance), the tasks' submission and each cell's result. Seconds since the
process started (``T0`` from the shell, else since Python started this script).

Loopback only, as on a machine without a network (Ray then finds no outside address):

    unshare -n sh -c 'ip link set lo up; T0=$(date +%s.%N) RAY_USAGE_STATS_ENABLED=0 \\
        PYTHONPATH=src .venv/bin/python bench/probe_ray_start.py'

(``PYTHONPATH=<other checkout>/src`` times another version with the same marks.)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

T0 = float(os.environ.get("T0") or time.time())


def mark(what: str) -> None:
    print(f"[{time.time() - T0:7.2f} s] {what}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    mark("python up")
    import catapult.sweep.driver as driver
    mark("catapult.sweep.driver imported (torch with it)")
    import ray

    import catapult.sweep.ray_executor as ray_executor

    check = driver.refuse_impossible_cells

    def refuse(cells):
        mark("impossible-cell check starts")
        check(cells)
        mark(f"impossible-cell check done (torch._dynamo imported: {'torch._dynamo' in sys.modules})")

    driver.refuse_impossible_cells = refuse
    ensure = ray_executor.RayExecutor._ensure_ray

    def ensure_ray(self):
        mark("ray.init starts")
        ensure(self)
        mark(f"ray.init done: {ray.cluster_resources()}")

    ray_executor.RayExecutor._ensure_ray = ensure_ray
    run = ray_executor.RayExecutor.run

    def results(self, cells):
        for cell_id, result in run(self, cells):
            mark(f"cell {cell_id}'s result")
            yield cell_id, result

    ray_executor.RayExecutor.run = results
    wait, waited = ray.wait, []

    def first_wait(*args, **kwargs):
        if not waited:
            waited.append(mark("tasks submitted"))
        return wait(*args, **kwargs)

    ray.wait = first_wait
    from catapult.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "grid.yaml"
        config.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                          "model: {name: mlp, width: 8, depth: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
                          "train: {steps: 1}\neval: {sharpness_every: 0}\nsweep: {grid: {seed: [0, 1]}}\n")
        code = cli(["sweep", str(config), "--store", str(Path(tmp) / "s.db"), "--executor", "ray",
                    "--progress", "lines"])
    mark(f"catapult sweep returned {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
