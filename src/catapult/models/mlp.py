"""The warmup paper's fully connected network (FCN), in SP, muP and SμPar.

``depth`` Linear layers: ``in_features -> width -> ... -> width -> out_features`` (``depth - 1``
hidden activations of size ``width``), activation after every layer but the last, input
flattened by the model (so ``(N, 3, 32, 32)`` images and ``(N, 64)`` vectors both work).
Layer 0 is the *input* layer, layers ``1 .. depth-2`` are *hidden* (width x width), the last is
the *readout* (``depth == 1``: a single readout layer). Weights ``N(0, var)``, biases 0.

Parameterizations (``v_w = weight_var``, 2 for ReLU = He gain; ``n_in``, ``n_out`` the layer's
fan-in and fan-out; a multiplier ``c`` means the layer computes ``c * (x W^T + b)`` in the
warmup paper's form and ``c * x W^T + b`` in the table form):

``"sp"`` -- standard parameterization (the paper's SP; He init):
    input & hidden: var ``v_w / n_in``; readout: var ``1 / n_in``; no multipliers.

``"mup"`` with ``base_width=None`` -- the warmup paper's muP (their public code):
    input & hidden: var ``v_w / n_out``, multiplier ``sqrt(n_out / n_in)``;
    readout: var ``1 / n_in``, multiplier ``sqrt(1 / n_in)``.
    The effective input/hidden weight ``sqrt(n_out/n_in) W`` has variance ``v_w / n_in``, so the
    forward pass at init equals SP's (the input layer's multiplier ``sqrt(width/in_features)``
    is what keeps the first preactivations O(1)), while the readout's effective variance is
    ``1 / n_in^2`` so the output starts at O(1/sqrt(width)). Under SGD with one global lr the
    multipliers give muP's per-layer learning rates (input ``lr * width / in_features``,
    hidden ``lr``, readout ``lr / width`` on the effective weights); with Adam it is the paper's
    "simple muP". :func:`catapult.param_groups` therefore gives ``lr_mult = 1`` everywhere.

``"mup"`` with ``base_width`` given, and ``"supar"`` -- the SμPar paper's table relative to a
base model of width ``d_base = base_width`` and density ``rho_base = base_density``
(``m_d = width / d_base``, ``m_rho = density / rho_base``; ``supar`` with ``base_width=None``
uses ``d_base = width``):
    input: var ``v_w / in_features``, multiplier ``alpha_in`` (bias not multiplied);
    hidden: the base model's SP (He) variance ``v_w / d_base`` divided by ``m_d`` (muP:
    ``v_w / width``) or by ``m_d m_rho`` (SμPar: ``v_w rho_base / (width * density)``, i.e. He
    init on the live fan-in when the base model is dense);
    readout: var ``1 / d_base`` (the readout variance at the base width; ``1 / in_features`` at
    ``depth == 1``, whose one layer has no width-sized dimension and refuses a ``base_width``
    other than ``width``), multiplier ``alpha_out / m_d`` (bias not multiplied).
    At the base shape this is exactly SP. :func:`catapult.param_groups` gives the table's
    per-layer learning rates (Adam: hidden ``lr / m_d`` or ``lr / (m_d m_rho)``).

Sparsity (``density < 1``, any parameterization): the hidden (width x width) layers get static
random masks with exactly ``round(density * width^2)`` nonzeros (``mask_method="exact"``) or
Bernoulli masks; input and readout stay dense (so ``depth`` 1 and 2, which have no hidden layer,
refuse a density or base_density below 1). Masks are drawn from their own generator seeded
by ``mask_seed`` (default: drawn from the global RNG first), so with the same
``torch.manual_seed`` the dense weights are identical across densities. SμPar's ``m_rho`` is the
density an exact mask keeps (``round(density * width^2) / width^2``: 3 / 81 at width 9 and 1/32;
:func:`catapult.sparsity.kept_density`) over ``base_density``; Bernoulli masks use ``density``.

The paper's reference FCN has no biases (``bias=False`` reproduces it); with ``bias=True`` they
start at zero.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Sequence

import torch
import torch.nn as nn

from catapult.parametrize import ParamSpec, ScaledLinear, check_parametrization, init_variance
from catapult.arguments import check_densities, check_flag, check_positive_int, check_real, check_seed
from catapult.models.options import common_kwargs, config_section
from catapult.parametrize_state import attach_spec
from catapult.scaled_layers import INIT_DISTRIBUTIONS, check_input_dtype, init_weight_
from catapult.sparsity import kept_density, random_mask

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}

class MLP(nn.Module):
    """The warmup paper's FCN; see the module docstring for every layer's rule.

    Args:
        in_features: size of one flattened input, or its shape (e.g. ``(3, 32, 32)``).
        out_features: number of outputs (classes).
        width: hidden width ``d``.
        depth: number of Linear layers (``depth - 1`` hidden activations).
        parametrization: ``"sp" | "mup" | "supar"``, or the SμPar ablations
            ``"supar_init"`` (SμPar init, muP learning rates) / ``"supar_lr"`` (muP init,
            SμPar learning rates).
        activation: ``"relu" | "tanh" | "gelu" | "linear"``.
        bias: whether layers have (zero-initialised) biases.
        base_width: base width ``d_base`` of the table form (``None``: warmup-paper form
            for ``"mup"``; ``d_base = width`` for ``"supar"``).
        density: fraction of kept weights in hidden layers (``1 - sparsity``).
        base_density: density of the base model (``rho_base``).
        alpha_in, alpha_out: input / output multipliers of the table form.
        weight_var: ``v_w``, the input/hidden variance numerator (2 = He for ReLU).
        init: ``"normal"`` or ``"trunc_normal"`` (truncated at 2 std and rescaled to the exact
            variance, like the paper's Flax code).
        mask_method: ``"exact" | "bernoulli"``; mask_seed: seed of the mask generator.
    """

    #: Parameterized by its constructor (``parametrization=``), which :func:`catapult.parametrize.parametrize`
    #: refuses to redo: its layers' init (He, the warmup paper's muP form) and multipliers are its own table's.
    catapult_builtin_model = True

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int,
        width: int = 512,
        depth: int = 4,
        *,
        parametrization: str = "sp",
        activation: str = "relu",
        bias: bool = True,
        base_width: int | None = None,
        density: float = 1.0,
        base_density: float = 1.0,
        alpha_in: float = 1.0,
        alpha_out: float = 1.0,
        weight_var: float = 2.0,
        init: str = "normal",
        mask_method: str = "exact",
        mask_seed: int | None = None,
    ) -> None:
        super().__init__()
        in_features = _feature_count(in_features)
        check_parametrization(parametrization)
        for label, value in (("in_features", in_features), ("out_features", out_features),
                             ("width", width), ("depth", depth)):
            check_positive_int("MLP", label, value)
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {sorted(ACTIVATIONS)}; "
                             f"got {activation!r}")
        if init not in INIT_DISTRIBUTIONS:
            raise ValueError(f"MLP init must be one of {INIT_DISTRIBUTIONS}; got {init!r}")
        check_positive_int("MLP", "base_width", base_width, optional=True)
        check_densities("MLP", density, base_density)
        bias = check_flag("MLP", "bias", bias)  # bias="no" built biases
        if int(depth) < 3 and (float(density) != 1.0 or float(base_density) != 1.0):
            # the masks and SμPar's density factor are the hidden layers': the network trained dense
            raise ValueError(f"MLP density={density!r}, base_density={base_density!r}: the masks are the hidden "
                             f"(width x width) layers', and depth {depth} has none (input and readout stay "
                             "dense); use depth >= 3 or density 1")
        if int(depth) == 1 and base_width is not None and int(base_width) != int(width):
            # its one layer maps in_features to out_features: no dimension grows with width, yet m_d scaled
            # its readout multiplier (alpha_out / m_d) and its SGD lr (m_d), silently
            raise ValueError(f"MLP base_width={base_width!r} with depth 1: the one layer maps in_features to "
                             "out_features and has no width-sized dimension, so width / base_width would scale "
                             "a layer that does not grow; leave base_width None (or equal to width), or use "
                             "depth >= 2")
        check_seed("MLP", "mask_seed", mask_seed)
        weight_var = check_real("MLP", "weight_var", weight_var, low=0.0, low_open=True)
        # as Python floats: alpha_out=np.float32(0.3) kept NumPy's float32 in alpha_out / m_d (0.1 for 0.3 / 3 =
        # 0.10000000397), and a float64 model's logits were 1.7e-9 off those of alpha_out=0.3 as a float
        alpha_in, alpha_out = (check_real("MLP", label, value, low=0.0, low_open=True)
                               for label, value in (("alpha_in", alpha_in), ("alpha_out", alpha_out)))
        table_form = parametrization.startswith("supar") or (parametrization == "mup"
                                                             and base_width is not None)
        if not table_form and (alpha_in != 1.0 or alpha_out != 1.0):
            raise ValueError("MLP alpha_in / alpha_out apply to the table form only "
                             "(parametrization='supar' and its ablations, or 'mup' with base_width)")

        self.in_features, self.out_features = int(in_features), int(out_features)
        self.width, self.depth = int(width), int(depth)
        self.parametrization = parametrization
        self.base_width = base_width
        self.density, self.base_density = float(density), float(base_density)
        d_base = self.width if base_width is None else int(base_width)
        width_mult = self.width / d_base
        density_mult = self.density / self.base_density
        # SμPar's m_rho of a hidden (width x width) matrix: of the density its mask keeps (an exact mask's count)
        hidden_density_mult = kept_density(self.width**2, self.density, method=mask_method) / self.base_density

        # The mask seed is drawn before any weight so that weights do not depend on density.
        if mask_seed is None:
            mask_seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())  # cpu: also under a meta probe
        mask_generator = torch.Generator().manual_seed(int(mask_seed))

        dims = [self.in_features] + [self.width] * (self.depth - 1) + [self.out_features]
        layers = []
        for index in range(self.depth):
            fan_in, fan_out = dims[index], dims[index + 1]
            role = ("output" if index == self.depth - 1
                    else "input" if index == 0 else "hidden")
            if parametrization == "sp":
                var = (1.0 if role == "output" else weight_var) / fan_in
                multiplier = bias_multiplier = 1.0
            elif not table_form:  # the warmup paper's muP
                if role == "output":
                    var, multiplier = 1.0 / fan_in, math.sqrt(1.0 / fan_in)
                else:
                    var, multiplier = weight_var / fan_out, math.sqrt(fan_out / fan_in)
                bias_multiplier = multiplier
            else:  # SμPar-table muP / SμPar, relative to (d_base, rho_base)
                bias_multiplier = 1.0
                if role == "input":
                    var, multiplier = weight_var / fan_in, alpha_in
                elif role == "hidden":  # the base model's He variance v_w / d_base, by the table
                    var = init_variance(parametrization, "hidden", weight_var / d_base, width_mult=width_mult,
                                        density_mult=hidden_density_mult)
                    multiplier = 1.0
                else:  # the readout variance at the base width; depth 1 reads the inputs, whose count is fixed
                    var, multiplier = 1.0 / (d_base if self.depth > 1 else fan_in), alpha_out / width_mult
            layer = ScaledLinear(fan_in, fan_out, bias=bias, multiplier=multiplier,
                                 bias_multiplier=bias_multiplier)
            init_weight_(layer.weight, var, init)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            if role == "hidden" and self.density < 1.0:
                layer.set_mask(random_mask(layer.weight.shape, self.density,
                                           method=mask_method, generator=mask_generator))
            layer.catapult_role = role
            if role == "hidden":
                layer.catapult_density_mult = hidden_density_mult   # read by param_groups
            layer.catapult_block = "logits" if role == "output" else role
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.activation = ACTIVATIONS[activation]()
        attach_spec(self, ParamSpec(parametrization, width_mult, density_mult,  # + state_dict record
                                    "table" if table_form else "global"),
                    masks=(mask_method, None) if self.density < 1.0 else None, alphas=(alpha_in, alpha_out))

    @classmethod
    def from_config(cls, model_cfg, in_features: int, out_features: int) -> "MLP":
        """The MLP a run config's ``model`` section describes (a ``catapult.config.ModelConfig``
        or its validated dict), as nanoGPT builds a GPT from its ``GPTConfig``.

        >>> from catapult.config import ModelConfig
        >>> net = MLP.from_config(ModelConfig(width=32, depth=3, parametrization="mup"), 64, 10)
        >>> [tuple(p.shape) for p in net.parameters() if p.dim() == 2]
        [(32, 64), (32, 32), (10, 32)]
        """
        m = config_section(model_cfg)
        kwargs = dict(common_kwargs(m), init=m["init"])
        if m["base_width"] is not None:
            kwargs["base_width"] = m["base_width"]
        return cls(in_features, out_features, width=m["width"], depth=m["depth"], **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # torch's own words were "mat1 and mat2 must have the same dtype"
            raise TypeError(f"MLP expects floating-point inputs (features or images); got {x.dtype}")
        check_input_dtype("MLP", x, self.layers[0].weight)
        if x.dim() < 2:
            raise ValueError(f"MLP expects a batch (N, ...) of inputs; got shape {tuple(x.shape)} "
                             "(one sample: x.unsqueeze(0))")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects inputs with {self.in_features} features per sample "
                             f"(after flattening); got shape {tuple(x.shape)}")
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)

    def extra_repr(self) -> str:
        text = f"parametrization={self.parametrization!r}"
        if self.base_width is not None:
            text += f", base_width={self.base_width}"
        if self.density < 1.0 or self.base_density < 1.0:
            text += f", density={self.density:g}, base_density={self.base_density:g}"
        return text



def _feature_count(in_features) -> int:
    """An MLP's input size: an integer (also NumPy's), or a shape such as ``(3, 32, 32)`` whose
    product it is. A string was iterated as a shape (``"64"`` gave 24)."""
    if getattr(in_features, "ndim", None) == 0 and hasattr(in_features, "item"):  # a 0-d tensor or array
        in_features = in_features.item()
    if isinstance(in_features, numbers.Integral) and not isinstance(in_features, bool):
        return int(in_features)
    if isinstance(in_features, (str, bytes)) or not isinstance(in_features, Iterable):
        raise ValueError(f"MLP in_features must be a positive integer or a shape of them; got {in_features!r}")
    shape = tuple(in_features)
    for size in shape:
        check_positive_int("MLP", "in_features", size)
    return math.prod(int(size) for size in shape)
