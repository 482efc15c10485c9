"""Validation against the typed models: :func:`parse` (-> :class:`RunConfig`), :func:`validate`
(-> the completed plain dict), and what the models declare, by dotted key (:func:`get`,
:func:`known_keys`, :func:`per_member_keys`, :func:`defaults`, :data:`SCHEMA`).

Every problem is collected before anything raises: pydantic reports every field at once, and
each of its errors becomes one ``(dotted_key, message)`` of a :class:`ConfigError`; the
cross-key :data:`~catapult.config.checks.CHECKS` run once every key is valid on its own.
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import replace
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from catapult.config.checks import CHECKS
from catapult.config.errors import ConfigError, describe, unknown_key_message
from catapult.config.options import Option
from catapult.config.sections import RunConfig

__all__ = ["parse", "validate", "defaults", "get", "known_keys", "per_member_keys", "leaf_keys",
           "section_keys", "schema", "unknown_key"]


def section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


@functools.lru_cache(maxsize=None)
def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Every dotted key of ``model`` (sections and leaves, declaration order) -> its field."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        out[name] = field
        sub = section_model(field)
        if sub is not None:
            out.update({f"{name}.{key}": f for key, f in _fields(sub).items()})
    return out


def leaf_keys(model: type[BaseModel] = RunConfig) -> list[str]:
    """The dotted keys of every value (not section) of ``model``, in declaration order."""
    return [key for key, field in _fields(model).items() if section_model(field) is None]


def section_keys(model: type[BaseModel] = RunConfig) -> list[str]:
    """The dotted keys of the sections (nested models) of ``model``."""
    return [key for key, field in _fields(model).items() if section_model(field) is not None]


def known_keys(model: type[BaseModel] = RunConfig) -> frozenset[str]:
    """Every dotted leaf key of the config (``"optimizer.lr"``, ``"seed"``, ...)."""
    return frozenset(leaf_keys(model))


def per_member_keys(model: type[BaseModel] = RunConfig) -> tuple[str, ...]:
    """The dotted keys (leaves or whole sections) that may differ between the members of one
    batched group: the fields declared with ``json_schema_extra={"per_member": True}``."""
    return tuple(key for key, field in _fields(model).items()
                 if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("per_member"))


@functools.lru_cache(maxsize=None)  # options are frozen: one per key is shared
def get(key: str, model: type[BaseModel] = RunConfig) -> Option:
    """The :class:`Option` of the value at dotted ``key``, with its default and doc (``KeyError``
    if there is none, or if ``key`` is a section)."""
    field = _fields(model).get(key)
    if field is None or section_model(field) is not None:
        raise KeyError(key)
    option = next((m for m in field.metadata if isinstance(m, Option)), None)
    if option is None:
        raise KeyError(key)
    return replace(option.for_type(field.annotation), default=field.get_default(call_default_factory=True),
                   doc=field.description or "")


def schema(model: type[BaseModel] = RunConfig) -> dict[str, Any]:
    """The config's entries as nested dicts: section -> key -> :class:`Option` (a fresh copy)."""
    out: dict[str, Any] = {}
    for key in leaf_keys(model):
        *sections, leaf = key.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = get(key, model)
    return out


def defaults(model: type[BaseModel] = RunConfig) -> dict:
    """The full default config (a fresh nested dict; ``name`` is ``None``)."""
    return model().model_dump()


def unknown_key(dotted: str, siblings, model: type[BaseModel] = RunConfig, level: int | None = None) -> str:
    """'unknown key' with the closest known key (see :func:`~catapult.config.errors.unknown_key_message`)."""
    return unknown_key_message(dotted, siblings, leaf_keys(model), set(_fields(model)), level)


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = section_model(field) if field is not None else None
        if model is None:
            return None
    return model


def _dotted_name(loc: tuple, model: type[BaseModel]) -> str | None:
    """For a name with dots in a config mapping (``optimizer.lr: 0.5`` in a YAML file, which reads it
    as one name, not a path) whose path is a config key: how to write it; None otherwise. It was
    refused as ``unknown key (did you mean 'optimizer.lr'?)``, naming itself as the fix.

    >>> _dotted_name(("model", "sparsity.method"), RunConfig)
    'a name with dots is no path inside a config mapping: nest it (sparsity: {method: ...}), or give model.sparsity.method=... on the command line'
    >>> _dotted_name(("optimizer", "lrr"), RunConfig) is None
    True
    """
    last = loc[-1] if loc else None
    key = ".".join(str(part) for part in loc)
    if not isinstance(last, str) or "." not in last or key not in _fields(model):
        return None
    parts = last.split(".")
    nested = ": {".join(parts) + ": ..." + "}" * (len(parts) - 1)
    return (f"a name with dots is no path inside a config mapping: nest it ({nested}), "
            f"or give {key}=... on the command line")


