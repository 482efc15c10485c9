"""Every rank calls a curvature entry point alike: the same settings, model and optimizer state.

With ``distributed=True`` each rank runs the solver's collectives in lockstep, so a setting that
differs between the ranks (a ``tol``, a ``k``) makes them run different numbers of collectives:
gloo aborted, or a rank waited for the group's timeout. Parameters or optimizer state that differ
(ranks seeded apart, a checkpoint loaded on one) gave a silent curvature of no one model. These
checks run first, before any check of the entry point's own, and raise the same ValueError on
every rank.
"""
from __future__ import annotations

import functools
import inspect
import zlib

import torch

from catapult.arguments import check_batch, check_flag
from catapult.curvature.distributed import agreed, check_shard_inputs, require_process_group, unwrap_ddp

__all__ = ["PER_RANK_ARGUMENTS", "same_call_on_every_rank", "check_same_call"]

#: arguments each rank may pass its own: its start vector (rank 0's is broadcast), its micro-batch
#: size (a rank's micro-batches do not change how many products it runs), and its shard
PER_RANK_ARGUMENTS = frozenset({"batch", "init", "chunk_size"})

#: the entry points' on/off arguments, checked to be bools before anything else reads them
FLAGS = ("distributed", "scale_by_group_lr")


def same_call_on_every_rank(fn):
    """``fn`` (an entry point with ``batch`` and ``distributed`` arguments), which with
    ``distributed=True`` first checks that every rank called it alike (:func:`check_same_call`),
    before any check of its own: a setting that differs between the ranks (a ``tol``, a ``k``)
    ran different numbers of collectives on them, and one that a single rank refused left the
    others in their first one.

    >>> @same_call_on_every_rank
    ... def measure(model, batch, *, tol=1e-3, distributed=False):
    ...     return tol
    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     measure(torch.nn.Linear(2, 1), (torch.zeros(4, 2), torch.zeros(4, 1)), tol=0.5, distributed=True)
    0.5
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return fn(*args, **kwargs)  # its own TypeError, named as Python names it
        bound.apply_defaults()
        # truthiness took scale_by_group_lr="no" as True, and distributed=1 ran distributed
        # without the checks below (they looked for True itself)
        for name in FLAGS:
            if name in bound.arguments:
                bound.arguments[name] = check_flag(fn.__name__, name, bound.arguments[name])
        if bound.arguments.get("distributed") is True:
            require_process_group()
            check_same_call(fn.__name__, bound.arguments)
        return fn(*bound.args, **bound.kwargs)
    return run


def check_same_call(name: str, arguments: dict) -> None:
    """Raise the same ValueError on every rank (every rank must call it) unless every rank's
    ``arguments["batch"]`` is a pair whose inputs have a sample dimension (a tensor, or nested tensors sharing dim 0), the ranks called ``name`` with the same
    settings (every argument but :data:`PER_RANK_ARGUMENTS` that is a number, string, None or
    dtype, or a tuple, list or dict of them, nested, by value; any other object counts by its type, so ``optimizer=None`` on one rank and an
    optimizer on another differ), the same model parameters and buffers (``arguments["model"]``, unwrapped
    from DDP; a BatchNorm's running statistics that each rank's shard updated gave a curvature of no
    one model) and the same optimizer hyperparameters and state (``arguments["optimizer"]``), all
    but FSDP2's ``DTensor`` shards, whose rows differ by rank. The settings set how many
    collectives each rank runs (a ``tol`` that differed aborted gloo); parameters or state that
    differ (ranks seeded apart, a checkpoint loaded on one) gave a silent curvature of no one
    model, or each rank its own.

    >>> batch = (torch.zeros(4, 2), torch.zeros(4, 1))
    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     check_same_call("sharpness", {"model": torch.nn.Linear(2, 1), "batch": batch, "tol": 1e-3})
    """
    settings = sorted(key for key in arguments if key not in PER_RANK_ARGUMENTS and key != "model")
    params = _named_parameters(arguments.get("model"))
    device = params[0][1].device if params else None
    # a batch that one rank refuses (not a pair; inputs with no sample dimension) stops every
    # rank: the refusing rank skipped collectives the others ran (lean's sizing, on a bare tensor),
    # and they paired wrongly or waited for the group's timeout
    agreed(lambda: _check_shard(name, arguments.get("batch")), device)
    # the tensors every rank must hold alike: the parameters, and the optimizer's state (an
    # Adam's second moments set the pre-conditioner; one loaded on one rank gave each rank its
    # own answer), with the optimizer's hyperparameters as settings
    tensors = [(f"the model's parameter {key!r}", p) for key, p in params]
    # and its buffers: a BatchNorm's running statistics, updated by each rank's own shard (DDP with
    # broadcast_buffers=False, or the last forward before model.eval()), gave a curvature of no one model
    tensors += [(f"the model's buffer {key!r}", b) for key, b in _named_buffers(arguments.get("model"))]
    optimizer = arguments.get("optimizer")
    group_settings, group_keys = [], []
    if isinstance(optimizer, torch.optim.Optimizer):
        names = {id(p): key for key, p in params}
        for g, group in enumerate(optimizer.param_groups):
            group_keys.append(", ".join(sorted(key for key in group if key != "params")))
            group_settings += [(f"optimizer's {key} (param group {g})", _setting(value))
                               for key, value in sorted(group.items()) if key != "params"]
            # which parameters the group holds (an optimizer over another subset on one rank: its trial steps
            # and pre-conditioner moved other parameters, and the ranks waited in unpaired collectives until
            # the group's timeout), spelt by their count and a checksum of their names
            members = ",".join(names.get(id(p), "?") for p in group["params"])
            group_settings.append((f"optimizer's parameters (param group {g})",
                                   f"{len(group['params'])}:{zlib.crc32(members.encode())}"))
            for p in group["params"]:
                tensors += [(f"the optimizer's {key!r} of parameter {names.get(id(p), '?')!r}", t)
                            for key, t in sorted(optimizer.state.get(p, {}).items()) if torch.is_tensor(t)]
    # each step sizes the next all-reduce alike: the function and its argument names, then the
    # arguments, then the tensors' names, shapes, dtypes and requires_grad
    if any(_differs([f"{name}({', '.join(settings)})"], device)):
        raise ValueError(f"distributed=True: the ranks called different functions ({name} on this one); call "
                         f"the same on every rank")
    differ = [key for key, apart in zip(settings, _differs([f"{key}={_setting(arguments[key])}" for key in settings],
                                                           device)) if apart]
    if not differ:
        # (and dtypes, and which parameters are trainable: a float32 model on one rank and a float64 one on
        # another, whose parameters held the same values, or a parameter frozen on one rank only, passed, and
        # the first product's all-reduce of unlike sizes aborted gloo's process)
        layout = [";".join(key for key, _ in group_settings) + " "
                  + ";".join(f"{label}{tuple(t.shape)}{t.dtype}{'' if t.requires_grad else ' frozen'}"
                             for label, t in tensors)]
        if any(_differs(layout, device)):   # (every rank knows: all look for what differs, alike)
            raise ValueError(f"distributed=True: the ranks called {name} with different models or optimizer states: "
                             f"{_layout_difference(group_keys, tensors, device)}; call it with the same on every rank")
        differ = [key for (key, _), apart in zip(group_settings, _differs([f"{k}={v}" for k, v in group_settings],
                                                                          device)) if apart]
    if differ:
        raise ValueError(f"distributed=True: {name}'s {', '.join(differ)} differ{'s' * (len(differ) == 1)} between "
                         f"the ranks; pass the same on every rank (the ranks would run different collectives)")
    stats = []
    for _, t in tensors:
        if type(t).__name__ == "DTensor":  # an FSDP2 shard: each rank holds its own rows
            stats += [0.0, 0.0, 0.0]
        else:
            stats += list(_fingerprint(t).to(device))
    high, low = _high_low(stats, device)
    for i, (label, _) in enumerate(tensors):
        (a_hi, s_hi, q_hi), (a_lo, s_lo, q_lo) = (side[3 * i:3 * i + 3] for side in (high, low))
        slack = 1e-9 * max(a_hi, 1e-300)  # the same bits on like hardware; slack for unlike
        if abs(a_hi - a_lo) > slack or abs(s_hi - s_lo) > slack or abs(q_hi - q_lo) > 1e-9 * max(q_hi, 1e-300):
            remedy = ("a BatchNorm's running statistics, updated by each rank's shard: broadcast rank 0's buffers, "
                      "torch.distributed.broadcast(b, 0) for each b in model.buffers()," if " buffer " in label else
                      "wrap the model in DistributedDataParallel, or broadcast rank 0's parameters and state,")
            raise ValueError(f"distributed=True: {label} differs between the ranks; the curvature of the union's "
                             f"loss is that of one model and one optimizer state ({remedy} before measuring)")


def _layout_difference(group_keys: list, tensors: list, device) -> str:
    """What differs first between the ranks' layouts (every rank must call it, once they know that
    something does): the number of the optimizer's param groups, of the model's parameters and
    buffers, or of the optimizer's state tensors (each as this rank counts it, and the fewest and most
    over the ranks), else the first param group whose settings' names differ, else the first
    tensor whose name, shape, dtype or ``requires_grad`` does. Before, one text for all of them
    ("names, shapes, dtypes or which parameters require grad"), which named no group and no count."""
    counts = [("the optimizer's param groups", len(group_keys))]
    counts += [(what, sum(label.startswith(prefix) for label, _ in tensors))
               for what, prefix in (("the model's parameters", "the model's parameter "),
                                    ("the model's buffers", "the model's buffer "),
                                    ("the optimizer's state tensors", "the optimizer's "))]
    high, low = _high_low([float(n) for _, n in counts], device)
    for (what, n), most, fewest in zip(counts, high, low):
        if most != fewest:
            return f"{what}: {n} on this rank, {fewest:.0f} to {most:.0f} over the ranks"
    texts = list(group_keys)
    for label, t in tensors:
        texts += [label, str(tuple(t.shape)), str(t.dtype), str(t.requires_grad)]
    apart = _differs(texts, device)
    for g, keys in enumerate(group_keys):
        if apart[g]:
            return f"param group {g} of the optimizer holds other settings on another rank ({keys} on this one)"
    for i, (label, t) in enumerate(tensors):
        named, shaped, typed, trained = apart[len(group_keys) + 4 * i:len(group_keys) + 4 * i + 4]
        if named:
            return f"where this rank has {label}, another has another name there"
        if shaped:
            return f"{label} is shaped {tuple(t.shape)} on this rank, otherwise on another"
        if typed:
            return f"{label} is {t.dtype} on this rank, of another dtype on another"
        if trained:
            return f"{label} {'requires grad' if t.requires_grad else 'is frozen'} on this rank, not on another"
    return "their layouts' checksums differ"   # (a checksum that differs with every part alike: not reached)


#: Entries per chunk of :func:`_fingerprint`'s float64 sums.
FINGERPRINT_CHUNK = 1 << 20


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """``(sum |t|, sum t, sum t^2)`` in float64, over chunks of :data:`FINGERPRINT_CHUNK`
    entries: ``sum(dtype=torch.float64)`` of the whole tensor makes a float64 copy of it (measured:
    +765 MB of peak memory for 1e8 float32 entries), twice an embedding's size on every call."""
    sums = torch.zeros(3, dtype=torch.float64, device=t.device)
    for chunk in t.detach().reshape(-1).split(FINGERPRINT_CHUNK):
        c = chunk.double()
        sums += torch.stack([c.abs().sum(), c.sum(), c.square().sum()])
    return sums


