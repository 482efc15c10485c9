"""Plain values gathered from every rank as JSON bytes in uint8 tensors, never as a pickle.

torch's object collectives (``all_gather_object``, ``gather_object``, ``broadcast_object_list``,
``scatter_object_list``) pickle the object on one rank and unpickle it on the others: another
process's bytes would be run. The project unpickles nothing with plain pickle
(:mod:`catapult.data.safe_pickle` is the one reader), so the ranks' verdicts travel as JSON: the
lengths first (one int64 each), then the bytes padded to the longest, on the device the group's
backend takes (the current CUDA device for NCCL, the CPU for gloo, MPI and the rest).
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist

from catapult.curvature.rank_errors import error_message

__all__ = ["collective_device", "error_message", "gather_json"]


def collective_device(group=None) -> torch.device:
    """The device whose tensors the collectives of ``group`` (None: the default group) take:
    the CPU where its backend is or includes gloo or MPI, else the current CUDA device for NCCL
    (XPU for XCCL), else the CPU.

    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     collective_device()
    device(type='cpu')
    """
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    if "xccl" in backend:
        return torch.device("xpu", torch.xpu.current_device())
    return torch.device("cpu")


def gather_json(obj: Any, group=None, kept: list | None = None) -> list:
    """Every rank's ``obj``, in rank order, as JSON carries it (tuples come back as lists; a value
    JSON cannot encode, as a ``Path``, as its ``repr``; a whole it cannot encode, as a key that is
    not a string or a cycle, as the whole's ``repr``), gathered over ``group`` (None: the default
    group). Every rank must call it. Where a rank's ``obj`` cannot be encoded at all (a ``repr`` that
    raises), every rank still runs the same collectives and then raises the same RuntimeError, naming
    that rank and its error (the lowest such rank's). ``kept``, where given, receives the collectives'
    tensors: torch before 2.8 frees a gloo group holding the GIL while joining its worker threads, and a worker
    freeing the last collective's tensors, whose Python objects were dropped, waits for the GIL
    (``catapult train-ddp`` hung at its set-up on torch 2.2); held until the group is freed,
    they need no GIL.

    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     gather_json(("ValueError", "bad", [("key", 2)]))
    [['ValueError', 'bad', [['key', 2]]]]
    """
    payload, failure = _encoded(obj)
    world = dist.get_world_size(group)
    device = collective_device(group)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(n) for n in sizes]
    padded = torch.zeros(max(counts), dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    if kept is not None:
        kept.extend([size, *sizes, padded, *out])
    every = [o[:n].cpu().numpy().tobytes() for o, n in zip(out, counts)]
    failed = next((r for r, b in enumerate(every) if b[:1] == _FAILED), None)
    if failed is not None:   # every rank ran both collectives: each raises the lowest failing rank's error
        kind, message = json.loads(every[failed][1:].decode())
        raise RuntimeError(f"gather_json: rank {failed}'s object could not be encoded ({kind}: {message}); "
                           f"every rank of the group raises this") from failure
    return [json.loads(b[1:].decode()) for b in every]


#: The first byte of a rank's bytes: its object's JSON follows, or the error that encoding it raised.
_ENCODED, _FAILED = b"V", b"E"


def _encoded(obj: Any) -> tuple[bytes, Exception | None]:
    """``obj``'s bytes for :func:`gather_json`, and None; or, where encoding it raised (a ``repr``
    that raises, or returns no string), that error's kind and message, and the error: the rank
    still joins the collectives (raising here left the other ranks waiting in them)."""
    try:
        try:   # a value JSON cannot encode as its repr (a Path in a ConfigError's problems): json.dumps
            text = json.dumps(obj, default=repr)   # raised on that rank alone, and the others waited
        except (TypeError, ValueError, RecursionError):   # a key that is not a string, a cycle: the whole's
            text = json.dumps(repr(obj))
        return _ENCODED + text.encode(), None
    except Exception as err:   # noqa: BLE001 - any kind, sent to every rank
        return _FAILED + json.dumps([type(err).__name__, error_message(err)]).encode(), err
