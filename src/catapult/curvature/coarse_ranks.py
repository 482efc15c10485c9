"""The coarse start (:mod:`catapult.curvature.coarse`) across processes (``distributed=True``).

One process starts :func:`~catapult.curvature.sharpness` from cheap levels: sub-batches of
``n // 16`` and ``n // 4`` of its samples (every ``(n // m)``-th, :func:`~catapult.curvature.coarse.sub_batch`),
or for small batches the whole batch with one-sided difference products. Across ranks each rank
cuts its own shard the same way and the products are all-reduced, so the levels are operators of
the union, as the exact solve's are:

* **the choice** under ``coarse="auto"`` is the union's: sub-batch levels when the ranks'
  samples add up to at least :data:`~catapult.curvature.coarse.COARSE_MIN_SAMPLES` (every rank's
  batch sharing a sample dimension between inputs and targets) and a coarsest product's work on a
  rank reaches :data:`COARSE_MIN_RANK_WORK` (:func:`sub_batch_pays`), after the finite-difference
  level and only where its kink check skips it (as in one process), else the finite-difference
  level alone; where any rank guesses the model kinked (:func:`~catapult.curvature.coarse.kink_guess`),
  the sub-batch levels alone;
  every rank runs the same levels with the same tols (explicit levels that differ between the
  ranks are refused on every rank);
* **a sub-batch level** on ``m_r = n_r // divisor`` samples of each rank's ``n_r`` (at least 1) is
  the Hessian of the union of the ranks' sub-batches: products weighted ``m_r / sum m`` for a mean
  loss, 1 for a sum (:func:`sub_batch_operator`). Where every shard is a run of the union's samples
  whose length ``divisor`` divides, e.g. contiguous shards of 256 and 256 of 512, that union is
  exactly the sub-batch one process takes of the union, and the levels (and the solve's product
  counts) are its;
* **the finite-difference level** is the union's whole-batch operator's differences, each rank's
  weighted and all-reduced
  (:meth:`~catapult.curvature.distributed.DistributedOperator.forward_difference`): one process's
  level on the union, whatever the shards.

A model sharded by FSDP2 gets no coarse levels (its products are central differences of FSDP's
gradient, and a sub-batch level would cost its own kink checks): it starts cold.
"""
from __future__ import annotations

import zlib

import torch

from catapult.curvature import distributed as dist_ops
from catapult.curvature.coarse import COARSE_LEVELS, COARSE_MIN_SAMPLES, FINITE_DIFFERENCE, coarse_levels, kink_guess
from catapult.curvature.hessian import HessianOperator
from catapult.curvature.microbatch import sample_count, sample_count_or_none, shares_samples

__all__ = ["COARSE_MIN_RANK_WORK", "sub_batch_pays", "union_samples", "union_levels", "sub_batch_operator"]

#: ``coarse="auto"`` with ``distributed=True`` takes sub-batch levels only where a coarsest level's
#: product on a rank works on at least this many parameter-samples (parameters x ``n_r // 16``):
#: each coarse product is also an all-reduce, whose fixed cost (the collective and its Python,
#: ~1 ms of a rank's CPU on gloo) does not shrink with the sub-batch, so on a small model the ~45
#: cheap products cost more than the exact ones they save. Measured on 2 gloo ranks, tanh MLPs,
#: rank 0's CPU against a cold start (``bench/bench_distributed_coarse.py``, ``bench/RESULTS.md``):
#: +0.6% to +17% at 2.8e6, -10% at 5.6e6, -24% at 1.1e7, -13% at 2.0e7, -23% at 7.3e7. Below it
#: the level is the finite-difference one (a gradient and an all-reduce per product, on the whole
#: shard), as for a union of fewer than 256 samples. CPU-calibrated (gloo): on GPUs a product
#: is faster and the fixed cost larger in proportion.
COARSE_MIN_RANK_WORK = 5_000_000


