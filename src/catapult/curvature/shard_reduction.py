"""Whether ``loss_fn`` is a mean or a sum over the samples of this rank's shard, for
:func:`~catapult.curvature.distributed.union_weight` (which weights each rank's products by
``|B_r| / |B|`` for a mean, 1 for a sum).

A rank tells from its shard's two halves, as one process does
(:func:`~catapult.curvature.microbatch.reduction_kind`): the whole shard's loss is the halves'
size-weighted mean, or their sum. An unsharded model's halves run through ``functional_call``
(:func:`shard_reduction`); a model sharded by FSDP2 runs collective forwards, the same count on
every rank (:func:`sharded_shard_reduction`): one of the whole shard, whose output rows the loss
is told from, and, where any rank's output has no sample rows (a model that returns only its
scalar loss, as HF's ``outputs.loss``), one of each half and of the whole shard on every rank.
"""
from __future__ import annotations

import contextlib
import math

import torch

from catapult.curvature.microbatch import sample_count, sample_count_or_none, sample_device, sample_index, \
    sample_rows, shares_samples
from catapult.curvature.samples import block_rows, sample_leaves
from catapult.losses import IGNORE_INDEX

__all__ = ["halves", "shard_reduction", "sharded_shard_reduction", "nudged_parameters", "counted_targets",
           "leaves_ignored_out"]

#: torch's ``ignore_index`` (``F.cross_entropy``, ``F.nll_loss``) and Hugging Face's label padding:
#: a target equal to it counts for nothing in a token mean (:data:`catapult.losses.IGNORE_INDEX`, the
#: one the engine's accuracy and counts leave out)
IGNORED = IGNORE_INDEX


