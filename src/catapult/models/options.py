"""The model section of a run config (``catapult.config.ModelConfig``) as constructor keywords:
what the MLP and the GPT share. Each model's ``from_config`` adds its own keys. (The argument
checks the constructors share are :mod:`catapult.arguments`.)"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["section_dict", "config_section", "common_kwargs", "COMMON_KEYS", "MODEL_KEYS", "model_keys", "function_record"]

#: Constructor arguments the MLP and the GPT both take straight from ``model.*``.
COMMON_KEYS = ("parametrization", "activation", "density", "base_density", "bias", "mask_method")

#: The ``model.*`` keys each model's ``from_config`` reads, ``name`` and ``sparsity`` (the mask
#: dynamics, whose masks a saved model keeps) added: the keys that make one model differ from another.
MODEL_KEYS = {
    "mlp": ("name", "width", "depth", *COMMON_KEYS, "alpha_in", "alpha_out", "init", "base_width", "sparsity"),
    "wrn": ("name", "depth", "widen", "channels", "parametrization", "base_width", "alpha_in", "alpha_out",
            "bias", "init", "sparsity"),
    "gpt": ("name", "width", "depth", *COMMON_KEYS, "alpha_in", "alpha_out", "base_width", "positions",
            "tie_embeddings", "final_norm", "init_std", "n_heads", "sparsity"),
}


def section_dict(model_cfg: Any) -> Mapping[str, Any]:
    """The model section as a mapping: a ``ModelConfig`` (pydantic) or an already validated dict.

    >>> from catapult.config import ModelConfig
    >>> section_dict(ModelConfig(width=8))["width"], section_dict({"width": 8})["width"]
    (8, 8)
    """
    return model_cfg if isinstance(model_cfg, Mapping) else model_cfg.model_dump()


def config_section(model_cfg: Any) -> Mapping[str, Any]:
    """The model section a model's ``from_config`` builds from: :func:`section_dict`, where a dict that
    lacks some of the section's keys is validated as a ``ModelConfig`` first (its defaults fill them, as
    ``catapult train`` fills a config's; an unknown or bad key is a ValueError naming it). A whole section
    (what :func:`catapult.config.validate` gives) is taken as it is.

    >>> config_section({"name": "gpt", "width": 32})["n_heads"]   # the default a config gets
    4
    """
    if not isinstance(model_cfg, Mapping):
        return section_dict(model_cfg)
    from catapult.config import ModelConfig

    if all(key in model_cfg for key in ModelConfig.model_fields):
        return model_cfg
    # a dict of a few keys (GPT.from_config({"width": 32, "depth": 2, "n_heads": 4}, ...)) failed in a bare
    # KeyError: 'parametrization', and a misspelt key ('parametrizaton') in the same words
    return ModelConfig.model_validate(dict(model_cfg)).model_dump()


def common_kwargs(model_cfg: Any) -> dict[str, Any]:
    """:data:`COMMON_KEYS` plus ``alpha_in`` / ``alpha_out``, which are 1 under SP (SP has no
    multipliers; the config ignores ``alpha_*`` there so one study config can sweep sp, mup and
    supar).

    >>> from catapult.config import ModelConfig
    >>> common_kwargs(ModelConfig(parametrization="sp", alpha_out=4.0))["alpha_out"]
    1.0
    >>> common_kwargs(ModelConfig(parametrization="mup", alpha_out=4.0))["alpha_out"]
    4.0
    """
    m = section_dict(model_cfg)
    sp = m["parametrization"] == "sp"
    return {**{k: m[k] for k in COMMON_KEYS},
            "alpha_in": 1.0 if sp else m["alpha_in"], "alpha_out": 1.0 if sp else m["alpha_out"]}


def model_keys(model_cfg: Any) -> tuple[str, ...]:
    """The keys of :data:`MODEL_KEYS` that matter to the model ``model_cfg`` describes: its
    model's, less ``alpha_in`` / ``alpha_out`` under SP (which has no multipliers:
    :func:`common_kwargs`); every key for a name it does not know.

    >>> ["n_heads" in model_keys({"name": name, "parametrization": "mup"}) for name in ("mlp", "gpt")]
    [False, True]
    >>> "alpha_out" in model_keys({"name": "mlp", "parametrization": "sp"})
    False
    """
    m = section_dict(model_cfg)
    keys = MODEL_KEYS.get(m.get("name"))
    if keys is None:
        return tuple(m)
    return tuple(k for k in keys if not (m.get("parametrization") == "sp" and k in ("alpha_in", "alpha_out")))


#: Per ``model.name``, the model section's keys that change the function of given weights (same
#: names and shapes, another function): what a run's ``model.pt`` records and a load must agree on.
#: (The parametrization, density and width multiplier are the ``state_dict`` record of
#: :mod:`catapult.parametrize_state`; width, depth and the like change the shapes.)
_FUNCTION_KEYS = {"mlp": ("activation", "alpha_in", "alpha_out"), "wrn": ("alpha_in", "alpha_out"),
                  "gpt": ("activation", "alpha_in", "alpha_out", "n_heads", "positions", "tie_embeddings", "final_norm")}


def function_record(model_cfg: Any) -> dict[str, Any]:
    """The keys of the model section that change what the model computes from its weights, with
    the values the model is built with (``alpha_*`` 1 under SP, which ignores them); empty for a
    model name of yours.

    >>> from catapult.config import ModelConfig
    >>> function_record(ModelConfig(name="mlp", activation="tanh", parametrization="mup", alpha_out=4.0))
    {'activation': 'tanh', 'alpha_in': 1.0, 'alpha_out': 4.0}
    >>> function_record(ModelConfig(name="mlp", parametrization="sp", alpha_out=4.0))["alpha_out"]
    1.0
    """
    m = section_dict(model_cfg)
    built = {**m, **common_kwargs(m)}
    return {key: built[key] for key in _FUNCTION_KEYS.get(m["name"], ()) if key in built}
