"""Which sweep cells train together in a batched engine: cells whose configs are equal but for
the per-member keys (declared on the config's fields, :func:`catapult.config.per_member_keys`),
plus the data seed when batches are drawn."""
from __future__ import annotations

import copy
from typing import Any, Mapping

from catapult import config as cfg
from catapult.sweep.spec import canonical_json

__all__ = ["PER_MEMBER_KEYS", "group_key", "data_seed"]

#: Dotted keys (or whole sections) that may differ between members of one batched group.
PER_MEMBER_KEYS = cfg.per_member_keys()


def data_seed(config: Mapping[str, Any]) -> int | None:
    from catapult.engine import seeds

    return seeds(config["seed"])[1] if config["train"]["batch_size"] is not None else None


def group_key(config: Mapping[str, Any]) -> str:
    """Cells with equal keys train together: the config without :data:`PER_MEMBER_KEYS`,
    plus the data seed when batches are drawn (minibatch SGD)."""
    shared = copy.deepcopy(dict(config))
    for key in PER_MEMBER_KEYS:
        *sections, leaf = key.split(".")
        node = shared
        for part in sections:
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    shared.pop("sweep", None)
    shared["_data_seed"] = data_seed(config)
    return canonical_json(shared)
