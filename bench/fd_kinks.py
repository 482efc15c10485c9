"""Which ops does the finite-difference HVP's step cross as a kink? (``twice.KINKED_NODES``: the ops whose
presence in the loss's graph makes ``coarse="auto"`` skip the difference level on a float32 model.)

Small float32 MLPs 16-32-10 on 1024 samples (cross-entropy, 20 SGD steps), the hidden activation a
function through one op: ``tanh`` (smooth reference), ``relu`` (``F.relu``, the known kink), ``where``
(``torch.where(h > 0, h, 0.1 h)``: its condition from the parameters), ``where-mask`` (``torch.where``
with a fixed mask: ``tanh(h)`` or 0), ``round``/``floor``/``ceil``/``trunc`` (a quantised activation
``op(4 tanh h) / 4``), ``frac``/``remainder``/``fmod`` (a sawtooth: ``op(4 tanh h)``, modulo 1), ``sign`` and
``sgn`` (a binary activation), ``sign-mul`` (``tanh(h) * sign(h)``), and
``clamp-t`` (``clamp(h, -a, a)``, ``a`` a learned bound per unit: tensor bounds). Per family:

* ``graph op``: the op's node and whether ``HessianOperator.kinked`` marks it now;
* ``gap``: :func:`catapult.curvature.coarse.difference_consistency` along 5 random unit vectors (the
  difference level is skipped above 0.1; median, max);
* ``unchecked``: the central difference at ``h = eps^(1/3)`` (the check off) against the float64
  double-backprop product, ``||error|| / ||H v||`` (max of the 5);
* ``checked``: the same with the check on: refused (``UnreliableDifferenceError``), or the error and the
  steps shrunk;
* ``auto level``: whether ``sharpness(coarse=[finite_difference])``'s difference level ran (its coarse
  products) or was skipped (2: the check's gradients, the cost of a kink the guess misses);
* with ``--auto R``: ``sharpness(coarse="auto")``'s exact + coarse products and CPU seconds (median of R).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/fd_kinks.py [--families tanh,relu,...] [--n 1024] [--auto 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import catapult
from catapult.curvature import HessianOperator, difference
from catapult.curvature.coarse import SMALL_BATCH_LEVELS, difference_consistency

FAMILIES = ("tanh", "relu", "where", "where-mask", "round", "floor", "ceil", "trunc", "frac", "remainder", "fmod", "sign",
            "sgn", "sign-mul", "clamp-t")


class Net(nn.Module):
    def __init__(self, family: str, hidden: int = 32):
        super().__init__()
        self.family = family
        self.l1, self.l2 = nn.Linear(16, hidden), nn.Linear(hidden, 10)
        self.bound = nn.Parameter(torch.full((hidden,), 0.5))    # clamp-t's learned bound
        self.register_buffer("mask", torch.rand(hidden, generator=torch.Generator().manual_seed(3)) > 0.3)

    def act(self, h):
        f = self.family
        if f == "tanh":
            return h.tanh()
        if f == "relu":
            return F.relu(h)
        if f == "where":
            return torch.where(h > 0, h, 0.1 * h)
        if f == "where-mask":
            return torch.where(self.mask, h.tanh(), torch.zeros_like(h))
        if f in ("round", "floor", "ceil", "trunc"):
            return getattr(torch, f)(4 * h.tanh()) / 4
        if f == "frac":
            return (4 * h.tanh()).frac()
        if f in ("remainder", "fmod"):
            return getattr(torch, f)(4 * h.tanh(), 1.0)
        if f == "sign":
            return h.sign()
        if f == "sgn":
            return h.sgn()
        if f == "sign-mul":
            return h.tanh() * h.sign()
        if f == "clamp-t":
            return torch.clamp(h, -self.bound, self.bound)
        raise SystemExit(f"unknown family {f!r}")

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


def problem(family: str, n: int):
    torch.manual_seed(0)
    model = Net(family)
    if family != "clamp-t":
        model.bound.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, nn.CrossEntropyLoss(), (x, y)


def graph_op(model, loss_fn, batch) -> str:
    names, stack, seen = [], [loss_fn(model(batch[0]), batch[1]).grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if not name.startswith(("Addmm", "Accumulate", "T", "NllLoss", "LogSoftmax", "Div", "Mul", "ZerosLike", "Tanh")) \
                or name.startswith("Trunc"):
            names.append(name)
        stack.extend(f for f, _ in node.next_functions)
    return ",".join(sorted(set(names))) or "(tanh alone)"


def measure(family: str, n: int, auto: int = 0) -> str:
    model, loss_fn, batch = problem(family, n)
    exact = HessianOperator(model, loss_fn, batch, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(exact.numel, generator=gen, dtype=torch.float64) for _ in range(5)]
    vectors = [v / v.norm() for v in vectors]
    fd = HessianOperator(model, loss_fn, batch, dtype=torch.float32, hvp="finite_difference")
    gaps = [difference_consistency(fd, v.float())[0] for v in vectors]
    rows = []
    for check in (False, True):
        difference.MAX_GAP = 0.1 if check else float("inf")
        op = HessianOperator(model, loss_fn, batch, dtype=torch.float32, hvp="finite_difference")
        errs = []
        try:
            for v in vectors:
                ref = exact(v)
                errs.append(float((op(v.float()).double() - ref).norm() / ref.norm()))
            rows.append(f"{max(errs):.1e}" + (f" ({op.shrunk_steps} shrunk)" if check else ""))
        except difference.UnreliableDifferenceError:
            rows.append(f"refused after {len(errs)} of 5")
    difference.MAX_GAP = 0.1
    est = catapult.sharpness(model, loss_fn, batch, coarse=list(SMALL_BATCH_LEVELS))
    level = "skipped (2)" if est.coarse_matvecs == 2 else f"ran ({est.coarse_matvecs})"
    row = (f"| `{family}` | {graph_op(model, loss_fn, batch)}: {'yes' if fd.kinked else 'no'} | "
           f"{statistics.median(gaps):.2g}, {max(gaps):.2g} | {rows[0]} | {rows[1]} | {level} |")
    if auto:
        seconds = []
        for _ in range(auto):
            start = time.process_time()
            est = catapult.sharpness(model, loss_fn, batch)
            seconds.append(time.process_time() - start)
        row += f" {est.matvecs} + {est.coarse_matvecs}: {statistics.median(seconds):.3f} ({est.value:.6g}) |"
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--auto", type=int, default=0, help="time coarse='auto' sharpness, median of this many")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, float32, h = eps^(1/3) = {difference.central_step(2.0 ** -23):.2g}, n = {args.n}")
    print("| family | graph op: marked kinked | gap (median, max of 5) | unchecked error (max) | checked | "
          "difference level |" + (" auto: products, CPU s (value) |" if args.auto else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.auto else ""))
    for family in args.families.split(","):
        print(measure(family, args.n, args.auto), flush=True)


if __name__ == "__main__":
    main()
