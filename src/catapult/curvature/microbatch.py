"""Micro-batches of a curvature operator (``chunk_size``): the batch cut along dim 0, and the
weight of each piece, found by checking whether the loss is a mean or a sum over samples.

A product on micro-batches, ``H v = sum_k w_k H_k v``, is exact only when the loss is a
per-sample mean (``w_k = |B_k| / |B|``) or sum (``w_k = 1``), and when no module couples the
samples of a batch (train-mode BatchNorm) or draws per call (train-mode dropout).
"""
from __future__ import annotations

import math

import torch

from catapult.arguments import check_integer
# the batch walk, the samples and the couplings, split out of this module; imported from here too
from catapult.curvature.batch_tree import map_tensors, opaque_leaves, tensor_leaves, with_tensors
from catapult.curvature.grads_into import refuse_complex
from catapult.curvature.coupling import (batch_coupling, coupling_remedy, functional_masks_off, refuse_dropout,
                                         uses_batch_statistics)
from catapult.curvature.samples import (block_rows, sample_count, sample_count_or_none, sample_device, sample_index,
                                        sample_leaves, sample_rows, shares_samples)

__all__ = ["ChosenChunkSize", "PieceFailed", "MicroBatchRefused", "batch_coupling", "coupling_remedy", "functional_masks_off", "map_tensors", "refuse_dropout",
           "refuse_sparse", "refuse_split_blocks", "reduction_kind", "sample_count", "sample_count_or_none", "sample_device", "sample_index", "sample_rows", "shares_samples",
           "split_batch", "tensor_leaves", "uses_batch_statistics", "weighted_backward", "weighted_gradient",
           "with_tensors", "opaque_leaves"]


def _weight_outside(loss: torch.Tensor, weight: float, eps: float) -> bool:
    """Whether a micro-batch's ``weight`` must multiply its gradient rather than its loss: a loss
    in a dtype coarser than the parameters' (``eps``, theirs) rounds the weight to that dtype in
    its backward (a float64 model whose loss_fn returns float32: ``memory="lean"`` was 3e-8 off
    the Hessian's sharpness, converged with a bound of 3e-11)."""
    return weight != 1.0 and loss.is_floating_point() and float(torch.finfo(loss.dtype).eps) > eps


def weighted_gradient(loss: torch.Tensor, weight: float, leaves: list, eps: float, **grad_kwargs) -> tuple:
    """``torch.autograd.grad`` of ``weight * loss`` in ``leaves``: the weight folded into the loss
    (no gradient-sized temporary), or multiplied into the gradient where the loss is in a coarser
    dtype than the parameters (``eps``, their unit roundoff), whose backward would round it.

    >>> w = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    >>> weighted_gradient((w ** 2).sum().float(), 1 / 3, [w], 2.0 ** -52)[0].item()
    2.0
    """
    if not _weight_outside(loss, weight, eps):
        return torch.autograd.grad(loss if weight == 1.0 else loss * weight, leaves, **grad_kwargs)
    return tuple(g * weight for g in torch.autograd.grad(loss, leaves, **grad_kwargs))


def weighted_backward(loss: torch.Tensor, weight: float, leaves: list, eps: float) -> None:
    """``torch.autograd.backward`` of ``weight * loss`` into ``leaves``' ``.grad``, the weight taken
    as :func:`weighted_gradient` takes it (by hooks on the leaves where it must not be folded).

    >>> w = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    >>> weighted_backward((w ** 2).sum().float(), 1 / 3, [w], 2.0 ** -52)
    >>> w.grad.item()
    2.0
    """
    if not _weight_outside(loss, weight, eps):
        torch.autograd.backward(loss * weight if weight != 1.0 else loss, inputs=leaves)
        return
    hooks = [leaf.register_hook(lambda g: g * weight) for leaf in leaves]
    try:
        torch.autograd.backward(loss, inputs=leaves)
    finally:
        for hook in hooks:
            hook.remove()


class ChosenChunkSize(int):
    """A micro-batch size that ``memory="lean"`` chose, not the caller's ``chunk_size``: the
    errors of :func:`split_batch` about it name the setting and ``memory='fast'``.

    >>> size = ChosenChunkSize(4)
    >>> size + 1, isinstance(size, int)
    (5, True)
    """


