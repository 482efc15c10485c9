"""Layers with forward multipliers, and the fan-in rules of every weight layer kind.

A *scaled* layer computes ``multiplier * (x W) + bias_multiplier * b``, where the two
multipliers are plain ``float`` attributes (architecture, not state: not in ``state_dict``;
``copy.deepcopy``, ``torch.compile`` and FSDP see ordinary modules). muP and SμPar put their
input/output multipliers there (:mod:`catapult.parametrize`).

Fan-in and fan-out of a weight (what the init and learning-rate tables are written in):

=====================  =============================  ==============================
layer                   fan-in ``n_in``                 fan-out ``n_out``
=====================  =============================  ==============================
Linear(in, out)         ``in``                          ``out``
Embedding(V, d)         ``1`` (one row per token)       ``d``
Conv2d(C_in, C_out, k)  ``C_in / groups * k_h * k_w``   ``C_out / groups * k_h * k_w``
=====================  =============================  ==============================

A convolution is a Linear map applied at every output pixel to the ``C_in * k_h * k_w`` values
of its receptive field, so its fan-in (the number of terms summed into one output) is the
channel count times the kernel area; counting the fan-out the same way (each input value
reaches ``C_out * k_h * k_w`` outputs) makes a square ``C -> C`` convolution's two fans equal,
as for a square hidden matrix. The *width* of a layer (what muP scales) is its
``out_features`` / ``embedding_dim`` / ``out_channels``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.arguments import check_flag, check_real
from catapult.sparsity import MaskedLinear

__all__ = ["ScaledLinear", "ScaledEmbedding", "ScaledConv2d", "WEIGHT_LAYERS", "SCALABLE_TYPES", "as_scaled",
           "fan_in", "fan_out", "layer_width", "init_weight_", "INIT_DISTRIBUTIONS", "TRUNC_STD", "check_input_dtype",
           "autocast_enabled"]

#: Weight init distributions of the built-in models (``model.init``).
INIT_DISTRIBUTIONS = ("normal", "trunc_normal")
#: Std of a standard normal truncated to [-2, 2]; Flax's truncated_normal initializers divide
#: by it so the truncated draw has exactly the requested variance.
TRUNC_STD = 0.87962566103423978

#: Module types whose ``weight`` takes a role (input / hidden / output) in :mod:`catapult.parametrize`.
WEIGHT_LAYERS = (nn.Linear, nn.Embedding, nn.Conv2d)
#: The exact types :func:`as_scaled` converts (a subclass's own forward would be lost).
SCALABLE_TYPES = (nn.Linear, MaskedLinear, nn.Embedding, nn.Conv2d)


def init_weight_(weight: torch.Tensor, var: float, distribution: str = "normal") -> torch.Tensor:
    """Fill ``weight`` in place with zero-mean draws of variance ``var``.

    ``"normal"``: ``N(0, var)``. ``"trunc_normal"``: ``N(0, s^2)`` truncated to ``[-2s, 2s]``
    with ``s = sqrt(var) / TRUNC_STD``, so the truncated draw has variance exactly ``var`` (the
    warmup paper's Flax code).

    Example:
        >>> w = init_weight_(torch.empty(200_000), 4.0, "trunc_normal")
        >>> round(w.var().item(), 1), bool(w.abs().max() <= 2 * 2.0 / TRUNC_STD)
        (4.0, True)
    """
    if distribution not in INIT_DISTRIBUTIONS:
        raise ValueError(f"init must be one of {INIT_DISTRIBUTIONS}; got {distribution!r}")
    # var=True drew variance 1, var=inf an all-nan weight; nan and -1 failed in torch's or math's words
    std = math.sqrt(check_real("init_weight_", "var", var, low=0.0))
    with torch.no_grad():
        if distribution == "normal":
            weight.normal_(0.0, std)
        else:
            scale = std / TRUNC_STD
            nn.init.trunc_normal_(weight, 0.0, scale, -2.0 * scale, 2.0 * scale)
    return weight


def check_input_dtype(owner: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise TypeError naming both dtypes and the shape when floating inputs ``x`` and a model's
    ``weight`` differ in dtype outside autocast (NumPy's float64 data into a float32 model): torch's
    words were "mat1 and mat2 must have the same dtype" or "expected scalar type Double but found
    Float", neither saying which side is which."""
    if x.dtype == weight.dtype or autocast_enabled(x.device.type):
        return
    raise TypeError(f"{owner} weights are {weight.dtype} but the inputs of shape {tuple(x.shape)} are {x.dtype}: "
                    f"pass x.to({weight.dtype}), or convert the model with model.to({x.dtype})")


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` in this thread (False for a device
    type this torch has no autocast for).

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     autocast_enabled("cpu")
    True
    >>> autocast_enabled("cpu")
    False
    """
    try:
        return bool(torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type))
    except (AttributeError, TypeError):  # torch < 2.4: no per-device query
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else
                    device_type == "cuda" and torch.is_autocast_enabled())


def fan_in(layer: nn.Module) -> int:
    """Terms summed into one output of ``layer`` (see the module docstring's table).

    Example:
        >>> fan_in(nn.Linear(3, 5)), fan_in(nn.Embedding(10, 4)), fan_in(nn.Conv2d(16, 32, 3))
        (3, 1, 144)
    """
    if isinstance(layer, nn.Embedding):
        return 1
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return layer.in_features
    raise TypeError(f"fan_in: {type(layer).__name__} is not one of {[t.__name__ for t in WEIGHT_LAYERS]}")


def fan_out(layer: nn.Module) -> int:
    """Outputs one input value reaches (see the module docstring's table).

    Example:
        >>> fan_out(nn.Linear(3, 5)), fan_out(nn.Conv2d(16, 32, 3))
        (5, 288)
    """
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels // layer.groups * math.prod(layer.kernel_size)
    return layer_width(layer)


def layer_width(layer: nn.Module) -> int:
    """The layer's output width: ``out_features``, ``embedding_dim`` or ``out_channels``.

    Example:
        >>> layer_width(nn.Conv2d(16, 32, 3)), layer_width(nn.Embedding(10, 4))
        (32, 4)
    """
    if isinstance(layer, nn.Embedding):
        return layer.embedding_dim
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    return layer.out_features


class ScaledLinear(MaskedLinear):
    """``y = multiplier * x (W ⊙ M)^T + bias_multiplier * b``.

    ``multiplier`` and ``bias_multiplier`` are plain floats (architecture, not state); ``M`` is
    an optional persistent mask buffer (see :class:`catapult.sparsity.MaskedLinear`).

    Example:
        >>> layer = ScaledLinear(2, 1, multiplier=0.5)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0), layer.bias.fill_(1.0)
        >>> layer(torch.tensor([[2.0, 4.0]])).item()      # 0.5 * (2 + 4 + 1)
        3.5
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 multiplier: float = 1.0, bias_multiplier: float | None = None,
                 density: float = 1.0, mask_method: str = "exact",
                 generator: torch.Generator | None = None, device=None, dtype=None) -> None:
        multipliers = _multipliers("ScaledLinear", multiplier, bias_multiplier)  # before any weight is drawn
        super().__init__(in_features, out_features, bias, density=density,
                         mask_method=mask_method, generator=generator, device=device,
                         dtype=dtype)
        self.multiplier, self.bias_multiplier = multipliers

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.forward_weight()  # RigL's dense gradient is captured here too
        scale, bias_scale = self.multiplier, self.bias_multiplier
        if self.bias is None or bias_scale == scale:
            out = F.linear(input, weight, self.bias)
            return out if scale == 1.0 else out * scale
        out = F.linear(input, weight)
        out = out if scale == 1.0 else out * scale
        return out + (self.bias if bias_scale == 1.0 else self.bias * bias_scale)

    def extra_repr(self) -> str:
        return _multiplier_repr(self, super().extra_repr())


class ScaledConv2d(nn.Conv2d):
    """``y = multiplier * conv2d(x, W) + bias_multiplier * b`` (same arguments as ``nn.Conv2d``).

    Example:
        >>> conv = ScaledConv2d(1, 1, 3, padding=1, bias=False, multiplier=0.5)
        >>> with torch.no_grad():
        ...     _ = conv.weight.fill_(1.0)
        >>> conv(torch.ones(1, 1, 3, 3))[0, 0, 1, 1].item()   # 0.5 * (9 ones)
        4.5
    """

    def __init__(self, *args, multiplier: float = 1.0, bias_multiplier: float | None = None,
                 **kwargs) -> None:
        if "bias" in kwargs:  # bias="no" built a bias, as nn.Conv2d does
            kwargs["bias"] = check_flag("ScaledConv2d", "bias", kwargs["bias"])
        elif len(args) > 7:
            args = (*args[:7], check_flag("ScaledConv2d", "bias", args[7]), *args[8:])
        multipliers = _multipliers("ScaledConv2d", multiplier, bias_multiplier)
        super().__init__(*args, **kwargs)
        self.multiplier, self.bias_multiplier = multipliers

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scale, bias_scale = self.multiplier, self.bias_multiplier
        if self.bias is None or bias_scale == scale:
            out = self._conv_forward(input, self.weight, self.bias)
            return out if scale == 1.0 else out * scale
        out = self._conv_forward(input, self.weight, None)
        out = out if scale == 1.0 else out * scale
        bias = self.bias if bias_scale == 1.0 else self.bias * bias_scale
        return out + bias.view(1, -1, *([1] * (out.dim() - 2)))

    def extra_repr(self) -> str:
        return _multiplier_repr(self, super().extra_repr())


class ScaledEmbedding(nn.Embedding):
    """``y = multiplier * E[idx]`` (``multiplier`` a plain float attribute).

    Example:
        >>> embedding = ScaledEmbedding(3, 2)
        >>> embedding.multiplier = 2.0
        >>> with torch.no_grad():
        ...     _ = embedding.weight.fill_(1.5)
        >>> embedding(torch.tensor([0])).tolist()
        [[3.0, 3.0]]
    """

    multiplier: float = 1.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = super().forward(input)
        return out if self.multiplier == 1.0 else out * self.multiplier

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.multiplier == 1.0 else f"{text}, multiplier={self.multiplier:.4g}"


def _multipliers(owner: str, multiplier: Any, bias_multiplier: Any) -> tuple[float, float]:
    """``(multiplier, bias_multiplier)`` as floats (the bias's defaults to the weight's); a ValueError naming
    ``owner`` unless each is a finite real number: nan made every output NaN, and ``"2"`` was taken as 2."""
    scale = check_real(owner, "multiplier", multiplier)
    bias_scale = scale if bias_multiplier is None else check_real(owner, "bias_multiplier", bias_multiplier)
    return scale, bias_scale


def _multiplier_repr(layer: nn.Module, text: str) -> str:
    if layer.multiplier != 1.0:
        text += f", multiplier={layer.multiplier:.4g}"
    if layer.bias is not None and layer.bias_multiplier != layer.multiplier:
        text += f", bias_multiplier={layer.bias_multiplier:.4g}"
    return text


def as_scaled(layer: nn.Module) -> nn.Module:
    """Turn a plain ``nn.Linear`` / ``MaskedLinear`` / ``nn.Embedding`` / ``nn.Conv2d`` into its
    scaled class **in place** (same object, parameters and ``state_dict`` keys; multipliers 1).

    Subclasses with their own ``forward`` are refused (it would be lost).

    Example:
        >>> conv = as_scaled(nn.Conv2d(1, 2, 3))
        >>> type(conv).__name__, conv.multiplier
        ('ScaledConv2d', 1.0)
    """
    if isinstance(layer, (ScaledLinear, ScaledEmbedding, ScaledConv2d)):
        return layer
    kind = type(layer)
    if kind not in SCALABLE_TYPES:
        raise TypeError(
            f"parametrize() handles plain nn.Linear / nn.Embedding / nn.Conv2d layers; got "
            f"{kind.__name__} (its own forward would be lost): give it role None"
        )
    if kind is nn.Embedding:
        layer.__class__ = ScaledEmbedding
        layer.multiplier = 1.0
        return layer
    if kind is nn.Conv2d:
        layer.__class__ = ScaledConv2d
    else:
        if kind is nn.Linear:
            layer.register_buffer("mask", None)
        layer.__class__ = ScaledLinear
    layer.multiplier = 1.0
    layer.bias_multiplier = 1.0
    return layer
