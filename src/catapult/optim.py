"""Optimizers: GI-Adam. (stub)"""
from __future__ import annotations

import torch


class GIAdam(torch.optim.Optimizer):
    pass
