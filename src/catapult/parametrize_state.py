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
  multiplier or lr rule (a model of the same shape built for another base width) or another
  ``alpha_in`` / ``alpha_out`` (the input and readout multipliers the weights were trained under: the
  readout's is ``alpha_out / m_d``, refused for another ``m_d`` and so for another ``alpha_out``),
  raises :class:`ParametrizationMismatch` naming
  both, before any tensor is copied. The live fraction of weights is not compared: Bernoulli
  masks draw it per seed, and GMP prunes it during training, so a checkpoint loads into the model
  its own arguments build. A ``state_dict`` without a record (an older checkpoint, a plain
  ``dict`` copy) loads as before.
* the masks: the record's ``mask_method`` (``"exact"``, ``"bernoulli"``; ``None`` without masks) and
  ``mask_density`` (the density a GPT's masks were drawn at for gmp, which prunes them to its density;
  ``None``: drawn at the density) are compared too. The loaded masks replace the model's own, while
  the model keeps the hidden init and lrs of its own: a gmp checkpoint's masks, part-pruned, in a
  static model stayed as they were and were corrected for the final density; under SμPar (and its
  ablations), whose ``m_rho`` is an exact mask's count but a Bernoulli mask's asked density, an exact
  mask keeping 3 of 81 weights at 1/32 trained in a Bernoulli model at lr_mult 32 for the 27 of its count.
  A record without these keys (saved before they were) is not compared on them.
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
    """What is saved with the weights of ``module`` (which has ``catapult_spec``; ``catapult_masks``
    from :func:`attach_spec`)."""
    spec = module.catapult_spec
    masks = getattr(module, "catapult_masks", None) or {}
    alphas = getattr(module, "catapult_alphas", None) or {}
    return {"parametrization": spec.parametrization, "density": model_density(module),
            "width_mult": float(spec.width_mult), "density_mult": float(spec.density_mult), "lr_rule": spec.lr_rule,
            "mask_method": masks.get("mask_method"), "mask_density": masks.get("mask_density"),
            "alpha_in": alphas.get("alpha_in"), "alpha_out": alphas.get("alpha_out")}


def _describe_masks(record: dict[str, Any]) -> str:
    method, start = record.get("mask_method"), record.get("mask_density")
    if method is None and start is None:
        return "no masks"
    if start is not None:
        return f"masks drawn at mask_density {start:.6g} for gmp to prune" if isinstance(start, (int, float)) \
            else f"masks drawn at mask_density {start!r}"
    return f"{method} masks" if isinstance(method, str) else f"masks {method!r}"


def _same_masks(saved: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether the saved masks are those the model corrects for: the same gmp start (any
    parameterization: a static model never prunes a gmp model's masks) and, under SμPar's init or
    lr rule (its ``m_rho`` follows the method), the same method. A record saved before the keys
    existed is not compared."""
    if "mask_method" not in saved and "mask_density" not in saved:
        return True
    start, here_start = saved.get("mask_density"), here["mask_density"]
    if (start is None) != (here_start is None) or (start is not None and not _same_number(start, here_start)):
        return False
    return not str(here["parametrization"]).startswith("supar") or saved.get("mask_method") == here["mask_method"]


def _describe(record: dict[str, Any], widths: bool = False) -> str:
    def shown(key):
        value = record.get(key)
        return f"{value:.6g}" if isinstance(value, (int, float)) else repr(value)
    width = f", width multiplier {shown('width_mult')} ({record.get('lr_rule')!r} rule)" if widths else ""
    if widths and record.get("alpha_in") is not None:
        width += f", alpha_in {shown('alpha_in')}, alpha_out {shown('alpha_out')}"
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
                                and saved.get("lr_rule", here["lr_rule"]) == here["lr_rule"]
                                and _same_alphas(saved, here))))
    if same and not _same_masks(saved, here):
        raise ParametrizationMismatch(
            f"this state_dict was saved from a model with {_describe_masks(saved)}; the model it is loaded into "
            f"has {_describe_masks(here)} (parametrization {here['parametrization']!r}). Its masks would replace "
            "this model's while the hidden init and lrs stay this model's (SμPar's m_rho: an exact mask's count, a "
            "Bernoulli mask's asked density; gmp: pruned to density). Refusing to load it: build the model with the "
            "saved mask_method (and mask_density / model.sparsity.method), or load into a copy of the model it "
            "came from")
    if not same:
        raise ParametrizationMismatch(
            f"this state_dict was saved from a model with {_describe(saved, widths)}; the model it is loaded "
            f"into has {_describe(here, widths)}. Refusing to load it: build the model with the saved "
            "parametrization, base width, density and alpha_in / alpha_out, or load into a copy of the model it came from")


def _same_alphas(saved: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether the saved ``alpha_in`` / ``alpha_out`` are the model's; a record or a model without them
    (saved before they were recorded, a module of yours whose spec was attached without them) is not compared."""
    return all(saved.get(key) is None or here[key] is None or _same_number(saved[key], here[key])
               for key in ("alpha_in", "alpha_out"))


def _same_number(saved: Any, here: float) -> bool:
    """A record read from a file is checked like any input: a forged entry (a string, None) is
    a mismatch, not a crash."""
    return (isinstance(saved, (int, float)) and not isinstance(saved, bool)
            and abs(float(saved) - here) <= 1e-9 * max(1.0, abs(here)))


def attach_spec(module: nn.Module, spec, masks: tuple[str, float | None] | None = None,
                alphas: tuple[float, float] | None = None) -> nn.Module:
    """Set ``module.catapult_spec = spec`` and register the save/load hooks (once per module);
    returns ``module``. ``masks``: ``(mask_method, mask_density)`` of a model whose hidden layers have
    masks (``mask_density`` ``None`` unless they were drawn denser for gmp), recorded with the weights;
    ``alphas``: its ``(alpha_in, alpha_out)``, recorded too (``None``: not recorded, not compared)."""
    module.catapult_spec = spec
    module.catapult_masks = None if masks is None else {"mask_method": masks[0], "mask_density": masks[1]}
    module.catapult_alphas = None if alphas is None else {"alpha_in": float(alphas[0]), "alpha_out": float(alphas[1])}
    if not getattr(module, _HOOKED, False):
        if hasattr(module, "register_state_dict_post_hook"):
            module.register_state_dict_post_hook(_save_hook)
            module.register_load_state_dict_pre_hook(_load_hook)
        else:  # torch < 2.5 (AttributeError at every MLP/GPT/WRN built): the same hooks' older names
            module._register_state_dict_hook(_save_hook)
            module._register_load_state_dict_pre_hook(_load_hook, with_module=True)
        setattr(module, _HOOKED, True)
    return module
