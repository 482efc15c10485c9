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

Not seen: a branch that skips a module sharded by its own ``fully_shard`` call. Its all-gather
runs in the module's forward, so the ranks' forwards already differ (the same abort, inside the
forward): keep a branch inside one sharded module, or make every rank call the module.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["parameters_in_use", "refuse_uneven_reach"]


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