def _scalar(loss) -> float:
    """``float(loss)`` of a one-element tensor (or number), else the error the operators raise
    (``float`` of a vector said "only one element tensors can be converted to Python scalars")."""
    if torch.is_tensor(loss) and loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
    refuse_complex(loss)   # float() of it: "value cannot be converted to type double without overflow"
    return float(loss)


class PieceFailed(RuntimeError):
    """The forward of a piece of the batch raised (torch's error is its ``__cause__``) where the whole
    batch's ran: a model that needs the whole batch, as one carrying a state shaped by it (an RNN's
    hidden state kept in an attribute, ``(layers, batch, hidden)``) does.

    >>> def loss_at(p, x, y):
    ...     return (x.reshape(2) * p["w"]).sum()        # needs a batch of 2
    >>> try:
    ...     reduction_kind(loss_at, {"w": torch.ones(2)}, torch.ones(2, 1), torch.zeros(2),
    ...                    [(torch.ones(1, 1), torch.zeros(1))] * 2, torch.float64)
    ... except PieceFailed as err:
    ...     type(err.__cause__).__name__
    'RuntimeError'
    """


    @classmethod
    def of(cls, count, err: BaseException) -> "PieceFailed":
        """The error for a forward of ``count`` samples that raised ``err`` (its cause): a short
        text, torch's first line cut at 300 characters (a shape error runs to many lines).

        >>> str(PieceFailed.of(2, RuntimeError("Expected hidden size (1, 2, 6)\\n  got (1, 4, 6)")))
        'the forward of 2 samples failed: Expected hidden size (1, 2, 6)'
        """
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        first = first if len(first) <= 300 else first[:300] + "..."
        failed = cls(f"the forward of {count} samples failed: {first}")
        failed.__cause__ = err
        return failed


class MicroBatchRefused(ValueError):
    """The batch cannot be split as ``option`` asks (``"chunk_size"``, or ``"memory"``: lean's own
    micro-batches): the model's forward fails on a piece (:class:`PieceFailed`, whose text the message
    holds), the loss is neither a mean nor a sum over samples, or a module couples the samples. The
    command line reports it with exit code 2, naming the config key (``eval.sharpness_chunk_size``,
    ``eval.sharpness_memory``).

    >>> MicroBatchRefused("chunk_size: ...", "chunk_size").option
    'chunk_size'
    """

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


def _piece_loss(loss_at, params, x, y):
    try:
        return loss_at(params, x, y)
    except PieceFailed:
        raise
    except RuntimeError as err:
        raise PieceFailed.of(sample_count_or_none(x) or "some", err) from err


def _reduction(loss_at, params, x, y, pieces, mean_w, dtype, nearby=True, rounding=None):
    """``(full loss, kind, what was compared)``: ``kind`` is ``"mean"`` or ``"sum"`` where the whole
    batch's loss is the pieces' weighted mean or their sum, relative to the losses' own size (at any
    scale), ``"both"`` where both (all 0), None where neither; a loss that is not finite is a mean.
    ``nearby=False`` (no nudged retry): neither, within ``rtol x 1e-30`` (an exact fit's rounding), is both."""
    with torch.no_grad():
        whole = loss_at(params, x, y)
        full = _scalar(whole)
        losses = [_scalar(_piece_loss(loss_at, params, xc, yc)) for xc, yc in pieces]
    as_mean = sum(w * l for w, l in zip(mean_w, losses) if w)   # (a piece whose targets all count for nothing)
    as_sum = sum(losses)
    # well above the rounding of a batch sum, well below what a loss not additive over samples (a
    # root-mean-square) shows between chunks; in the coarser of the parameters' dtype and the loss's
    # own (a float64 model whose loss_fn returns float32 was refused: 0.970059 for a mean of 0.970059)
    if torch.is_tensor(whole) and whole.is_floating_point() and torch.finfo(whole.dtype).eps > torch.finfo(dtype).eps:
        dtype = whole.dtype
    # (at most 2%: a bfloat16 loss's 400 eps, 3.1, took every loss for both a mean and a sum, and
    # it was refused as 'its loss is 0 here and nearby'; a mean and a sum of pieces differ 2x)
    rtol = min(max(400.0 * torch.finfo(dtype).eps, 1e-9), 2e-2)

    def kind_of(floor):   # (a floor of 1e-30 took any loss below it, 2**-300 x MSE, for both: 'cannot tell')
        ok = [abs(full - b) <= rtol * max(abs(full), abs(b), floor) for b in (as_mean, as_sum)]
        return "both" if all(ok) else "mean" if ok[0] else "sum" if ok[1] else None

    shown = f"full batch {full:.6g}, chunks' mean {as_mean:.6g}, sum {as_sum:.6g}"
    kind = kind_of(0.0) if math.isfinite(full) else "mean"
    if kind is None and (not nearby if rounding is None else rounding):   # rounding-level losses (an exact fit) cannot tell
        kind = "both" if kind_of(1e-30) == "both" else None
    return full, kind, shown