def _check_shard(name: str, batch) -> None:
    inputs, _ = check_batch(name, batch, allow_empty=True)   # an empty shard: shard_weight names it
    check_shard_inputs(inputs)


def _named_parameters(model) -> list:
    return list(unwrap_ddp(model).named_parameters()) if isinstance(model, torch.nn.Module) else []


def _named_buffers(model) -> list:
    return list(unwrap_ddp(model).named_buffers()) if isinstance(model, torch.nn.Module) else []


#: How many entries (scalars and containers) of a nested tuple, list or dict setting are spelt
#: by value; a larger or deeper one counts by its type and length.
MAX_SETTING_ENTRIES = 4096
MAX_SETTING_DEPTH = 32

_SCALARS = (bool, int, float, str, torch.dtype, torch.device)


def _setting(value) -> str:
    """A setting as every rank spells it alike: a number, string, None, dtype or device by its
    repr, a tuple, list or dict of them (nested, up to :data:`MAX_SETTING_ENTRIES` entries) by
    its entries' reprs, any other object by its type (each rank has its own). Nested tuples and
    lists counted by their type only, so ``((16, 1e-3),)`` on one rank and ``((8, 1e-3),)`` on
    another passed as the same setting."""
    budget = [MAX_SETTING_ENTRIES]
    spelt = _spelt(value, budget, 0)
    if spelt is None:
        size = f" of {len(value)}" if isinstance(value, (tuple, list, dict)) else ""
        return f"<{type(value).__name__}{size}>"
    return spelt