def _problem(error: dict, model: type[BaseModel]) -> tuple[str, str]:
    """One pydantic error as ``(dotted_key, message)``."""
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind in ("extra_forbidden", "invalid_key"):
        dotted = _dotted_name(loc, model)
        if dotted is not None:
            return key, dotted
        parent = _model_at(model, loc[:-1])
        return key, unknown_key(key, parent.model_fields if parent is not None else [], model)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        section = _model_at(model, loc)
        names = ", ".join(section.model_fields) if section is not None else ""
        # a dict-typed field, an Optional section or one with no fields: no key list to show
        # (it read "expected a mapping of keys (), got [1, 2] (list)")
        expected = f"a mapping of keys ({names})" if names else "a mapping"
        return key or "<config>", f"expected {expected}, got {describe(error['input'])}"
    return key, error["msg"]


def _schema_order(model: type[BaseModel] | None, loc: tuple) -> tuple[int, ...]:
    """Where ``loc`` comes in the config: at each level, unknown keys first, then the fields
    in declaration order (so problems read top to bottom, a section's stray keys first)."""
    order = []
    for part in loc:
        names = list(model.model_fields) if model is not None else []
        order.append(names.index(part) if part in names else -1)
        field = model.model_fields.get(part) if model is not None and part in names else None
        model = section_model(field) if field is not None else None
    return tuple(order)


def _checked(mapping: Mapping[str, Any] | None, model: type[BaseModel],
             checks: bool = True) -> tuple[BaseModel, dict]:
    if isinstance(mapping, Mapping) and not isinstance(mapping, dict):
        mapping = dict(mapping)
    try:
        run = model.model_validate({} if mapping is None else mapping)
    except ValidationError as err:
        errors = sorted(err.errors(), key=lambda e: _schema_order(model, tuple(e["loc"])))
        raise ConfigError([_problem(e, model) for e in errors]) from None
    config = run.model_dump()
    problems = [problem for check in CHECKS for problem in check(config)] if checks else []
    if problems:
        raise ConfigError(problems)
    if config.get("name") is None:
        run.name = config["name"] = "run"
    return run, config


def parse(mapping: Mapping[str, Any] | None, model: type[BaseModel] = RunConfig) -> RunConfig:
    """Check a whole config and return it as a typed :class:`RunConfig` (``cfg.optimizer.lr``).

    Collects every problem (unknown key, wrong type, value not allowed, out of range, and the
    cross-key checks) and raises one :class:`ConfigError` listing them all, each with its
    dotted key and what the key accepts. ``name`` defaults to ``"run"``. ``model`` may be a
    subclass of :class:`RunConfig` with more sections or wider choices. The input is not modified.
    """
    return _checked(mapping, model)[0]


def validate(mapping: Mapping[str, Any] | None, model: type[BaseModel] = RunConfig, *, checks: bool = True) -> dict:
    """:func:`parse`, returned as the completed plain nested dict (every default filled in).

    ``checks=False`` leaves out the cross-key :data:`~catapult.config.checks.CHECKS`: every key
    valid on its own is all it asks (a sweep's base config, whose swept keys each cell replaces).
    ``checks`` is a flag, not a list of checks: anything but True/False (or 0/1) is a TypeError
    (``checks=[]`` skipped every cross-key check, and ``checks=[my_check]`` ran the built-in ones
    only, silently).

    >>> short = {"train": {"steps": 5}, "schedule": {"decay": "cosine", "warmup_steps": 10}}
    >>> validate(short, checks=False)["train"]["steps"]
    5
    """
    return _checked(mapping, model, checks_flag("validate", checks))[1]


def checks_flag(owner: str, checks: Any) -> bool:
    """``checks`` as a bool (True, False, 0 or 1), or a TypeError naming ``owner``: it was taken by
    its truthiness, so ``checks=[]`` skipped every cross-key check, silently. (The config package
    imports no other catapult package: not :func:`catapult.arguments.check_flag`.)

    >>> checks_flag("validate", 0)
    False
    """
    # the rule of catapult.arguments.check_flag: NumPy's bool is "bool" in NumPy 2 ("bool_" before)
    if isinstance(checks, bool) or (isinstance(checks, numbers.Integral) and checks in (0, 1)) or \
            type(checks).__name__ in ("bool", "bool_") and type(checks).__module__ == "numpy":
        return bool(checks)
    raise TypeError(f"{owner}: checks must be True or False, got {checks!r}")