def reduction_kind(loss_at, params: dict, inputs, targets, pieces, dtype: torch.dtype, *, nearby: bool = True,
                   rounding: bool | None = None, sizes: list | None = None):
    """``(full loss, kind, what was compared)``: whether the loss of ``inputs`` / ``targets`` is
    the ``pieces``' weighted mean (``"mean"``, weights ``|B_k| / |B|``) or their sum (``"sum"``),
    to ``400 eps`` relative (at least ``1e-9``, at most 2%; the eps of the coarser of the loss's
    dtype and ``dtype``); ``"both"`` where it is 0 here and at parameters nudged by 1% (a zero
    loss, targets the model fits exactly, is both), None where it is neither.
    ``loss_at(params, inputs, targets)`` is the loss. ``nearby=False``: no second try at nudged
    parameters (a caller whose every call must run the same forwards, as FSDP2's collective ones).
    ``rounding``: whether losses that are neither but within ``rtol x 1e-30`` of each other (an exact
    fit's rounding) are ``"both"``; by default where ``nearby`` is False (a caller that nudged the
    parameters itself passes False: 2**-300 x a root-mean-square is then neither).
    ``sizes``: the pieces' weights in a mean (their sample counts by default; a token mean's counted
    targets, :func:`~catapult.curvature.shard_reduction.counted_targets`); a piece of size 0 drops out of it.

    >>> loss_at = lambda p, x, y: ((x * p["w"] - y) ** 2).sum()
    >>> x = torch.tensor([1.0, 2.0, 3.0])
    >>> reduction_kind(loss_at, {"w": torch.tensor(2.0)}, x, torch.zeros(3), [(x[:2], torch.zeros(2)),
    ...                (x[2:], torch.zeros(1))], torch.float64)[1]
    'sum'
    """
    sizes = [sample_count(xc, "inputs") for xc, _ in pieces] if sizes is None else sizes
    mean_w = [k / sum(sizes) for k in sizes]
    full, kind, shown = _reduction(loss_at, params, inputs, targets, pieces, mean_w, dtype, nearby, rounding)
    if kind in ("both", None) and nearby:
        # a zero loss (targets the model fits exactly) is both a mean and a sum of zeros, and
        # rounding-level losses neither: ask again a little away from the parameters, where the
        # losses are not 0 (the reduction is the loss_fn's, the same at every point)
        generator = torch.Generator().manual_seed(0)  # on the CPU: the global RNG is left alone
        nearby = {name: p + 1e-2 * (float(p.detach().abs().mean()) + 1e-2) * torch.randn(
            p.shape, generator=generator, dtype=p.dtype).to(p.device) for name, p in params.items()}
        _, kind, shown = _reduction(loss_at, nearby, inputs, targets, pieces, mean_w, dtype)
    return full, kind, shown


