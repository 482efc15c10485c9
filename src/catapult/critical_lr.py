"""Critical learning rate from a loss catapult (warmup paper, Alg. 1-2). (stub)"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CriticalLR:
    lr: float
    lower: float
    upper: float
    forward_passes: int
    loss0: float


def critical_lr(model, loss_fn, batch, optimizer, *, lr_start=1e-4, lr_max=None, delta=0.1):
    raise NotImplementedError
