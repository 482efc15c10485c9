"""A sweep's identity in its store: the spec document (:func:`spec_document`: the validated base
config without its name, and the normalized ``sweep:`` section) that a store keeps, hashes
(:func:`spec_hash`) and compares on resume, naming each difference (:func:`diff_documents`) when
a changed spec is refused.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from catapult.config.io import plain_data
from catapult.sweep.spec import SweepSpec, canonical_json

__all__ = ["spec_document", "spec_hash", "diff_documents", "seeds_as_list"]


def spec_document(base: Mapping[str, Any], spec: SweepSpec) -> dict:
    """What identifies a sweep (stored, hashed, compared on resume): the validated base config
    without its ``name`` (renaming the file changes no result) and the normalized ``sweep:``."""
    from catapult.config.sections import drop_added_defaults  # keys added later, at their default

    base_doc = drop_added_defaults({k: v for k, v in plain_data(base).items() if k != "name"})
    _drop_keys_without_effect(base_doc, spec)
    return {"base": base_doc, "sweep": spec.raw}


def _drop_keys_without_effect(base_doc: dict, spec: SweepSpec) -> None:
    """Leave out of the spec document the issue-14 keys whose default changed behaviour, where
    they give the behaviour of the versions before them, so a store written then resumes (with
    the earlier rule spelled out): ``eval.lambda0_batches`` when lambda_0 is one batch (full
    batch, or ``1``), ``train.accuracy_failure`` when it is ``off`` or (``auto``) the sweep is sgd
    only. (Keys added at a neutral default are dropped by ``config.drop_added_defaults``.)"""
    swept = set(spec.keys)
    train, ev = base_doc.get("train", {}), base_doc.get("eval", {})
    if "eval.lambda0_batches" not in swept and "train.batch_size" not in swept and (
            train.get("batch_size") is None or ev.get("lambda0_batches") == 1):
        ev.pop("lambda0_batches", None)
    rule = train.get("accuracy_failure")
    if "train.accuracy_failure" not in swept and (rule == "off" or (
            rule == "auto" and base_doc.get("optimizer", {}).get("name") == "sgd" and "optimizer.name" not in swept)):
        train.pop("accuracy_failure", None)


def seeds_as_list(document: Mapping[str, Any]) -> dict:
    """``document`` with ``sweep.seeds: K`` written as the list ``[0, .., K-1]`` it stands for:
    what :meth:`catapult.sweep.store.Store.check_spec` compares, so a sweep started with
    ``seeds: 3`` resumes with ``seeds: [0, 1, 2]`` (the same cells) and the other way round.

    >>> seeds_as_list({"base": {}, "sweep": {"grid": {}, "seeds": 3}})["sweep"]["seeds"]
    [0, 1, 2]
    """
    sweep = document.get("sweep")
    if not isinstance(sweep, Mapping) or isinstance(sweep.get("seeds"), bool) or not isinstance(sweep.get("seeds"), int):
        return dict(document)
    return {**document, "sweep": {**sweep, "seeds": list(range(sweep["seeds"]))}}


def spec_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a spec document."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _flatten_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted key: value}`` for a spec document: base config keys as ``optimizer.lr``,
    axes as ``sweep.grid.<key>`` (their specs are leaves), ``sweep.seeds``."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(document.get("base", {}), "")
    sweep = document.get("sweep", {})
    for key, value in (sweep.get("grid") or {}).items():
        flat[f"sweep.grid.{key}"] = value
    if "seeds" in sweep:
        flat["sweep.seeds"] = sweep["seeds"]
    return flat


def diff_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between two spec documents (:func:`spec_document`), one line per key:
    ``"optimizer.momentum: 0.0 -> 0.9"``, ``"sweep.grid.model.width: added [64, 128]"``,
    ``"sweep.seeds: removed (was [0, 1])"``."""
    a, b = _flatten_document(old), _flatten_document(new)
    lines = []
    for key in list(a) + [k for k in b if k not in a]:
        if key not in b:
            lines.append(f"{key}: removed (was {_short(a[key])})")
        elif key not in a:
            lines.append(f"{key}: added {_short(b[key])}")
        elif canonical_json(a[key]) != canonical_json(b[key]):
            lines.append(f"{key}: {_short(a[key])} -> {_short(b[key])}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