def refuse_sparse(tree, what: str, option: str, key: str, instead: str) -> None:
    """Refuse a batch's ``inputs`` or ``targets`` (``what``) holding a sparse tensor (COO, CSR, any
    layout but strided) where ``option`` cuts it into micro-batches (``key``: ``"chunk_size"`` or
    ``"memory"``): a :class:`MicroBatchRefused` naming the option and the leaf, before any product.
    (torch slices no sparse tensor along dim 0 by a view: the micro-batches failed inside torch with
    ``NotImplementedError: Could not run 'aten::as_strided' ... 'SparseCPU'``.)

    >>> refuse_sparse({"x": torch.eye(3).to_sparse()}, "inputs", "chunk_size", "chunk_size", "chunk_size=None")
    Traceback (most recent call last):
    catapult.curvature.microbatch.MicroBatchRefused: chunk_size: the batch's inputs ['x'] hold a sparse tensor (torch.sparse_coo), which micro-batches cannot cut; use chunk_size=None, or a dense batch (.to_dense())
    >>> refuse_sparse(torch.zeros(3, 2), "inputs", "chunk_size", "chunk_size", "chunk_size=None")
    """
    for path, t in sample_leaves(tree):
        if t.layout != torch.strided:
            raise MicroBatchRefused(f"{option}: the batch's {what}{(' ' + path) if path else ''} hold a sparse tensor "
                                    f"({t.layout}), which micro-batches cannot cut; use {instead}, or a dense "
                                    "batch (.to_dense())", key)


def refuse_split_blocks(tree, what: str, rows: int, option: str, key: str, instead: str) -> None:
    """Refuse a batch's ``inputs`` or ``targets`` (``what``) holding a block-sparse tensor (BSR, BSC)
    whose blocks of rows micro-batches of ``rows`` samples would cut (``option``, ``key``: as
    :func:`refuse_sparse`): a :class:`MicroBatchRefused` before any product. Other sparse tensors
    (COO, CSR, CSC; BSR and BSC where ``rows`` is a multiple of their block's rows) are cut by rows
    (:func:`~catapult.curvature.samples.sparse_rows`).

    >>> refuse_split_blocks(torch.eye(4).to_sparse_bsr((2, 2)), "inputs", 3, "chunk_size", "chunk_size", "chunk_size=None")
    Traceback (most recent call last):
    catapult.curvature.microbatch.MicroBatchRefused: chunk_size: the batch's inputs hold a torch.sparse_bsr tensor of blocks of 2 rows, which micro-batches of 3 would cut inside a block; use a multiple of 2, chunk_size=None, or a dense batch (.to_dense())
    >>> refuse_split_blocks(torch.eye(4).to_sparse_bsr((2, 2)), "inputs", 2, "chunk_size", "chunk_size", "chunk_size=None")
    """
    for path, t in sample_leaves(tree):
        if rows % (block := block_rows(t)):
            raise MicroBatchRefused(f"{option}: the batch's {what}{(' ' + path) if path else ''} hold a {t.layout} tensor "
                                    f"of blocks of {block} rows, which micro-batches of {rows} would cut inside a "
                                    f"block; use a multiple of {block}, {instead}, or a dense batch (.to_dense())", key)


