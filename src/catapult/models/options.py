"""The model section of a run config (``catapult.config.ModelConfig``) as constructor keywords:
what the MLP and the GPT share. Each model's ``from_config`` adds its own keys. Also the
argument checks the MLP, the WRN and the GPT constructors share."""
from __future__ import annotations

import numbers
from typing import Any, Mapping

__all__ = ["section_dict", "common_kwargs", "COMMON_KEYS", "check_positive_int", "check_densities"]

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


def check_positive_int(model: str, label: str, value: Any, *, optional: bool = False) -> None:
    """A constructor's size argument: ValueError naming ``model`` and ``label`` unless ``value`` is
    a positive integer (or, with ``optional``, None). Shared by the MLP, the WRN and the GPT.

    >>> check_positive_int("MLP", "width", 8); check_positive_int("MLP", "base_width", None, optional=True)
    >>> check_positive_int("MLP", "base_width", 2.5, optional=True)
    Traceback (most recent call last):
    ValueError: MLP base_width must be a positive integer or None; got 2.5
    """
    if optional and value is None:
        return
    # an integral float (8.0) passes, as the models convert with int(); nan, inf and non-numbers do not
    integral = ((isinstance(value, numbers.Integral) and not isinstance(value, bool))
                or (isinstance(value, float) and value.is_integer()))
    if not integral or value < 1:
        raise ValueError(f"{model} {label} must be a positive integer{' or None' if optional else ''}; got {value!r}")


def check_densities(model: str, density: float, base_density: float) -> None:
    """ValueError naming ``model`` unless ``density`` and ``base_density`` are both in ``(0, 1]``.

    >>> check_densities("GPT", 0.5, 1.0)
    >>> check_densities("GPT", 0.0, 1.0)
    Traceback (most recent call last):
    ValueError: GPT density and base_density must be in (0, 1]; got 0.0, 1.0
    """
    real = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (density, base_density))
    if not real or not (0.0 < density <= 1.0) or not (0.0 < base_density <= 1.0):
        raise ValueError(f"{model} density and base_density must be in (0, 1]; got {density!r}, {base_density!r}")
