"""Run configs: typed sections, validation, ``key=value`` overrides and the ``c/lambda0`` lr grammar.

A config is a nested mapping (usually a YAML file)::

    name: fig1_mup
    seed: 0
    data:      {name: digits, n_train: null, ...}
    model:     {name: mlp, width: 512, depth: 4, parametrization: mup, ...}
    loss: mse
    optimizer: {name: sgd, lr: 0.125, ...}      # lr may be "32/lambda0" or "2^5/lambda0"
    schedule:  {warmup: linear, warmup_steps: 64, ...}
    train:     {steps: 2000, batch_size: null, divergence_factor: .inf, accuracy_failure: auto}
    eval:      {sharpness_every: 10, test_every: 100, ...}

The schema is the pydantic models of :mod:`catapult.config.sections` (:class:`RunConfig` and
one model per section). :func:`validate` checks *every* key before any work starts: unknown
keys (with a close-match suggestion), types, allowed values, numeric ranges and the cross-key
:data:`CHECKS`; problems raise one :class:`ConfigError` naming each offending dotted key and
what it accepts (and, from :func:`load_config`, the key's line and column in the file).
:func:`validate` returns the completed plain dict; :func:`parse` the typed :class:`RunConfig`
(``parse(m).optimizer.lr``). To extend the config, subclass a section (a wider ``Literal``, a
new field) and :class:`RunConfig`, and pass it as ``model=``.

This package is layer 0: it imports nothing else from catapult. Its names are imported at their
first use (PEP 562, written here because the package imports no other catapult module; the other
packages use :mod:`catapult.lazy`): ``import catapult.config`` and :class:`ConfigError` import
neither pydantic nor YAML, so that ``catapult --help`` does not (0.15 s of its start-up). The
validation functions live in :mod:`catapult.config.validation` (a module named ``schema`` would
shadow the function :func:`schema` once imported).
"""
from __future__ import annotations

import importlib
from typing import Any

from catapult.config.errors import ConfigError, InvalidValue, MissingDependency

#: Each public name other than the errors, and the submodule it is defined in (imported at its first use).
_EXPORTS = {
    **dict.fromkeys(("CHECKS",), "checks"),
    **dict.fromkeys(("STUDY_SECTIONS", "apply_overrides", "dump_config", "key_positions", "load_config",
                     "parse_override", "read_mapping", "read_yaml"), "io"),
    **dict.fromkeys(("LR", "LR_GRAMMAR", "learning_rate", "lr_needs_lambda0", "parse_lr", "resolve_lr"), "lr"),
    **dict.fromkeys(("Option", "as_float", "boolean", "choice", "integer", "number", "numbers", "string"), "options"),
    **dict.fromkeys(("defaults", "get", "known_keys", "leaf_keys", "parse", "per_member_keys", "schema",
                     "validate"), "validation"),
    **dict.fromkeys(("PRECONDITIONED_OPTIMIZERS", "TEXT_DATASETS", "DataConfig", "EvalConfig", "ModelConfig",
                     "OptimizerConfig", "RunConfig", "ScheduleConfig", "Section", "TrainConfig"), "sections"),
}

_SUBMODULES = ("checks", "errors", "io", "lr", "options", "sections", "validation")


def __getattr__(name: str) -> Any:
    if name == "SCHEMA":
        #: The config's entries as nested dicts, section -> key -> :class:`Option` (default and doc
        #: filled in): a read-only view derived from the models, for docs and tables.
        value = __getattr__("schema")()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:  # ``config.io.MAX_YAML_DEPTH``: a submodule, as the eager imports made it one
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later uses read it without calling here again
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ConfigError", "InvalidValue", "MissingDependency",
    "RunConfig", "Section", "DataConfig", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
    "EvalConfig",
    "parse", "validate", "defaults", "get", "known_keys", "per_member_keys", "leaf_keys", "schema", "SCHEMA",
    "CHECKS",
    "load_config", "read_mapping", "read_yaml", "key_positions", "STUDY_SECTIONS", "apply_overrides",
    "parse_override", "dump_config",
    "Option", "integer", "number", "choice", "string", "boolean", "numbers", "learning_rate", "as_float",
    "LR", "LR_GRAMMAR", "parse_lr", "resolve_lr", "lr_needs_lambda0",
    "PRECONDITIONED_OPTIMIZERS", "TEXT_DATASETS",
]
