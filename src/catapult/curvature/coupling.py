"""What makes a sample's loss depend on how its batch is cut: a BatchNorm normalising by the
batch's own statistics, a dropout drawing its mask per call (a module in train mode, or the
functional dropouts called with ``training=True``). Micro-batches (``chunk_size``, lean) and the
shard reductions refuse such a model, or turn its masks off where only a loss's reduction is told.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["batch_coupling", "coupling_remedy", "functional_masks_off", "refuse_dropout", "uses_batch_statistics"]


def _mask_drawer(module: torch.nn.Module) -> str | None:
    """What ``module`` is where its train-mode forward draws a random mask per call (a Dropout
    with ``p > 0``; a MultiheadAttention with ``dropout > 0``, on its attention weights; an RNN,
    LSTM or GRU with ``dropout > 0`` between its layers), else None."""
    if not module.training:
        return None
    if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
        return "a Dropout in train mode"
    if isinstance(module, torch.nn.MultiheadAttention) and module.dropout > 0:
        return f"a MultiheadAttention in train mode with dropout={module.dropout}"
    if isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return f"a {type(module).__name__} in train mode with dropout={module.dropout} between its layers"
    return None


def _draws_a_mask(module: torch.nn.Module) -> bool:
    return _mask_drawer(module) is not None


def uses_batch_statistics(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm that normalises by the batch's own statistics: in train
    mode, or in either mode without running statistics (``track_running_stats=False``), as torch
    does.

    >>> bn = torch.nn.BatchNorm1d(2, track_running_stats=False)
    >>> uses_batch_statistics(bn.eval()), uses_batch_statistics(torch.nn.BatchNorm1d(2).eval())
    (True, False)
    """
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (
        module.training or (module.running_mean is None and module.running_var is None))


def batch_coupling(model: torch.nn.Module) -> tuple[str, str] | None:
    """``(name, what)`` of the first module that makes a sample's loss depend on how the batch is
    cut (a BatchNorm that uses batch statistics, :func:`uses_batch_statistics`; a train-mode
    Dropout with ``p > 0``: its mask, drawn per call), or ``None``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> batch_coupling(model)
        ('1', 'a BatchNorm in train mode, whose batch statistics')
        >>> batch_coupling(model.eval()) is None
        True
    """
    for name, module in model.named_modules():
        if uses_batch_statistics(module):
            return name, ("a BatchNorm in train mode, whose batch statistics" if module.training else
                          "a BatchNorm without running statistics (track_running_stats=False), whose "
                          "batch statistics")
        if _draws_a_mask(module):
            return name, f"{_mask_drawer(module)}, whose mask"
    return None


def coupling_remedy(module: torch.nn.Module) -> str:
    """``"call model.eval() or "`` where the coupling ``module`` (:func:`batch_coupling`) is in
    train mode (eval mode takes its coupling away), else ``""`` (a BatchNorm without running
    statistics couples in either mode).

    >>> coupling_remedy(torch.nn.Dropout(0.5)), coupling_remedy(torch.nn.BatchNorm1d(2, track_running_stats=False).eval())
    ('call model.eval() or ', '')
    """
    return "call model.eval() or " if module.training else ""


def refuse_dropout(model: torch.nn.Module, option: str, why: str, instead: str) -> None:
    """A ValueError naming the first train-mode Dropout with ``p > 0``, whose mask ``why``.

    Example:
        >>> refuse_dropout(torch.nn.Sequential(torch.nn.Dropout(0.1)), "chunk_size",
        ...                "would differ per chunk", "chunk_size=None")
        Traceback (most recent call last):
            ...
        ValueError: chunk_size: module '0' is a Dropout in train mode, whose mask would differ per chunk; call model.eval() or use chunk_size=None
    """
    for name, module in model.named_modules():
        if _draws_a_mask(module):
            raise ValueError(f"{option}: module {name!r} is {_mask_drawer(module)}, whose mask {why}; "
                             f"call model.eval() or use {instead}")


#: The functional dropouts, which draw a mask where ``training`` is true whatever the modules' mode.
_FUNCTIONAL_DROPOUTS = tuple(getattr(torch.nn.functional, name) for name in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")) + tuple(
    getattr(torch, name) for name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"))


class functional_masks_off(TorchFunctionMode):  # noqa: N801 -- used as a context, like torch's modes
    """Context in which the functional dropouts (``F.dropout`` and its kin) return their input, and
    ``F.scaled_dot_product_attention`` takes ``dropout_p=0``: what a forward that calls them with
    ``training=True`` (no module whose mode to switch) computes without its masks. For telling a
    loss's reduction only (a few forwards without grad): the mode routes every torch call through
    Python.

    >>> x = torch.ones(4)
    >>> with functional_masks_off():
    ...     torch.nn.functional.dropout(x, 0.5, training=True)
    tensor([1., 1., 1., 1.])
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FUNCTIONAL_DROPOUTS:
            return args[0] if args else kwargs["input"]
        if func is torch.nn.functional.scaled_dot_product_attention:
            if len(args) > 4:
                args = (*args[:4], 0.0, *args[5:])
            kwargs = {**kwargs, "dropout_p": 0.0} if "dropout_p" in kwargs else kwargs
        return func(*args, **kwargs)
