"""The model section of a run config (``catapult.config.ModelConfig``) as constructor keywords:
what the MLP and the GPT share. Each model's ``from_config`` adds its own keys. (The argument
checks the constructors share are :mod:`catapult.arguments`.)"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["section_dict", "common_kwargs", "COMMON_KEYS"]

#: Constructor arguments the MLP and the GPT both take straight from ``model.*``.
COMMON_KEYS = ("parametrization", "activation", "density", "base_density", "bias", "mask_method")


def section_dict(model_cfg: Any) -> Mapping[str, Any]:
    """The model section as a mapping: a ``ModelConfig`` (pydantic) or an already validated dict.

    >>> from catapult.config import ModelConfig
    >>> section_dict(ModelConfig(width=8))["width"], section_dict({"width": 8})["width"]
    (8, 8)
    """
    return model_cfg if isinstance(model_cfg, Mapping) else model_cfg.model_dump()


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
