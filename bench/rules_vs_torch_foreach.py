"""catapult.optim.rules.update against torch.optim's per-tensor and foreach paths.

Steps Adam, AdamW and RAdam (lr 1e-2, weight_decay 0.1, two tensors 7x5 and 3) side by side with
``rules.update`` of Python-number hyperparameters, in float16/bfloat16/float32/float64, and prints
the largest ``|diff|`` of the parameters after ``--steps`` steps against torch with
``foreach=False`` (the rules' docstring promises 0.0) and ``foreach=True`` (rounding)::

    .venv/bin/python bench/rules_vs_torch_foreach.py --steps 20
"""
from __future__ import annotations

import argparse

import torch

from catapult.optim import rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                      ("radam", torch.optim.RAdam)):
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            res = {}
            for fe in (False, True):
                g = torch.Generator().manual_seed(1)
                ps = [torch.randn(7, 5, generator=g).to(dt), torch.randn(3, generator=g).to(dt)]
                tp = [p.clone().requires_grad_(True) for p in ps]
                hp = dict(lr=1e-2, weight_decay=0.1)
                opt = cls(tp, foreach=fe, **hp)
                rp = [p.clone() for p in ps]
                st = rules.init(name, rp, hp)
                for _ in range(args.steps):
                    gr = [torch.randn(p.shape, generator=g).to(dt) for p in ps]
                    for t, gg in zip(tp, gr):
                        t.grad = gg.clone()
                    opt.step()
                    rp, st = rules.update(name, rp, gr, st, hp)
                res[fe] = max((a.detach().double() - b.double()).abs().max().item()
                              for a, b in zip(tp, rp))
            print(f"{name:6s} {str(dt):15s} per-tensor {res[False]:.3g}  foreach {res[True]:.3g}")


if __name__ == "__main__":
    main()
