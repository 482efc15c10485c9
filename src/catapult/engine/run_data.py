"""A run's data: the config's ``data:`` section loaded onto the run's device (:func:`load_data`),
and the deterministic order of its training batches (:class:`BatchStream`), with augmentation
and the batches lambda_0 averages over. The seeds follow the rules in
:mod:`catapult.engine.loop`'s docstring; :mod:`catapult.engine.build` assembles a run from these.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from catapult import config as cfg
from catapult.data.digits import DIGITS_N_TEST, DIGITS_N_TRAIN
from catapult.engine.seeds import seeds

__all__ = ["RunData", "load_data", "load_data_once", "check_text_root", "check_image_counts", "data_shape_bounds",
           "BatchStream", "batch_stream", "build_augment", "lambda0_batches"]


@dataclass
class RunData:
    """A run's data on its device: train/test tensors, ``in_features`` (a flattened sample's
    size; for token windows the context) and ``num_classes`` (for text: the vocabulary size)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    in_features: int
    num_classes: int


def _check_text_options(d: Mapping[str, Any]) -> None:
    """What a config cannot know about the data keys, checked before anything is read: the
    ``data.cache_dir`` folder (a file there was found after minutes of BPE training) and
    ``data.text_key``, which only ``catapult train-ddp``'s ``*.jsonl``/``*.parquet`` shards have."""
    problems = []
    if d.get("text_key", "text") != "text":
        problems.append(("data.text_key", "names the text field of catapult train-ddp's *.jsonl / *.parquet shards; "
                                          "catapult train reads text files: remove it (on the command line: "
                                          "data.text_key=text)"))
    if d.get("cache_dir") is not None:
        folder = Path(d["cache_dir"]).expanduser()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if folder.exists() and not folder.is_dir():
            problems.append(("data.cache_dir", f"{folder} is a file, not a folder"))
        elif existing is not None and existing != folder and not (
                existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            problems.append(("data.cache_dir", f"{folder} cannot be created: {existing} is "
                                               f"{'not a folder' if not existing.is_dir() else 'not writable'}"))
    if problems:
        raise cfg.ConfigError(problems)


def load_data(config: Mapping[str, Any], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> RunData:
    """The config's ``data:`` section loaded and moved to ``device``; floating inputs are cast to
    ``dtype`` (token ids stay int64). A missing file raises the loader's FileNotFoundError (it
    says where it looked); other bad data settings (more samples than the data hold, an empty
    file) raise :class:`~catapult.config.ConfigError` naming ``data``."""
    from catapult import data as data_mod

    d = config["data"]
    _check_text_options(d)
    _refuse_shards(d)
    try:
        split = data_mod.load_dataset(d["name"], root=d["root"], n_train=d["n_train"], n_test=d["n_test"],
                                      context=d["context"], val_fraction=d["val_fraction"],
                                      tokenizer=d["tokenizer"], vocab_size=d["vocab_size"], cache_dir=d["cache_dir"])
    except (ValueError, TypeError) as err:  # e.g. n_train larger than the data: name the section
        if isinstance(err, cfg.ConfigError):
            raise
        raise cfg.ConfigError([("data", str(err))]) from None
    except FileNotFoundError as err:  # say it in the config's words: the key to set
        if d["name"] in ("digits", "shakespeare"):
            raise
        if d["cache_dir"] is not None and str(getattr(err, "filename", "") or "").startswith(
                str(Path(d["cache_dir"]).expanduser())):
            raise cfg.ConfigError([("data.cache_dir", str(err))]) from None
        raise FileNotFoundError(_root_words(err, d)) from None

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)

    return RunData(inputs(split.x_train), split.y_train.to(device), inputs(split.x_test),
                   split.y_test.to(device), int(np.prod(split.x_train.shape[1:])), int(split.num_classes))


#: (in_features, num_classes) of the image datasets, fixed by their format: known without reading
#: a file (cifar100 trains on its 100 fine labels).
_IMAGE_SHAPES = {"digits": (64, 10), "cifar10": (3 * 32 * 32, 10), "cifar100": (3 * 32 * 32, 100)}


def _root_words(err: Exception, d: Mapping[str, Any]) -> str:
    return (f"{err}\nIn a config or on the command line that is the key data.root, e.g. "
            f"`catapult train CONFIG data.name={d['name']} data.root=/path/to/the/files` "
            f"(or data.name=digits for the embedded data).")


def _refuse_shards(d: Mapping[str, Any]) -> None:
    """A ConfigError where the ``data`` section is token shards (a sweep's or coord-check's data,
    held whole: the text loader named only its own ``*.txt`` files as missing)."""
    from catapult.engine.shard_run import reads_shards

    _refuse_corpus_beside_arrays(d)
    if reads_shards(d):
        key = "data.tokenizer" if d["tokenizer"] == "none" else "data.root"
        raise cfg.ConfigError([(key, f"{d['root']} is read as token shards (train-ddp's data: *.npy arrays, or "
                                     f"*.jsonl / *.parquet text), a stream that catapult train, train-ddp, spectrum "
                                     f"and critical-lr read; this command loads a text corpus whole (wiki.train.raw "
                                     f"or *.txt files)")])


def _refuse_corpus_beside_arrays(d: Mapping[str, Any]) -> None:
    """A ConfigError on ``data.root`` where a text folder read as a corpus (``*.txt`` or
    ``wiki.train.raw``: :func:`~catapult.data.text.source_files`) also holds token shards: ``*.npy``
    arrays that are not catapult's token caches of it (:func:`~catapult.data.token_cache.token_cache_key`)
    or ``*.jsonl`` / ``*.parquet`` text shards. A shard folder with its README.txt trained a character
    model on the README, the shards left out."""
    if d["name"] != "text" or d.get("root") is None or d.get("tokenizer") == "none":
        return
    root = Path(d["root"]).expanduser()
    if not root.is_dir():
        return
    from catapult.data.text import source_files
    from catapult.data.text_shards import text_shard_files
    from catapult.data.token_cache import token_cache_key

    shards = sorted(f.name for f in root.glob("*.npy") if token_cache_key(f) is None)
    shards += [f.name for f in text_shard_files(root)]
    texts = source_files(root) if shards else []
    if texts:
        more = f" and {len(shards) - 1} more" if len(shards) > 1 else ""
        raise cfg.ConfigError([("data.root", f"{root} holds text ({texts[0].name}, ...) and token shards that are not "
                                             f"its caches ({shards[0]}{more}): the text would be read as the corpus "
                                             f"and the shards left out; put each kind in a folder of its own (a "
                                             f"folder of shards alone is read as token shards)")])


def check_text_root(data: Mapping[str, Any]) -> None:
    """Raise the FileNotFoundError :func:`load_data` would (naming ``data.root``) where the
    ``data`` section of a ``text`` corpus points at nothing to train on: a path that does not
    exist, or a folder without ``wiki.train.raw`` or ``*.txt`` files; a ConfigError where it holds
    token shards instead (:func:`~catapult.engine.shard_run.reads_shards`). Reads no file.

    >>> check_text_root({"name": "text", "root": "/nonexistent/wikitext"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: load_text: /nonexistent/wikitext does not exist ...
    """
    from catapult.data.text import source_files, text_splits

    _refuse_shards(data)
    if data["name"] != "text" or data["root"] is None or source_files(data["root"]):
        return
    try:  # no file to read: the loader's own words for what is missing, at no cost
        text_splits(data["root"])
    except FileNotFoundError as err:
        raise FileNotFoundError(_root_words(err, data)) from None


#: Training and test images of the image datasets (CIFAR: the standard archive's), known without reading them.
_IMAGE_COUNTS = {"digits": (DIGITS_N_TRAIN, DIGITS_N_TEST), "cifar10": (50000, 10000), "cifar100": (50000, 10000)}


def check_image_counts(data: Mapping[str, Any]) -> None:
    """Raise the :class:`~catapult.config.ConfigError` naming ``data`` that :func:`load_data`
    would, where ``data.n_train`` or ``data.n_test`` asks more images than an image dataset has
    (the counts are fixed: nothing is read). Text corpora are judged when read.

    >>> check_image_counts({"name": "digits", "n_train": 1000, "n_test": None})
    >>> check_image_counts({"name": "digits", "n_train": 100000, "n_test": None})
    Traceback (most recent call last):
    catapult.config.errors.ConfigError: data: n_train=100000 exceeds the 1497 samples available in digits (train)
    """
    from catapult.data.split import check_count

    if data["name"] not in _IMAGE_COUNTS:
        return
    for what, n, available, part in zip(("n_train", "n_test"), (data["n_train"], data["n_test"]),
                                        _IMAGE_COUNTS[data["name"]], ("train", "test")):
        try:
            check_count(n, available, what, f"{data['name']} ({part})")
        except (ValueError, TypeError) as err:
            raise cfg.ConfigError([("data", str(err))]) from None


def data_shape_bounds(data: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Bounds on the ``(in_features, num_classes)`` that :func:`load_data` gives for the config's
    ``data:`` section, found without reading any data: ``(low, high)``, each coordinate of the
    loaded shapes between the two. The image datasets' shapes are fixed (``low == high``); a text
    corpus has ``data.context`` inputs and at least one token id, at most ``data.vocab_size`` with
    the bpe tokenizer or pre-tokenised shards (``none``) and, with the char tokenizer, one per Unicode code point and the unknown id
    (the text's distinct characters are known only once it is read).

    Example:
        >>> data_shape_bounds({"name": "digits"})
        ((64, 10), (64, 10))
        >>> data_shape_bounds({"name": "text", "context": 32, "tokenizer": "bpe", "vocab_size": 512})
        ((32, 1), (32, 512))
        >>> data_shape_bounds({"name": "shakespeare", "context": 32, "tokenizer": "char"})
        ((32, 1), (32, 1114113))
    """
    if data["name"] in _IMAGE_SHAPES:
        return _IMAGE_SHAPES[data["name"]], _IMAGE_SHAPES[data["name"]]
    context = int(data["context"])
    if data.get("tokenizer") in ("bpe", "none"):  # none without a size: a vocab_size.json's, up to 2^32
        from catapult.config.sections import MAX_TOKEN_IDS
        ids = int(data["vocab_size"]) if data.get("vocab_size") is not None else MAX_TOKEN_IDS
    else:
        ids = sys.maxunicode + 2
    return (context, 1), (context, ids)


def load_data_once(config: Mapping[str, Any], data: RunData | None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> RunData:
    """``data`` when it already is the config's data on ``device`` in ``dtype`` (a sweep loads a
    group's data once), else :func:`load_data`."""
    if data is None or data.x_train.device != torch.device(device) or (
            data.x_train.is_floating_point() and data.x_train.dtype != dtype):
        return load_data(config, device, dtype)
    return data


class BatchStream:
    """The deterministic sequence of training batches (:mod:`catapult.engine.loop`'s docstring).

    ``batch(t)`` must be called with ``t = 0, 1, 2, ...`` in order (or repeating the last ``t``).
    With ``augment`` (a :class:`catapult.data.Augment`, minibatches only), batch ``t`` is
    ``augment(x[idx], y[idx], step=t)``: a function of the data seed and ``t``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int, augment=None):
        if augment is not None and augment.active and batch_size is None:
            raise cfg.ConfigError([("data.augment", "augmentation is for minibatch training; set train.batch_size")])
        self.augment = augment if augment is not None and augment.active else None
        self.x, self.y = x, y
        self.n = x.shape[0]
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        if batch_size is not None:
            if batch_size > self.n:
                raise cfg.ConfigError([("train.batch_size", f"{batch_size} exceeds the {self.n} training samples; "
                                        "use at most that, or null for full-batch GD")])
            self.per_epoch = self.n // batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None
        self._last: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None:
            return self.x, self.y
        if self._last is not None and self._last[0] == t:
            return self._last[1]
        epoch, b = divmod(t, self.per_epoch)
        while self._epoch < epoch:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._epoch += 1
            if self._epoch == epoch:  # on the data's device once an epoch, not a .to() every step
                self._perm = self._perm.to(self.x.device)
        if epoch != self._epoch:
            raise ValueError("BatchStream.batch must be called with non-decreasing steps")
        idx = self._perm[b * self.batch_size:(b + 1) * self.batch_size]
        out = (self.x[idx], self.y[idx])
        if self.augment is not None:
            out = self.augment(*out, step=t)
        self._last = (t, out)
        return out

    def first_batches(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``0 .. k-1`` of this batch order without augmentation, from a fresh stream
        (this one is left where it is); full batch: the whole training set once."""
        stream = BatchStream(self.x, self.y, self.batch_size, self.seed)
        return [stream.batch(t) for t in range(1 if self.batch_size is None else k)]



def build_augment(config: Mapping[str, Any], data: RunData, seed: int):
    """The config's ``data.augment`` as a :class:`catapult.data.Augment` seeded by ``seed`` (the
    run's data seed), or None when it is off. Images too small for the crop are a ConfigError
    naming ``data.augment.crop``."""
    from catapult.data import Augment

    a = config["data"].get("augment") or {}
    augment = Augment(flip=bool(a.get("flip", False)), crop=int(a.get("crop", 0)), mixup=float(a.get("mixup", 0.0)),
                      num_classes=data.num_classes, seed=int(seed))
    if not augment.active:
        return None
    try:
        augment.check_images(tuple(data.x_train.shape))
    except ValueError as err:
        raise cfg.ConfigError([("data.augment.crop", str(err))]) from None
    return augment


def batch_stream(config: Mapping[str, Any], data: RunData) -> BatchStream:
    """The run's :class:`BatchStream`: ``train.batch_size``, the data seed ``seeds(seed)[1]`` for
    the batch order and for ``data.augment`` (:func:`build_augment`)."""
    data_seed = seeds(config["seed"])[1]
    return BatchStream(data.x_train, data.y_train, config["train"]["batch_size"], data_seed,
                       build_augment(config, data, data_seed))


def lambda0_batches(data: "RunData", config: Mapping[str, Any], data_seed: int) -> list:
    """The training batches lambda_0 averages over: batches ``0 .. k-1`` of the run's batch order
    (``k = lambda0_batch_count(config)``; full batch: the whole training set once)."""
    from catapult.engine.step import lambda0_batch_count

    stream = BatchStream(data.x_train, data.y_train, config["train"]["batch_size"], data_seed)
    return stream.first_batches(lambda0_batch_count(config))
