"""A parameterized model's ``state_dict`` says which parameterization and density it has, and
loading it into a model with another parameterization or density is refused.

The weights of an SP, muP and SμPar model of one shape have the same keys and shapes, and a
sparse model's ``mask`` buffers load into a model of another density just as silently; but
the multipliers and per-layer learning rates (not in the ``state_dict``) belong to the model
they were built for. So :func:`attach_spec` (called by :func:`catapult.parametrize.parametrize`
and the built-in models) registers two hooks:

* saving: the module's entry in ``state_dict._metadata`` (where PyTorch keeps its per-module
  ``version``; kept by ``torch.save`` / ``torch.load(weights_only=True)``) gains
  ``"catapult": {"parametrization", "density", "width_mult", "density_mult", "lr_rule"}``;
  the keys and tensors are unchanged;
* loading: a ``state_dict`` whose record names another parameterization, another density
  multiplier (``density_mult``: the density the model was built for, over its base density;
  the multipliers and learning rates follow it) or, under muP and SμPar, another width
  multiplier or lr rule (a model of the same shape built for another base width), raises :class:`ParametrizationMismatch` naming
  both, before any tensor is copied. The live fraction of weights is not compared: Bernoulli
  masks draw it per seed, and GMP prunes it during training, so a checkpoint loads into the model
  its own arguments build. A ``state_dict`` without a record (an older checkpoint, a plain
  ``dict`` copy) loads as before.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ParametrizationMismatch", "attach_spec", "model_density", "state_record", "METADATA_KEY"]

#: The key of the record in a module's ``state_dict._metadata`` entry.
METADATA_KEY = "catapult"
_HOOKED = "catapult_state_hooks"


class ParametrizationMismatch(ValueError):
    """A ``state_dict`` saved under one parameterization or density loaded into another."""


def model_density(module: nn.Module) -> float:
    """Fraction of live weights over every masked layer: ``sum(mask) / numel(mask)`` summed
    over the ``mask`` buffers; ``1.0`` for a model without masks."""
    live = total = 0
    for sub in module.modules():
        mask = getattr(sub, "mask", None)
        if isinstance(mask, torch.Tensor):
            live += int(torch.count_nonzero(mask))
            total += mask.numel()
    return live / total if total else 1.0


def state_record(module: nn.Module) -> dict[str, Any]:
    """What is saved with the weights of ``module`` (which has ``catapult_spec``)."""
    spec = module.catapult_spec
    return {"parametrization": spec.parametrization, "density": model_density(module),
            "width_mult": float(spec.width_mult), "density_mult": float(spec.density_mult), "lr_rule": spec.lr_rule}


def _describe(record: dict[str, Any], widths: bool = False) -> str:
    def shown(key):
        value = record.get(key)
        return f"{value:.6g}" if isinstance(value, (int, float)) else repr(value)
    width = f", width multiplier {shown('width_mult')} ({record.get('lr_rule')!r} rule)" if widths else ""
    return (f"parametrization {record.get('parametrization')!r}{width}, density multiplier {shown('density_mult')} "
            f"(live density {shown('density')})")


def _save_hook(module: nn.Module, state_dict, prefix: str, local_metadata: dict) -> None:
    if getattr(module, "catapult_spec", None) is not None:
        local_metadata[METADATA_KEY] = state_record(module)


def _load_hook(module: nn.Module, state_dict, prefix: str, local_metadata: dict, strict, missing_keys,
               unexpected_keys, error_msgs) -> None:
    saved = (local_metadata or {}).get(METADATA_KEY)
    if not isinstance(saved, dict) or getattr(module, "catapult_spec", None) is None:
        return
    here = state_record(module)
    # SP has no multipliers, so its width multiplier changes nothing; under muP and SμPar it
    # sets the readout multiplier and the learning rates, as the rule ("table"/"global") does
    widths = here["parametrization"] != "sp"
    same = (saved.get("parametrization") == here["parametrization"]
            and _same_number(saved.get("density_mult", here["density_mult"]), here["density_mult"])
            and (not widths or (_same_number(saved.get("width_mult", here["width_mult"]), here["width_mult"])
                                and saved.get("lr_rule", here["lr_rule"]) == here["lr_rule"])))
    if not same:
        raise ParametrizationMismatch(
            f"this state_dict was saved from a model with {_describe(saved, widths)}; the model it is loaded "
            f"into has {_describe(here, widths)}. Refusing to load it: build the model with the saved "
            "parametrization, base width and density, or load into a copy of the model it came from")


def _same_number(saved: Any, here: float) -> bool:
    """A record read from a file is checked like any input: a forged entry (a string, None) is
    a mismatch, not a crash."""
    return (isinstance(saved, (int, float)) and not isinstance(saved, bool)
            and abs(float(saved) - here) <= 1e-9 * max(1.0, abs(here)))


def attach_spec(module: nn.Module, spec) -> nn.Module:
    """Set ``module.catapult_spec = spec`` and register the save/load hooks (once per module);
    returns ``module``."""
    module.catapult_spec = spec
    if not getattr(module, _HOOKED, False):
        if hasattr(module, "register_state_dict_post_hook"):
            module.register_state_dict_post_hook(_save_hook)
            module.register_load_state_dict_pre_hook(_load_hook)
        else:  # torch < 2.5 (AttributeError at every MLP/GPT/WRN built): the same hooks' older names
            module._register_state_dict_hook(_save_hook)
            module._register_load_state_dict_pre_hook(_load_hook, with_module=True)
        setattr(module, _HOOKED, True)
    return module
