"""What RigL's grow-score hooks cost a compiled training step: the GPT of
``configs/supar/dynamic_sparsity_small.yaml`` under ``train.compile`` with RigL masks against
the same static masks, and both uncompiled. The hooks' bookkeeping runs outside the graph
(``torch.compiler.disable``), one graph break per masked layer.

Each setting runs in fresh processes (``catapult train``): once at the short step count to warm
inductor's cache (a cold compile takes far longer than a warm one), then at the short and at the
long count. The difference of the last two runs' ``wall_time_s`` over the difference of the steps
is the cost of a step without start-up or compile time. RigL's mask updates happen on both counts' runs alike (every
``update_every`` steps up to ``end_fraction``), so they cancel only approximately: the step
counts are chosen past the last update.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_rigl_compile.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "supar" / "dynamic_sparsity_small.yaml"


def wall_time(method: str, compiled: bool, steps: int, end: int, folder: Path, tag: str = "") -> float:
    out = folder / f"{method}_{compiled}_{steps}{tag}"
    command = [sys.executable, "-m", "catapult", "train", str(CONFIG), "--out", str(out), "--progress", "none",
               "--threads", "1", f"model.sparsity.method={method}", f"train.steps={steps}",
               f"train.compile={'true' if compiled else 'false'}", "data.vocab_size=512", "data.n_train=2048"]
    if method == "rigl":  # the same updates in both runs: the last one before the shorter run ends
        command.append(f"model.sparsity.end_fraction={end / steps}")
    else:  # static masks read no schedule key: the config's rigl update_every back at its default
        command.append("model.sparsity.update_every=100")
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads((out / "summary.json").read_text())["wall_time_s"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs=2, default=[100, 400], help="the two step counts")
    args = parser.parse_args(argv)
    short, long = args.steps
    end = short * 3 // 4
    print("| masks | compiled | ms per step |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in (False, True):
            for method in ("static", "rigl"):
                wall_time(method, compiled, short, end, Path(tmp), "_warm")   # warms the compile cache
                a = wall_time(method, compiled, short, end, Path(tmp))
                b = wall_time(method, compiled, long, end, Path(tmp))
                print(f"| {method} | {'yes' if compiled else 'no'} | {1000 * (b - a) / (long - short):.2f} |", flush=True)


if __name__ == "__main__":
    main()
