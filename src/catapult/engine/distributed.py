"""One model across processes: data-parallel training (``torch.distributed`` DDP) from token
shards in local files, started by ``torchrun`` (``catapult train-ddp``).

Data. ``data.root`` is a directory of shards (or one shard file), either

* text: ``*.jsonl`` (one JSON object a line, its ``data.text_key`` field the document) or
  ``*.parquet`` (a string column ``data.text_key``), tokenised once with a byte-level BPE of
  ``data.vocab_size`` ids into the token cache (:mod:`catapult.data.text_shards`); a directory
  with any text shard is read as text; or
* pre-tokenised: ``*.npy`` 1-D uint16/uint32 arrays (for example the
  ``<corpus>.train.bpe-v<V>-<key>.npy`` files of :mod:`catapult.data.token_cache`, or one file
  per shard of a larger corpus);

read memory-mapped in sorted name order as one stream of ``N`` tokens (a window may span two
shards: shards are consecutive pieces of one corpus). A file whose name has the word ``valid``,
``validation``, ``val`` or ``test`` (:func:`catapult.data.text_shards.is_held_out`) holds out
text: the training stream is the other files, and the validation stream the validation files
(else the test ones), read the same way; the run's test columns are measured on its first
``data.n_test`` windows (:func:`validation_windows`). ``data.vocab_size`` is the model's
vocabulary (or, for ``*.npy`` shards, the size that a ``vocab_size.json`` beside them states,
``{"vocab_size": N}``, any ``N >= 1``: :func:`catapult.data.text_shards.stated_vocab_size`); an id
at or beyond it is an error naming the shard. The run's ``config.yaml`` records it
(:mod:`catapult.engine.shard_run`, which sets the run up), so the run folder reloads alone. Under ``torchrun`` rank 0
tokenises text shards while the other ranks wait (up to :data:`~catapult.engine.every_rank.SETUP_TIMEOUT`, 24 hours, not
the process group's timeout: NCCL's default is 10 minutes), then every rank maps the same files; a bad
file (one naming the file and line or column), or any error one rank meets while setting up,
stops every rank with the same error.

Batches. ``train.batch_size`` is the *global* batch ``B`` (``B % world_size == 0``). Step ``t``
draws ``B`` window starts ``s ~ Uniform{0..N - T - 1}`` from ``torch.Generator`` seeded with
``(data_seed, t)`` -- the same on every rank -- and rank ``r`` takes rows
``[r B/W, (r+1) B/W)``. The union of the ranks' batches is therefore the batch one process
draws with ``world_size = 1``, and since DDP averages gradients over ranks and each rank's loss
is its rows' mean, every rank takes the step one process takes on the union batch
(``tests/test_distributed_train.py`` checks parameters equal to float64 precision).

Training. :func:`train_ddp` is :func:`catapult.engine.run`'s loop
(:func:`catapult.engine.loop.train`) on a :class:`~catapult.engine.build.Run` whose batches are
this rank's rows (:class:`ShardBatches`), with :class:`DataParallel` processes: the forward
through ``DistributedDataParallel``, the logged loss and accuracy all-reduced to the global
batch's means (so the divergence rule stops every rank at the same step), RigL's grow score from
the union batch's dense gradient, the collapse rule on the union of the final batch's outputs,
and lambda_0, the sharpness, the spectrum columns and the catapult search on the union batch
(``distributed=True``). Model, optimizer, lr schedule and
dynamic sparsity are the run config's (:func:`~catapult.engine.build.build_model` on every rank
from the same seed, so the initial weights agree; DDP also broadcasts rank 0's). Rank 0 writes
the run files of :func:`catapult.engine.run`. With ``train.fsdp`` the model is sharded instead of
copied (:mod:`catapult.engine.fsdp`, :class:`FullyShardedDataParallel`); the rest is the same.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from catapult import config as cfg
from catapult.arguments import check_flag
from catapult.data.text_shards import (VOCAB_FILE, is_held_out, is_validation, stated_vocab_size, text_shard_files,
                                       tokenize_text_shards)
from catapult.data.token_cache import npy_problem, token_cache_key
from catapult.engine.ddp_config import check_ddp_config
from catapult.engine.build import check_warmup_across_processes, resolve_device
from catapult.engine.fsdp import check_fsdp, full_state_dict
from catapult.engine.model_size import check_model_fits, training_fit
from catapult.engine.every_rank import on_every_rank
from catapult.engine.gather_json import collective_device
from catapult.engine.sharpness_rule import check_spectrum_cadence
from catapult.engine.step import COLLAPSE_RTOL
from catapult.engine.loop import Processes, RunResult, check_out_dir, in_run_directory, train
from catapult.engine.progress import progress_mode

__all__ = ["TokenShards", "ShardBatches", "DataParallel", "FullyShardedDataParallel", "global_batch_rows",
           "validation_windows", "train_ddp", "DDPResult"]


def check_one_tokenization(files: list[Path]) -> None:
    """ConfigError on ``data.root`` where ``*.npy`` shards are catapult's token caches
    (:func:`~catapult.data.token_cache.token_cache_key`) of more than one tokenization, or such
    caches beside other arrays: ``catapult train`` leaves one per vocabulary and corpus version
    beside a text corpus, and they were read as one stream, ids of different tokenizers
    concatenated, silently. One tokenization's caches alone are shards (the module docstring)."""
    keys = {f: token_cache_key(f) for f in files}
    tokenizations = sorted({k for k in keys.values() if k is not None})
    others = [f.name for f, k in keys.items() if k is None]
    if len(tokenizations) > 1 or (tokenizations and others):
        what = ", ".join(tokenizations) + (f" and {len(others)} other array(s) ({others[0]}, ...)" if others else "")
        raise cfg.ConfigError([("data.root", f"its *.npy files are catapult's token caches of {len(tokenizations)} "
                                             f"tokenization(s) ({what}): ids of different tokenizers are not one "
                                             f"corpus; put the shards of one tokenization in a folder of their own")])


