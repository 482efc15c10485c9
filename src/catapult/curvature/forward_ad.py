"""Forward-over-reverse Hessian-vector products (:func:`jvp_of_gradient`), also through losses
whose torch forward-AD formula fails or is missing (:class:`losses_for_forward_ad`).

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

import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from catapult.curvature.batch_tree import leaf_paths

__all__ = ["jvp_of_gradient", "losses_for_forward_ad", "huber_from_definition", "refuse_sparse_products",
           "COMPRESSED_LAYOUTS"]

#: The compressed sparse layouts (CSR, CSC, BSR, BSC), which ``torch.func`` (``hvp="compiled"``'s
#: products too) cannot carry: "Sparse CSR tensors do not have strides" (torch 2.13).
COMPRESSED_LAYOUTS = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def refuse_sparse_products(hvp: str, batch) -> None:
    """A ValueError naming ``hvp`` where its products cannot take a sparse tensor of ``batch``'s
    inputs or targets, raised before any forward: ``"forward_over_reverse"`` any sparse layout
    (torch 2.13 failed inside ``torch.func.jvp`` on every one: "Could not run
    'aten::_efficientzerotensor' with arguments from the 'SparseCPU' backend" for COO, "Sparse CSR
    tensors do not have strides" for the others, a sparse target too), ``"compiled"`` the
    compressed ones (:data:`COMPRESSED_LAYOUTS`; COO ran). Double backprop and finite differences
    take them (the curvature of the dense batch).

    >>> x = torch.eye(3)
    >>> refuse_sparse_products("forward_over_reverse", ({"a": x.to_sparse()}, x))
    Traceback (most recent call last):
    ValueError: hvp='forward_over_reverse': the batch's inputs['a'] hold a torch.sparse_coo tensor, which torch's forward-mode products (torch.func.jvp) cannot carry; use hvp='double_backprop' (the default) or 'finite_difference', or a dense batch (.to_dense())
    >>> refuse_sparse_products("compiled", (x.to_sparse(), x)), refuse_sparse_products("double_backprop", (x.to_sparse_csr(), x))
    (None, None)
    """
    refused = {"forward_over_reverse": lambda t: t.layout != torch.strided,
               "compiled": lambda t: t.layout in COMPRESSED_LAYOUTS}.get(hvp)
    if refused is None or not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return
    for what, tree in zip(("inputs", "targets"), batch):
        for path, t in leaf_paths(tree):
            if refused(t):
                raise ValueError(f"hvp={hvp!r}: the batch's {what}{path} hold a {t.layout} tensor, which torch's "
                                 f"{'forward-mode products (torch.func.jvp)' if hvp == 'forward_over_reverse' else 'compiled products (torch.func)'} "
                                 "cannot carry; use hvp='double_backprop' (the default) or 'finite_difference', or a "
                                 "dense batch (.to_dense())")


def huber_from_definition(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                          delta: float = 1.0) -> torch.Tensor:
    """``F.huber_loss`` from its definition, ``where(|d| < delta, d^2 / 2, delta (|d| - delta / 2))``,
    ``d = input - target``, reduced by ``reduction``: ops that all have forward-AD formulas.

    >>> a, b = torch.tensor([0.5, -3.0]), torch.zeros(2)
    >>> huber_from_definition(a, b, "none"), F.huber_loss(a, b, reduction="none")
    (tensor([0.1250, 2.5000]), tensor([0.1250, 2.5000]))
    """
    if not delta > 0:  # torch's own words and kind: delta=-1 or nan gave a negative or nan loss (and curvature) here
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
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


def jvp_of_gradient(grad_fn, params: dict, tangents: dict, inputs, targets):
    """``torch.func.jvp`` of ``p -> grad_fn(p, inputs, targets)`` at ``params`` along
    ``tangents`` (grad mode on): ``(primal output, tangent output)``; for ``grad_fn`` a
    :func:`torch.func.grad` of a loss in its first argument the tangent output is ``H v``.

    Floating-point tensor ``targets`` enter the ``jvp`` as a second primal with a materialised
    zero tangent (adding nothing to ``H v``); inputs stay closed over. ``F.mse_loss`` with a
    closed-over or loss-built target (an efficient ZeroTensor tangent, which its forward-AD
    formula writes into: pytorch/pytorch#123996) and ``F.huber_loss`` (no forward-AD formula in
    torch) run as :class:`losses_for_forward_ad` says.

    Example (``L(w) = mean((x w - y)^2)``, Hessian ``2 x^T x / 2 = diag(4, 1)``):
        >>> x, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 0.0])
        >>> loss = lambda p, x, y: torch.nn.functional.mse_loss(x @ p["w"], y)
        >>> _, hv = jvp_of_gradient(torch.func.grad(loss), {"w": torch.zeros(2)},
        ...                         {"w": torch.ones(2)}, x, y)
        >>> hv["w"]
        tensor([4., 1.])
    """
    if torch.is_tensor(targets) and targets.is_floating_point():
        def call(p, t):
            return grad_fn(p, inputs, t)
        primals, directions = (params, targets), (tangents, torch.zeros_like(targets))
    else:
        def call(p):
            return grad_fn(p, inputs, targets)
        primals, directions = (params,), (tangents,)
    with torch.enable_grad(), warnings.catch_warnings(), losses_for_forward_ad():
        # torch's forward-AD decompositions call the deprecated torch.jit.script on first use.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                category=DeprecationWarning)
        return torch.func.jvp(call, primals, directions)
