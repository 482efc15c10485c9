"""Probe: does ``torch.compile`` of an exact Hessian-vector product, ``jvp(grad(loss))``
(forward over reverse) or ``vjp(grad(loss))`` (reverse over reverse), work for the losses
``catapult.sharpness`` is used with?

A tanh MLP 5-16-3 on 20 samples; for each loss, a fresh Python process compiles the product
with ``fullgraph=True`` (inside :class:`catapult.curvature.forward_ad.losses_for_forward_ad`,
which rewrites the losses whose eager forward-AD formulas fail) and compares it with the eager
product. A process that dies (e.g. a segmentation fault inside the compiler) is reported with its
exit code. Part of issue 16's section 1h: compiled products would reach the GPT speed target, if
they were safe to offer.

Usage:  .venv/bin/python bench/probe_compiled_forward_ad.py
"""
from __future__ import annotations

import argparse
import subprocess
import sys

LOSSES = ("cross_entropy", "mse_one_hot", "mse_float_target", "huber")

CHILD = """
import torch
from catapult.curvature.forward_ad import losses_for_forward_ad
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
x, labels, values = torch.randn(20, 5), torch.randint(0, 3, (20,)), torch.randn(20, 3)
F = torch.nn.functional
name = {name!r}
loss_fn, y = {{"cross_entropy": (F.cross_entropy, labels),
              "mse_one_hot": (lambda o, t: F.mse_loss(o, F.one_hot(t, 3).float()), labels),
              "mse_float_target": (F.mse_loss, values), "huber": (F.huber_loss, values)}}[name]
grad = torch.func.grad(lambda p, t: loss_fn(torch.func.functional_call(model, p, (x,)), t))

def hvp(p, v, t):
    if {kind!r} == "reverse":
        return torch.func.vjp(lambda q: grad(q, t), p)[1](v)[0]
    with losses_for_forward_ad():
        if t.is_floating_point():
            return torch.func.jvp(grad, (p, t), (v, torch.zeros_like(t)))[1]
        return torch.func.jvp(lambda q: grad(q, t), (p,), (v,))[1]

p = {{n: q.detach() for n, q in model.named_parameters()}}
v = {{n: torch.randn_like(q) for n, q in p.items()}}
eager = hvp(p, v, y)
compiled = torch.compile(hvp, fullgraph=True)(p, v, y)
print(max(float((compiled[k] - eager[k]).abs().max()) for k in eager))
"""


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print("| loss | product | compiled | max abs difference from eager |\n|---|---|---|---|")
    for name in LOSSES:
        for kind, label in (("forward", "jvp(grad)"), ("reverse", "vjp(grad)")):
            done = subprocess.run([sys.executable, "-c", CHILD.format(name=name, kind=kind)],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                print(f"| {name} | {label} | ok | {float(done.stdout.strip().splitlines()[-1]):.1e} |",
                      flush=True)
            else:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1][:100]
                print(f"| {name} | {label} | failed, exit code {done.returncode} | {last} |", flush=True)


if __name__ == "__main__":
    main()