def split_batch(model: torch.nn.Module, loss_at, params: dict, inputs, targets,
                chunk_size: int | None, dtype: torch.dtype) -> tuple[list[tuple], float]:
    """``([(inputs, targets, weight)], loss)``: the micro-batches of at most ``chunk_size``
    samples and the whole batch's loss (``nan`` when it was not needed: one piece).

    ``loss_at(params, inputs, targets)`` is the operator's loss. The weights are ``|B_k| / |B|``
    when the whole batch's loss equals the pieces' weighted mean (for a token mean that leaves integer
    targets of -100 out, as ``F.cross_entropy``, their counted targets' share instead, a piece of -100
    alone left out: :func:`~catapult.curvature.shard_reduction.leaves_ignored_out`), ``1`` when it equals their sum
    (to ``400 eps`` relative, at least ``1e-9``, at most 2%: ``5e-5`` in float32; where the loss is 0,
    both would, and the test is made again at parameters nudged by 1%); any other loss is refused, and so are
    train-mode BatchNorm and dropout (:func:`batch_coupling`). ``inputs`` and ``targets`` are tensors,
    or tuples, lists and dicts of them (an HF-style ``{"input_ids", "attention_mask"}``) whose tensors
    share dim 0 (:func:`sample_count`; other leaves go whole to every piece: :func:`sample_rows`, and
    so do targets with no sample dimension at all, as ``None``: :func:`shares_samples`).

    Example (a mean loss over 3 samples, pieces of 2 and 1):
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> params = {"weight": torch.ones(1, 1)}
        >>> loss_at = lambda p, x, y: torch.nn.functional.mse_loss(
        ...     torch.func.functional_call(model, p, (x,)), y)
        >>> x = torch.tensor([[1.0], [2.0], [3.0]])
        >>> pieces, loss = split_batch(model, loss_at, params, x, torch.zeros(3, 1), 2, torch.float32)
        >>> [(len(xc), round(w, 4)) for xc, _, w in pieces], round(loss, 4)
        ([(2, 0.6667), (1, 0.3333)], 4.6667)
    """
    whole = [(inputs, targets, 1.0)]
    if chunk_size is None:
        return whole, float("nan")
    size = check_integer("HessianOperator", "chunk_size", chunk_size, optional=True)  # a NumPy integer too
    chunk_size = chunk_size if isinstance(chunk_size, int) else size  # ChosenChunkSize stays itself
    x, y = inputs, targets
    # the option the messages name: the caller's chunk_size, or the micro-batches lean chose
    option, instead = ((f"memory='lean' (micro-batches of {chunk_size})", "memory='fast'")
                       if isinstance(chunk_size, ChosenChunkSize) else ("chunk_size", "chunk_size=None"))
    key = "memory" if isinstance(chunk_size, ChosenChunkSize) else "chunk_size"
    n = sample_count(x, "inputs")
    if not shares_samples(y, n):   # (targets without a sample dimension go whole to every piece)
        raise ValueError(f"chunk_size: inputs have {n} samples (dim 0) but targets have {sample_count(y, 'targets')}")
    if chunk_size >= n:
        return whole, float("nan")
    # sparse leaves are cut by rows in their own layout (samples.sparse_rows); block-sparse ones by
    # whole blocks only
    refuse_split_blocks(x, "inputs", chunk_size, option, key, instead)
    refuse_split_blocks(y, "targets", chunk_size, option, key, instead)
    coupled = batch_coupling(model)
    if coupled is not None:
        raise MicroBatchRefused(f"{option}: module {coupled[0]!r} is {coupled[1]} would differ per chunk; "
                                f"{coupling_remedy(model.get_submodule(coupled[0]))}use {instead}", key)
    pieces = [(sample_rows(x, i, i + chunk_size), sample_rows(y, i, i + chunk_size)) for i in range(0, n, chunk_size)]
    mean_w = [min(chunk_size, n - i) / n for i in range(0, n, chunk_size)]
    # a token mean that leaves -100 targets out (F.cross_entropy's) weighs the pieces by their counted
    # targets, as distributed=True weighs the ranks: by their samples it was refused as neither a mean
    # nor a sum (-100 unevenly across the pieces), and a piece of -100 alone is left out (its loss nan)
    from catapult.curvature.shard_reduction import counted_targets, leaves_ignored_out
    with torch.no_grad():
        sizes = [counted_targets(yc) for _, yc in pieces] if leaves_ignored_out(loss_at, params, x, y, dtype) else None
    try:
        full, kind, shown = reduction_kind(loss_at, params, x, y, pieces, dtype, sizes=sizes)
    except PieceFailed as err:   # (torch's raw error, about a hidden size the user never set, in its text)
        raise MicroBatchRefused(f"{option}: the model's forward runs on the whole batch of {n} but fails on a "
                                f"micro-batch ({err}), as where it carries a state shaped by the batch; use {instead}",
                                key) from err
    if kind == "both":
        raise MicroBatchRefused(f"{option}: cannot tell whether loss_fn is a mean or a sum over samples, "
                                f"since its loss is 0 here and nearby ({shown}); use {instead}", key)
    if kind is None:
        raise MicroBatchRefused(f"{option}: loss_fn is neither a mean nor a sum over samples ({shown}), or the "
                                f"model draws masks in its forward (F.dropout in train mode) or couples samples; "
                                f"use {instead}", key)
    if kind == "mean" and sizes is not None:
        return [(xc, yc, k / sum(sizes)) for (xc, yc), k in zip(pieces, sizes) if k], full
    weights = mean_w if kind == "mean" else [1.0] * len(pieces)
    return [(xc, yc, w) for (xc, yc), w in zip(pieces, weights)], full
