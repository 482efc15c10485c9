"""A set-up step on every rank, one error for all: :func:`on_every_rank` runs a step (checking the
run directory, opening or tokenising the shards, building the run) on each rank of ``catapult
train-ddp``, and a failure on any rank is raised on every rank as the same type with the same
message (:func:`catapult.curvature.rank_errors.same_error`), so no rank goes on alone into a
collective the failed one never reaches, and the command line ends each rank with its exit code
and one line. The ranks wait for each other on a gloo group of their own (:func:`setup_group`),
for up to :data:`SETUP_TIMEOUT`: rank 0 may tokenise a corpus for hours.
"""
from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any, Callable

import torch.distributed as dist

from catapult.curvature.rank_errors import error_verdict, same_error
from catapult.engine.gather_json import gather_json

__all__ = ["SETUP_TIMEOUT", "on_every_rank", "setup_group"]

#: How long the ranks wait for each other in a set-up step (:func:`on_every_rank`): rank 0
#: tokenises text shards while the others wait, for as long as a corpus takes. The process
#: group's own timeout (NCCL's default 10 minutes, gloo's 30) is for the training's collectives.
SETUP_TIMEOUT = timedelta(hours=24)


def on_every_rank(work: Callable[[], Any], distributed: bool) -> Any:
    """``work()`` on this rank; an exception it raises on any rank is raised on every rank (the
    lowest failing rank's: the original there, one of the same type and message on the
    others, :func:`~catapult.curvature.rank_errors.same_error`), so no rank goes on alone into a
    collective the failed one never reaches. Catapult's own errors (ConfigError,
    RunDirectoryError, MissingDependency, MicroBatchRefused ...) and the built-in ones keep their
    type (the CLI's exit code 2 for the input's); any other kind is a RuntimeError naming it and
    its rank. Without ``distributed``, ``work()`` as it is.

    >>> on_every_rank(lambda: 6 * 7, False)
    42
    """
    kept: list = []   # the verdicts' tensors, alive until the group is freed (gather_json)
    with setup_group() if distributed else contextlib.nullcontext() as group:
        # the group first, while every rank is here: the others then wait on it for this work
        result, problem = None, None
        try:
            result = work()
        except Exception as exc:  # any kind: one rank's failure must stop every rank
            problem = exc
        if not distributed:
            if problem is not None:
                raise problem
            return result
        # (str() of an exception may raise: that rank alone would leave the others waiting in the gather)
        verdict = None if problem is None else error_verdict(problem)
        every = gather_json(verdict, group, kept)   # JSON, never a pickle
        del group   # the context's reference is then the last: the group is freed as it exits
    del kept
    failed = next((r for r, p in enumerate(every) if p is not None), None)
    if failed is None:
        return result
    if failed == dist.get_rank():
        raise problem
    raise same_error(failed, *every[failed])


@contextlib.contextmanager
def setup_group():
    """A gloo group of every rank whose collectives wait :data:`SETUP_TIMEOUT` (the default
    group where gloo is not built in), destroyed on exit. Every rank enters it together.

    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     with setup_group() as group:
    ...         dist.get_world_size(group)
    1
    """
    if not dist.is_gloo_available():
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT)
    # its connections now, while every rank is here: made lazily in the first collective, a rank
    # that died in the meantime (killed while tokenising) left the others waiting for its address
    dist.barrier(group=group)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)
