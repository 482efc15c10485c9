"""The tests' independent truth for curvature: the loss as a function of the flat vector of
trainable parameters, and its dense float64 Hessian and gradient by ``torch.autograd.functional``
(nothing from ``catapult``), the dense Gauss-Newton matrix and Adam's next-step
preconditioner. Shared by the curvature, spectrum, HVP-mode and lean-memory tests.

Parameters (those with ``requires_grad``, in ``model.parameters()`` order), floating buffers,
inputs and targets are cast to float64 for the computation; the model itself is not changed.
"""
from __future__ import annotations

import numpy as np
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
    # copies: a float64 model's own buffers were passed (.double() of a float64 tensor is that
    # tensor), and a train-mode BatchNorm wrote its running statistics into the model
    buffers = {n: _double(b.detach().clone()) for n, b in model.named_buffers()}
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


def dense_ggn(model, loss_fn, batch):
    """The exact float64 Gauss-Newton matrix ``J^T H_L J`` (NumPy): ``J`` the Jacobian of the
    outputs over the trainable parameters, ``H_L`` the Hessian of the loss in the outputs."""
    _, outputs, theta = flat_loss(model, loss_fn, batch)
    out = outputs(theta).detach()
    J = torch.autograd.functional.jacobian(outputs, theta, vectorize=True).reshape(out.numel(), -1)
    # a float target in the outputs' float64 (torch 2.2's mse_loss backward refuses the mix)
    target = batch[1].to(out.dtype) if torch.is_floating_point(batch[1]) else batch[1]
    HL = torch.autograd.functional.hessian(lambda o: loss_fn(o.view(out.shape), target),
                                           out.reshape(-1))
    return (J.T @ HL @ J).numpy()


def adam_next_preconditioner(model, loss_fn, batch, optimizer):
    """The diagonal ``P`` (NumPy) of torch Adam's next step, from the formula: with ``g`` the
    dense gradient on ``batch``, ``t`` the steps taken and ``v`` the state's ``exp_avg_sq``
    (one param group, every parameter stepped at least once),
    ``P = (1 - b1^(t+1)) (sqrt((b2 v + (1 - b2) g^2) / (1 - b2^(t+1))) + eps)``."""
    group = optimizer.param_groups[0]
    (b1, b2), eps = group["betas"], group["eps"]
    params = [p for p in model.parameters() if p.requires_grad]
    t = float(optimizer.state[params[0]]["step"])
    g = dense_gradient(model, loss_fn, batch).numpy()
    v = np.concatenate([optimizer.state[p]["exp_avg_sq"].double().reshape(-1).numpy()
                        for p in params])
    return (1 - b1 ** (t + 1)) * (np.sqrt((b2 * v + (1 - b2) * g ** 2) / (1 - b2 ** (t + 1))) + eps)


def dense_adam_preconditioned(model, loss_fn, batch, optimizer) -> np.ndarray:
    """``P^-1/2 H P^-1/2`` (NumPy): the dense Hessian pre-conditioned by the diagonal ``P`` of
    torch Adam's next step (:func:`adam_next_preconditioner`, from the formula)."""
    P = adam_next_preconditioner(model, loss_fn, batch, optimizer)
    H = dense_hessian(model, loss_fn, batch).numpy()
    return H / np.sqrt(P)[:, None] / np.sqrt(P)[None, :]


def long_float32_diagonal(n: int = 4 * 10**6):
    """``(d, v0)``: a float32 diagonal operator ``v -> d * v`` of ``n`` entries whose top
    eigenvalue is exactly 1 (then 0.99, the rest in [0, 0.5)), and a start vector leaning on it;
    long enough that one-pass float32 sums over it round above 1e-6."""
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(n, generator=gen) * 0.5
    d[0], d[1] = 1.0, 0.99
    v0 = torch.randn(n, generator=gen)
    v0[0] = v0.norm()
    return d, v0
