"""Start-up time of catapult: wall seconds of new interpreters running ``import catapult`` (alone,
and with a first use of its API), ``catapult --help``, ``catapult export --help``, ``catapult
export`` of a small sweep store and a config refusal (``catapult train`` of a bad config, exit 2),
for two checkouts alternated run for run (every CLI call, sweep worker and distributed rank pays
the import).

    python bench/bench_startup.py --old /tmp/old-checkout --new . [--rounds 5] [--cpu] [--no-torch]

``--cpu``: a second table of the interpreters' CPU seconds (user + system, ``RUSAGE_CHILDREN``),
steadier than wall time on a loaded machine; ``--no-torch``: without the probe that imports torch;
``--first-use``: also a first ``catapult.sharpness`` call (a tiny MLP) and ``catapult spectrum`` of a
small SGD config (top eigenvalue only), the processes that import torch and what it imports lazily
(``torch._dynamo``, ``torch.distributed.fsdp``: bench/RESULTS.md, "torch 2.2, the declared floor");
``--refusals``: a refusal (exit 2) of every subcommand instead of the default probes (a bad key, a
bad shape, a missing file or store, a file where a folder goes), and three good reads of a store
(``export``, ``plot``, ``report``: the normal path beside its refusal); ``--importtime``: also a
table of the milliseconds ``python -X importtime`` counts in imports (the sum of its "self" column,
one more run of each probe a round).

The store (4 cells, the real format) is written once by this checkout's code with the tests' fake
run function (``tests/sweep_fakes.py``); both checkouts read the same file.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STORE_WRITER = """
import sys
from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from sweep_fakes import FakeLambda0, FakeRun
config = cfg.validate({"name": "t", "train": {"steps": 3}})
spec = parse_sweep({"grid": {"optimizer.lr": [0.01, 0.02], "schedule.warmup_steps": [1, 4]}})
run_sweep(config, spec, sys.argv[1], run_fn=FakeRun(), lambda0_fn=FakeLambda0(), progress="none")
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(checkout: Path, args: list[str], codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of a new interpreter running ``args``."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": "1"}
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode not in codes:
        raise SystemExit(f"{checkout}: {' '.join(args)} exited {done.returncode}")
    return seconds, _children_cpu() - cpu


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|")


