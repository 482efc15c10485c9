"""``torch.func.functional_call`` that leaves the model holding its own parameters and buffers.

Where one submodule is reachable by two paths (``self.dec = self.enc``, a block applied twice),
``functional_call`` (torch 2.13; pytorch/pytorch#164759) swaps the shared slot once per path and
restores it in the same order, so the slot ends up holding the tensor passed in, not the
model's Parameter: every curvature call and ``critical_lr`` replaced the model's weights by
detached copies, which the optimizer no longer held (its steps stopped moving the model), and
the next call saw no trainable parameter there.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["functional_call", "slots_kept"]


@contextlib.contextmanager
def slots_kept(model: torch.nn.Module):
    """Put every module's own parameter and buffer objects back on exit (those that were
    replaced; the tensors themselves are not touched).

    >>> inner = torch.nn.Linear(1, 1)
    >>> model = torch.nn.Sequential(inner, inner)      # one Linear at two paths
    >>> weight = inner.weight
    >>> with slots_kept(model):
    ...     inner._parameters["weight"] = torch.zeros(1, 1)
    >>> inner.weight is weight
    True
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for module, params, buffers in saved:
            for store, kept in ((module._parameters, params), (module._buffers, buffers)):
                for name, tensor in kept.items():
                    if store.get(name) is not tensor:
                        store[name] = tensor


def functional_call(model: torch.nn.Module, tensors: dict, args):
    """``torch.func.functional_call(model, tensors, args)``, the model's own parameters and
    buffers in place afterwards (:func:`slots_kept`).

    >>> inner = torch.nn.Linear(1, 1, bias=False)
    >>> model = torch.nn.Sequential(inner, inner)
    >>> weight = inner.weight
    >>> functional_call(model, {"0.weight": torch.full((1, 1), 2.0)}, (torch.ones(1, 1),))
    tensor([[4.]])
    >>> inner.weight is weight
    True
    """
    with slots_kept(model):
        return torch.func.functional_call(model, tensors, args)
