"""Gradients added into views of one flat vector, by autograd's own accumulation.

The operators of :mod:`~catapult.curvature.hessian` hold products and gradients as flat vectors.
Rather than form each parameter's gradient and copy it in, they point every leaf's ``.grad`` at
its view of the flat vector: autograd then accumulates into it in place (when it builds no
graph), so no second parameter-sized vector is ever formed.
"""
from __future__ import annotations

import functools

import torch
from torch.autograd.graph import get_gradient_edge

__all__ = ["refuse_constant", "scalar_loss", "refuse_complex", "attach_grads", "flush_grads", "backward_into",
           "edges_as_outputs", "graph_handles"]


def refuse_constant(loss: torch.Tensor) -> None:
    """Raise a ValueError where no trainable parameter reaches ``loss``: its gradient and
    curvature would be an autograd error (or, through :mod:`torch.func`, silently 0).

    >>> w = torch.ones(2, requires_grad=True)
    >>> refuse_constant((w * w).sum())
    >>> refuse_constant(torch.ones(2).sum())
    Traceback (most recent call last):
        ...
    ValueError: the loss does not depend on any trainable parameter of the model (requires_grad=True): are the trainable modules used in its forward?
    """
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any trainable parameter of the model "
                         "(requires_grad=True): are the trainable modules used in its forward?")


def scalar_loss(loss) -> torch.Tensor:
    """``loss`` as a 0-d tensor, or the ValueError a loss_fn returning anything else gets.

    >>> scalar_loss(torch.ones(1, 1)).shape
    torch.Size([])
    >>> scalar_loss(torch.ones((), dtype=torch.complex64))
    Traceback (most recent call last):
        ...
    ValueError: loss_fn must return a real scalar tensor, got dtype torch.complex64
    """
    if not (torch.is_tensor(loss) and loss.numel() == 1):
        raise ValueError("loss_fn must return a scalar tensor")
    refuse_complex(loss)
    return loss.reshape(())


def refuse_complex(loss, owner: str = "") -> None:
    """The ValueError a complex one-element ``loss`` gets (its message opening with ``owner:``
    where one is given): it has no Hessian of a real loss (torch raised "grad can be implicitly
    created only for real scalar outputs", or ``float()`` of it "value cannot be converted to
    type double without overflow").

    >>> refuse_complex(torch.ones(()))
    >>> refuse_complex(torch.ones((), dtype=torch.complex128))
    Traceback (most recent call last):
        ...
    ValueError: loss_fn must return a real scalar tensor, got dtype torch.complex128
    >>> refuse_complex(torch.ones((), dtype=torch.complex64), "critical_lr")
    Traceback (most recent call last):
        ...
    ValueError: critical_lr: loss_fn must return a real scalar tensor, got dtype torch.complex64
    """
    if torch.is_tensor(loss) and loss.is_complex():
        raise ValueError(f"{owner + ': ' if owner else ''}loss_fn must return a real scalar tensor, "
                         f"got dtype {loss.dtype}")


def attach_grads(leaves, views) -> None:
    """``leaf.grad = view``, or a zero gradient where the dtypes differ (a model mixing float32
    and float64 parameters) or the strides do (a transposed parameter: autograd warned that the
    gradient "does not obey the gradient layout contract"), added into the view afterwards by
    :func:`flush_grads`.

    >>> flat = torch.zeros(4, dtype=torch.float64)
    >>> a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    >>> b = torch.zeros(2, dtype=torch.float32, requires_grad=True)   # another dtype than the vector
    >>> views = [flat[:2], flat[2:]]
    >>> attach_grads([a, b], views)
    >>> (a * torch.tensor([1.0, 2.0], dtype=torch.float64) + 0).sum().backward()
    >>> (b * torch.tensor([3.0, 4.0])).sum().backward()
    >>> flat.tolist()                     # a's gradient went into its view; b's waits in b.grad
    [1.0, 2.0, 0.0, 0.0]
    >>> flush_grads([a, b], views)
    >>> flat.tolist()
    [1.0, 2.0, 3.0, 4.0]
    """
    for leaf, view in zip(leaves, views):
        same = view.dtype == leaf.dtype and view.stride() == leaf.stride()
        leaf.grad = view if same else torch.zeros_like(leaf)


def flush_grads(leaves, views) -> None:
    """Add the gradients that :func:`attach_grads` could not point at their views.

    >>> flat = torch.zeros(2)
    >>> leaf, views = torch.zeros(1, 2, requires_grad=True), [flat.view(1, 2)]
    >>> attach_grads([leaf], views)
    >>> (leaf * torch.tensor([[5.0, 6.0]])).sum().backward()
    >>> flush_grads([leaf], views)                       # nothing to add: it went into the view
    >>> flat.tolist()
    [5.0, 6.0]
    """
    for leaf, view in zip(leaves, views):
        if leaf.grad is not None and leaf.grad is not view:
            view.add_(leaf.grad)


def backward_into(leaves, views, edges, grad_outputs, retain_graph: bool) -> None:
    """Backward from ``edges`` with ``grad_outputs``, adding each leaf's gradient into its view.

    Example (``d(w . x)/dw = x``, added into ``out``):
        >>> w = torch.zeros(2, requires_grad=True)
        >>> out = torch.ones(2)
        >>> backward_into([w], [out], [w @ torch.tensor([3.0, 4.0])], [torch.tensor(1.0)], False)
        >>> out
        tensor([4., 5.])
    """
    attach_grads(leaves, views)
    try:
        with torch.enable_grad():
            torch.autograd.backward(edges, grad_tensors=grad_outputs, inputs=leaves,
                                    retain_graph=retain_graph)
        flush_grads(leaves, views)
    finally:
        for leaf in leaves:
            leaf.grad = None


@functools.cache
def edges_as_outputs() -> bool:
    """Whether ``torch.autograd.backward`` takes a :class:`~torch.autograd.graph.GradientEdge`
    as an output to differentiate (torch 2.3 and later; torch 2.2 has ``get_gradient_edge``
    but its ``backward`` reads the edge as a tensor and raises ``AttributeError: 'GradientEdge'
    object has no attribute 'is_nested'``). Probed once, on a two-element graph.

    >>> isinstance(edges_as_outputs(), bool)
    True
    """
    # outside inference mode and on the CPU (probed first under inference_mode or a default device
    # "meta", the answer was False or a failure, kept for the process)
    with torch.inference_mode(False), torch.enable_grad():
        w = torch.zeros(1, requires_grad=True, device="cpu")
        y = w * 2.0
        try:
            torch.autograd.backward([get_gradient_edge(y)], grad_tensors=[torch.ones(1, device="cpu")], inputs=[w])
        except (AttributeError, TypeError, RuntimeError):
            return False
    return w.grad is not None and w.grad.tolist() == [2.0]


def graph_handles(tensors) -> list:
    """What :func:`backward_into` differentiates for ``tensors`` (outputs of a graph): their
    gradient edges, so that their values can be freed while the graph stays alive, where this
    torch's ``backward`` takes edges (:func:`edges_as_outputs`); else the tensors themselves
    (torch 2.2: the same products, with the values kept until the backward).

    >>> w = torch.zeros(2, requires_grad=True)
    >>> out = torch.zeros(2)
    >>> handles = graph_handles([w @ torch.tensor([3.0, 4.0])])
    >>> backward_into([w], [out], handles, [torch.tensor(1.0)], False)
    >>> out
    tensor([3., 4.])
    """
    if edges_as_outputs():
        return [get_gradient_edge(t) for t in tensors]
    return list(tensors)
