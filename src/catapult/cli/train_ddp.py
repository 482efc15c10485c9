"""``torchrun --nproc_per_node=N -m catapult train-ddp CONFIG [key=value ...] --out DIR``: one
model trained data-parallel across processes (:func:`catapult.engine.distributed.train_ddp`)
from token shards at ``data.root``: pre-tokenised ``*.npy`` arrays, or ``*.jsonl`` / ``*.parquet``
text tokenised once into the token cache (:mod:`catapult.data.text_shards`)."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from catapult.cli.common import add_config_arguments, config_from_args, path_option
from catapult.config import ConfigError
from catapult.engine.ddp_config import check_ddp_config


def register(subparsers) -> None:
    """Add the ``train-ddp`` subcommand."""
    p = subparsers.add_parser(
        "train-ddp",
        help="train one GPT data-parallel across processes (start with torchrun)",
        description="Train one GPT with torch.distributed DDP from token shards at data.root: *.npy "
                    "token arrays, or *.jsonl / *.parquet text (field / column data.text_key) tokenised "
                    "once with a byte-level BPE of data.vocab_size ids; train.batch_size is the global batch. Start with "
                    "torchrun --nproc_per_node=N -m catapult train-ddp CONFIG ...; it is `catapult train`'s "
                    "loop and rank 0 writes the same run files: config.yaml, metrics.csv, summary.json, "
                    "trajectories.png and model.pt. train.fsdp=true shards the model over the processes "
                    "(FSDP2) instead of copying it, for a model bigger than one device; its sharpness is "
                    "measured by finite differences of FSDP's gradient (a ReLU GPT in float64 only).",
    )
    add_config_arguments(p)
    p.add_argument("--out", type=path_option, metavar="DIR",
                   help="output directory (default: runs/<name>); one that holds anything is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files of an earlier run's directory (as `catapult train "
                        "--overwrite`): a folder holding no run, or a file of a run file's name that a run "
                        "did not write, is refused")
    p.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                   help="process-group backend (default auto: nccl with CUDA, else gloo)")
    p.set_defaults(func=_command)


def _command(args) -> int:
    config = config_from_args(args)  # before torch: a bad config is refused at once, on every rank
    check_ddp_config(config)
    import torch.distributed as dist

    from catapult.engine import format_summary
    from catapult.engine.distributed import train_ddp

    out = Path(args.out) if args.out else Path("runs") / config["name"]
    world, rank = _launch()
    if args.backend != "auto":  # asked for by name: checked in one process too, where no group needs it
        _backend(args.backend)
    backend = None
    # torchrun with one process and train.fsdp: a group of one, so FSDP has its process group
    # (without one the run was told that torchrun had not started it)
    grouped = world > 1 or (config["train"]["fsdp"] and "WORLD_SIZE" in os.environ)
    if grouped and not (dist.is_available() and dist.is_initialized()):  # every rank, before any work
        backend = _backend(args.backend)
        _check_rendezvous(world)
    # the run directory is checked by train_ddp on every rank at once (rank 0's verdict): a
    # check on rank 0 alone, before the group existed, left the others waiting in the rendezvous
    started = False
    if backend is not None:
        dist.init_process_group(backend)
        started = True
    try:
        result = train_ddp(config, out_dir=out, overwrite=args.overwrite, progress=args.progress)
        if started:  # every rank past its DDP teardown before the group goes (the documented order)
            dist.barrier()
    except (Exception, KeyboardInterrupt) as exc:
        if started:
            _leave(exc, rank)
        raise
    if started:
        end_process_group()
    if rank == 0:
        print(format_summary(result.summary))
        print(f"train-ddp: {world} process(es), {result.tokens_per_second:,.0f} tokens/s; wrote {out}/ "
              f"(config.yaml, metrics.csv, summary.json, trajectories.png, model.pt)")
    return 0


#: How long :func:`end_process_group` lets go of the GIL before the group's object is freed.
GROUP_SETTLE_SECONDS = 0.2


def end_process_group() -> None:
    """``dist.destroy_process_group()``, with the default group's object freed only after this
    thread has let go of the GIL for :data:`GROUP_SETTLE_SECONDS`. torch before 2.8 frees a gloo
    group holding the GIL while it joins the group's worker threads, and a worker still dropping
    a finished collective whose tensors' Python objects are gone needs the GIL: on torch 2.2.2 a
    group of one whose last all-reduces' tensors were dropped at once hung in
    ``destroy_process_group`` 3 times in 3, and the test harness's ranks hung so after a barrier
    (stop 60). torch's bookkeeping lets go of the group at once, as before; the group's threads
    are joined once any such worker has had the GIL."""
    import torch.distributed as dist

    group = dist.group.WORLD   # the default group's object, kept past torch's bookkeeping
    dist.destroy_process_group()
    time.sleep(GROUP_SETTLE_SECONDS)   # the GIL let go: a worker freeing tensors finishes
    del group                          # the last reference: gloo joins its (idle) threads here


#: What gloo says on the ranks left in a collective when another rank's process has gone.
_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "remote worker crash")
_GLOO_SOURCE = re.compile(r"^\[[^\]]*\]\s*")  # "[.../gloo/transport/tcp/pair.cc:553] " before the news


def _leave(exc: BaseException, rank: int) -> None:
    """End this rank of a started group over ``exc``: its message and exit code as ``catapult``
    prints them (:func:`catapult.cli.report`), or, when ``exc`` is gloo's news that another rank's
    process has gone, one line saying so (exit 1: that rank's own message says why). Then
    ``os._exit``: the interpreter's teardown of gloo's threads after a failed collective has
    aborted ranks (SIGABRT, "terminate called without an active exception"). An exception
    :func:`~catapult.cli.report` does not know (a defect) is raised with its traceback instead."""
    from catapult.cli import report

    message = str(exc)
    if isinstance(exc, RuntimeError) and any(phrase in message for phrase in _LOST_PEER):
        print(f"catapult train-ddp: error: rank {rank}: another process of this run stopped; its own "
              f"message says why (gloo: {_GLOO_SOURCE.sub('', message).split('. ')[0][:160]})", file=sys.stderr)
        code = 1
    else:
        code = report("train-ddp", exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _launch() -> tuple[int, int]:
    """``(world size, rank)`` from torchrun's environment (1 and 0 without it); a value that is
    not a count, or a rank outside the world, is a ConfigError naming the variable (it was a
    ValueError traceback from ``int()``)."""
    numbers = {}
    for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            numbers[name] = int(text)
        except ValueError:
            numbers[name] = -1
        if numbers[name] < (1 if name == "WORLD_SIZE" else 0):
            raise ConfigError([(name, f"{text!r} is not a {'process count' if name == 'WORLD_SIZE' else 'rank'}; "
                                      f"torchrun sets it (unset it to train in one process)")])
    world, rank = numbers["WORLD_SIZE"], numbers["RANK"]
    if rank >= world:
        raise ConfigError([("RANK", f"{rank} is not below WORLD_SIZE {world}")])
    return world, rank


def _check_rendezvous(world: int) -> None:
    """A ConfigError naming ``MASTER_ADDR`` / ``MASTER_PORT`` when the process group is to be
    started from the environment without them (``init_process_group``'s ValueError traceback)."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError([(missing[0], f"WORLD_SIZE is {world} but {' and '.join(missing)} "
                                        f"{'is' if len(missing) == 1 else 'are'} not set: start with torchrun, "
                                        f"or unset WORLD_SIZE to train in one process")])


def _backend(choice: str) -> str:
    """The process-group backend ``--backend choice`` names (auto: nccl with CUDA, else gloo), or
    a ConfigError naming ``--backend`` when this machine's torch cannot run it (it was a
    RuntimeError traceback from ``init_process_group`` on every rank)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError([("--backend", "this torch is built without torch.distributed; "
                                         "run train-ddp without torchrun (one process)")])
    backend = choice if choice != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not (dist.is_nccl_available() and torch.cuda.is_available()):
        why = "no CUDA GPU is visible" if dist.is_nccl_available() else "this torch is built without NCCL"
        raise ConfigError([("--backend", f"nccl needs CUDA GPUs and NCCL, and {why}; use --backend gloo")])
    if backend == "gloo" and not dist.is_gloo_available():
        raise ConfigError([("--backend", "this torch is built without gloo; use --backend nccl on CUDA GPUs")])
    return backend
