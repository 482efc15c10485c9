"""SP / muP / SμPar for any module: roles, init, multipliers, per-layer learning rates.

Notation: width multiplier ``m_d = d / d_base``, density ``rho = 1 - sparsity`` and density
multiplier ``m_rho = rho / rho_base``; ``sigma^2`` is the init variance the base model (width
``d_base``, density ``rho_base``) uses, so at the base shape SP, muP and SμPar coincide.

Every weight tensor plays one of three *roles*; everything else is a *vector*:

=====================  ==========  ===================  ============================
role                    SP          muP                  SμPar
=====================  ==========  ===================  ============================
input  init var         s^2         s^2                  s^2
input  forward          x W         alpha_in x W         alpha_in x W
hidden init var         s^2         s^2 / m_d            s^2 / (m_d m_rho)
output forward          x W         alpha_out x W / m_d  alpha_out x W / m_d
attention logits        /sqrt(dh)   / dh                 / dh
=====================  ==========  ===================  ============================

Learning-rate multipliers (``group["lr_mult"]``; the group's lr is ``lr * lr_mult``), see
:func:`lr_multiplier`:

=============================  =====  =========  ================  =====  ======  ===========
tensor                          SP     muP Adam   SμPar Adam        SP     muP SGD SμPar SGD
=============================  =====  =========  ================  =====  ======  ===========
input weight (embeddings)       1      1          1                 1      m_d     m_d
hidden weight                   1      1/m_d      1/(m_d m_rho)     1      1       1/m_rho
output weight                   1      1          1                 1      m_d     m_d
vector (biases, LayerNorm)      1      1          1                 1      m_d     m_d
output bias                     1      1          1                 1      1       1
fixed (no width-sized dim)      1      1          1                 1      1       1
=============================  =====  =========  ================  =====  ======  ===========

The Adam columns are the SμPar paper's table. The SGD columns follow from the same
requirement (every layer's output changes by Theta(1) per step as ``d`` grows) for this
formulation, where the output multiplier is ``1/m_d`` and the output init variance is constant:
backpropagated signals are Theta(1/d) per coordinate, so the "vector-like" tensors (input
weights, width-sized biases and LayerNorm parameters, output weights) need ``lr * m_d``,
hidden matrices need ``lr`` (their update is summed over ``d`` coordinates), and a hidden
matrix with only ``rho * d`` live inputs per row needs ``lr / m_rho`` (SμPar's SGD rule). This
is Tensor Programs V's muP for SGD (input weights and biases ``lr * fan_out``, hidden ``lr``,
output weights with a ``1/fan_in`` multiplier ``lr * fan_in``) written relative to a base
width; the output bias has a fixed fan-out and keeps ``lr``.

Layers: ``nn.Linear``, ``nn.Conv2d`` and ``nn.Embedding`` weights take roles; a conv's fan-in
is ``C_in / groups * k_h * k_w`` and its width ``out_channels``; a hidden depthwise conv
(``groups == in_channels``) has a fixed fan-in and takes an input weight's init and lr (the layer
classes and fan rules are in :mod:`catapult.scaled_layers`; :class:`catapult.models.WRN` has
the conv table).

Where the information lives (no metadata on tensors, so ``torch.save``, ``copy.deepcopy``,
``torch.compile`` and FSDP see ordinary modules):

* multipliers: plain ``float`` attributes ``multiplier`` / ``bias_multiplier`` of
  :class:`ScaledLinear` / :class:`ScaledEmbedding` (not in ``state_dict``; they are part of the
  architecture, recomputed by the constructor or by :func:`parametrize`);
* sparsity masks: persistent ``mask`` buffers (in ``state_dict``), see :mod:`catapult.sparsity`;
* roles: the module attribute ``catapult_role`` (``"input" | "hidden" | "output"``);
* the model's parameterization: the root attribute ``catapult_spec`` (a :class:`ParamSpec`),
  read by :func:`param_groups`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from catapult.arguments import STD_MAX, as_real, check_densities, check_flag, check_module, check_real, check_seed, check_std
from catapult.compiled_state import retrace_compiled
from catapult.param_rules import (PARAMETRIZATIONS, ROLES, ParamSpec, check_parametrization, init_rule,
                                  init_variance, lr_multiplier, lr_rule, optimizer_family)
from catapult.sparsity import MASK_METHODS, kept_density, random_mask
from catapult.parametrize_checks import (check_builtin, check_inferred_readout, check_masks, check_scalable,
                                         check_shared)
from catapult.parametrize_state import attach_spec
from catapult.scaled_layers import (WEIGHT_LAYERS, ScaledConv2d, ScaledEmbedding, ScaledLinear,
                                    as_scaled, fan_in as layer_fan_in, layer_width)

__all__ = [
    "unscaled_group_lrs",
    "group_settings",
    "PARAMETRIZATIONS",
    "ROLES",
    "ParamSpec",
    "ScaledLinear",
    "ScaledEmbedding",
    "ScaledConv2d",
    "init_variance",
    "init_rule",
    "lr_rule",
    "lr_multiplier",
    "param_groups",
    "group_lr_mult",
    "parametrize",
    "find_spec",
    "infer_roles",
]

# ---------------------------------------------------------------------------------------------
# Per-layer learning-rate groups.


def group_lr_mult(group: Mapping[str, Any], index: int | None = None) -> float:
    """A param group's ``lr_mult`` (``1.0`` when it has none), checked: the schedules, the
    critical-lr search and the warmups multiply the group's lr by it, so a nan, a negative
    number or a string would set a nan or negative lr without a word. ``0`` freezes the group.

    Example:
        >>> group_lr_mult({"lr_mult": 0.5}), group_lr_mult({})
        (0.5, 1.0)
        >>> group_lr_mult({"lr_mult": float("nan")}, 2)
        Traceback (most recent call last):
            ...
        ValueError: param group 2: lr_mult must be a finite number >= 0, got nan
    """
    value = group.get("lr_mult", 1.0)
    where = "param group" if index is None else f"param group {index}"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    number = as_real(value)     # NumPy scalars too (np.float32(0.5) was refused as not a number)
    if number is None or number < 0:
        raise ValueError(f"{where}: lr_mult must be a finite number >= 0, got {value!r}")
    return number


def unscaled_group_lrs(groups: Sequence[Mapping[str, Any]]) -> str | None:
    """The differing lrs of the param groups that train (a group whose parameters are all
    frozen by ``requires_grad`` is moved by nobody), shown as text, where none sets ``lr_mult``;
    else None. A schedule (:func:`catapult.schedules.attach`) or a critical-lr trial then moves
    every group by one lr, not in those ratios: what their warnings say.

    Example:
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> unscaled_group_lrs([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
        '0.001, 0.0001'
        >>> unscaled_group_lrs([{"params": [a], "lr": 1e-3, "lr_mult": 1.0}, {"params": [b], "lr": 1e-4}]) is None
        True
    """
    if any("lr_mult" in g for g in groups):
        return None
    lrs = [float(g["lr"]) for g in groups if any(p.requires_grad for p in g["params"])]
    if len(lrs) < 2 or max(lrs) == min(lrs):
        return None
    return ", ".join(f"{lr:g}" for lr in lrs[:4]) + (", ..." if len(lrs) > 4 else "")


def find_spec(model: nn.Module) -> ParamSpec | None:
    """The :class:`ParamSpec` of ``model``, or None. Wrappers are looked through:
    ``torch.compile``'s (``_orig_mod``) and those that keep the model as ``.module``
    (``DistributedDataParallel``, ``DataParallel``, FSDP), so ``param_groups(ddp_model, lr)``
    gives the wrapped model's learning rates. Failing those, the submodules are searched: a
    parametrized model inside a user's container (``nn.Sequential(preprocess, net)``, a module
    holding it as ``self.backbone``) gives its spec; submodules with different specs are a
    ValueError, since one set of learning-rate rules cannot serve both.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Linear(8, 1))
        >>> find_spec(model) is None
        True
        >>> find_spec(parametrize(model, "mup", base_width=2))
        ParamSpec(parametrization='mup', width_mult=4.0, density_mult=1.0, lr_rule='table')
        >>> find_spec(torch.nn.Sequential(torch.nn.Identity(), model))   # inside a container
        ParamSpec(parametrization='mup', width_mult=4.0, density_mult=1.0, lr_rule='table')
    """
    root = model
    for _ in range(8):  # a few nested wrappers at most (e.g. compiled DDP)
        spec = getattr(model, "catapult_spec", None)
        if spec is not None:
            return spec
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    specs: list[ParamSpec] = []
    for module in root.modules():
        spec = getattr(module, "catapult_spec", None)
        if spec is not None and spec not in specs:
            specs.append(spec)
    if len(specs) > 1:
        raise ValueError(f"the model holds submodules of {len(specs)} different parameterizations "
                         f"({', '.join(map(repr, specs))}); build the parameter groups of each with "
                         f"its own param_groups call")
    return specs[0] if specs else None


def param_groups(model: nn.Module, lr: float, optimizer: str = "adam", *,
                 weight_decay: float | None = None, merge: bool = False) -> list[dict]:
    """Optimizer parameter groups with per-layer learning rates for ``model``'s parameterization.

    Each group is ``{"name", "params", "lr": lr * lr_mult, "lr_mult"}`` (plus
    ``"weight_decay"`` when ``weight_decay`` is given), ready for ``torch.optim.SGD/Adam/AdamW``
    and :mod:`catapult.optim`; ``lr_mult`` comes from :func:`lr_multiplier` with the model's
    ``catapult_spec`` (set by :class:`catapult.models.MLP`, :class:`catapult.models.GPT` and
    :func:`parametrize`). A model without a spec is SP: one group per kind, all ``lr_mult = 1``.

    Names are the tensor kinds: ``"input"``, ``"hidden"``, ``"output"`` (weights of modules with
    that ``catapult_role``), ``"output_bias"``, and ``"vector"`` (biases of input/hidden layers,
    LayerNorm parameters and any parameter not owned by a role; a hidden depthwise conv, whose
    fan-in ``k_h * k_w`` does not grow with the width, is ``"input"``), and ``"fixed"``: every parameter
    of a module with ``catapult_fixed = True``, one none of whose dimensions grows with the width
    (a stem conv and its norm before the widened body), which keeps ``lr`` under every rule, as
    microsoft/mup keeps the lr of finite-shape tensors. Shared (tied) parameters are
    listed once, under the first module that owns them. Frozen parameters are skipped.

    Weight decay (decision): when ``weight_decay`` is a number, tensors with ``ndim >= 2``
    (weight matrices and embedding tables) get it and 1-D tensors (biases, LayerNorm) get 0.0,
    the usual GPT-2 / nanoGPT practice. ``None`` leaves the optimizer's default everywhere.

    ``merge=True`` joins neighbouring groups whose ``lr``, ``lr_mult`` and ``weight_decay`` are
    equal into one group named ``"a+b+..."`` (what ``catapult train`` builds): the update is the
    same number for number, the parameters keep their order across the groups (so the optimizer
    state's indices and GI-Adam's ``v0="random"`` seeds do not change), and torch's optimizers,
    which pay a fixed cost per group at every ``step()``, run fewer of them (SP: one group).

    Example (muP at 4x the base width: Adam's hidden lr is ``lr / 4``):
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 1))
        >>> _ = parametrize(model, "mup", base_width=4, mask_seed=0)
        >>> groups = param_groups(model, 0.01, "adam")
        >>> [(g["name"], g["lr"]) for g in groups]  # doctest: +NORMALIZE_WHITESPACE
        [('input', 0.01), ('vector', 0.01), ('hidden', 0.0025), ('output', 0.01),
         ('output_bias', 0.01)]
        >>> optimizer = torch.optim.Adam(groups)
        >>> [(g["name"], g["lr"]) for g in param_groups(model, 0.01, "adam", merge=True)]
        [('input+vector', 0.01), ('hidden', 0.0025), ('output+output_bias', 0.01)]
    """
    check_module("param_groups", model)
    if not isinstance(merge, bool):
        raise TypeError(f"param_groups: merge must be True or False, got {merge!r}")
    family = optimizer_family(optimizer)
    # torch.optim checks only its default lr, not a group's: a bad value would train silently
    lr = check_real("param_groups", "lr", lr, low=0.0)
    if weight_decay is not None:
        weight_decay = check_real("param_groups", "weight_decay", weight_decay, low=0.0)
    spec = find_spec(model) or ParamSpec("sp")
    seen: set[int] = set()
    order: list[tuple] = []
    buckets: dict[tuple, list[torch.nn.Parameter]] = {}
    unowned_matrices: list[str] = []
    for module_name, module in model.named_modules():
        role = getattr(module, "catapult_role", None)
        fixed = check_flag(f"param_groups: module {module_name or '(the model)'!r}", "catapult_fixed",
                           getattr(module, "catapult_fixed", False))  # "no" was truthy: a fixed layer
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if fixed:
                kind = "fixed"
            elif role is not None and (param_name == "weight" or (param_name == "weight_orig"
                                                                  and "weight" not in module._parameters)):
                # weight_orig: torch.nn.utils.prune's weight (.weight = weight_orig * weight_mask) took the vector lr
                kind = "input" if role == "hidden" and _depthwise(module) else role
            elif role == "output" and param_name == "bias":
                kind = "output_bias"
            else:
                kind = "vector"
                if param.ndim >= 2 and spec.parametrization != "sp":
                    unowned_matrices.append(f"{module_name}.{param_name}".lstrip("."))
            if spec.lr_rule == "global":
                mult = 1.0
            else:
                # a hidden matrix's m_rho is of the density its mask keeps (set where its mask was drawn)
                density_mult = (getattr(module, "catapult_density_mult", spec.density_mult) if kind == "hidden"
                                else spec.density_mult)
                mult = lr_multiplier(spec.parametrization, kind, family, width_mult=spec.width_mult,
                                     density_mult=density_mult)
            decay = None if weight_decay is None else (weight_decay if param.ndim >= 2 else 0.0)
            key = (kind, mult, decay)
            if key not in buckets:
                buckets[key] = []
                order.append(key)
            buckets[key].append(param)
    if unowned_matrices:
        warnings.warn(
            "param_groups: these matrices have no catapult_role and are treated as vectors "
            f"(lr_mult of 'vector'): {unowned_matrices[:8]}; give them a role with parametrize()",
            stacklevel=2,
        )
    groups = []
    used_names: dict[str, int] = {}
    for key in order:
        kind, mult, decay = key
        count = used_names.get(kind, 0)
        used_names[kind] = count + 1
        group = {"name": kind if count == 0 else f"{kind}#{count}",
                 "params": buckets[key], "lr": lr * mult, "lr_mult": mult}
        if decay is not None:
            group["weight_decay"] = decay
        groups.append(group)
    return _merge_neighbours(groups) if merge else groups


def group_settings(group: Mapping[str, Any]) -> dict:
    """A param group's settings: all but its ``name`` and ``params``. Groups with equal settings
    update their parameters alike, so ``param_groups(merge=True)`` joins neighbours that have them
    (and the engine's optimizers merge a ``state_dict`` saved unmerged by the same rule).

    >>> group_settings({"name": "hidden", "params": [], "lr": 0.01, "lr_mult": 0.25})
    {'lr': 0.01, 'lr_mult': 0.25}
    """
    return {k: v for k, v in group.items() if k not in ("name", "params")}


def _merge_neighbours(groups: list[dict]) -> list[dict]:
    """``groups`` with each run of neighbours whose :func:`group_settings` are equal joined into
    one; the parameters' order across the groups is kept."""
    out: list[dict] = []
    for group in groups:
        if out and group_settings(out[-1]) == group_settings(group):
            out[-1]["name"] = f"{out[-1]['name']}+{group['name']}"
            out[-1]["params"] = out[-1]["params"] + group["params"]
        else:
            out.append(dict(group))
    return out


# ---------------------------------------------------------------------------------------------
# parametrize(): SP / muP / SμPar for a user's own model.


def infer_roles(module: nn.Module) -> dict[str, str]:
    """Default roles of ``module``'s ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Embedding`` layers, by
    registration order.

    With embeddings: every ``nn.Embedding`` is ``"input"``, the last ``nn.Linear`` (or conv) is
    ``"output"``, the other Linears and convs are ``"hidden"``. Without: the first Linear or conv
    is ``"input"``, the last ``"output"``, the rest ``"hidden"`` (a conv's fan-in is
    ``C_in * k_h * k_w``: :func:`catapult.scaled_layers.fan_in`). (Registration order is ``named_modules()``
    order, usually the order of ``__init__``; override with ``roles=`` when it is not the
    execution order.)

    Example:
        >>> infer_roles(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                                 torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)))
        {'0': 'input', '2': 'hidden', '3': 'output'}
    """
    embeddings, linears = [], []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding):
            embeddings.append(name)
        elif isinstance(sub, (nn.Linear, nn.Conv2d)):
            linears.append(name)
    roles: dict[str, str] = {name: "input" for name in embeddings}
    if not linears:
        return roles
    for name in linears:
        roles[name] = "hidden"
    if not embeddings:
        roles[linears[0]] = "input"
    roles[linears[-1]] = "output"
    return roles