def _spelt(value, budget: list, depth: int) -> str | None:
    """``value`` spelt by :func:`_setting`, or None once ``budget[0]`` entries or
    :data:`MAX_SETTING_DEPTH` levels are spent."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_SETTING_DEPTH:
        return None
    if value is None or isinstance(value, _SCALARS):
        return repr(value)   # an Adam's betas too
    if isinstance(value, (tuple, list)):
        parts = []
        for item in value:
            part = _spelt(item, budget, depth + 1)
            if part is None:
                return None
            parts.append(part)
        return f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            spelt_key, part = _spelt(key, budget, depth + 1), _spelt(item, budget, depth + 1)
            if spelt_key is None or part is None:
                return None
            parts.append(f"{spelt_key}: {part}")
        return "{" + ", ".join(sorted(parts)) + "}"
    return f"<{type(value).__name__}>"


def _differs(texts: list, device) -> list:
    """For each of ``texts``, whether some rank spelt it otherwise (one all-reduce)."""
    high, low = _high_low([float(zlib.crc32(text.encode())) for text in texts], device)
    return [hi != lo for hi, lo in zip(high, low)]


def _high_low(values: list, device) -> tuple[list, list]:
    """The largest and smallest of each of ``values`` over the ranks (one all-reduce)."""
    import torch.distributed as dist

    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values]) if values \
        else torch.zeros(0, dtype=torch.float64, device=device)
    both = torch.cat([t, t.neg()])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return both[:len(values)].tolist(), [-x for x in both[len(values):].tolist()]
