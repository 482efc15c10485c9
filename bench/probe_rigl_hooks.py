"""RigL's grow-score hooks when a loop substitutes a new Parameter each step and keeps them all
(``torch.func.functional_call``): the layer hooks each weight once, so every forward looks its
weight up among the hooked ones. Prints the wall time of 3,000 such steps.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_rigl_hooks.py
"""
import argparse
import time

import torch
import torch.nn as nn
from torch.func import functional_call

from catapult.sparsity.static import MaskedLinear


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps, each with a new kept Parameter")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    layer = MaskedLinear(8, 8, density=0.5)
    layer.capture_dense_grad = True
    x = torch.randn(4, 8)
    kept = []
    start = time.perf_counter()
    for _ in range(args.steps):
        weight = nn.Parameter(layer.weight.detach().clone())
        kept.append(weight)   # the loop keeps them alive, so none of their hooks goes
        functional_call(layer, {"weight": weight}, (x,)).sum().backward()
    print(f"{args.steps} steps with substituted, kept Parameters: {time.perf_counter() - start:.2f} s; "
          f"hooked weights {len(layer.__dict__['_accumulate_hooks'])}")


if __name__ == "__main__":
    main()
