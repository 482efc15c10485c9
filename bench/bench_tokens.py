"""BPE tokenisation throughput and token-cache load time.

1. Train: a byte-level BPE (vocab 4096) on the embedded Shakespeare's training split (~4.5M
   characters), timed (``catapult.data.tokenize.train_bpe``).
2. Encode: ``BPEVocab.encode_array`` on ``--mb`` MB of text (the Shakespeare text repeated; no
   WikiText on this machine), characters/s and tokens/s, with the library's threads
   (``RAYON_NUM_THREADS``, default all cores) as set in the environment.
3. Load: a WikiText-103-sized cache, ``--tokens`` uint16 ids (default 100M, 200 MB; ids drawn at
   random: the load does not look at them) saved as ``.npy``, then timed: the memory-mapped load
   (``token_cache.load_array`` + ``as_tensor``, what ``data.tokenizer: bpe`` does on every run
   after the first), 1,000 training windows of 64 tokens (``text.windows``) and a random batch
   (``text.get_batch``); beside it a full read into RAM (``np.load`` without mmap) and the cost
   of re-tokenising that many tokens at the measured encode rate.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_tokens.py             # ~2-4 min
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_tokens.py --quick     # smoke test
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="MB of text to encode")
    ap.add_argument("--tokens", type=int, default=100_000_000, help="tokens in the load-time cache")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.tokens = 2.0, 2_000_000
    from catapult.data import text
    from catapult.data import token_cache
    from catapult.data.tokenize import train_bpe

    raw = text._join([p.read_text(encoding="utf-8") for p in text.shakespeare_files()])
    train, _ = text._tail_split(raw, 0.1, "shakespeare")
    t = time.perf_counter()
    vocab = train_bpe(train.splitlines(keepends=True), 4096)
    train_s = time.perf_counter() - t
    print(f"train BPE (vocab {vocab.size}) on {len(train) / 1e6:.2f}M characters: {train_s:.1f} s")

    body = (raw * int(np.ceil(args.mb * 1e6 / len(raw))))[: int(args.mb * 1e6)]
    t = time.perf_counter()
    ids = vocab.encode_array(body)
    enc_s = time.perf_counter() - t
    rate = len(ids) / enc_s
    print(f"encode {len(body) / 1e6:.1f}M characters -> {len(ids) / 1e6:.2f}M tokens in {enc_s:.1f} s: "
          f"{len(body) / enc_s / 1e6:.2f}M chars/s, {rate / 1e6:.2f}M tokens/s "
          f"({len(body) / len(ids):.2f} chars/token); RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.train.bpe-v4096-bench.npy"
        rng = np.random.default_rng(0)
        token_cache.save_array(rng.integers(0, 4096, args.tokens, dtype=np.uint16), path)
        size = path.stat().st_size
        os.sync() if hasattr(os, "sync") else None
        t = time.perf_counter()
        ids_t = token_cache.as_tensor(token_cache.load_array(path))
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        x, y = text.windows(ids_t, 64, 1000)
        win_s = time.perf_counter() - t
        t = time.perf_counter()
        text.get_batch(ids_t, 64, 64, generator=torch.Generator().manual_seed(0))
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        full = np.load(path)
        full_s = time.perf_counter() - t
        assert full.shape[0] == ids_t.shape[0] == args.tokens and x.shape == (1000, 64)
        print(f"cache of {args.tokens / 1e6:.0f}M uint16 tokens ({size / 1e6:.0f} MB): mmap load {load_s * 1e3:.2f} ms, "
              f"1,000 windows {win_s * 1e3:.2f} ms, a 64x64 batch {batch_s * 1e3:.2f} ms; full read into RAM "
              f"{full_s:.2f} s; re-tokenising that many tokens at the rate above: {args.tokens / rate:.0f} s")


if __name__ == "__main__":
    main()
