"""Forward-over-reverse Hessian-vector products through losses whose torch forward-AD formula
fails or is missing: :class:`losses_for_forward_ad`.

* ``F.mse_loss`` / ``nn.MSELoss`` with ``reduction="mean"`` and a target that is not a dual
  tensor (built inside ``loss_fn``, e.g. one-hot vectors from integer labels, or closed over)
  raises "ZeroTensors are immutable" under ``jvp(grad(...))``: the forward-AD formula of
  ``mse_loss_backward`` writes into the target's efficient zero tangent in place
  (pytorch/pytorch#123996). ``reduction="none"`` followed by ``.mean()`` is the same number
  (bitwise: it is how torch reduces) and has no such formula.
* ``F.huber_loss`` / ``nn.HuberLoss``: torch has no forward-AD formula for
  ``huber_loss_backward`` (NotImplementedError, torch 2.13). It is evaluated from its definition,
  ``where(|d| < delta, d^2 / 2, delta (|d| - delta / 2))`` with ``d = input - target``, whose
  pieces all have one (the same values up to rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["losses_for_forward_ad", "huber_from_definition"]


def huber_from_definition(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                          delta: float = 1.0) -> torch.Tensor:
    """``F.huber_loss`` from its definition, ``where(|d| < delta, d^2 / 2, delta (|d| - delta / 2))``,
    ``d = input - target``, reduced by ``reduction``: ops that all have forward-AD formulas.

    >>> a, b = torch.tensor([0.5, -3.0]), torch.zeros(2)
    >>> huber_from_definition(a, b, "none"), F.huber_loss(a, b, reduction="none")
    (tensor([0.1250, 2.5000]), tensor([0.1250, 2.5000]))
    """
    d = input - target
    size = d.abs()
    elementwise = torch.where(size < delta, 0.5 * d * d, delta * (size - 0.5 * delta))
    if reduction == "none":
        return elementwise
    return elementwise.sum() if reduction == "sum" else elementwise.mean()


class losses_for_forward_ad(TorchFunctionMode):  # noqa: N801 -- used as a context, like torch's modes
    """Context in which ``F.mse_loss(input, target)`` with ``reduction="mean"`` (no legacy
    ``size_average`` / ``reduce``, no ``weight``) is evaluated as
    ``F.mse_loss(input, target, reduction="none").mean()``, and ``F.huber_loss`` as
    :func:`huber_from_definition`; every other call is unchanged.

    Example (a one-hot target built inside the loss):
        >>> w, v = torch.zeros(2, 2), torch.ones(2, 2)
        >>> loss = lambda w: F.mse_loss(w, F.one_hot(torch.tensor([0, 1])).to(w.dtype))
        >>> with losses_for_forward_ad():
        ...     _, hv = torch.func.jvp(torch.func.grad(loss), (w,), (v,))
        >>> hv                                              # H = 2/4 I
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.mse_loss and len(args) <= 2 and kwargs.get("reduction", "mean") == "mean" \
                and all(kwargs.get(k) is None for k in ("size_average", "reduce", "weight")):
            rest = {k: v for k, v in kwargs.items() if k not in ("reduction", "size_average",
                                                                 "reduce", "weight")}
            return func(*args, **rest, reduction="none").mean()
        if func is F.huber_loss and len(args) <= 2 and all(kwargs.get(k) is None for k in ("weight",)):
            rest = {k: v for k, v in kwargs.items() if k != "weight"}
            return huber_from_definition(*args, **rest)
        return func(*args, **kwargs)