def check_one_kind(root: Path, texts: list[Path]) -> None:
    """ConfigError on ``data.root`` where the folder ``root`` holds text shards (``texts``) beside
    ``*.npy`` token arrays that are not catapult's caches of it
    (:func:`~catapult.data.token_cache.token_cache_key`): the text is read, and the arrays were
    left out of the training stream without a word."""
    arrays = [f.name for f in sorted(root.glob("*.npy")) if token_cache_key(f) is None] if root.is_dir() else []
    if arrays:
        more = f" and {len(arrays) - 1} more" if len(arrays) > 1 else ""
        raise cfg.ConfigError([("data.root", f"{root} holds text shards ({texts[0].name}, ...) and token arrays "
                                             f"({arrays[0]}{more}): train-ddp reads the text and would leave the "
                                             f"arrays out; put each kind in a folder of its own")])


class TokenShards:
    """Memory-mapped token shards as one stream (module docstring): ``*.npy`` arrays, or
    ``*.jsonl`` / ``*.parquet`` text tokenised once (``text_key``, ``cache_dir``: the
    ``data.`` keys). ``files`` are the arrays read, ``sources`` the shard files they came from.
    ``held_out``: the validation stream instead of the training one (empty without held-out
    files, or when they are all there is and so are trained on)."""

    def __init__(self, root: str | os.PathLike, vocab_size: int | None = None, *, text_key: str = "text",
                 cache_dir: str | os.PathLike | None = None, check_ids: bool = True,
                 held_out: bool = False, vocab_size_set: bool = True) -> None:
        root = Path(root).expanduser()
        if not root.exists():  # before any listing or tokenising: the plain reason
            raise FileNotFoundError(f"data.root {root} does not exist")
        texts = text_shard_files(root)
        stated = stated_vocab_size(root)   # vocab_size.json: the npy shards' own size
        if stated is not None:
            vocab_size = _stated_vocab(root, texts, stated, vocab_size, vocab_size_set)
        if texts:
            check_one_kind(root, texts)
            if vocab_size is None:
                raise cfg.ConfigError([("data.vocab_size", "text shards need a vocabulary size for the tokenizer")])
            vocab, arrays = tokenize_text_shards(root, vocab_size=vocab_size, text_key=text_key, cache_dir=cache_dir)
            # the tokenizer's own size, as `catapult train` uses: a small corpus trains fewer ids
            # than asked for, and the model's embedding and logits were sized by the request
            vocab_size = vocab.size
            pairs = list(zip(texts, arrays))
        else:
            files = sorted(root.glob("*.npy")) if root.is_dir() else [root]
            check_one_tokenization(files)
            pairs = [(f, f) for f in files]
        training = [p for p in pairs if not is_held_out(p[0])]
        # only held-out files: they are the training stream, so nothing is left to validate on
        pairs = (_held_out_pairs(pairs) if training else []) if held_out else training or pairs
        if held_out and not pairs:  # no validation shard: an empty stream
            self.sources, self.files, self.arrays, self.vocab_size = [], [], [], vocab_size
            self.offsets = np.zeros(1, dtype=np.int64)
            return
        if not pairs or not pairs[0][1].is_file():
            raise FileNotFoundError(f"data.root {root}: no *.npy token shards or *.jsonl / *.parquet text shards there")
        self.sources = [s for s, _ in pairs]
        self.files = [f for _, f in pairs]
        self.arrays = []
        for f in self.files:
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                if f.suffix.lower() != ".npy":  # `catapult train`'s corpus.txt was called a refused pickle
                    raise cfg.ConfigError([("data.root", f"{f} is not a token shard: train-ddp reads *.npy token "
                                                         f"arrays, or *.jsonl / *.parquet text (a plain text file "
                                                         f"is `catapult train`'s data.name: text)")]) from None
                raise cfg.ConfigError([("data.root", f"{f}: not a readable .npy token array "
                                                     f"({npy_problem(exc)})")]) from None
            if a.ndim != 1 or a.dtype.kind not in "ui":
                raise cfg.ConfigError([("data.root", f"{f}: expected a 1-D integer token array, "
                                                     f"got {a.dtype} {a.shape}")])
            if check_ids and not texts:  # before any step: an id out of range failed mid-run, a traceback
                _check_token_ids(f, a, vocab_size, "data.vocab_size" if stated is None else VOCAB_FILE)
            self.arrays.append(a)
        self.offsets = np.concatenate([[0], np.cumsum([len(a) for a in self.arrays])])
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream (across shard borders), int64."""
        out, at, end = [], start, start + length
        while at < end:
            i = int(np.searchsorted(self.offsets, at, side="right") - 1)
            stop = min(end, int(self.offsets[i + 1]))
            out.append(np.asarray(self.arrays[i][at - self.offsets[i]: stop - self.offsets[i]], dtype=np.int64))
            at = stop
        ids = np.concatenate(out)
        if self.vocab_size is not None and ids.size and ids.max() >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} in {self.files} is >= data.vocab_size {self.vocab_size}")
        return ids

    def batch(self, rows: np.ndarray, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 ``(len(rows), context)`` for the given rows of the global starts."""
        windows = np.stack([self.window(int(starts[r]), context + 1) for r in rows])
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]


