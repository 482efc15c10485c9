"""Curvature: top Hessian eigenvalue (sharpness) and instability thresholds. (stub)"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EigenEstimate:
    value: float
    vector: torch.Tensor
    matvecs: int
    converged: bool
    residual: float = float("nan")


def sharpness(model, loss_fn, batch, *, tol=1e-3, max_iter=100, dtype=None, init=None, hvp="auto"):
    raise NotImplementedError


def preconditioned_sharpness(model, loss_fn, batch, optimizer, **kwargs):
    raise NotImplementedError


def instability_threshold(optimizer) -> float:
    raise NotImplementedError
