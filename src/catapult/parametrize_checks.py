"""What :func:`catapult.parametrize.parametrize` refuses about a user's layers, checked before it
changes any of them (each refusal was once a half-converted model or a silent wrong answer):
masks where they cannot apply, one weight shared by layers of different rules, layers it
cannot convert, and a readout inferred where the model reads out through its embedding."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from catapult.scaled_layers import SCALABLE_TYPES, ScaledConv2d, ScaledEmbedding, ScaledLinear
from catapult.sparsity.static import keeps_no_entry

__all__ = ["check_masks", "check_shared", "check_scalable", "check_inferred_readout", "check_builtin"]


def check_masks(layers: Mapping[str, nn.Module], roles: Mapping[str, str], density: float) -> None:
    """Refuse what parametrize() cannot do, before it changes any layer: masks on a hidden conv or embedding,
    and hidden layers that already carry sparse masks while ``density == 1`` (from an earlier
    ``parametrize(..., density<1)`` or ``sparsify_``: they would stay while the init, the
    ``catapult_spec`` and the learning rates assume dense layers).

    >>> layers = {"0": nn.Linear(4, 8), "1": nn.Conv2d(8, 8, 3), "2": nn.Linear(8, 2)}
    >>> check_masks(layers, {"0": "input", "1": "hidden", "2": "output"}, 1.0)   # dense: nothing to refuse
    >>> check_masks(layers, {"0": "input", "1": "hidden", "2": "output"}, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: parametrize(): sparsity masks are for Linear layers; '1' is a hidden nn.Conv2d (use density=1.0 or give it role None)
    """
    if density < 1.0 and "hidden" not in roles.values():
        # the masks and SμPar's density factor are the hidden layers': the model stayed dense
        raise ValueError(f"parametrize(): density={density:g} masks the hidden layers, and none is hidden "
                         f"(roles: {dict(roles)}): the model would stay dense; use density=1.0 or give a "
                         "Linear layer role 'hidden' (roles={name: 'hidden'})")
    kept = total = 0
    sparse = []
    for name, role in roles.items():
        layer = layers[name]
        if density < 1.0 and role == "hidden" and not isinstance(layer, nn.Linear):
            # it would stay dense under an init and lrs corrected for the density
            raise ValueError(f"parametrize(): sparsity masks are for Linear layers; {name!r} is a "
                             f"hidden nn.{type(layer).__name__.replace('Scaled', '')} (use density=1.0 or "
                             "give it role None)")
        if role == "hidden" and keeps_no_entry(layer.weight.numel(), density):
            # random_mask refused it at this layer, after the layers before it were converted and re-drawn
            raise ValueError(f"parametrize(): density={density:g} keeps round({density:g} * {layer.weight.numel()}) = 0 "
                             f"weights of hidden layer {name!r} ({tuple(layer.weight.shape)}); use a density >= "
                             f"{0.5 / layer.weight.numel():.3g}")
        mask = getattr(layer, "mask", None)
        if density == 1.0 and role == "hidden" and isinstance(mask, torch.Tensor) and not bool(mask.all()):
            sparse.append(name)
            kept, total = kept + int(mask.sum()), total + mask.numel()
    if sparse:
        raise ValueError(
            f"parametrize(): hidden layers {sparse[:4]} already have sparsity masks (density {kept / total:.4g}) "
            "but density=1.0; pass the density to draw masks for (and correct for), or make them dense "
            "first with layer.set_mask(None)")


def check_shared(layers: Mapping[str, nn.Module], roles: Mapping[str, str]) -> None:
    """Refuse, before any layer changes, a weight shared by a hidden layer and an input or output
    layer (a readout tied to the embedding but registered before the body, so that
    :func:`infer_roles` calls it hidden). One tensor cannot take both rules: it was initialised by
    the first layer, listed by :func:`param_groups` under the first module with that module's
    learning rate, and a hidden mask zeroed the embedding's entries while the embedding's dense
    gradient moved the entries the mask prunes. Input and output may share a weight (GPT's tied
    embedding): their learning-rate rules agree.

    >>> embed, body = nn.Embedding(10, 4), nn.Linear(4, 4)
    >>> head = nn.Linear(4, 10, bias=False)
    >>> head.weight = embed.weight
    >>> check_shared({"embed": embed, "head": head}, {"embed": "input", "head": "output"})   # GPT's tie
    >>> check_shared({"head": head, "embed": embed, "body": body}, {"head": "hidden", "embed": "input", "body": "output"})
    Traceback (most recent call last):
    ...
    ValueError: parametrize(): layers 'head' (hidden), 'embed' (input) share one weight but have different roles; a hidden weight's init, mask and learning rate cannot serve an input or output layer too. Roles follow the registration order (infer_roles): pass the right one, e.g. roles={'head': 'output'} for a readout tied to the embedding
    """
    owners: dict[int, list[tuple[str, str]]] = {}
    for name, role in roles.items():
        owners.setdefault(id(layers[name].weight), []).append((name, role))
    for sharing in owners.values():
        kinds = {role for _, role in sharing}
        if "hidden" in kinds and len(kinds) > 1:
            shown = ", ".join(f"{name!r} ({role})" for name, role in sharing)
            hidden = next(name for name, role in sharing if role == "hidden")
            raise ValueError(
                f"parametrize(): layers {shown} share one weight but have different roles; a hidden weight's "
                "init, mask and learning rate cannot serve an input or output layer too. Roles follow the "
                "registration order (infer_roles): pass the right one, e.g. "
                f"roles={{{hidden!r}: 'output'}} for a readout tied to the embedding")


def check_inferred_readout(layers: Mapping[str, nn.Module], roles: Mapping[str, str], inferred: set[str]) -> None:
    """Refuse, before any layer changes, a readout taken by registration order (``inferred``: the
    names whose role no ``roles=`` or earlier call gave) that returns to the width of an input
    embedding it does not share a weight with: the layer before ``F.linear(h, embed.weight)``, a
    readout tied to the embedding through a function. There :func:`infer_roles` called the last
    ``nn.Linear`` the readout (its init, the ``1 / m_d`` multiplier and the output lr), and the real
    readout, no module, got none of them: a silent wrong muP. A readout module tied to the
    embedding (``head.weight = embed.weight``) is fine, and ``roles={name: 'output'}`` says the layer
    is the readout after all.

    >>> embed, body, head = nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 50, bias=False)
    >>> check_inferred_readout({"embed": embed, "head": head}, {"embed": "input", "head": "output"}, {"embed", "head"})
    >>> check_inferred_readout({"embed": embed, "body": body}, {"embed": "input", "body": "output"}, {"embed", "body"})
    Traceback (most recent call last):
    ...
    ValueError: parametrize(): 'body' (Linear 8 -> 8) is the last Linear, so it was taken as the readout, but it returns to the width of the embedding 'embed' (8), as the layer before a readout tied through F.linear(h, embed.weight) does; such a readout is no module and gets no output init, multiplier or lr. Make it one: head = nn.Linear(8, 50, bias=False); head.weight = embed.weight; logits = head(h) (an input and an output layer may share a weight), or, if 'body' is the readout, pass roles={'body': 'output'}
    """
    embeddings = {name: layer for name, layer in layers.items()
                  if roles.get(name) == "input" and isinstance(layer, nn.Embedding)}
    for name, role in roles.items():
        layer = layers[name]
        if role != "output" or name not in inferred or not isinstance(layer, nn.Linear):
            continue
        for embed_name, embed in embeddings.items():
            if layer.weight is not embed.weight and layer.out_features == embed.embedding_dim:
                d, vocab = embed.embedding_dim, embed.num_embeddings
                raise ValueError(
                    f"parametrize(): {name!r} (Linear {layer.in_features} -> {layer.out_features}) is the last Linear, "
                    f"so it was taken as the readout, but it returns to the width of the embedding {embed_name!r} "
                    f"({d}), as the layer before a readout tied through F.linear(h, {embed_name}.weight) does; such a "
                    f"readout is no module and gets no output init, multiplier or lr. Make it one: "
                    f"head = nn.Linear({d}, {vocab}, bias=False); head.weight = {embed_name}.weight; logits = head(h) "
                    f"(an input and an output layer may share a weight), or, if {name!r} is the readout, pass "
                    f"roles={{{name!r}: 'output'}}")


def check_scalable(layers: Mapping[str, nn.Module], roles: Mapping[str, str]) -> None:
    """Refuse, before any layer changes, a layer :func:`as_scaled` cannot convert (it raised
    halfway through, after the earlier layers had been converted and re-drawn). The projections
    of an ``nn.MultiheadAttention`` are named: it multiplies by their weights directly. So is a
    layer whose ``weight`` is recomputed before every forward (``torch.nn.utils.prune``).

    >>> check_scalable({"0": nn.Linear(2, 3)}, {"0": "input"})
    >>> check_scalable({"0": nn.LSTM(2, 3)}, {"0": "input"})
    Traceback (most recent call last):
    ...
    TypeError: parametrize() handles plain nn.Linear / nn.Embedding / nn.Conv2d layers; '0' is a LSTM (its own forward would be lost): give it role None (roles={'0': None})
    """
    owners = {id(sub.out_proj): name for name, sub in layers.items() if isinstance(sub, nn.MultiheadAttention)}
    for name, role in roles.items():
        layer = layers[name]
        if isinstance(layer, (ScaledLinear, ScaledEmbedding, ScaledConv2d)) or type(layer) in SCALABLE_TYPES:
            continue
        if id(layer) in owners:
            raise TypeError(
                f"parametrize(): {name!r} is the output projection of the nn.MultiheadAttention {owners[id(layer)]!r}, "
                "which multiplies by in_proj_weight and out_proj.weight itself (F.multi_head_attention_forward), so "
                "no init, multiplier or mask of parametrize() reaches them, nor muP's 1/d_head logit scale; write the "
                "attention with nn.Linear layers and F.scaled_dot_product_attention(..., scale=1/d_head) (as "
                f"catapult.models.GPT does), or leave it as it is with roles={{{name!r}: None}}")
        raise TypeError(f"parametrize() handles plain nn.Linear / nn.Embedding / nn.Conv2d layers; {name!r} is a "
                        f"{type(layer).__name__} (its own forward would be lost): give it role None "
                        f"(roles={{{name!r}: None}})")
    for name in roles:
        layer = layers[name]
        if not isinstance(layer._parameters.get("weight"), nn.Parameter):
            # torch.nn.utils.prune (weight_orig * weight_mask) or the old weight_norm (weight_g, weight_v)
            # recompute .weight before every forward: the init written into it was lost at the first
            # forward, and param_groups gave weight_orig the lr of a vector
            held = [n for n, _ in layer.named_parameters(recurse=False)]
            raise TypeError(
                f"parametrize(): the weight of {name!r} is not a Parameter of its own (its parameters are {held}: "
                "torch.nn.utils.prune or weight_norm recompute it before every forward), so the init would be "
                f"lost; make it plain first (torch.nn.utils.prune.remove(layer, 'weight')) and let parametrize "
                f"draw the masks (density=), or give it role None (roles={{{name!r}: None}})")


def check_builtin(layers: Mapping[str, nn.Module]) -> None:
    """Refuse, before any layer changes, a module that is or holds one of catapult's models
    (:class:`~catapult.models.GPT`, :class:`~catapult.models.MLP`, :class:`~catapult.models.WRN`:
    class attribute ``catapult_builtin_model``), which take their parameterization as a constructor
    argument. ``parametrize(GPT(...), "mup", base_width=8)`` set ``lm_head.multiplier`` to
    ``1 / m_d``, which the GPT never applies (its forward reads out through ``F.linear(h,
    lm_head.weight)`` times its own ``output_multiplier``, still SP's 1): the logits kept SP's scale
    under muP's init and learning rates, without a word.

    >>> check_builtin({"": nn.Sequential(nn.Linear(2, 3))})
    >>> Model = type("GPT", (nn.Module,), {"catapult_builtin_model": True})
    >>> check_builtin({"": nn.Sequential(), "lm": Model()})
    Traceback (most recent call last):
    ...
    ValueError: parametrize(): 'lm' is a catapult.models.GPT, which is parameterized by its constructor (its forward and init apply its own table, which parametrize's multipliers and init would not all reach); build it as GPT(..., parametrization='mup', base_width=..., density=...) instead
    """
    for name, layer in layers.items():
        if getattr(layer, "catapult_builtin_model", False):
            kind = type(layer).__name__
            raise ValueError(
                f"parametrize(): {repr(name) if name else 'the module'} is a catapult.models.{kind}, which is parameterized by its "
                "constructor (its forward and init apply its own table, which parametrize's multipliers and init "
                f"would not all reach); build it as {kind}(..., parametrization='mup', base_width=..., density=...) "
                "instead")