def _stated_vocab(root: Path, texts: list[Path], stated: int, vocab_size: int | None, vocab_size_set: bool) -> int:
    """The vocabulary of npy shards whose folder states it (:data:`~catapult.data.text_shards.VOCAB_FILE`):
    ``stated``, unless text shards are there (their tokenizer's size is theirs) or ``data.vocab_size``
    was set (``vocab_size_set``) to another size: a ConfigError naming the key, each way."""
    if texts:
        raise cfg.ConfigError([("data.root", f"{root} holds text shards ({texts[0].name}, ...) and {VOCAB_FILE}, "
                                             f"which states the size of pre-tokenised *.npy shards: the text's "
                                             f"tokenizer has data.vocab_size ids; remove {VOCAB_FILE}")])
    if vocab_size_set and vocab_size is not None and vocab_size != stated:
        # a run's config.yaml records its shards' size: another one there now is other shards
        raise cfg.ConfigError([("data.vocab_size", f"{vocab_size}, and {(root if root.is_dir() else root.parent) / VOCAB_FILE} states {stated} ids: "
                                                   f"the shards at data.root are not of this vocabulary (for a run's "
                                                   f"config.yaml: not the shards it trained on); set "
                                                   f"data.tokenizer=none data.vocab_size={stated}, or remove data.vocab_size and "
                                                   f"data.tokenizer (the file's size is used)")])
    return stated


