"""Which parameters of a model sharded by FSDP2 the loss reaches on each rank, found before its
backward, so that a branch some ranks take and others skip is refused on every rank.

FSDP2's backward reduce-scatters the gradients of the parameters that got one on this rank (a
parameter the loss does not reach has none). Where the loss reaches a parameter on some ranks'
shards and not on others' (``if x.shape[0] > 3: h = self.extra(h)``), the ranks' reduce-scatters
differ in size: gloo aborted the process (``op.preamble.length <= op.nbytes ... Is there a
distributed collective mismatch``, SIGABRT, in FSDP's own backward) and NCCL may wait for the
process group's timeout. Such a model cannot train either; a curvature call should say so. The
first gradient of :class:`~catapult.curvature.sharded.ShardedHessianOperator` (``sharpness``,
``critical_lr`` and the rest with ``distributed=True``) notes, during its forward, the gathered
(unsharded) parameter each module holds when it is called (:func:`parameters_in_use`), walks the
loss's graph for the ones it reaches, and all-reduces one flag a parameter; a parameter reached
on some ranks but not all is refused there, on every rank (:func:`refuse_uneven_reach`), before
the backward. Parameters reached on no rank are the unused ones (left out as unsharded).

A branch that skips a module sharded by its own ``fully_shard`` call differs earlier: that
module's all-gather runs in its forward, so the ranks' forwards already differ (the same abort,
inside FSDP's forward). The first forward therefore agrees, before each such module gathers its
weights and once more at its end, which module every rank is about to call (one all-reduce of two
numbers each: :func:`same_sharded_modules`); where they differ, every rank raises the same
ValueError naming both.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch

__all__ = ["parameters_in_use", "refuse_uneven_reach", "same_sharded_modules"]


@contextlib.contextmanager
def parameters_in_use(model: torch.nn.Module, found: dict) -> Iterator[dict]:
    """While inside, every module of ``model`` called puts ``{id(parameter): name}`` into ``found``
    for the parameters it holds at that moment (its own and its children's, by the names
    ``model.named_parameters()`` gives: a tied one by its first name). Under FSDP2 those are the
    gathered parameters the forward uses, the leaves of the loss's graph (registered after
    ``fully_shard``'s own pre-forward hook, which gathers them).

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> found = {}
    >>> with parameters_in_use(model, found):
    ...     _ = model[0](torch.zeros(1, 2))
    >>> sorted(found.values())
    ['0.bias', '0.weight']
    """
    first: dict[int, str] = {}
    canonical = {name: first.setdefault(id(p), name) for name, p in model.named_parameters(remove_duplicate=False)}
    prefixes = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        prefixes.setdefault(module, prefix)

    def note(module, _args):
        prefix = prefixes.get(module)
        if prefix is None:
            return
        for name, p in module.named_parameters(prefix=prefix, remove_duplicate=False):
            if name in canonical:
                found.setdefault(id(p), canonical[name])

    handles = [module.register_forward_pre_hook(note) for module in prefixes]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def refuse_uneven_reach(names: list[str], ranks_reaching: list[float], world: int) -> None:
    """Raise a ValueError (alike on every rank: ``ranks_reaching`` is all-reduced) naming the
    parameters ``names[i]`` that the loss reaches on ``ranks_reaching[i]`` ranks, more than none
    and fewer than ``world``.

    >>> refuse_uneven_reach(["a.weight", "b.weight"], [2.0, 0.0], 2)   # every rank, or none: fine
    >>> refuse_uneven_reach(["a.weight", "b.weight"], [2.0, 1.0], 2)
    Traceback (most recent call last):
    ValueError: distributed=True on a model sharded by fully_shard: the loss reaches 'b.weight' on 1 of the 2 ranks' shards (a branch some ranks take): FSDP2's backward reduce-scatters only the gradients a rank has, so the ranks' collectives would differ (gloo aborts the process, NCCL waits); make every rank's forward reach the same parameters (e.g. add 0 times the branch's output where it is skipped), or measure the model unsharded
    """
    uneven = [(n, int(c)) for n, c in zip(names, ranks_reaching) if 0 < c < world]
    if not uneven:
        return
    shown = ", ".join(f"{n!r} on {c}" for n, c in uneven[:6]) + (f" (and {len(uneven) - 6} more)" if len(uneven) > 6 else "")
    raise ValueError(f"distributed=True on a model sharded by fully_shard: the loss reaches {shown} of the {world} "
                     f"ranks' shards (a branch some ranks take): FSDP2's backward reduce-scatters only the gradients "
                     f"a rank has, so the ranks' collectives would differ (gloo aborts the process, NCCL waits); make "
                     f"every rank's forward reach the same parameters (e.g. add 0 times the branch's output where it "
                     f"is skipped), or measure the model unsharded")


@contextlib.contextmanager
def same_sharded_modules(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """While inside (every rank runs one forward of ``model`` in it), each module of ``model`` that
    ``fully_shard`` sharded first agrees with the other ranks, before it gathers its weights, that
    they are about to call the same module (its place in ``model.named_modules()``; one all-reduce
    of two float64 numbers on ``device``), and so does the end of the forward; where they differ
    every rank raises the same ValueError naming the two modules, in place of FSDP's all-gathers
    that do not pair up. Nothing without a process group of several ranks or a sharded module.

    >>> with same_sharded_modules(torch.nn.Linear(2, 1), torch.device("cpu")):   # no fully_shard: nothing
    ...     pass
    """
    units = _sharded_units(model)
    import torch.distributed as dist

    if not units or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        yield
        return
    where = [name or "the model (its root)" for name, _ in units] + ["the end of the forward"]

    def agree(index: int) -> None:
        both = torch.tensor([index, -index], dtype=torch.float64, device=device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = int(both[0]), -int(both[1])
        if high != low:
            raise ValueError(f"distributed=True on a model sharded by fully_shard: the ranks' forwards call different "
                             f"sharded modules, {where[low]!r} on some ranks and {where[high]!r} on others (a branch "
                             f"only some ranks take): their FSDP all-gathers would not pair up (gloo aborts the "
                             f"process, NCCL waits); make every rank call the same modules, or measure the model "
                             f"unsharded")

    handles = [module.register_forward_pre_hook(lambda _m, _a, i=i: agree(i), prepend=True)   # (before FSDP's)
               for i, (_, module) in enumerate(units)]
    try:
        yield
        agree(len(units))
    finally:
        for handle in handles:
            handle.remove()


def _sharded_units(model: torch.nn.Module) -> list:
    """``(name, module)`` of the modules of ``model`` that ``fully_shard`` sharded (none where
    ``torch.distributed.fsdp`` was never imported: no module can be one)."""
    if "torch.distributed.fsdp" not in sys.modules:
        return []
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FSDPModule)]
