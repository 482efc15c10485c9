"""Check: `train_ddp` on one device trains the same run unsharded, under DDP and under FSDP
(``train.fsdp``), in one process group of world size 1. For the GPU check (``bench/gpu_check.sh``:
``--device cuda --backend nccl``), where the CPU tests cannot reach: the CUDA device set per rank,
NCCL's reductions and FSDP's device mesh on CUDA. On the CPU, ``--device cpu --backend gloo``.

Trains a small GPT (BPE vocab 257, width 64, 2 blocks, GELU, context 32, batch 16, 20 steps, Adam,
the pre-conditioned sharpness at steps 0, 10 and 20) on random tokens three ways and prints each
one's final loss and the largest relative gaps of its losses and sharpness to the unsharded run's.
Exits 1 if a loss gap is above ``--rtol`` or a sharpness gap above ``--sharpness-rtol`` (FSDP's
sharpness comes from finite differences, ``catapult.curvature.sharded``: float32 differences are
~1e-5 .. 6e-3 off the exact ones on small GPTs, ``bench/RESULTS.md`` section 5b).

Usage:  python bench/check_train_ddp_device.py [--device cuda] [--backend nccl] [--rtol 1e-5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="nccl")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--sharpness-rtol", type=float, default=2e-2)
    args = parser.parse_args(argv)

    from catapult.curvature.distributed import single_process_group
    from catapult.engine.distributed import train_ddp

    with tempfile.TemporaryDirectory() as root:
        np.save(os.path.join(root, "part0.npy"), np.random.default_rng(0).integers(0, 257, 20_000).astype(np.uint16))
        config = dict(seed=0, data=dict(name="text", root=root, tokenizer="bpe", vocab_size=257, context=32),
                      model=dict(name="gpt", width=64, depth=2, n_heads=2, activation="gelu"),
                      loss="cross_entropy", optimizer=dict(name="adam", lr=1e-3),
                      train=dict(steps=20, batch_size=16), eval=dict(sharpness_every=10))
        runs = {"unsharded": train_ddp(config, device=args.device, progress="none")}
        with single_process_group(args.backend):
            runs["ddp"] = train_ddp(config, device=args.device, progress="none")
            runs["fsdp"] = train_ddp(dict(config, train=dict(config["train"], fsdp=True)), device=args.device,
                                     progress="none")
    def sharpness(result):
        return [r["sharpness"] for r in result.metrics if r.get("sharpness") is not None]

    worst, worst_sharp = 0.0, 0.0
    for name, result in runs.items():
        gap = max(abs(a - b) / abs(b) for a, b in zip(result.losses, runs["unsharded"].losses))
        sharp = max(abs(a - b) / abs(b) for a, b in zip(sharpness(result), sharpness(runs["unsharded"])))
        worst, worst_sharp = max(worst, gap), max(worst_sharp, sharp)
        print(f"{name:10s} on {next(result.model.parameters()).device}: final loss {result.losses[-1]:.6f}, "
              f"largest relative gap to unsharded {gap:.1e}; sharpness {sharpness(result)[-1]:.6g}, "
              f"gap {sharp:.1e}")
    ok = worst <= args.rtol and worst_sharp <= args.sharpness_rtol
    print("OK" if ok else f"FAILED: a gap above --rtol {args.rtol:g} or --sharpness-rtol {args.sharpness_rtol:g}")
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
