"""Learning-rate schedules: warmup, catapult warmup, persistent catapult warmup. (stub)"""
from __future__ import annotations


def warmup(lr_target, warmup_steps, *, lr_init=0.0, power=1.0, decay=None, total_steps=None, lr_final=None):
    raise NotImplementedError


def attach(optimizer, fn):
    raise NotImplementedError
