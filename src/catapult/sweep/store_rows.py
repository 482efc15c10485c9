"""How a run's result becomes the store's rows: numbers SQLite can hold, JSON text, the final and
best values of a cell, and one ``metrics`` row per logged row (:class:`catapult.sweep.store.Store`)."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Sequence

from catapult.analysis import is_finite_number
from catapult.sweep.store_schema import METRIC_COLUMNS

__all__ = ["sql_real", "canonical_json", "json_text", "read_json", "json_depth", "MAX_JSON_DEPTH", "final_metrics",
           "best_metrics", "metric_row"]


def sql_real(value: Any) -> float | None:
    """A float for SQLite: NaN -> None (SQLite has none), inf kept, non-numbers -> None.

    >>> sql_real(float("nan")), sql_real(float("inf")), sql_real("x"), sql_real(True), sql_real(2)
    (None, inf, None, None, 2.0)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


#: A JSON string token, or one of the non-finite tokens Python's ``json`` writes outside strings.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')
#: How a NaN is written: standard JSON has no NaN, and ``null`` would read back as None.
NAN_MARK = {"$float": "NaN"}


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists (what spec hashes are of;
    :func:`catapult.sweep.spec.canonical_json` is this one, defined here, where the store's rows are
    written without loading the config package). Python's ``NaN`` / ``Infinity`` tokens are kept
    (hashes of earlier stores stay the same); :func:`json_text` with ``canonical`` writes them as
    standard JSON.

    >>> canonical_json({"b": (1, 2), "a": float("inf")})
    '{"a":Infinity,"b":[1,2]}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)


def json_text(value: Any, *, canonical: bool = False) -> str:
    """``value`` as the store's JSON text (non-JSON values by ``str``): standard JSON (RFC 8259),
    which SQLite's ``json_extract`` reads. Python's ``allow_nan`` tokens were not: a store's
    ``config_json`` held ``"divergence_factor": Infinity`` (the default), and
    ``SELECT json_extract(config_json, '$.seed') FROM cells`` failed with "malformed JSON" (SQLite
    before 3.42). ``inf`` is written ``1e999`` (a JSON number: SQLite and Python read it as inf), a
    NaN as :data:`NAN_MARK`; :func:`read_json` reads both forms, and the old tokens, to the same
    values. ``canonical``: :func:`canonical_json`'s form (sorted keys, no whitespace: the spec
    document's form).

    >>> json_text({"lr": float("nan"), "f": -float("inf"), "path": __import__("pathlib").Path("a")})
    '{"lr": {"$float": "NaN"}, "f": -1e999, "path": "a"}'
    """
    text = canonical_json(value) if canonical else json.dumps(value, default=str, allow_nan=True)
    nan = json.dumps(NAN_MARK, separators=(",", ":") if canonical else None)
    words = {"Infinity": "1e999", "-Infinity": "-1e999", "NaN": nan}
    return _TOKENS.sub(lambda m: m.group(0) if m.group(1) is None else words[m.group(1)], text)


def _non_finite(mapping: dict) -> Any:
    return float("nan") if mapping == NAN_MARK else mapping


def read_json(text: str) -> Any:
    """The value of the store's JSON ``text``, as :func:`json_text` wrote it or as catapult wrote
    it before (``Infinity``, ``NaN``): both read to the same values.

    >>> read_json('{"a": 1e999, "b": {"$float": "NaN"}}'), read_json('{"a": Infinity, "b": NaN}')
    ({'a': inf, 'b': nan}, {'a': inf, 'b': nan})
    """
    return json.loads(text, object_hook=_non_finite)


#: The deepest nesting of lists and mappings that the store's JSON values may have (a spec or a
#: config nests a few levels): a hand-made row nested 600 deep parsed, then overflowed Python's stack
#: in its consumer (the report's YAML of the spec, the transfer curves' keys), a RecursionError traceback.
MAX_JSON_DEPTH = 64


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``value`` nests lists and dicts (0 for a scalar), counted level by level without
    recursion; counting stops past ``limit`` (``limit + 1`` means deeper than ``limit``).

    >>> json_depth(3), json_depth({"a": [1, [2]], "b": {}}), json_depth([[[[[]]]]], limit=2)
    (0, 3, 3)
    """
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (list, dict))]
        if not level:
            break
        depth += 1
        level = [item for v in level for item in (v.values() if isinstance(v, dict) else v)]
    return depth


def final_metrics(metrics: Sequence[Mapping[str, Any]], status: str) -> dict:
    """Final values: train loss/accuracy of the last logged row; for a finished run also test
    loss/accuracy and sharpness from the last row that has them (a diverged run has no final
    test values: its last evaluation was before it blew up and would flatter it).

    >>> rows = [{"train_loss": 2.0, "test_loss": 1.5}, {"train_loss": 1.0}]
    >>> final_metrics(rows, "finished"), final_metrics(rows, "diverged")
    ({'train_loss': 1.0, 'train_accuracy': None, 'test_loss': 1.5}, {'train_loss': 1.0, 'train_accuracy': None})
    """
    out: dict[str, Any] = {}
    if not metrics:
        return out
    last = metrics[-1]
    out["train_loss"] = last.get("train_loss")
    out["train_accuracy"] = last.get("train_accuracy")
    if status != "finished":
        return out
    for key in ("test_loss", "test_accuracy", "sharpness"):
        for row in reversed(metrics):
            if row.get(key) is not None:
                out[key] = row[key]
                break
    return out


def best_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict:
    """The best finite train loss, test loss and test accuracy over a run's rows (None where none).

    >>> best_metrics([{"train_loss": 2.0}, {"train_loss": float("nan")}, {"train_loss": 1.0}])
    {'best_train_loss': 1.0, 'best_test_loss': None, 'best_test_accuracy': None}
    """
    def pick(key, fn):
        values = [row[key] for row in metrics if is_finite_number(row.get(key))]
        return fn(values) if values else None

    return {
        "best_train_loss": pick("train_loss", min),
        "best_test_loss": pick("test_loss", min),
        "best_test_accuracy": pick("test_accuracy", max),
    }


def metric_row(cell_id: int, row: Mapping[str, Any]) -> tuple:
    """A logged row as the store's ``metrics`` row: its known columns, the rest as JSON text.

    >>> row = metric_row(7, {"step": 3, "train_loss": 0.5, "note": "x"})
    >>> row[:2], row[-1]
    ((7, 3), '{"note": "x"}')
    """
    extra = {k: v for k, v in row.items() if k not in METRIC_COLUMNS}
    values = []
    for col in METRIC_COLUMNS:
        v = row.get(col)
        values.append(int(v) if col in ("step", "sharpness_matvecs") and v is not None else sql_real(v))
    return (cell_id, *values, json_text(extra) if extra else None)
