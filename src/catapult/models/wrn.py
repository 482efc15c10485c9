"""WideResNet-d-k with LayerNorm in place of BatchNorm (the warmup paper's WRN), in SP, muP and SμPar.

Architecture (``n = (d - 4) / 6`` blocks per group, ``k`` the widen factor)::

    x (N, C, H, W)  [flat (N, C*H*W) inputs are reshaped to C x s x s, s = sqrt(H*W)]
    stem:     conv3x3(C -> 16) -> LN -> ReLU
    group g = 1, 2, 3 (widths 16k, 32k, 64k; stride 1, 2, 2), n blocks each:
        block: h = LN(conv3x3(ReLU(LN(conv3x3_stride(x)))))
               out = ReLU(h + shortcut(x)),  shortcut = x, or LN(conv1x1(x[::stride, ::stride])) when the
               channels or the resolution change (ResNet-v1 order, as the paper states it:
               conv -> LN -> ReLU -> conv -> LN, plus the shortcut, then ReLU)
    head:     global mean over the pixels -> linear readout (64k -> classes)

Convolutions have no bias (the LayerNorm after each one has its own); the readout has one
(``bias=True``, zero init). LayerNorm normalises each pixel's channel vector (over ``C``, with
a learned gain and bias of size ``C``): Flax's ``nn.LayerNorm`` on NHWC features, which the
paper's JAX code uses. Any input size works: strides 2, 2 take 32x32 to 8x8 and the 8x8
digits to 2x2; the mean-pool removes the spatial size.

Parameterizations. A convolution is a Linear map on each ``C_in x k x k`` receptive field, so
``n_in = C_in k^2`` and ``n_out = C_out k^2`` (:func:`catapult.scaled_layers.fan_in`); the
readout is treated exactly as the FCN's (:class:`catapult.models.MLP`). ``v_w = weight_var``
(2, He). Weights are ``N(0, var)`` or truncated normal (``init="trunc_normal"``, exact
variance); a multiplier ``c`` means the layer computes ``c * conv(x, W)``.
*Input* convs are those whose fan-in does not grow with ``k`` (the stem, and group 1's first
conv and shortcut, which read the stem's 16 channels); *hidden* convs read ``16k``-multiples;
the readout is the *output*. ``m_d = k / k_base`` (``base_widen``). The stem and its LayerNorm
have no dimension that grows with ``k``, so no rule scales their lr (microsoft/mup's
finite-shape tensors; :func:`catapult.param_groups` kind ``"fixed"``): under SGD an ``m_d``
lr made the stem's relative change grow like ``sqrt(k)``.

======================  ==================  ===========================  ==========================
layer                   SP                  muP (paper form,             muP table form / SμPar
                                            ``base_widen=None``)         (``base_widen`` given)
======================  ==================  ===========================  ==========================
input conv  init var    ``v_w / n_in``      ``v_w / n_out``              ``v_w / n_in``
input conv  multiplier  1                   ``sqrt(n_out / n_in)``       ``alpha_in``
hidden conv init var    ``v_w / n_in``      ``v_w / n_out``              ``v_w / n_in`` (=base/m_d)
hidden conv multiplier  1                   ``sqrt(n_out / n_in)``       1
readout     init var    ``1 / n_in``        ``1 / n_in``                 ``1 / n_in_base``
readout     multiplier  1                   ``sqrt(1 / n_in)`` (+bias)   ``alpha_out / m_d``
LayerNorm gain / bias   1 / 0               1 / 0                        1 / 0
----------------------  ------------------  ---------------------------  --------------------------
lr multiplier, SGD      1 everywhere        1 everywhere (global lr; the input ``m_d``, hidden 1, readout
                                            multipliers carry muP's      ``m_d``, LN ``m_d``, readout
                                            per-layer rates)             bias 1, stem and its LN 1
lr multiplier, Adam     1 everywhere        1 everywhere ("simple muP")  hidden ``1 / m_d``, else 1
======================  ==================  ===========================  ==========================

In the paper form the effective weight ``sqrt(n_out/n_in) W`` has variance ``v_w / n_in``, so
the forward pass at init is SP's, while the readout starts at ``O(1/sqrt(width))``; under SGD
with one lr the effective per-layer rates are ``lr n_out / n_in`` (input, hidden: ``lr`` for a
square conv) and ``lr / n_in`` (readout). The lr multipliers are :func:`catapult.param_groups`'
(``lr_rule="global"`` for the paper form, the SμPar table for the table form). SμPar at
density 1 equals the table-form muP (convs are dense: ``density < 1`` is refused).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.arguments import as_integer, check_flag, check_integer, check_positive_int, check_real
from catapult.models.options import config_section
from catapult.parametrize import ParamSpec, check_parametrization
from catapult.parametrize_state import attach_spec
from catapult.scaled_layers import (INIT_DISTRIBUTIONS, ScaledConv2d, ScaledLinear, check_input_dtype, fan_in, fan_out,
                                    init_weight_)

__all__ = ["WRN", "ChannelLayerNorm", "wrn_blocks_per_group", "STEM_CHANNELS"]

#: Output channels of the stem conv (not widened), as in Zagoruyko & Komodakis' WRN.
STEM_CHANNELS = 16


def wrn_blocks_per_group(depth: int) -> int:
    """``n = (depth - 4) / 6`` blocks per group; ``depth`` must be ``6n + 4`` with ``n >= 1``.

    Example:
        >>> wrn_blocks_per_group(16), wrn_blocks_per_group(28)
        (2, 4)
    """
    check_positive_int("WRN", "depth", depth)  # int(depth) raised OverflowError at inf, int()'s words at nan / None
    if int(depth) != depth or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); got {depth!r}")
    return (int(depth) - 4) // 6


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel: ``y[:, :, i, j] = LN(x[:, :, i, j]) * g + b``.

    Example:
        >>> ln = ChannelLayerNorm(3)
        >>> y = ln(torch.arange(24.0).reshape(1, 3, 2, 4))
        >>> [round(v, 3) for v in y[0, :, 0, 0].tolist()]     # (0, 8, 16) standardised
        [-1.225, 0.0, 1.225]
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        # int(2.5) was 2 channels; eps=nan gave an all-nan output, eps=-1 nan where a pixel's variance is below 1
        self.channels = check_integer("ChannelLayerNorm", "channels", channels)
        self.eps = check_real("ChannelLayerNorm", "eps", eps, low=0.0)
        self.weight = nn.Parameter(torch.ones(self.channels))
        self.bias = nn.Parameter(torch.zeros(self.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(-3, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, -3)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps:g}"


class _Block(nn.Module):
    """conv -> LN -> ReLU -> conv -> LN, plus the shortcut, then ReLU."""

    def __init__(self, conv1: ScaledConv2d, conv2: ScaledConv2d, shortcut: ScaledConv2d | None,
                 shortcut_stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.norm1 = conv1, ChannelLayerNorm(conv1.out_channels)
        self.conv2, self.norm2 = conv2, ChannelLayerNorm(conv2.out_channels)
        self.shortcut, self.shortcut_stride = shortcut, shortcut_stride
        self.shortcut_norm = None if shortcut is None else ChannelLayerNorm(shortcut.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.shortcut is None:
            skip = x
        else:
            # A 1x1 stride-s conv is a 1x1 stride-1 conv of every s-th pixel. Written so because x (a
            # LayerNorm's output, moved back) has channels-last strides, and torch 2.13's CPU 1x1
            # stride-2 conv backward on such an input, at one thread, corrupts the heap (abort or
            # segfault, measured on an AVX2 AMD EPYC). The subsampled view costs less than a
            # contiguous copy of x (bench_wrn.py --only shortcut).
            s = self.shortcut_stride
            skip = self.shortcut_norm(self.shortcut(x if s == 1 else x[..., ::s, ::s]))
        return F.relu(h + skip)


class WRN(nn.Module):
    """WideResNet-``depth``-``widen`` with LayerNorm; see the module docstring for every rule.

    Args:
        in_channels: input channels (1 for the digits, 3 for CIFAR); flat inputs of
            ``in_channels * s * s`` features are reshaped to ``(in_channels, s, s)``.
        num_classes: outputs.
        depth: ``6n + 4`` (16 = WRN-16: two blocks per group).
        widen: the widen factor ``k`` (group widths ``16k, 32k, 64k``).
        parametrization: ``"sp" | "mup" | "supar" | "supar_init" | "supar_lr"``.
        norm: ``"layer"`` (the only one: the paper replaces BatchNorm by LayerNorm).
        base_widen: ``k_base`` of the table form (``None``: the warmup paper's muP form for
            ``"mup"``; ``k_base = widen`` for the SμPar names).
        alpha_in, alpha_out: table-form multipliers.
        bias: whether the readout has a bias (zero init).
        weight_var: ``v_w`` of the convs (2 = He for ReLU).
        init: ``"normal"`` or ``"trunc_normal"``.
        channels: the stem's output channels ``c`` (16 in WRN; the groups are ``c k``, ``2 c k``,
            ``4 c k`` wide); smaller values give tiny test networks, down to 2 (a LayerNorm over
            one channel returns its bias whatever the input).

    Example (WRN-10-1 on 8x8 digits, flat or shaped):
        >>> _ = torch.manual_seed(0)
        >>> net = WRN(1, 10, depth=10, widen=1, parametrization="mup")
        >>> net(torch.randn(5, 64)).shape, net(torch.randn(5, 1, 8, 8)).shape
        (torch.Size([5, 10]), torch.Size([5, 10]))
    """

    #: Parameterized by its constructor (``parametrization=``), which :func:`catapult.parametrize.parametrize`
    #: refuses to redo: its convs' roles (group 1's first conv and shortcut read the stem's fixed
    #: channels), the fixed stem and its init are its own table's.
    catapult_builtin_model = True

    def __init__(self, in_channels: int, num_classes: int, depth: int = 16, widen: int = 4, *,
                 parametrization: str = "sp", norm: str = "layer", base_widen: int | None = None,
                 alpha_in: float = 1.0, alpha_out: float = 1.0, bias: bool = True,
                 weight_var: float = 2.0, init: str = "normal", channels: int = STEM_CHANNELS) -> None:
        super().__init__()
        check_parametrization(parametrization)
        n_blocks = wrn_blocks_per_group(depth)
        for label, value in (("in_channels", in_channels), ("num_classes", num_classes), ("widen", widen),
                             ("channels", channels)):
            check_positive_int("WRN", label, value)
        if int(channels) < 2:   # LN over one channel is its bias: the network ignored its input, silently
            raise ValueError(f"WRN channels must be >= 2: with {channels!r}, each pixel's LayerNorm after the stem "
                             f"normalises one channel to 0, so the network's output does not depend on its input")
        if norm != "layer":
            raise ValueError(f"WRN norm must be 'layer' (LayerNorm in place of BatchNorm); got {norm!r}")
        if init not in INIT_DISTRIBUTIONS:
            raise ValueError(f"WRN init must be one of {INIT_DISTRIBUTIONS}; got {init!r}")
        check_positive_int("WRN", "base_widen", base_widen, optional=True)
        bias = check_flag("WRN", "bias", bias)  # bias="no" built biases
        weight_var = check_real("WRN", "weight_var", weight_var, low=0.0, low_open=True)
        alpha_in, alpha_out = (check_real("WRN", label, value, low=0.0, low_open=True)   # Python floats (as GPT's)
                               for label, value in (("alpha_in", alpha_in), ("alpha_out", alpha_out)))
        table_form = parametrization.startswith("supar") or (parametrization == "mup" and base_widen is not None)
        if not table_form and (alpha_in != 1.0 or alpha_out != 1.0):
            raise ValueError("WRN alpha_in / alpha_out apply to the table form only "
                             "(parametrization='supar' and its ablations, or 'mup' with base_widen)")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.depth, self.widen, self.blocks_per_group = int(depth), int(widen), n_blocks
        self.parametrization, self.base_widen = parametrization, base_widen
        self._rule = "sp" if parametrization == "sp" else ("table" if table_form else "paper")
        self._width_mult = self.widen / (self.widen if base_widen is None else int(base_widen))
        self._alpha_in, self._weight_var, self._init = float(alpha_in), float(weight_var), init

        stem_channels = int(channels)
        self.stem = self._conv(self.in_channels, stem_channels, 3, 1, "input")
        self.stem_norm = ChannelLayerNorm(stem_channels)
        # no dimension of the stem grows with k: its lr is never width-scaled (param_groups' "fixed")
        self.stem.catapult_fixed = self.stem_norm.catapult_fixed = True
        blocks, channels = [], stem_channels
        for group, stride in enumerate((1, 2, 2)):
            width = stem_channels * self.widen * 2 ** group
            for b in range(n_blocks):
                s = stride if b == 0 else 1
                role = "input" if group == 0 and b == 0 else "hidden"   # reads the stem: fan-in fixed as k grows
                conv1 = self._conv(channels, width, 3, s, role)
                conv2 = self._conv(width, width, 3, 1, "hidden")
                # the shortcut's stride is the block's subsampling (see _Block.forward); its conv has stride 1
                shortcut = None if (s == 1 and channels == width) else self._conv(channels, width, 1, 1, role)
                blocks.append(_Block(conv1, conv2, shortcut, s))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.readout = self._readout(channels, self.num_classes, bias, float(alpha_out))
        attach_spec(self, ParamSpec(parametrization, self._width_mult, 1.0,   # + state_dict record
                                    "global" if self._rule == "paper" else "table"), alphas=(alpha_in, alpha_out))

    def _conv(self, c_in: int, c_out: int, kernel: int, stride: int, role: str) -> ScaledConv2d:
        conv = ScaledConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        n_in, n_out = fan_in(conv), fan_out(conv)
        if self._rule == "paper":
            var, multiplier = self._weight_var / n_out, math.sqrt(n_out / n_in)
        else:  # SP, and the table form (hidden: v_w / n_in is the base variance / m_d)
            var = self._weight_var / n_in
            multiplier = self._alpha_in if (self._rule == "table" and role == "input") else 1.0
        init_weight_(conv.weight, var, self._init)
        conv.multiplier = conv.bias_multiplier = float(multiplier)
        conv.catapult_role = role
        conv.catapult_block = role   # the coordinate check's blocks: every conv's output (before its LayerNorm)
        return conv

    def _readout(self, n_in: int, n_out: int, bias: bool, alpha_out: float) -> ScaledLinear:
        if self._rule == "paper":
            var, multiplier, bias_multiplier = 1.0 / n_in, math.sqrt(1.0 / n_in), math.sqrt(1.0 / n_in)
        elif self._rule == "table":
            var, multiplier, bias_multiplier = self._width_mult / n_in, alpha_out / self._width_mult, 1.0
        else:
            var, multiplier, bias_multiplier = 1.0 / n_in, 1.0, 1.0
        layer = ScaledLinear(n_in, n_out, bias=bias, multiplier=multiplier, bias_multiplier=bias_multiplier)
        init_weight_(layer.weight, var, self._init)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        layer.catapult_role = "output"
        layer.catapult_block = "logits"
        return layer

    @classmethod
    def from_config(cls, model_cfg, in_features: int | Sequence[int], out_features: int) -> "WRN":
        """The WRN a run config's ``model`` section describes (``name: wrn``, ``depth``, ``widen``,
        ``channels``, ``parametrization``, ``base_width`` = ``k_base``, ``alpha_*``, ``bias``, ``init``).

        ``in_features`` is a sample's shape ``(C, H, W)`` or its flattened size; a size is read
        as 1 channel when it is a perfect square (64 = 1x8x8) and as 3 channels when a third of
        it is (3072 = 3x32x32) -- never both, as ``3`` is not a square.

        >>> from catapult.config import ModelConfig
        >>> net = WRN.from_config(ModelConfig(name="wrn", depth=10, widen=2), 3072, 10)
        >>> net.in_channels, net.readout.in_features
        (3, 128)
        >>> WRN.from_config(ModelConfig(name="wrn", depth=10, widen=2, channels=4), 64, 10).readout.in_features
        32
        """
        m = config_section(model_cfg)
        sp = m["parametrization"] == "sp"
        return cls(input_channels(in_features), out_features, depth=m["depth"], widen=m["widen"],
                   parametrization=m["parametrization"], base_widen=m["base_width"],
                   alpha_in=1.0 if sp else m["alpha_in"], alpha_out=1.0 if sp else m["alpha_out"],
                   bias=m["bias"], init=m["init"], channels=m.get("channels", STEM_CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # uint8 images: torch said "expected scalar type Byte but found Float"
            raise TypeError(f"WRN expects floating-point images (e.g. x.float() / 255); got {x.dtype}")
        check_input_dtype("WRN", x, self.stem.weight)
        if x.dim() == 2:
            side = math.isqrt(x.shape[1] // self.in_channels)
            if self.in_channels * side * side != x.shape[1]:
                raise ValueError(f"WRN: {x.shape[1]} features per sample are not {self.in_channels} "
                                 f"square images; pass (N, C, H, W)")
            x = x.reshape(x.shape[0], self.in_channels, side, side)
        if x.dim() != 4 or x.shape[1] != self.in_channels or 0 in x.shape[2:]:  # 0 pixels: torch's "Kernel size can't be greater"
            raise ValueError(f"WRN expects (N, {self.in_channels}, H, W) images, H, W >= 1; got shape {tuple(x.shape)}")
        h = F.relu(self.stem_norm(self.stem(x)))
        h = self.blocks(h)
        return self.readout(h.mean(dim=(-2, -1)))

    def extra_repr(self) -> str:
        text = f"depth={self.depth}, widen={self.widen}, parametrization={self.parametrization!r}"
        return text + ("" if self.base_widen is None else f", base_widen={self.base_widen}")


def input_channels(in_features: int | Sequence[int]) -> int:
    """Channels of a sample of shape ``in_features`` or of that many flat features (see
    :meth:`WRN.from_config`).

    >>> input_channels(64), input_channels(3072), input_channels((3, 32, 32))
    (1, 3, 3)
    """
    # "3072" was read as the shape ("3", "0", "7", "2"): 3 channels; True as 1 flat feature (1 channel);
    # np.int64(3072) failed in tuple()'s words ("not iterable")
    count = as_integer(in_features)
    if count is None:
        shape = () if isinstance(in_features, (str, bytes)) or not isinstance(in_features, Iterable) \
            else tuple(in_features)
        if not shape:
            raise ValueError(f"WRN in_features must be a positive integer or a sample shape (C, H, W); "
                             f"got {in_features!r}")
        for size in shape:
            check_positive_int("WRN", "in_features", size)
        return int(shape[0])
    in_features = check_integer("WRN", "in_features", count)
    for channels in (1, 3):
        side = math.isqrt(in_features // channels)
        if in_features % channels == 0 and channels * side * side == in_features:
            return channels
    raise ValueError(f"WRN: {in_features} input features are neither 1 x s x s nor 3 x s x s images")
