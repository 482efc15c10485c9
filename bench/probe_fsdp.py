"""Probe: `train.fsdp` against DDP on 2 gloo ranks of this machine: the training state each rank
holds, the speed, and the losses.

Both modes train the same GPT (BPE vocab 4096, width 256, 4 blocks, context 64, global batch 16,
float32, Adam) for ``--steps`` steps on random token shards, in two spawned processes over
loopback. Per rank it reports the bytes of parameters and gradients the rank holds (a DTensor
counts its local shard; Adam's two moments have the parameters' shapes, so they hold twice the
parameters' bytes), tokens/s over the training, and the largest relative gap between the two
modes' losses.

Usage:  .venv/bin/python bench/probe_fsdp.py [--steps 20] [--width 256]
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

VOCAB = 4096


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def _rank(rank, world, port, root, steps, width, out):
    from catapult.engine.distributed import train_ddp

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    torch.set_num_threads(1)
    try:
        got = {}
        for fsdp in (False, True):
            config = dict(seed=0, data=dict(name="text", root=root, tokenizer="bpe", vocab_size=VOCAB, context=64),
                          model=dict(name="gpt", width=width, depth=4, n_heads=4), loss="cross_entropy",
                          optimizer=dict(name="adam", lr=1e-3), schedule=dict(warmup_steps=2),
                          train=dict(steps=steps, batch_size=16, fsdp=fsdp), eval=dict(sharpness_every=0))
            result = train_ddp(config, progress="none")
            params = list(result.model.parameters())
            got["fsdp" if fsdp else "ddp"] = {"losses": result.losses, "tokens_per_second": result.tokens_per_second,
                                              "param_bytes": _local_bytes(params),
                                              "grad_bytes": _local_bytes(p.grad for p in params)}
        torch.save(got, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rng = np.random.default_rng(0)
        for i in range(2):
            np.save(os.path.join(work, f"part{i}.npy"), rng.integers(0, VOCAB, 200_000).astype(np.uint16))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank, args=(2, port, work, args.steps, args.width, work), nprocs=2, join=True,
                           start_method="spawn")
        ranks = [torch.load(os.path.join(work, f"rank{r}.pt")) for r in range(2)]
    print(f"2 gloo ranks, 1 thread each, GPT width {args.width}, 4 blocks, {args.steps} steps")
    print("| mode | rank | parameters, MiB | gradients, MiB | tokens/s |")
    print("|---|---|---|---|---|")
    for mode in ("ddp", "fsdp"):
        for r, got in enumerate(ranks):
            g = got[mode]
            print(f"| {mode} | {r} | {g['param_bytes'] / 2**20:.2f} | {g['grad_bytes'] / 2**20:.2f} "
                  f"| {g['tokens_per_second']:,.0f} |")
    gap = max(abs(a - b) / abs(b) for a, b in zip(ranks[0]["fsdp"]["losses"], ranks[0]["ddp"]["losses"]))
    print(f"largest relative gap between the modes' losses: {gap:.1e}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
