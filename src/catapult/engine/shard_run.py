"""A run on token shards (``catapult train-ddp``'s data) set up in one place, so that every command
reading such a run's ``config.yaml`` gets the model and batches it trained with.

``train-ddp`` reads ``data.root`` as a stream of token shards
(:class:`~catapult.engine.distributed.TokenShards`), not as ``catapult train``'s text corpus:
which one a config's data are is :func:`reads_shards`. The vocabulary of ``*.npy`` shards is the
size a ``vocab_size.json`` beside them states, else ``data.vocab_size``; the run's
``config.yaml`` records it (:func:`recorded_config`: ``data.tokenizer: none`` and the size, any
size from 1), so the run folder says what model it holds without the shards' folder being asked
again, and a ``vocab_size.json`` that changed since is refused naming ``data.vocab_size``.
:func:`build_shard_run` builds the :class:`~catapult.engine.build.Run` (one process:
``catapult spectrum``, ``critical-lr``, ``train``; or one rank of ``train-ddp``): batch ``t`` is
the global batch ``train-ddp`` draws at step ``t``, the test set its validation windows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from catapult import config as cfg
from catapult.data.text import source_files
from catapult.data.text_shards import text_shard_files

__all__ = ["reads_shards", "recorded_config", "open_shards", "build_shard_run"]

#: The vocabulary of ``*.npy`` shards with no ``vocab_size.json`` and no ``data.vocab_size``
#: (``data.tokenizer: none``, the key left out or null): the key's default.
UNSTATED_VOCAB_SIZE = 4096


def reads_shards(data: Mapping[str, Any]) -> bool:
    """Whether a config's ``data`` section is token shards (``train-ddp``'s reading) rather than
    ``catapult train``'s text corpus: ``data.tokenizer: none``, or ``data.name: text`` whose
    ``data.root`` holds ``*.npy`` arrays or ``*.jsonl`` / ``*.parquet`` text and no corpus file
    (``wiki.train.raw``, ``*.txt``: a corpus beside its token caches stays a corpus). Reads no file.

    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> np.save(folder / "part0.npy", np.arange(10, dtype=np.uint16))
    >>> reads_shards({"name": "text", "root": str(folder), "tokenizer": "char"})
    True
    >>> _ = (folder / "corpus.txt").write_text("hello")
    >>> reads_shards({"name": "text", "root": str(folder), "tokenizer": "char"})
    False
    """
    if data["name"] != "text" or data.get("root") is None:
        return False
    if data.get("tokenizer") == "none":
        return True
    root = Path(data["root"]).expanduser()
    if root.is_file():
        return root.suffix.lower() == ".npy" or bool(text_shard_files(root))
    # the arrays TokenShards reads (its ``root.glob("*.npy")``): a folder of ``X.NPY`` alone was
    # called shards here, then found to hold none
    return root.is_dir() and not source_files(root) and (
        next(root.glob("*.npy"), None) is not None or bool(text_shard_files(root)))


def recorded_config(config: Mapping[str, Any], shards) -> dict:
    """``config`` with the ``data.tokenizer`` and ``data.vocab_size`` the run on ``shards`` (a
    :class:`~catapult.engine.distributed.TokenShards`) used, as its ``config.yaml`` records them:
    ``*.npy`` shards are ids already, ``none`` with their vocabulary (``vocab_size.json``'s, or
    ``data.vocab_size``); text shards were tokenised with a ``bpe`` of ``data.vocab_size`` ids
    (the cache gives the same tokenizer again).

    >>> class Shards: sources = files = [Path("a.npy")]; vocab_size = 65
    >>> recorded_config({"data": {"tokenizer": "char", "vocab_size": 4096}}, Shards())["data"]
    {'tokenizer': 'none', 'vocab_size': 65}
    """
    d = dict(config["data"])
    if shards.sources != shards.files:  # text, tokenised into the cache
        d["tokenizer"] = "bpe"
    else:
        d.update(tokenizer="none", vocab_size=int(shards.vocab_size))
    return dict(config, data=d)


def open_shards(config: Mapping[str, Any], check_ids: bool = True) -> tuple:
    """The training and held-out :class:`~catapult.engine.distributed.TokenShards` of a validated
    ``config``'s ``data`` section. ``data.vocab_size`` is a statement (checked against a
    ``vocab_size.json``) with ``data.tokenizer`` bpe or none; with char, its unused default.

    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> np.save(folder / "part0.npy", np.arange(40, dtype=np.uint16) % 5)
    >>> _ = (folder / "vocab_size.json").write_text('{"vocab_size": 5}')
    >>> train, held_out = open_shards(cfg.validate({"data": {"name": "text", "root": str(folder)},
    ...                                             "model": {"name": "gpt"}}))
    >>> len(train), train.vocab_size, len(held_out)
    (40, 5, 0)
    """
    from catapult.engine.distributed import TokenShards

    d = config["data"]
    if d["tokenizer"] == "none" and (texts := text_shard_files(d["root"])):
        raise cfg.ConfigError([("data.tokenizer", f"none says the shards are token ids, and data.root holds text "
                                                  f"({texts[0].name}, ...): use bpe (the text is tokenised once)")])
    # none without a size (null: not given) takes a vocab_size.json's, else the key's default
    stated = d["tokenizer"] != "char" and d["vocab_size"] is not None
    size = d["vocab_size"] if d["vocab_size"] is not None else UNSTATED_VOCAB_SIZE
    return tuple(TokenShards(d["root"], size, text_key=d["text_key"], cache_dir=d["cache_dir"],
                             check_ids=check_ids, held_out=held_out, vocab_size_set=stated)
                 for held_out in (False, True))


def build_shard_run(config: Mapping[str, Any], device: torch.device, *, opened: tuple | None = None, rank: int = 0,
                    world: int = 1, distributed: bool = False, trains: bool = False):
    """The :class:`~catapult.engine.build.Run` of a validated shards ``config`` (:func:`reads_shards`)
    for rank ``rank`` of ``world`` on ``device``: ``opened`` (:func:`open_shards`) or the shards
    opened here, the model of their vocabulary, this rank's rows of each global batch, its share
    of the validation windows; ``Run.config`` is :func:`recorded_config`'s. A config that is not
    the gpt with a batch size, or shards shorter than a window, is a ConfigError before any work.

    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> np.save(folder / "part0.npy", np.arange(40, dtype=np.uint16) % 5)
    >>> _ = (folder / "vocab_size.json").write_text('{"vocab_size": 5}')
    >>> run = build_shard_run(cfg.validate({"data": {"name": "text", "root": str(folder), "context": 4},
    ...                                     "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2},
    ...                                     "loss": "cross_entropy", "train": {"batch_size": 2}}), torch.device("cpu"))
    >>> run.model.wte.num_embeddings, run.config["data"]["tokenizer"], run.config["data"]["vocab_size"]
    (5, 'none', 5)
    >>> tuple(run.batches.batch(0)[0].shape)
    (2, 4)
    """
    from catapult.engine.build import assemble_run, build_model
    from catapult.engine.ddp_config import check_ddp_config
    from catapult.engine.distributed import ShardBatches, validation_windows
    from catapult.engine.model_size import check_token_outputs, training_fit
    from catapult.engine.seeds import seeds

    check_ddp_config(config)
    d, sharded = config["data"], config["train"]["fsdp"]
    context, batch_size = d["context"], config["train"]["batch_size"]
    shards, held_out = opened if opened is not None else open_shards(config)
    if len(shards) < context + 1:
        raise cfg.ConfigError([("data.root", f"{len(shards)} training tokens in {d['root']}: fewer than "
                                             f"one window of data.context + 1 = {context + 1}")])
    vocab = shards.vocab_size or d["vocab_size"] or UNSTATED_VOCAB_SIZE
    # where it trains: the gradients and the optimizer's state too, all on each rank (DDP), a
    # 1 / world share of them with train.fsdp (training_fit)
    fit = training_fit(config, world) if trains else None
    model = build_model(config, context, vocab, device, getattr(torch, config["dtype"]), fit=fit)
    # a model of yours with fewer outputs than ids: before any work (a CUDA device assert at step 0)
    check_token_outputs(config, model, vocab, context)
    if sharded:  # before assemble_run builds the optimizer: it must hold the shards
        from catapult.engine.fsdp import shard_model

        shard_model(model)
    batches = ShardBatches(shards, context, batch_size, rank, world, seeds(config["seed"])[1], device)
    test = validation_windows(held_out, context, d["n_test"], rank, world, equal_shares=sharded)
    test = None if test is None else (test[0].to(device), test[1].to(device))
    return assemble_run(recorded_config(dict(config, device=str(device)), shards), model, batches, device,
                        test_set=test, distributed=distributed)
