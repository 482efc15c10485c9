"""Probe: CPU time of one ``catapult.sharpness`` call (tol 1e-3, defaults) on the small GPT of
``bench_peers.py`` (vocab 65, width 64, 2 blocks, 4 heads, context 32, 16 random sequences), seeds
0-2, three rounds, the first a warm-up; prints the median CPU seconds, and the products and values
of the first seeds (which must not change when only the code's speed does). For same-run A/B
checks of two checkouts without the peers installed: run it alternately with
``PYTHONPATH=<other checkout>/src`` and without.

Usage:  .venv/bin/python bench/probe_gpt_sharpness_time.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import catapult
from catapult.models import GPT


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    times, runs = [], []
    for rnd in range(3):
        for seed in range(3):
            torch.manual_seed(seed)
            model = GPT(65, d_model=64, n_layers=2, n_heads=4, context=32)
            tokens = torch.randint(0, 65, (16, 33))
            batch = (tokens[:, :-1], tokens[:, 1:])
            start = time.process_time()
            est = catapult.sharpness(model, token_loss, batch, tol=1e-3, seed=seed)
            if rnd > 0:
                times.append(time.process_time() - start)
                runs.append((est.matvecs, est.coarse_matvecs, round(est.value, 6)))
    print(f"{catapult.__file__}: median CPU s per call {statistics.median(times):.4f}; "
          f"(exact, coarse products, value) for seeds 0-2: {runs[:3]}")


if __name__ == "__main__":
    main()
