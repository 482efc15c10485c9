"""Walking a batch's containers: dicts and other mutable mappings (an HF ``BatchEncoding`` is a
``UserDict``), tuples and namedtuples, lists, dataclass instances, each rebuilt as its own type;
their tensors mapped, listed or replaced, every other leaf kept as it is.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import MutableMapping
from typing import Any, Callable

import torch

__all__ = ["leaf_paths", "map_tensors", "opaque_leaves", "tensor_leaves", "with_tensors"]


def _children(tree) -> list[tuple[str, Any, Any]] | None:
    """``(path step, key, value)`` of each child of a container a batch is walked into -- dicts and
    other mutable mappings (an HF ``BatchEncoding`` is a ``UserDict``), tuples (namedtuples too),
    lists, dataclass instances -- or None for a leaf."""
    if isinstance(tree, (dict, MutableMapping)):
        return [(f"[{key!r}]", key, value) for key, value in tree.items()]
    if isinstance(tree, (tuple, list)):
        return [(f"[{i}]", i, value) for i, value in enumerate(tree)]
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return [(f".{f.name}", f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree) if f.init]
    return None


def _rebuilt(tree, children: list, values: list):
    """``tree``'s container of its own type holding ``values`` in place of its children's."""
    if type(tree) in (dict, list, tuple):
        return dict(zip((key for _, key, _ in children), values)) if type(tree) is dict else type(tree)(values)
    if isinstance(tree, tuple):
        return type(tree)(*values) if hasattr(tree, "_fields") else type(tree)(values)   # a namedtuple
    if dataclasses.is_dataclass(tree):
        return dataclasses.replace(tree, **{key: value for (_, key, _), value in zip(children, values)})
    out = copy.copy(tree)   # a dict or list subclass, a UserDict: its class and attributes kept
    if isinstance(out, list):
        out[:] = values
        return out
    for (_, key, _), value in zip(children, values):
        out[key] = value
    changed = [(key, old) for (_, key, old), value in zip(children, values) if value is not old and tree[key] is value]
    if changed:
        # a mapping whose copy.copy shares its items with ``tree`` (a MutableMapping keeping them in
        # an attribute): the user's batch was written over (chunk_size cut it to its first piece,
        # then failed; dtype= left it cast). Put back, and copy the container, not the tensors.
        for key, old in changed:
            tree[key] = old
        out = copy.deepcopy(tree, {id(old): old for _, _, old in children})
        for (_, key, _), value in zip(children, values):
            out[key] = value
    return out


def map_tensors(fn: Callable[[torch.Tensor], Any], tree):
    """``tree`` with ``fn`` applied to each tensor in it, walked as :func:`sample_count` walks a
    batch (dicts, mutable mappings, tuples, namedtuples, lists, dataclasses; each rebuilt as its own
    type); other leaves as they are. torch's pytree, used before, took a ``dict`` or ``tuple``
    subclass it does not know, a ``UserDict`` and a dataclass for leaves: the micro-batches
    and ``dtype=`` left their tensors whole and uncast, while their samples were counted.

    >>> from collections import UserDict
    >>> class Encoding(UserDict): pass
    >>> out = map_tensors(lambda t: t * 2, Encoding(ids=torch.ones(2), mask=[torch.ones(1), "keep"]))
    >>> type(out).__name__, out["ids"].tolist(), out["mask"][0].tolist(), out["mask"][1]
    ('Encoding', [2.0, 2.0], [2.0], 'keep')
    """
    if torch.is_tensor(tree):
        return fn(tree)
    children = _children(tree)
    if children is None:
        return tree
    return _rebuilt(tree, children, [map_tensors(fn, value) for _, _, value in children])


def tensor_leaves(tree) -> list[torch.Tensor]:
    """The tensors in ``tree``, walked as :func:`map_tensors` walks it.

    >>> [t.tolist() for t in tensor_leaves({"a": (torch.ones(1), 3), "b": [torch.zeros(2)]})]
    [[1.0], [0.0, 0.0]]
    """
    if torch.is_tensor(tree):
        return [tree]
    return [leaf for _, _, value in (_children(tree) or []) for leaf in tensor_leaves(value)]


def with_tensors(tree, tensors: list):
    """``tree`` with its tensors replaced by ``tensors``, in :func:`tensor_leaves`' order (the
    inverse of that walk, as torch's ``tree_unflatten`` of ``tree_flatten``; other leaves kept).

    >>> tree = {"a": (torch.ones(1), 3), "b": [torch.zeros(2)]}
    >>> out = with_tensors(tree, [t + 1 for t in tensor_leaves(tree)])
    >>> out["a"][0].tolist(), out["a"][1], out["b"][0].tolist()
    ([2.0], 3, [1.0, 1.0])
    """
    replacements = iter(tensors)
    return map_tensors(lambda _: next(replacements), tree)


def opaque_leaves(tree) -> list:
    """The leaves of ``tree`` that are not tensors (what :func:`map_tensors` does not walk into:
    numbers, strings, objects of other classes), in its order.

    >>> class Box:
    ...     pass
    >>> [type(leaf).__name__ for leaf in opaque_leaves((torch.ones(1), {"b": Box(), "n": 2}))]
    ['Box', 'int']
    """
    if torch.is_tensor(tree):
        return []
    children = _children(tree)
    if children is None:
        return [tree]
    return [leaf for _, _, value in children for leaf in opaque_leaves(value)]


def leaf_paths(tree, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` of each tensor in ``tree``, walked as :func:`map_tensors` walks it;
    ``path`` as ``['input_ids']``, ``[0]`` or ``.ids`` (torch 2.2, our floor, has no pytree key paths).

    >>> [(p, t.shape[0]) for p, t in leaf_paths({"ids": torch.zeros(3), "pair": (torch.ones(2), 1)})]
    [("['ids']", 3), ("['pair'][0]", 2)]
    """
    if torch.is_tensor(tree):
        return [(path, tree)]
    return [leaf for step, _, value in (_children(tree) or []) for leaf in leaf_paths(value, path + step)]