def import_ms(checkout: Path, args: list[str], codes: tuple[int, ...] = (0,)) -> float:
    """The milliseconds ``python -X importtime`` counts in the imports of ``args`` (its "self"
    column summed: every module once)."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode not in codes:
        raise SystemExit(f"{checkout}: -X importtime {' '.join(args)} exited {done.returncode}")
    return sum(int(m[1]) for m in IMPORT_LINE.finditer(done.stderr)) / 1000


FIRST_SHARPNESS = """
import torch, catapult
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
catapult.sharpness(model, torch.nn.MSELoss(), (torch.randn(16, 4), torch.randn(16, 1)))
"""

SGD_CONFIG = """name: tiny
data: {name: digits, n_train: 64, n_test: 32}
model: {name: mlp, width: 16, depth: 2}
loss: mse
optimizer: {name: sgd, lr: 0.1}
"""


def first_use_probes(folder: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """``--first-use``'s probes: a first sharpness call and a small SGD config's spectrum."""
    config = folder / "sgd.yaml"
    config.write_text(SGD_CONFIG)
    return {
        "first catapult.sharpness (tiny MLP)": (["-c", FIRST_SHARPNESS], (0,)),
        "catapult spectrum SGD.yaml --top-k 1": (["-m", "catapult", "spectrum", str(config), "--top-k", "1",
                                                  "--trace-matvecs", "0", "--density-runs", "0",
                                                  "--progress", "none"], (0,)),
    }


def probes(folder: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """name -> (interpreter arguments, accepted exit codes), with the store and config they read."""
    store, bad = folder / "sweep.db", folder / "bad.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    subprocess.run([sys.executable, "-c", STORE_WRITER, str(store)], env=env, check=True)
    bad.write_text("name: bad\noptimizer:\n  lr: -1\n")
    out = str(folder / "cells.csv")
    return {
        "import catapult": (["-c", "import catapult"], (0,)),
        # a process that uses the API (a training script, a sweep worker) imports torch at the first use
        "import catapult; catapult.sharpness": (["-c", "import catapult; catapult.sharpness"], (0,)),
        "catapult --help": (["-m", "catapult", "--help"], (0,)),
        "catapult export --help": (["-m", "catapult", "export", "--help"], (0,)),
        "catapult export STORE --out CSV": (["-m", "catapult", "export", str(store), "--out", out], (0,)),
        "catapult train BAD.yaml (exit 2)": (["-m", "catapult", "train", str(bad)], (2,)),
    }


def refusal_probes(folder: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """``--refusals``' probes: one refusal (exit 2) of every subcommand, a missing config file and a bad
    shape too, and good reads of the store (the paths the plot and report refusals share)."""
    store, bad, good = folder / "sweep.db", folder / "bad.yaml", folder / "good.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    subprocess.run([sys.executable, "-c", STORE_WRITER, str(store)], env=env, check=True)
    bad.write_text("name: bad\nbogus_key: 1\n")
    good.write_text("name: good\ntrain:\n  steps: 1\n")
    shape = folder / "shape.yaml"  # a GPT whose heads do not divide its width
    shape.write_text("name: shape\ndata: {name: shakespeare}\nmodel: {name: gpt, width: 30, n_heads: 4}\n"
                     "loss: cross_entropy\n")
    grid = folder / "grid.yaml"
    grid.write_text("name: grid\nsweep:\n  grid:\n    optimizer.lr: [-1, 0.1]\n")
    a_file, missing = folder / "a_file", str(folder / "missing.db")
    a_file.write_text("not a folder")
    cli = ["-m", "catapult"]
    return {
        "train BAD.yaml (unknown key)": ([*cli, "train", str(bad)], (2,)),
        "train SHAPE.yaml (heads do not divide width)": ([*cli, "train", str(shape)], (2,)),
        "train MISSING.yaml": ([*cli, "train", str(folder / "missing.yaml")], (2,)),
        "demo --out FILE": ([*cli, "demo", "--out", str(a_file)], (2,)),
        "critical-lr BAD.yaml": ([*cli, "critical-lr", str(bad)], (2,)),
        "spectrum GOOD.yaml --weights MISSING.pt": ([*cli, "spectrum", str(good), "--weights",
                                                     str(folder / "missing.pt")], (2,)),
        "coord-check GOOD.yaml (no coord_check:)": ([*cli, "coord-check", str(good)], (2,)),
        "sweep GRID.yaml (a cell's lr -1)": ([*cli, "sweep", str(grid), "--store", str(folder / "new.db")], (2,)),
        "export MISSING.db": ([*cli, "export", missing, "--out", str(folder / "m.csv")], (2,)),
        "plot MISSING.db": ([*cli, "plot", missing], (2,)),
        "transfer MISSING.db": ([*cli, "transfer", missing], (2,)),
        "report MISSING.db": ([*cli, "report", missing], (2,)),
        "train-ddp BAD.yaml": ([*cli, "train-ddp", str(bad)], (2,)),
        "export STORE --out CSV (good)": ([*cli, "export", str(store), "--out", str(folder / "cells.csv")], (0,)),
        "plot STORE (good)": ([*cli, "plot", str(store), "--x", "optimizer.lr", "--y", "schedule.warmup_steps"],
                              (0,)),
        "report STORE (good)": ([*cli, "report", str(store)], (0,)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--new", type=Path, default=Path("."), help="this checkout (default: .)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="also a table of CPU seconds")
    parser.add_argument("--no-torch", action="store_true", help="without the probe that imports torch")
    parser.add_argument("--first-use", action="store_true", help="also a first sharpness call and a spectrum")
    parser.add_argument("--refusals", action="store_true", help="a refusal of every subcommand (instead)")
    parser.add_argument("--importtime", action="store_true", help="also a table of -X importtime's import ms")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = refusal_probes(Path(tmp)) if opts.refusals else probes(Path(tmp))
        if opts.no_torch and not opts.refusals:
            del runs["import catapult; catapult.sharpness"]
        if opts.first_use:
            runs.update(first_use_probes(Path(tmp)))
        times = {(name, which): [] for name in runs for which in ("old", "new")}
        cpus = {key: [] for key in times}
        imports = {key: [] for key in times}
        loads = []
        for _ in range(opts.rounds):
            loads.append(os.getloadavg()[0])
            for which, checkout in (("old", opts.old), ("new", opts.new)):
                for name, (args, codes) in runs.items():
                    seconds, cpu = wall(checkout.resolve(), args, codes)
                    times[name, which].append(seconds)
                    cpus[name, which].append(cpu)
                    if opts.importtime:
                        imports[name, which].append(import_ms(checkout.resolve(), args, codes))
    print(f"load average (1 min) at each round's start: {min(loads):.1f}-{max(loads):.1f}")
    tables = [("wall s", times)] + [("CPU s", cpus)] * opts.cpu + [("import ms", imports)] * opts.importtime
    for title, table in tables:
        digits = 0 if title == "import ms" else 2
        print()
        print(f"| probe | old {title}, median (min-max) | new {title}, median (min-max) | new / old |")
        print("|---|---|---|---|")
        for name in runs:
            old, new = table[name, "old"], table[name, "new"]
            print(f"| {name} | {statistics.median(old):.{digits}f} ({min(old):.{digits}f}-{max(old):.{digits}f}) | "
                  f"{statistics.median(new):.{digits}f} ({min(new):.{digits}f}-{max(new):.{digits}f}) | "
                  f"{statistics.median(new) / statistics.median(old):.2f} |")


if __name__ == "__main__":
    main()