def _depthwise(layer: nn.Module) -> bool:
    """A depthwise conv (``groups == in_channels > 1``): each output reads ``k_h * k_w`` inputs at
    every width, so a hidden one is input-like (vector-like in microsoft/mup: one dimension grows):
    its init is the base model's and its lr that of an input weight."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def _default_width(layers: Mapping[str, nn.Module], roles: Mapping[str, str]) -> int:
    """The width ``m_d`` is measured in: the output width of the first input layer, else of the
    first hidden layer; a model with readouts only has the readout's input width (not its
    number of outputs, which does not grow with the model)."""
    for wanted in ("input", "hidden"):
        for name, role in roles.items():
            if role == wanted:
                return layer_width(layers[name])
    readout = layers[next(iter(roles))]
    if isinstance(readout, nn.Conv2d):
        return readout.in_channels
    return readout.embedding_dim if isinstance(readout, nn.Embedding) else readout.in_features


def parametrize(
    module: nn.Module,
    parametrization: str = "mup",
    *,
    base_width: int | None = None,
    width: int | None = None,
    density: float = 1.0,
    base_density: float = 1.0,
    roles: Mapping[str, str | None] | None = None,
    init_std: float | None = None,
    gain: float = 1.0,
    alpha_in: float = 1.0,
    alpha_out: float = 1.0,
    mask_method: str = "exact",
    mask_seed: int | None = None,
) -> nn.Module:
    """Apply SP / muP / SμPar to a user's model **in place** and return it.

    Roles (input / hidden / output) come from :func:`infer_roles`, overridden per layer by
    ``roles={qualified_name: role}`` (``None`` leaves a layer untouched). Calling it again on the
    same module (another density, another base width) keeps the roles of the earlier call (``None``
    included; the root's ``catapult_roles``) for the layers ``roles=`` does not name, rather than
    falling back to the registration order; a module holding a parametrized one starts afresh. Then, with
    ``m_d = width / base_width`` (``width`` defaults to the output width of the first input
    layer, else of the first hidden layer, else the readout's input width; ``base_width=None``
    means ``m_d = 1``) and ``m_rho = density / base_density``, per hidden Linear the density its mask keeps
    (:func:`catapult.sparsity.kept_density`: an exact mask's count, 3 of 81 for 1/32), its rows' mean
    live fan-in; its init and :func:`param_groups`' lr use it (the layer's ``catapult_density_mult``):

    * init (weights ``N(0, var)``, biases 0): with ``init_std`` given, ``s^2 = init_std^2`` for
      every role, hidden layers scaled by :func:`init_variance`. With ``init_std=None``,
      ``s^2 = gain^2 / fan_in_base`` per layer, the fan-in rule at the base shape
      (``fan_in_base = fan_in / m_d`` for hidden and output layers, ``fan_in`` for input
      layers; embeddings use ``s = gain``): hidden var = ``gain^2 / fan_in`` (muP) or
      ``gain^2 / (fan_in * m_rho)`` (SμPar), output var ``gain^2 / fan_in_base``. Under SP,
      ``var = gain^2 / fan_in`` for every layer. Tied weights are initialised once (hidden layers
      sharing a weight share its mask too; a weight shared by a hidden and an input or output
      layer is a ValueError); an embedding's ``padding_idx`` row is left at 0 (it
      gets no gradient, so it stays 0).
    * multipliers: input layers ``alpha_in`` (weights only), output layers ``alpha_out / m_d``
      (weights only, bias unscaled) for muP / SμPar; none for SP.
    * masks: hidden layers get an exact-density random mask when ``density < 1`` (any
      parameterization; SP and muP just do not correct for it).
    * attention: ``parametrize`` sees layers, not the attention's arithmetic, so muP's
      ``1/d_head`` logit scale is the model's own to apply (``F.scaled_dot_product_attention(...,
      scale=1/d_head)``). ``nn.MultiheadAttention`` multiplies by its weights itself and is refused.
    * catapult's own models (:class:`~catapult.models.GPT`, ``MLP``, ``WRN``), alone or inside a
      container, are refused: their constructors take ``parametrization=`` and apply their own
      table (the GPT's readout multiplier lives in its forward, where a layer's never reached).

    Layers become :class:`ScaledLinear` / :class:`ScaledConv2d` / :class:`ScaledEmbedding` (same objects, same
    parameters and ``state_dict`` keys, plus ``mask`` buffers for sparse layers); the root gets
    ``catapult_spec`` so :func:`param_groups` gives the per-layer learning rates. Everything is
    an ordinary attribute or buffer: ``copy.deepcopy``, ``state_dict`` and ``torch.compile`` work.
    Masks are sampled from ``torch.Generator().manual_seed(mask_seed)`` (``mask_seed=None``
    draws the seed from the global RNG, so ``torch.manual_seed`` makes the call deterministic).

    Example (muP at width 16 for a base width 4, so ``m_d = 4``):
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 1))
        >>> model = parametrize(model, "mup", base_width=4)
        >>> model[4]                             # readout multiplier alpha_out / m_d
        ScaledLinear(in_features=16, out_features=1, bias=True, multiplier=0.25, bias_multiplier=1)
        >>> [model[i].catapult_role for i in (0, 2, 4)]
        ['input', 'hidden', 'output']

    """
    check_module("parametrize", module)
    check_parametrization(parametrization)
    check_builtin(dict(module.named_modules()))  # GPT / MLP / WRN: parameterized by their constructors
    if parametrization == "sp" and (alpha_in != 1.0 or alpha_out != 1.0):
        raise ValueError("alpha_in / alpha_out apply to mup and supar only; SP has no multipliers")
    all_layers = {name: sub for name, sub in module.named_modules()}
    layer_roles = infer_roles(module)
    inferred = set(layer_roles)  # the roles no earlier call and no roles= gave
    earlier = getattr(module, "catapult_roles", None)  # a second call keeps the first's (roles= given then were lost)
    if isinstance(earlier, dict):
        for name in layer_roles:
            if name in earlier and (earlier[name] is None or earlier[name] in ROLES):
                layer_roles[name] = earlier[name]
                inferred.discard(name)
    if roles is not None and not isinstance(roles, Mapping):  # a list of pairs raised "'list' object has no attribute 'items'"
        raise TypeError(f"parametrize() roles must be a mapping {{layer name: role or None}}; got {type(roles).__name__}")
    for name, role in (roles or {}).items():
        if name not in all_layers or not isinstance(all_layers[name], WEIGHT_LAYERS):
            raise ValueError(f"roles: {name!r} is not an nn.Linear / nn.Conv2d / nn.Embedding of the module; "
                             f"layers are {sorted(infer_roles(module))}")
        if role is not None and role not in ROLES:
            raise ValueError(f"roles[{name!r}] must be one of {ROLES} or None; got {role!r}")
        layer_roles[name] = role
        inferred.discard(name)
    chosen = dict(layer_roles)
    untouched = [name for name, role in layer_roles.items() if role is None]
    layer_roles = {name: role for name, role in layer_roles.items() if role is not None}
    if not layer_roles:
        if untouched:  # "the module has no nn.Linear ..." for a module that has them, all set to None
            raise ValueError(f"parametrize(): every layer has role None ({sorted(untouched)[:8]}), given by roles= or "
                             "by an earlier call: give at least one a role")
        raise ValueError("parametrize(): the module has no nn.Linear / nn.Conv2d / nn.Embedding layer")

    if width is None:
        width = _default_width(all_layers, layer_roles)
    base = width if base_width is None else base_width
    for label, value in (("width", width), ("base_width", base)):
        check_real("parametrize()", label, value, low=0.0, low_open=True)
    # as Python floats: an np.float32 alpha_out made alpha_out / m_d in float32 (as the models', models/gpt.py)
    alpha_in, alpha_out = (check_real("parametrize()", label, value, low=0.0, low_open=True)
                           for label, value in (("alpha_in", alpha_in), ("alpha_out", alpha_out)))
    check_std("parametrize()", "init_std", 1.0 if init_std is None else init_std)  # nan too; init_std**2 overflowed
    # a negative gain was silently |gain| (its square is the variance), nan and "x" torch's or Python's words
    check_real("parametrize()", "gain", gain, low=0.0, high=STD_MAX)
    check_densities("parametrize()", density, base_density)  # density = 1 - sparsity
    check_seed("parametrize()", "mask_seed", mask_seed)  # 'a' raised int()'s words; 1.5 was seed 1
    if not isinstance(mask_method, str) or mask_method not in MASK_METHODS:
        # random_mask refused it at the first hidden layer, after the layers before it were converted and re-drawn
        raise ValueError(f"parametrize() mask_method must be one of {MASK_METHODS}; got {mask_method!r}")
    # plain floats: a tensor or NumPy argument went into catapult_spec and every hidden group's lr as a tensor
    width_mult = check_real("parametrize()", "width", width) / check_real("parametrize()", "base_width", base)
    density, base_density = float(as_real(density)), float(as_real(base_density))
    density_mult = density / base_density
    if mask_seed is None:
        mask_seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator().manual_seed(int(mask_seed))

    check_masks(all_layers, layer_roles, density)  # before any layer changes
    check_scalable(all_layers, layer_roles)
    check_shared(all_layers, layer_roles)
    check_inferred_readout(all_layers, layer_roles, inferred)

    initialised: set[int] = set()
    masks: dict[int, torch.Tensor] = {}  # per weight: a weight shared by two hidden layers gets one mask
    for name, role in layer_roles.items():
        layer = all_layers[name]
        is_embedding = isinstance(layer, nn.Embedding)
        layer = as_scaled(layer)
        if role != "hidden" and getattr(layer, "catapult_role", None) == "hidden" and getattr(layer, "mask", None) is not None:
            # the mask an earlier call drew for it as a hidden layer: an input or output layer is dense
            # (a readout whose role was corrected kept it and stayed 1 - density sparse)
            layer.set_mask(None)
        layer.catapult_role = role
        fan_in = layer_fan_in(layer)
        # a hidden Linear gets a fresh mask below: an earlier one must not zero live entries of the new
        new_mask = role == "hidden" and density < 1.0 and isinstance(layer, ScaledLinear)
        # SμPar's m_rho of this matrix: of the density its mask keeps (an exact mask's count), read by param_groups
        layer_density_mult = (kept_density(layer.weight.numel(), density, method=mask_method) / base_density
                              if new_mask else density_mult)
        if role == "hidden":
            layer.catapult_density_mult = layer_density_mult
        else:
            layer.__dict__.pop("catapult_density_mult", None)  # a hidden layer's of an earlier call
        if init_std is not None:
            var = init_variance(parametrization, "input" if _depthwise(layer) else role, init_std**2,
                                width_mult=width_mult, density_mult=layer_density_mult)
        elif parametrization == "sp" or role == "input" or _depthwise(layer):  # a depthwise conv is input-like
            var = gain**2 / fan_in
        elif role == "hidden":
            var = gain**2 / fan_in / (layer_density_mult if init_rule(parametrization) == "supar" else 1.0)
        else:  # output: the readout variance at the base width
            var = gain**2 / (fan_in / width_mult)
        with torch.no_grad():
            if id(layer.weight) not in initialised:
                layer.weight.normal_(0.0, math.sqrt(var))
                initialised.add(id(layer.weight))
            if is_embedding and layer.padding_idx is not None:  # the pad row stays 0, as nn.Embedding makes it
                layer.weight[layer.padding_idx].zero_()
            if getattr(layer, "mask", None) is not None and not new_mask:  # sparsified before: pruned stay 0
                layer.apply_mask_()
            bias = getattr(layer, "bias", None)
            if bias is not None and id(bias) not in initialised:
                bias.zero_()
                initialised.add(id(bias))
        multiplier = 1.0
        if parametrization != "sp" and role == "input":
            multiplier = alpha_in
        elif parametrization != "sp" and role == "output":
            multiplier = alpha_out / width_mult
        layer.multiplier = float(multiplier)
        if not is_embedding:
            layer.bias_multiplier = 1.0
            if new_mask:
                if id(layer.weight) not in masks:
                    masks[id(layer.weight)] = random_mask(layer.weight.shape, density, method=mask_method,
                                                          generator=generator)
                layer.set_mask(masks[id(layer.weight)])
    module.catapult_roles = chosen  # None included: a later call on this module leaves those alone too
    attach_spec(module, ParamSpec(parametrization, width_mult, density_mult, "table"),  # + state_dict record
                masks=(mask_method, None) if density < 1.0 else None, alphas=(alpha_in, alpha_out))
    # torch 2.2.2: a model compiled before this call kept its traced multipliers (a second
    # parametrize's were never used) until its compiled code is traced again
    retrace_compiled()
    return module