def sub_batch_pays(union: int, world: int, params: int) -> bool:
    """Whether ``coarse="auto"`` takes sub-batch levels on ``world`` ranks holding ``union``
    samples of a model of ``params`` parameters (the same on every rank: no timing): the union
    has at least :data:`~catapult.curvature.coarse.COARSE_MIN_SAMPLES` samples and a coarsest
    product's work per rank, ``params * (union // world // 16)``, reaches :data:`COARSE_MIN_RANK_WORK`.

    >>> sub_batch_pays(4096, 2, 22_026), sub_batch_pays(8192, 2, 22_026), sub_batch_pays(200, 1, 10 ** 9)
    (False, True, False)
    """
    return union >= COARSE_MIN_SAMPLES and params * (union // world // COARSE_LEVELS[0][0]) >= COARSE_MIN_RANK_WORK


def union_samples(batch, device=None) -> int | None:
    """The union's sample count over the ranks (every rank must call it): the sum of each rank's
    inputs' dim 0, or None where some rank's inputs and targets share none
    (:func:`~catapult.curvature.coarse.coarse_levels` then gives no sub-batch levels).

    >>> with dist_ops.single_process_group():
    ...     union_samples((torch.zeros(300, 2), torch.zeros(300))), union_samples((torch.zeros(3, 2), torch.zeros(2)))
    (300, None)
    """
    inputs, targets = batch
    n = sample_count_or_none(inputs)
    if n is not None and not shares_samples(targets, n):
        n = None
    counts = torch.tensor([float(n or 0), float(n is None)], dtype=torch.float64, device=device)
    total, unknown = dist_ops.all_reduce_sum(counts).tolist()
    return None if unknown else int(total)


def union_levels(batch, coarse, tol: float, device=None, *, params: int | None = None,
                 kinked: bool = False) -> list[tuple[int | str, float]]:
    """:func:`~catapult.curvature.coarse.coarse_levels` of this rank's shard, chosen by the union's
    sample count and, where ``params`` (the model's parameter count, the same on every rank) is
    given, by :func:`sub_batch_pays` (every rank must call it): each rank's own ``n_r // divisor``,
    the same kinds and tols on every rank. A refusal on one rank (sub-batch levels for a batch
    without a sample dimension), or levels that differ between the ranks, stop every rank with a
    ValueError. ``kinked``: this rank's kink guess (:func:`~catapult.curvature.coarse.kink_seen`,
    from the model and its operator's graph on this shard); under ``"auto"`` the leading
    finite-difference level is dropped before sub-batch levels where any rank guessed so (the
    ranks' largest, in the levels' own agreement all-reduce: no further collective), as
    :func:`~catapult.curvature.coarse.kink_guess` in one process.

    >>> x, y = torch.zeros(160, 3), torch.zeros(160)
    >>> with dist_ops.single_process_group():
    ...     union_levels((x, y), "auto", 1e-3), union_levels((x, y), [(4, 1e-2)], 1e-3)
    ([('finite_difference', 0.003)], [(40, 0.01)])
    >>> x, y = torch.zeros(4096, 3), torch.zeros(4096)
    >>> with dist_ops.single_process_group():
    ...     union_levels((x, y), "auto", 1e-3, params=1000), union_levels((x, y), "auto", 1e-3, params=10 ** 6)
    ([('finite_difference', 0.003)], [('finite_difference', 0.003), (256, 0.003), (1024, 0.003)])
    >>> with dist_ops.single_process_group():
    ...     union_levels((x, y), "auto", 1e-3, params=10 ** 6, kinked=True)
    [(256, 0.003), (1024, 0.003)]
    """
    union = union_samples(batch, device)
    chooser = union
    if coarse == "auto" and union is not None and params is not None:
        import torch.distributed as dist

        chooser = union if sub_batch_pays(union, dist.get_world_size(), params) else 0   # the difference level
    levels = dist_ops.agreed(lambda: coarse_levels(batch, coarse, tol, union_samples=chooser), device)
    spelled = ";".join(f"{m == FINITE_DIFFERENCE}:{level_tol!r}" for m, level_tol in levels)
    code = float(zlib.crc32(spelled.encode()))
    import torch.distributed as dist

    ends = torch.tensor([code, -code, float(bool(kinked))], dtype=torch.float64, device=device)
    dist.all_reduce(ends, op=dist.ReduceOp.MAX)
    if ends[0].item() != -ends[1].item():
        raise ValueError("distributed=True: sharpness's coarse levels differ between the ranks; pass the same "
                         "coarse= on every rank (the ranks would run different collectives)")
    if isinstance(coarse, str) and coarse == "auto" and ends[2].item():   # some rank guessed kinks
        return kink_guess(levels, None, torch.float32, graph=True)
    return levels


def sub_batch_operator(op, model, loss_fn, batch, *, dtype=None, hvp: str = "auto", seed: int = 0,
                       options: dict | None = None):
    """``build(sub_batch, m) -> (operator, share)`` for
    :func:`~catapult.curvature.coarse.coarse_start_vector`'s ``sub_operator``: the Hessian of the
    union of the ranks' sub-batches of their shards ``batch`` (every rank must call ``build`` alike), each rank's products
    weighted ``m_r / sum m`` for a mean loss and 1 for a sum (``op.summed``, the whole batch's
    :class:`~catapult.curvature.distributed.DistributedOperator`), and the level's share
    ``sum m / sum n`` of the union's samples. A refusal on one rank's sub-batch stops every rank.
    ``options``: further :class:`~catapult.curvature.HessianOperator` arguments (lean's
    micro-batches).

    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    >>> batch = (x, torch.zeros(4, 1))
    >>> with dist_ops.single_process_group():
    ...     whole = dist_ops.DistributedOperator(HessianOperator(model, torch.nn.MSELoss(), batch), 1.0)
    ...     sub, share = sub_batch_operator(whole, model, torch.nn.MSELoss(), batch)((x[::2], torch.zeros(2, 1)), 2)
    ...     sub(torch.ones(2)), share
    (tensor([4., 1.]), 0.5)
    """
    inner = dist_ops.unwrap_ddp(model)
    n = sample_count(batch[0], option="coarse")

    def build(sub, m: int):
        local = dist_ops.agreed(lambda: HessianOperator(inner, loss_fn, sub, dtype=dtype, hvp=hvp, seed=seed,
                                                        **(options or {})), op.device)
        import torch.distributed as dist

        sizes = torch.zeros(dist.get_world_size(), 2, dtype=torch.float64, device=op.device)
        sizes[dist.get_rank(), 0], sizes[dist.get_rank(), 1] = float(m), float(n)
        sizes = dist_ops.all_reduce_sum(sizes)
        total_m, total_n = float(sizes[:, 0].sum()), float(sizes[:, 1].sum())
        weight = 1.0 if getattr(op, "summed", False) else m / total_m
        return dist_ops.DistributedOperator(local, weight), total_m / total_n

    return build
