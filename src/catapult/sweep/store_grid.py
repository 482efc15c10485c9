"""A stored cell's swept values against the sweep's grid (``meta.axes_json``): a cell's place on each
axis follows from its id (grid order, first axis slowest), and the value its ``swept_json`` holds
there must be the grid's value at that place, as written (``"2^-3"``, ``5.0``, ``"SGD"``) or as the
config normalized it (``0.125``, ``5``, ``"sgd"``). A hand-edited value off the grid was drawn by ``catapult plot``
at the cell's place (or at another value's), exported and reported as if the sweep had run it."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from catapult.config.lr import parse_lr

__all__ = ["grid_value_problem", "axis_key_problem"]


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (infinities too: ``train.divergence_factor``
    takes inf, and a place of inf took any number) or the config's text for a positive one
    (``"1e-2"``, ``"2^-3"``: :func:`catapult.config.lr.parse_lr`'s grammar, by which the config
    normalized it); None otherwise (nan, a bool, a name, ``"2^-3/lambda0"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            lr = parse_lr(value)
        except ValueError:
            return None
        if lr.relative:
            return None
        x = lr.value
    else:
        return None
    return None if math.isnan(x) else x


def _relative(value: Any) -> float | None:
    """The coefficient ``c`` of a relative lr text ``"c/lambda0"`` (kept as text by the config,
    stripped), None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        lr = parse_lr(value)
    except ValueError:
        return None
    return lr.value if lr.relative else None


def _normalized(key: str, value: Any) -> tuple[Any] | None:
    """``(value as the config normalizes it at key,)`` (a name's case and spaces: ``"SGD"`` ->
    ``"sgd"``; :func:`catapult.config.get`'s option), None where the config refuses it or does not
    know the key."""
    from catapult import config as cfg

    try:
        return (cfg.get(key).validate(value),)
    except (KeyError, ValueError, TypeError):
        return None


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def axis_key_problem(keys: Sequence[str]) -> str | None:
    """What is wrong with the swept keys of a store's grid (``meta.axes_json``), or None: a key given
    twice, or one that has no config key's form (a dotted name such as ``optimizer.lr``, or a
    top-level key such as ``seed``). None of the columns an export writes for itself has that form: a
    hand-edited key ``test_loss`` or ``status`` was exported beside the table's own column of that
    name, and a CSV reader (pandas, ``csv.DictReader``) gave the swept values for the results.

    >>> axis_key_problem(["optimizer.lr", "seed"]) is None, axis_key_problem(["test_loss"])
    (True, "meta axes_json sweeps 'test_loss', which is no config key (a dotted name such as optimizer.lr, or seed)")
    """
    from catapult import config as cfg

    top = {key for key in cfg.leaf_keys() if "." not in key}
    for k, key in enumerate(keys):
        if key in keys[:k]:
            return f"meta axes_json sweeps {key!r:.80} twice"
        if not (key in top or ("." in key and all(part.strip() for part in key.split(".")))):
            return (f"meta axes_json sweeps {key!r:.80}, which is no config key (a dotted name such as "
                    f"optimizer.lr, or seed)")
    return None


def grid_value_problem(cells: Sequence[Mapping[str, Any]], axes: Sequence[Mapping[str, Any]]) -> str | None:
    """What is wrong with the swept values of ``cells`` (dicts with ``id`` and ``swept``) on the grid
    of ``axes``, or None: a key the grid does not sweep or a swept key missing, a cell id past the
    grid, a value that is another place's value, a number other than its place's number, a relative
    lr other than its place's ``c/lambda0``, any other value (a name, a bool, a list, None) other
    than its place's as the config normalizes it, or two cells at one place holding different values.

    >>> axes = [{"key": "optimizer.lr", "values": ["2^-3", 0.5], "labels": ["2^-3", "0.5"]}]
    >>> grid_value_problem([{"id": 0, "swept": {"optimizer.lr": 0.125}}, {"id": 1, "swept": {"optimizer.lr": 0.5}}], axes)
    >>> grid_value_problem([{"id": 1, "swept": {"optimizer.lr": 0.7}}], axes)
    "cell 1 swept_json optimizer.lr 0.7 is not the grid's value at the cell's place (0.5)"
    """
    if not axes:
        return None
    lengths = [len(a["values"]) for a in axes]
    total = math.prod(lengths)
    keys = [a["key"] for a in axes]
    strides = [math.prod(lengths[k + 1:]) for k in range(len(axes))]
    written_texts = [[_text(v) for v in a["values"]] for a in axes]
    held: dict[tuple[int, int], tuple[int, str]] = {}
    for cell in cells:
        cid, swept = cell["id"], cell["swept"]
        if not isinstance(swept, dict) or set(swept) != set(keys):
            have = sorted(swept) if isinstance(swept, dict) else swept
            return f"cell {cid} swept_json has the keys {have}, not the grid's {sorted(keys)}"
        if not isinstance(cid, int) or not 0 <= cid < total:
            return f"cell {cid} is not one of the grid's {total} cells"
        for k, axis in enumerate(axes):
            place = (cid // strides[k]) % lengths[k]
            value, written = swept[axis["key"]], axis["values"][place]
            text = _text(value)
            if text != written_texts[k][place]:
                others = [i for i, t in enumerate(written_texts[k]) if i != place and t == text]
                want, have = _number(written), _number(value)
                relative = _relative(written)   # a c/lambda0 place: its c (one cell may hold the place alone)
                # a place of a name ("SGD"), a bool, a list (optimizer.betas) or None: what the config
                # makes of it (one cell may hold the place alone, and a made-up "rmsprop", betas
                # [0.5, 0.5] or a bias false at a place of true was read as a result of the grid)
                named = (want is None and relative is None
                         and (place_value := _normalized(axis["key"], written)) is not None)
                if others or (want is not None and (have is None or isinstance(value, str)
                                                    or not math.isclose(have, want, rel_tol=1e-9))) \
                        or (relative is not None and _relative(value) != relative) \
                        or (named and _normalized(axis["key"], value) != place_value):
                    return (f"cell {cid} swept_json {axis['key']} {value!r:.40} is not the grid's value at the "
                            f"cell's place ({axis['labels'][place]})")
            first = held.setdefault((k, place), (cid, text))
            if first[1] != text:  # one place, two values: one of them was edited
                return (f"cells {first[0]} and {cid} hold different {axis['key']} values ({first[1]:.40} and "
                        f"{text:.40}) at one place of the grid ({axis['labels'][place]})")
    return None
