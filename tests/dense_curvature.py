"""The tests' independent truth for curvature: the loss as a function of the flat vector of
trainable parameters, and its dense float64 Hessian and gradient by ``torch.autograd.functional``
(nothing from ``catapult``). Shared by the curvature, spectrum, HVP-mode and lean-memory tests.

Parameters (those with ``requires_grad``, in ``model.parameters()`` order), floating buffers,
inputs and targets are cast to float64 for the computation; the model itself is not changed.
"""
from __future__ import annotations

import torch
from torch.func import functional_call


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t


def flat_loss(model, loss_fn, batch):
    """``(loss_of, outputs_of, theta)``: ``loss_of(flat)`` and ``outputs_of(flat)`` evaluate the
    model at the flat parameter vector ``flat``; ``theta`` is the current one (float64)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in trainable]
    shapes = [p.shape for _, p in trainable]
    sizes = [p.numel() for _, p in trainable]
    buffers = {n: _double(b) for n, b in model.named_buffers()}
    x, y = _double(batch[0]), _double(batch[1])

    def outputs_of(flat):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return functional_call(model, {**buffers, **params}, (x,))

    def loss_of(flat):
        return loss_fn(outputs_of(flat), y)

    theta = torch.cat([p.detach().double().reshape(-1) for _, p in trainable])
    return loss_of, outputs_of, theta


def dense_hessian(model, loss_fn, batch) -> torch.Tensor:
    """The exact float64 Hessian of the loss over the trainable parameters."""
    loss_of, _, theta = flat_loss(model, loss_fn, batch)
    return torch.autograd.functional.hessian(loss_of, theta, vectorize=True)


def dense_gradient(model, loss_fn, batch) -> torch.Tensor:
    """The exact float64 gradient of the loss over the trainable parameters."""
    loss_of, _, theta = flat_loss(model, loss_fn, batch)
    return torch.autograd.functional.jacobian(loss_of, theta)
