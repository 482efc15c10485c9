"""SP / muP / SμPar for any module: roles, init, multipliers, per-layer LR groups. (stub)"""
from __future__ import annotations


def param_groups(model, lr, optimizer="adam"):
    raise NotImplementedError


def parametrize(module, *args, **kwargs):
    raise NotImplementedError