def _held_out_pairs(pairs: list) -> list:
    """The held-out ``(source, array)`` pairs a run validates on: the validation shards
    (:func:`~catapult.data.text_shards.is_validation`) if there are any, else the test shards."""
    validation = [p for p in pairs if is_validation(p[0])]
    return validation or [p for p in pairs if is_held_out(p[0])]


def validation_windows(shards: TokenShards, context: int, n_test: int | None, rank: int,
                       world: int, equal_shares: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This rank's share of the validation windows: of the first ``n_test`` (null: all)
    non-overlapping windows of ``context`` tokens of the held-out stream, rank ``r`` holds
    windows ``[r n // world, (r+1) n // world)`` (possibly none: the loop weights each rank's
    means by its rows, so every window counts once). None without held-out shards. Held-out
    shards too short for one window are a ConfigError naming ``data.root``; ``n_test`` beyond
    the windows there are one naming ``data.n_test``. ``equal_shares`` (``train.fsdp``, whose
    forward is a collective): the windows are rounded down to a multiple of ``world``, so every
    rank holds as many; fewer windows than ranks are a ConfigError naming ``data.n_test``."""
    from catapult.data.text import windows

    names = [s.name for s in shards.sources]
    available = max(len(shards) - 1, 0) // context
    if names and not available:  # held out on purpose: no validation at all would pass unnoticed
        raise cfg.ConfigError([("data.root", f"the held-out shards {names} hold {len(shards)} tokens, fewer "
                                             f"than one validation window of data.context + 1 = {context + 1}")])
    if n_test is not None and n_test > available:
        held = (f"the held-out shards {names} hold {available}" if names else
                "data.root has no held-out shard (a file whose name has the word valid, validation, val or "
                "test, next to training shards)")
        raise cfg.ConfigError([("data.n_test", f"{n_test} validation windows of {context} tokens asked for; {held}")])
    if not names:
        return None
    n = available if n_test is None else n_test
    if equal_shares:
        if n < world:
            raise cfg.ConfigError([("data.n_test", f"{n} validation windows for {world} processes: train.fsdp "
                                                   f"evaluates every process on as many, at least one")])
        n -= n % world
    lo, hi = rank * n // world, (rank + 1) * n // world
    if lo == hi:  # more ranks than windows: this one evaluates none
        none = torch.empty((0, context), dtype=torch.long)
        return none, none.clone()
    return windows(torch.from_numpy(shards.window(lo * context, (hi - lo) * context + 1)), context, hi - lo)


def _check_token_ids(path: Path, array: np.ndarray, vocab_size: int | None, source: str = "data.vocab_size") -> None:
    """A ConfigError on ``data.root`` naming ``path`` if a token id of ``array`` is negative or
    ``>= vocab_size`` (stated by ``source``): one pass over the (memory-mapped) array, in chunks."""
    if not array.size or (array.dtype.kind == "u" and vocab_size is not None
                          and np.iinfo(array.dtype).max < vocab_size):
        return  # no id this dtype can hold is out of range
    chunk = 1 << 24
    for at in range(0, array.size, chunk):
        part = array[at:at + chunk]
        low, high = int(part.min()), int(part.max())
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            bad = low if low < 0 else high
            index = at + int(np.argmax(part == bad))
            raise cfg.ConfigError([("data.root", f"{path}: token id {bad} at index {index} is outside "
                                                 f"0 .. {source} - 1 = {(vocab_size or 0) - 1}")])


def global_batch_rows(batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s rows ``[r B/W, (r+1) B/W)`` of the global batch (``B % W == 0``)."""
    if batch_size % world_size:
        raise cfg.ConfigError([("train.batch_size", f"the global batch {batch_size} must be divisible by the "
                                                    f"number of processes ({world_size})")])
    per = batch_size // world_size
    return np.arange(rank * per, (rank + 1) * per)


def _starts(n_tokens: int, context: int, batch_size: int, data_seed: int, t: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(data_seed) * 1_000_003 + t)
    # a window is context + 1 tokens (inputs and the next-token targets): starts 0 .. N - T - 1
    return torch.randint(n_tokens - context, (batch_size,), generator=gen)


class ShardBatches:
    """The batches of a data-parallel run, this rank's rows of each (module docstring): batch
    ``t`` is a function of ``(data_seed, t)`` alone, so any batch can be drawn again."""

    def __init__(self, shards: TokenShards, context: int, batch_size: int, rank: int, world: int,
                 data_seed: int, device: torch.device) -> None:
        self.shards, self.context, self.batch_size = shards, context, batch_size
        self.rows = global_batch_rows(batch_size, rank, world)
        self.data_seed, self.device = data_seed, device

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: this rank's rows of global batch ``t``, on the run's device."""
        starts = _starts(len(self.shards), self.context, self.batch_size, self.data_seed, t)
        x, y = self.shards.batch(self.rows, starts, self.context)
        return x.to(self.device), y.to(self.device)

    def first_batches(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``0 .. k-1`` (lambda_0's)."""
        return [self.batch(t) for t in range(k)]


class DataParallel(Processes):
    """The training loop's view of ``world`` data-parallel processes
    (:class:`catapult.engine.loop.Processes`): the forward goes through
    ``DistributedDataParallel`` (gradients averaged), the logged loss and accuracy are
    all-reduced to the global batch's means, masks grow from the union batch's dense gradient,
    the collapse rule is the union batch's, and rank 0 writes."""

    distributed = True

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.writes = rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(model)

    def agreed(self, work: Callable[[], Any]) -> Any:
        # rank 0's run files: its failure is every rank's error here (on_every_rank), not a wait
        # in the next collective or the closing barrier for a rank that has gone
        return on_every_rank(work, True)

    def mean(self, values: tuple[float, ...], rows: int | tuple[int | None, ...] | None = None) -> tuple[float, ...]:
        counts = rows if isinstance(rows, tuple) else (rows,) * len(values)
        if all(c is None for c in counts):  # every rank holds B / W rows: the mean of the ranks' means
            t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
            dist.all_reduce(t)
            return tuple(float(v) for v in (t / self.world).tolist())
        # shares of different sizes (validation windows, counted targets): each mean weighted by
        # its count (a value whose count is None by 1: the ranks' means averaged), in one reduction
        weights = [1.0 if c is None else float(c) for c in counts]
        sums = [float(v) * w if w else 0.0 for v, w in zip(values, weights)] + weights
        t = torch.tensor(sums, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        n = len(values)
        return tuple(float(v) for v in (t[:n] / t[n:]).tolist())

    def all(self, flag: bool) -> bool:
        t = torch.tensor([int(bool(flag))], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def collapsed(self, outputs: torch.Tensor) -> bool:
        # the rule of output_collapsed on the union batch (every rank's rows), not each rank's
        # verdict on its own rows: one row per rank never collapsed, and ranks each constant at
        # a different output did; two passes of column sums, so no rank holds the union
        out = outputs.detach()
        out = (out.reshape(out.shape[0], -1) if out.dim() > 1 else out.reshape(-1, 1)).double()
        device = self._device()
        counts = torch.tensor([float(out.shape[0]), float(not bool(torch.isfinite(out).all()))],
                              dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        rows, non_finite = counts.tolist()
        if rows < 2 or non_finite:
            return False
        column = out.sum(dim=0).to(device)
        dist.all_reduce(column)
        mean = (column / rows).to(out.device)
        squares = ((out - mean) ** 2).sum(dim=0).to(device)
        dist.all_reduce(squares)
        top = out.abs().max().reshape(1).to(device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        spread = float((squares.max() / rows).sqrt())
        return spread <= COLLAPSE_RTOL * float(top)

    def before_mask_update(self, updater, t: int) -> None:
        if updater.is_update_step(t):  # RigL's grow score: the union batch's gradient
            _average_dense_grads(updater, self.world)

    @staticmethod
    def _device() -> torch.device:
        return collective_device()   # nccl reduces CUDA tensors only; gloo CPU ones


class FullyShardedDataParallel(DataParallel):
    """:class:`DataParallel` processes on a model sharded by
    :func:`~catapult.engine.fsdp.shard_model` (``train.fsdp``): the training forward goes
    through the model itself (FSDP gathers and reduce-scatters in its hooks), and the final
    ``state_dict`` is the full one, gathered to rank 0."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def evaluate(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        means = super().evaluate(model, loss_fn, x, y)
        # FSDP keeps the root's gathered weights after a forward (a backward usually follows);
        # after one with no backward, the next training forward would read them after the step
        model.reshard()
        return means

    def state_dict(self, model: nn.Module) -> dict:
        return full_state_dict(model)


def _average_dense_grads(updater, world: int) -> None:
    """All-reduce the masked layers' captured dense gradients to their mean over ranks (DDP
    averages only the parameters' gradients)."""
    for layer in updater.layers:
        grad = getattr(layer.module, "dense_grad", None)
        if grad is not None:
            grad = grad.clone()
            dist.all_reduce(grad)
            layer.module.dense_grad = grad / world


def _rank_device(name: str, distributed: bool) -> torch.device:
    """The device of this process: ``name`` resolved (:func:`~catapult.engine.build.resolve_device`),
    and a CUDA one under torchrun (or unnumbered) made ``cuda:LOCAL_RANK`` and current: NCCL's
    collectives and FSDP's device mesh take the current device (without it every rank of a node
    used cuda:0). A ``LOCAL_RANK`` past this node's GPUs is a ConfigError naming it (was torch's
    'invalid device ordinal')."""
    device = resolve_device(name)
    if device.type == "cuda" and (device.index is None or distributed):  # one GPU per process under torchrun
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise cfg.ConfigError([("device", f"{name!r}: this process's LOCAL_RANK is {local}, and this node has "
                                              f"{torch.cuda.device_count()} CUDA device(s); start at most that "
                                              f"many processes a node (torchrun --nproc_per_node)")])
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    return device


@dataclass
class DDPResult(RunResult):
    """What :func:`train_ddp` returns on every rank: a :class:`~catapult.engine.RunResult` (the
    final ``model`` unwrapped; ``metrics`` and ``summary`` the same on every rank, ``out_dir``
    rank 0's) and ``tokens_per_second`` (all ranks together, over the training's wall time:
    lambda_0, measurements and the run files count, opening and tokenising the shards does not)."""

    tokens_per_second: float = 0.0

    @property
    def losses(self) -> list[float]:
        """The global batch's train loss, row by row (``steps + 1`` rows for a finished run)."""
        return [row["train_loss"] for row in self.metrics]


def train_ddp(config: Mapping[str, Any], *, out_dir: str | os.PathLike | None = None,
              device: torch.device | str | None = None, overwrite: bool = False,
              progress: Any = None) -> DDPResult:
    """Train the config's GPT on the token shards at ``data.root`` with data parallelism.

    Runs inside an initialised process group (``torchrun`` sets it up; see
    :func:`catapult.cli.train_ddp`) or, without one, as a single process. It is
    :func:`catapult.engine.run`'s loop (:func:`catapult.engine.loop.train`) with
    :class:`DataParallel` processes: the same step semantics, divergence rule, sharpness
    tracking (the union batch's, ``distributed=True``), lr rules (linear or catapult warmup,
    ``c/lambda0``), run files and summary, written by rank 0 into ``out_dir`` (checked first
    like :func:`~catapult.engine.run`'s: ``overwrite`` replaces an earlier run's files). The
    test columns are the validation loss and accuracy on the held-out shards
    (:func:`validation_windows`, all-reduced over the ranks); without held-out shards they stay
    empty.
    """
    started = time.perf_counter()
    overwrite = check_flag("train_ddp", "overwrite", overwrite)  # overwrite="no" replaced an earlier run's files
    progress_mode(progress)  # before the shards are read
    config = cfg.validate(config)
    check_ddp_config(config)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if distributed:  # before any work; build_warmup checks again for callers of assemble_run
        check_warmup_across_processes(config)
    check_fsdp(config, distributed)
    check_spectrum_cadence(config)
    sharded = config["train"]["fsdp"]
    d = config["data"]
    context, batch_size = d["context"], config["train"]["batch_size"]
    global_batch_rows(batch_size, rank, world)  # B % W == 0: a ConfigError before any file is read
    out_path = None if out_dir is None or rank != 0 else Path(out_dir)
    asked = str(device) if device is not None else config["device"]

    def device_and_out_dir() -> torch.device:
        # a CUDA device that is missing is a ConfigError before any work (it trained on the CPU);
        # one rank's (a node with fewer GPUs than processes) stops every rank: raised on that rank
        # alone, before the set-up group, the others waited in it for the group's timeout
        here = _rank_device(asked, distributed)
        # each rank holds the weights, their gradients and the optimizer's state (train.fsdp: a
        # 1 / world share of them): at the least shapes now, at the shards' own when it builds
        check_model_fits(config, here, **training_fit(config, world))
        if out_path is not None:
            check_out_dir(out_path, overwrite)
        return here

    device = on_every_rank(device_and_out_dir, distributed)

    from catapult.engine.shard_run import build_shard_run, open_shards

    opened = on_every_rank(lambda: open_shards(config) if rank == 0 else None, distributed)
    # the others map what rank 0 tokenised, after it checked the ids (a file missing on another
    # node, a GPU missing for one rank: every rank stops with that rank's error)

    def set_up() -> Any:
        return build_shard_run(config, device, opened=opened if opened is not None else
                               open_shards(config, check_ids=False), rank=rank, world=world, distributed=distributed,
                               trains=True)

    setup = on_every_rank(set_up, distributed)
    processes = (FullyShardedDataParallel if sharded else DataParallel)(rank, world) if distributed else Processes()
    # the throughput of training: opening the shards (tokenising text ones, once) is set-up
    training = time.perf_counter()
    result = in_run_directory(out_path, overwrite, lambda path, writing: train(
        setup, path, progress=progress, started=started, writing=writing, processes=processes, overwrite=overwrite))
    seconds = max(time.perf_counter() - training, 1e-9)
    tokens = batch_size * context * int(result.summary.get("steps_completed") or 0)
    return DDPResult(status=result.status, metrics=result.metrics, summary=result.summary, config=result.config,
                     model=result.model, out_dir=result.out_dir, tokens_per_second=tokens / seconds)