def halves(x, y) -> tuple:
    """``(x, y, pieces, what)``: the shard and its two halves; one sample is compared with the
    sample twice over (a mean's loss is the same, a sum's twice it: a mean taken for it halved a
    sum loss on shards of one sample each). ``x`` and ``y`` are tensors, or tuples, lists and dicts
    of tensors sharing dim 0 (:func:`~catapult.curvature.microbatch.sample_rows`).

    >>> x = torch.arange(5.0)
    >>> [piece[0].tolist() for piece in halves(x, x)[2]]
    [[0.0, 1.0, 2.0], [3.0, 4.0]]
    >>> whole, _, _, what = halves(x[:1], x[:1])
    >>> whole.tolist(), what
    ([0.0, 0.0], 'its sample and the sample twice over')
    """
    n = sample_count(x)
    # a BSR/BSC leaf is cut between its blocks of rows (half of 6 rows in blocks of 2 was refused)
    block = max((block_rows(t) for tree in (x, y) for _, t in sample_leaves(tree)), default=1)
    half = -(-((n + 1) // 2) // block) * block
    if 0 < half < n:
        return x, y, [(sample_rows(x, 0, half), sample_rows(y, 0, half)),
                      (sample_rows(x, half, n), sample_rows(y, half, n))], "its two halves"
    twice = list(range(n)) * 2   # one sample (or one block of rows), and it twice over
    return (sample_index(x, twice), sample_index(y, twice), [(x, y), (x, y)],
            "its sample and the sample twice over" if n == 1 else "its samples and the samples twice over")


def counted_targets(y) -> int | None:
    """The entries of ``y`` that are not :data:`IGNORED` where ``y`` is one tensor of integer labels (the
    targets a token mean as ``F.cross_entropy`` counts), else None.

    >>> counted_targets(torch.tensor([[3, -100], [1, 2]])), counted_targets(torch.zeros(2, 3))
    (3, None)
    """
    if not torch.is_tensor(y) or y.layout != torch.strided or y.dtype == torch.bool or y.is_floating_point() \
            or y.is_complex():
        return None
    return int((y != IGNORED).sum())


def leaves_ignored_out(loss_at, params, x, y, dtype: torch.dtype) -> bool | None:
    """Whether ``loss_at(params, x, y)`` (a loss over the samples of ``x``, ``y``) leaves the targets
    equal to :data:`IGNORED` out (``F.cross_entropy``'s token mean: its weights are the counted targets,
    not the samples), from the loss of one sample whose targets count and of that sample beside a copy
    of it whose targets are all -100: the same loss where they are left out, half of it for a mean over
    samples of per-sample sums. None where it cannot tell: ``y`` is no tensor of integer labels holding
    -100 (the loss is then not asked about -100 at all), no sample's targets count, or the losses are 0
    or not finite.

    >>> loss_at = lambda p, x, y: torch.nn.functional.cross_entropy(x * p["w"], y)
    >>> x, y = torch.tensor([[1.0, 2.0], [0.5, 0.0]]), torch.tensor([1, -100])
    >>> leaves_ignored_out(loss_at, {"w": torch.tensor(1.0)}, x, y, torch.float64)
    True
    """
    if counted_targets(y) is None or y.dim() < 1 or not bool((y == IGNORED).any()):
        return None
    counts = (y != IGNORED).reshape(y.shape[0], -1).any(1).nonzero()
    if not len(counts):
        return None
    i = int(counts[0])
    try:
        alone = _number(loss_at(params, sample_rows(x, i, i + 1), y[i:i + 1]))
        beside = _number(loss_at(params, sample_index(x, [i, i]), torch.stack([y[i], torch.full_like(y[i], IGNORED)])))
    except (RuntimeError, ValueError, TypeError, IndexError):   # a model or loss that cannot run them: its
        return None   # halves are told as before (a state shaped by the batch fails them there too)
    if not (math.isfinite(alone) and math.isfinite(beside)) or alone == 0.0:
        return None
    rtol = min(max(400.0 * torch.finfo(dtype).eps, 1e-9), 2e-2)
    return abs(alone - beside) <= rtol * max(abs(alone), abs(beside))


def _number(loss) -> float:
    """``float(loss)`` of a real one-element tensor or number, else nan (the loss's own check names it later)."""
    if torch.is_tensor(loss) and (loss.numel() != 1 or loss.is_complex()):
        return math.nan
    return float(loss)


def _told(kind, shown, what) -> str | None:
    if kind is None:
        raise ValueError(f"distributed=True: loss_fn is neither a mean nor a sum over samples on this rank's shard "
                         f"({what}: {shown}), so the ranks' losses do not add up to the union's loss; use "
                         f"a loss that averages or sums per-sample terms (a forward that draws random numbers "
                         f"per call, other than by a Dropout module or F.dropout, reads the same: call "
                         f"model.eval() or draw them from a fixed seed)")
    return None if kind == "both" else kind


def _any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` holds on some rank (every rank must call it)."""
    import torch.distributed as dist

    t = torch.tensor([float(bool(flag))], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sharded_shard_reduction(model, loss_fn, batch, failed: Exception | None = None) -> str | None:
    """:func:`shard_reduction` for a model sharded by FSDP2, whose forward is collective
    (every rank must call it, ``failed`` None): one forward of the shard on every rank, and
    ``loss_fn`` on its output's rows; where some rank's output has no sample rows (a model that
    returns only its scalar loss: a mean was taken for a sum loss there, its sharpness 1/2 the
    union's on 2 ranks), every rank runs three more forwards, of its shard and of its halves
    (:func:`halves`), with its dropouts off (their masks would differ between the calls), and tells
    from their losses as one process does. The model's train/eval mode is the caller's; a forward
    whose batch statistics would move (train-mode BatchNorm) is not run, on any rank alike.
    ``failed``: the error of an unsharded model's forward on half its shard (no collectives),
    which this replaces; such a model whose outputs have no sample rows is refused.

    >>> from catapult.curvature.distributed import single_process_group
    >>> batch = (torch.randn(4, 2), torch.randn(4, 1))
    >>> with single_process_group():
    ...     sharded_shard_reduction(torch.nn.Linear(2, 1), torch.nn.MSELoss(reduction="sum"), batch)
    'sum'
    """
    from catapult.curvature.microbatch import uses_batch_statistics
    from catapult.curvature.rng import fixed_rng
    from catapult.curvature.sharded import reset_on_error, reshard
    from catapult.curvature.sharded_reach import same_sharded_modules
    from catapult.curvature.stateless import AttributesKept

    if any(uses_batch_statistics(m) for m in model.modules()):
        return None
    x, y = batch
    # a dropout's masks leave the global generators alone; a state the forward carries is put back;
    # FSDP's root keeps its gathered weights after a forward without a backward (a loss_fn may read
    # them): freed after (where the forward or loss_fn raised, they were the caller's next forward's
    # weights, until its backward)
    with reset_on_error(model):
        # (a branch only some ranks take skips a sharded module there: refused alike, before its all-gather)
        with (torch.no_grad(), fixed_rng(0, sample_device(x)), AttributesKept().watch(model),
              same_sharded_modules(model, sample_device(x))):
            out = model(x)
        n = sample_count(x)
        rows = n >= 1 and sample_count_or_none(out) == n and shares_samples(y, n)
        # where some rank's output has no rows, every rank runs the halves' forwards alike
        if failed is None and _any_rank(not rows, sample_device(x)):
            del out
            kind = _reduction_of_halves(model, loss_fn, x, y)
        else:
            kind = _reduction_of_rows(out, loss_fn, x, y, failed)
        reshard(model)
    return kind


def _reduction_of_halves(model, loss_fn, x, y) -> str | None:
    """:func:`sharded_shard_reduction`'s answer from three forwards (collective): the shard's and
    its halves' losses, the dropout modules in eval mode and the functional ones off."""
    from catapult.curvature.microbatch import functional_masks_off, reduction_kind
    from catapult.curvature.rng import fixed_rng
    from catapult.curvature.sharded_reach import same_sharded_modules
    from catapult.curvature.stateless import AttributesKept

    whole, ys, pieces, what = halves(x, y)
    kept = AttributesKept()
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float64

    def loss_at(_, xs, ys):
        with kept.watch(model), same_sharded_modules(model, sample_device(x)):
            return loss_fn(model(xs), ys)

    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()   # (a BatchNorm using batch statistics was not run: sharded_shard_reduction)
        with torch.no_grad(), fixed_rng(0, sample_device(x)), functional_masks_off():
            # no second try of its own at nudged parameters: every rank must run the same forwards
            _, kind, shown = reduction_kind(loss_at, {}, whole, ys, pieces, dtype, nearby=False)
            # "both": losses that are 0, or below 1e-30 and neither (an exact fit's rounding; but 2**-300 x a
            # root-mean-square read so too, the ranks took a mean: a sharpness where the union's loss has
            # no sum over the ranks): where any rank says so, every rank asks again at parameters nudged 1%
            if _any_rank(kind == "both", sample_device(x)):
                with nudged_parameters(model):
                    _, again, again_shown = reduction_kind(loss_at, {}, whole, ys, pieces, dtype, nearby=False,
                                                           rounding=False)
                kind, shown = (again, again_shown) if kind == "both" else (kind, shown)
    finally:
        for module, training in modes:
            module.training = training
    return _told(kind, shown, what)


@contextlib.contextmanager
def nudged_parameters(model: torch.nn.Module, scale: float = 1e-2):
    """Context in which each floating parameter of ``model`` is moved by ``scale`` x (its mean size +
    ``scale``) x a standard normal draw (from a seed of 0, on the CPU: the global RNGs are left alone),
    and put back bit for bit after. A parameter sharded by FSDP2 (a DTensor) moves its own shard on each
    rank; the model is resharded before and after (FSDP's root keeps its gathered weights after a
    forward without a backward, which the next forward would reuse). Every rank of a sharded model must
    enter it alike (the reshard is local, but the forwards inside are collective).

    >>> model = torch.nn.Linear(2, 1)
    >>> before = [p.clone() for p in model.parameters()]
    >>> with nudged_parameters(model):
    ...     moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before)]
    >>> moved, all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    ([True, True], True)
    """
    from catapult.curvature.sharded import reshard

    reshard(model)   # (the parameters are the shards again)
    shards = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.is_floating_point()]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        kept = [t.detach().clone() for t in shards]
        for t in shards:
            size = float(t.abs().mean()) if t.numel() else 0.0
            t.add_(scale * (size + scale) * torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device))
    try:
        yield model
    finally:
        with torch.no_grad():
            reshard(model)
            for t, k in zip(shards, kept):
                t.copy_(k)


def _reduction_of_rows(out, loss_fn, x, y, failed: Exception | None) -> str | None:
    """:func:`sharded_shard_reduction`'s answer from the forward's output ``out``."""
    from catapult.curvature.microbatch import reduction_kind, tensor_leaves, with_tensors

    # outputs and targets: tensors, or tuples, lists, dicts (mappings) and dataclasses of them (an HF-style
    # {"logits": ...})
    n = sample_count(x)
    if not (n >= 1 and sample_count_or_none(out) == n and shares_samples(y, n)):
        raise ValueError(f"distributed=True: whether loss_fn is a mean or a sum over samples is told from the loss of "
                         f"halves of this rank's shard, on which the model's forward fails ({failed}; a "
                         f"state shaped by the batch?), and its outputs and targets have no sample rows (dim 0) to "
                         f"halve instead: return them with the samples first")
    targets = y
    rows, y, pieces, what = halves(torch.arange(n, device=sample_device(out)), y)
    # the output's floating tensors are the "parameters" reduction_kind may nudge (a loss that is 0 here)
    # (walked as the batches are: torch's pytree took a UserDict, a dict subclass or a dataclass output for
    # a leaf, so a loss that is 0 on the shard had nothing to nudge and could not be told: a sum loss was
    # weighted as a mean, its sharpness 1/2 the union's on 2 ranks)
    leaves = tensor_leaves(out)
    floating = {str(i): t for i, t in enumerate(leaves) if t.is_floating_point()}

    def loss_at(p, idx, ys):
        tree = with_tensors(out, [p.get(str(i), t) for i, t in enumerate(leaves)])
        return loss_fn(sample_index(tree, idx), ys)

    dtype = next(iter(floating.values())).dtype if floating else torch.float64
    # a token mean that leaves -100 targets out, told from the output's rows as an unsharded model's
    counted = leaves_ignored_out(loss_at, floating, torch.arange(n, device=sample_device(out)), targets, dtype)
    sizes = [counted_targets(yc) for _, yc in pieces] if counted else None
    _, kind, shown = reduction_kind(loss_at, floating, rows, y, pieces, dtype, sizes=sizes)
    told = _told(kind, shown, what)
    return "counted" if counted and told == "mean" else told


def shard_reduction(model, loss_fn, batch) -> str | None:
    """``"mean"``, ``"sum"`` or None (cannot tell) for ``loss_fn`` on this rank's shard of an
    unsharded model (no collectives), or ``"counted"``: a mean over the targets that are not -100
    (:func:`leaves_ignored_out`; ``F.cross_entropy``'s token mean, weighted by :func:`counted_targets`):
    from the losses of the shard and its halves (:func:`halves`),
    through ``functional_call``; a train-mode dropout is told in eval mode, ``F.dropout`` called
    with ``training=True`` without its masks; a model whose forward fails on a half (a state shaped by
    the batch) from the rows of its output (:func:`sharded_shard_reduction` with ``failed``).

    >>> batch = (torch.randn(4, 2), torch.randn(4, 1))
    >>> shard_reduction(torch.nn.Linear(2, 1), torch.nn.MSELoss(), batch)
    'mean'
    """
    from catapult.curvature.rng import fixed_rng
    from catapult.curvature.microbatch import (PieceFailed, batch_coupling, functional_masks_off, reduction_kind,
                                               uses_batch_statistics)
    from catapult.curvature.distributed import unwrap_ddp
    from catapult.curvature.stateless import AttributesKept, RenormedCopies, functional_call

    inner = unwrap_ddp(model)
    x, y = batch
    params = {name: p.detach() for name, p in inner.named_parameters()}
    n = sample_count(x)   # a tensor, or tuples, lists and dicts of tensors sharing dim 0 (shard_weight checked it)
    coupling = batch_coupling(inner)
    # a train-mode dropout draws a mask per call, so the halves' losses would not add up: the
    # loss_fn's reduction is told in eval mode (a mean taken for it halved a sum loss on 2 ranks)
    masks_only = coupling is not None and not any(uses_batch_statistics(m) for m in inner.modules())
    # targets of another sample count cannot be halved; targets with none go whole to each half (dict
    # targets, and None with the labels inside the inputs, could not be told, and a sum loss was taken
    # for a mean: a sharpness of 566 for 1070 on shards of 200 and 120 samples)
    if n < 1 or not params or (coupling is not None and not masks_only) or not shares_samples(y, n):
        return None
    x, y, pieces, what = halves(x, y)

    # (an F.embedding(max_norm=) call in the forward: a copy of the weight; a state the forward carries in a
    # plain attribute put back after each forward: the halves saw it moved on, and a mean loss was refused)
    kept = AttributesKept()

    def loss_at(p, xs, ys):
        with RenormedCopies(), kept.watch(inner):
            try:
                return loss_fn(functional_call(inner, p, (xs,)), ys)
            except RuntimeError as err:   # a shard of one sample run twice over (a batch the shard is not): a
                if sample_count(xs) == n:  # state shaped by the batch fails there as on a half of a larger shard
                    raise
                raise PieceFailed.of(sample_count(xs), err) from err

    modes = [(module, module.training) for module in inner.modules()]
    dtype = next(iter(params.values())).dtype
    try:
        if masks_only:
            inner.eval()
        # F.dropout's masks (drawn where it is called with training=True) leave the caller's RNG alone
        with torch.no_grad(), fixed_rng(0, next(iter(params.values())).device):
            try:
                # a token mean that leaves -100 targets out weighs the halves by their counted targets
                # (by their samples, a shard with -100 in one half was refused, and one with as many in
                # each was weighted by its samples in the union: 0.448 for the union's 0.487 on 2 ranks)
                counted = leaves_ignored_out(loss_at, params, *batch, dtype)
                sizes = [counted_targets(yc) for _, yc in pieces] if counted else None
                _, kind, shown = reduction_kind(loss_at, params, x, y, pieces, dtype, sizes=sizes)
            except PieceFailed as err:   # a model that needs its whole shard (a state shaped by the batch): torch's
                # raw error on a call the model runs; told from the rows of one forward's output, as a sharded one
                return sharded_shard_reduction(inner, loss_fn, batch, failed=err)
            if kind is None:  # told again without the masks of F.dropout called with training=True
                # (no module to switch to eval: such a model was refused where a Dropout's was measured)
                with functional_masks_off():
                    _, without, _ = reduction_kind(loss_at, params, x, y, pieces, dtype, sizes=sizes)
                # "both": 0 there and nearby without them (a hinge loss its margins satisfy), so this
                # shard cannot tell, as one whose loss is 0 outright: it follows the others (it refused)
                kind = without if without is not None else kind
    finally:
        for module, training in modes:
            module.training = training
    told = _told(kind, shown, what)
    return "counted" if counted and told == "mean" else told
