"""Forward-over-reverse Hessian-vector products through losses whose torch forward-AD formula
fails: :func:`mse_for_forward_ad`.

``F.mse_loss`` / ``nn.MSELoss`` with ``reduction="mean"`` and a target that is not a dual
tensor (built inside ``loss_fn``, e.g. one-hot vectors from integer labels, or closed over)
raises "ZeroTensors are immutable" under ``jvp(grad(...))``: the forward-AD formula of
``mse_loss_backward`` writes into the target's efficient zero tangent in place
(pytorch/pytorch#123996). ``reduction="none"`` followed by ``.mean()`` is the same number
(bitwise: it is how torch reduces) and has no such formula.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["mse_for_forward_ad"]


class mse_for_forward_ad(TorchFunctionMode):  # noqa: N801 -- used as a context, like torch's modes
    """Context in which ``F.mse_loss(input, target)`` with ``reduction="mean"`` (no legacy
    ``size_average`` / ``reduce``, no ``weight``) is evaluated as
    ``F.mse_loss(input, target, reduction="none").mean()``; every other call is unchanged.

    Example (a one-hot target built inside the loss):
        >>> w, v = torch.zeros(2, 2), torch.ones(2, 2)
        >>> loss = lambda w: F.mse_loss(w, F.one_hot(torch.tensor([0, 1])).to(w.dtype))
        >>> with mse_for_forward_ad():
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
        return func(*args, **kwargs)
