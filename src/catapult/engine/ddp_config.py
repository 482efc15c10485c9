"""What a config must hold for ``catapult train-ddp`` (:func:`catapult.engine.distributed.train_ddp`):
the GPT with cross-entropy, a global batch size, token shards at ``data.root`` (read whole: no
``data.n_train``). Checked without torch,
so that the command refuses such a config at once, on every rank alike, before torch is imported and
before any process group is set up."""
from __future__ import annotations

from typing import Any, Mapping

from catapult import config as cfg

__all__ = ["check_ddp_config"]


def check_ddp_config(config: Mapping[str, Any]) -> None:
    """Nothing if the validated ``config`` is one distributed training runs; else a
    :class:`~catapult.config.ConfigError` naming the first key in the way.

    >>> check_ddp_config(cfg.validate({"model": {"name": "gpt"}, "loss": "cross_entropy",
    ...                                "data": {"name": "text", "root": "shards"}, "train": {"batch_size": 8}}))
    >>> try:
    ...     check_ddp_config(cfg.validate({}))
    ... except cfg.ConfigError as err:
    ...     print(err.keys)
    ['model.name']
    """
    if config["model"]["name"] != "gpt" or config["loss"] != "cross_entropy":
        raise cfg.ConfigError([("model.name", "distributed training trains the gpt with loss cross_entropy")])
    if config["train"]["batch_size"] is None:
        raise cfg.ConfigError([("train.batch_size", "distributed training needs a global batch size")])
    if config["data"]["root"] is None:  # the built-in corpora are not sharded token streams
        raise cfg.ConfigError([("data.root", "distributed training reads token shards: set data.root to a "
                                             "directory of *.npy, *.jsonl or *.parquet shards")])
    if config["data"].get("n_train") is not None:   # (was dropped without a word: every token was drawn)
        raise cfg.ConfigError([("data.n_train", f"{config['data']['n_train']}: token shards are read as one stream, "
                                                f"every token of them (the first N windows are a text corpus's); "
                                                f"remove it (data.n_train=null), or put fewer tokens in the shards")])
