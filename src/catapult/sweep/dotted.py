"""Dotted keys (``"model.sparsity.method"``) into a config's nested mapping: read one, set one
(the sweep grid's axes and a cell's values are written this way).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["get_dotted", "set_dotted"]


def get_dotted(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping["a"]["b"]`` for ``key = "a.b"`` (``KeyError`` if absent).

    >>> get_dotted({"optimizer": {"lr": 0.1}}, "optimizer.lr")
    0.1
    """
    node: Any = mapping
    for part in key.split("."):
        node = node[part]
    return node


def set_dotted(mapping: dict, key: str, value: Any) -> None:
    """Set ``mapping["a"]["b"] = value`` for ``key = "a.b"``, creating sections as needed.

    >>> mapping = {"model": {"width": 8}}
    >>> set_dotted(mapping, "model.sparsity.method", "rigl"); mapping
    {'model': {'width': 8, 'sparsity': {'method': 'rigl'}}}
    """
    *sections, leaf = key.split(".")
    node = mapping
    for part in sections:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
