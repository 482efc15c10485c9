"""``train_ddp`` of one checkout on synthetic token shards: its wall time, and its losses and
final parameters saved for a bit-for-bit comparison with another checkout's.

Run once per checkout, alternating (``PYTHONPATH=<checkout>/src``); the script itself uses only
``train_ddp(config)``, so any version can run it. One process, one torch thread, no sharpness
and no test evaluation: the steps alone, a sparse GPT (RigL) with AdamW.

    git archive 1a8230a src | tar -x -C /tmp/oldsrc      # the loop before it was shared
    for i in 1 2 3; do
      PYTHONPATH=/tmp/oldsrc/src .venv/bin/python bench/probe_ddp_loop.py --save /tmp/old.pt
      PYTHONPATH=src .venv/bin/python bench/probe_ddp_loop.py --save /tmp/new.pt
    done
    .venv/bin/python bench/probe_ddp_loop.py --compare /tmp/old.pt /tmp/new.pt
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def config(root: Path, steps: int) -> dict:
    return dict(name="ddp_loop", seed=0,
                data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=512, context=64),
                model=dict(name="gpt", width=64, depth=2, n_heads=2, density=0.5,
                           sparsity=dict(method="rigl", update_every=10)),
                loss="cross_entropy", optimizer=dict(name="adamw", lr=1e-3), schedule=dict(warmup_steps=10),
                train=dict(steps=steps, batch_size=16), eval=dict(sharpness_every=0, test_every=0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save", metavar="FILE", help="write the losses and final parameters here")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --save files and exit")
    a = p.parse_args(argv)
    if a.compare:
        old, new = (torch.load(f, weights_only=True) for f in a.compare)
        n = len(old["losses"])  # the shared loop logs one more row: the final model's loss
        same_losses = old["losses"] == new["losses"][:n]
        same_params = all(torch.equal(x, y) for x, y in zip(old["params"], new["params"]))
        print(json.dumps(dict(rows=[n, len(new["losses"])], same_losses=same_losses, same_params=same_params)))
        return 0
    from catapult.engine.distributed import train_ddp

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        np.save(Path(root) / "part0.npy", np.random.default_rng(0).integers(0, 512, 200_000).astype(np.uint16))
        started = time.perf_counter()
        quiet = {"progress": "none"} if "progress" in inspect.signature(train_ddp).parameters else {}
        result = train_ddp(config(Path(root), a.steps), **quiet)
        seconds = time.perf_counter() - started
    if a.save:
        torch.save({"losses": list(result.losses), "params": [q.detach() for q in result.model.parameters()]}, a.save)
    print(json.dumps(dict(seconds=round(seconds, 3), rows=len(result.losses))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
