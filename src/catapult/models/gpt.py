"""A small Pre-LN GPT (decoder-only Transformer) in SP, muP and SμPar.

Read top to bottom: attention, feed-forward, block, model. Shapes: ``B`` batch, ``T`` sequence
length (``<= context``), ``C = d_model``, ``H = n_heads``, ``dh = C / H``, ``V = vocab_size``.

    x = alpha_in * (wte[idx] + position(T))             # "embedding" (dropout after)
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = (alpha_out / m_d) * ln_f(x) W_out^T        # W_out = wte when tied

Parameterization (``m_d = d_model / base_width``, ``m_rho = density / base_density``,
``s = init_std``; the SμPar paper's table, see :mod:`catapult.parametrize`):

=========================  ==================  ===================  ===================
                            SP                  muP                  SμPar
=========================  ==================  ===================  ===================
token/position embedding    N(0, s^2)           N(0, s^2)            N(0, s^2)
hidden matrices (QKV, attn  N(0, s^2)           N(0, s^2 / m_d)      N(0, s^2/(m_d m_rho))
out, MLP in/out)
residual projections        extra std factor 1/sqrt(2 n_layers) (GPT-2), all three
unembedding (untied)        N(0, s^2)           N(0, s^2)            N(0, s^2)
input multiplier            1                   alpha_in             alpha_in
output multiplier           1                   alpha_out / m_d      alpha_out / m_d
attention logits            q.k / sqrt(dh)      q.k / dh             q.k / dh
=========================  ==================  ===================  ===================

Biases start at 0, LayerNorm at (1, 0). Only the hidden matrices are sparse (``density < 1``,
any parameterization): each of Q, K, V, the attention output and the two MLP matrices gets its
own static random mask with exactly ``round(density * numel)`` nonzeros (``mask_method=
"exact"``), stored as a ``mask`` buffer in the ``state_dict``. :func:`catapult.param_groups`
gives the per-layer learning rates (Adam: hidden ``lr / m_d`` muP, ``lr / (m_d m_rho)`` SμPar).
SμPar's ``m_rho`` of each hidden matrix is the density its mask keeps over ``base_density``
(:func:`catapult.sparsity.kept_density`: 14 of 144 for 0.1, per Q, K and V), the rows' mean live fan-in.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.parametrize import ParamSpec, check_parametrization, init_variance
from catapult.arguments import check_densities, check_flag, check_integer, check_positive_int, check_real, check_seed, check_std
from catapult.models.options import common_kwargs, config_section
from catapult.parametrize_state import attach_spec
from catapult.sparsity import MaskedLinear, kept_density, random_mask

__all__ = ["GPT", "CausalSelfAttention", "FeedForward", "Block", "sinusoidal_positions"]

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}
POSITIONS = ("learned", "sinusoidal")


def sinusoidal_positions(context: int, d_model: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(t / 10000^(2i/d))``, shape (T, d),
    computed in float64 and rounded once to ``dtype`` (None: torch's default dtype, that of the weights
    a model built now gets).

    >>> sinusoidal_positions(3, 4, torch.float64)[2, 0].item() == math.sin(2.0)
    True
    >>> sinusoidal_positions(2.5, 4)
    Traceback (most recent call last):
    ValueError: sinusoidal_positions context must be an integer >= 1; got 2.5
    """
    # 2.5, -1, True: torch.zeros' / arange's words ("zeros() takes 1 positional argument")
    context, d_model = (check_integer("sinusoidal_positions", label, v) for label, v in (("context", context), ("d_model", d_model)))
    dtype = dtype or torch.get_default_dtype()
    if torch.empty(0).is_meta:  # built under torch.device("meta") (a model-size probe): the shape alone, as
        return torch.empty(context, d_model, dtype=dtype)   # torch's meta arange/exp import torch._dynamo (seconds)
    position = torch.arange(context, dtype=torch.float64).unsqueeze(1)
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64)
                          / d_model)
    table = torch.zeros(context, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table.to(dtype)


def _check_dropout(owner: str, dropout) -> float:
    """A dropout probability in [0, 1), as :class:`GPT` checks its own (p = 1 zeroes every output)."""
    return check_real(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)


def check_heads(owner: str, d_model, n_heads) -> tuple[int, int]:
    """``(d_model, n_heads)`` as ints once both are positive integers and ``n_heads`` divides ``d_model``;
    a ValueError naming ``owner`` and both otherwise.

    >>> check_heads("GPT", 12, 5)
    Traceback (most recent call last):
    ValueError: GPT d_model (12) must be divisible by n_heads (5)
    """
    for label, value in (("d_model", d_model), ("n_heads", n_heads)):
        check_positive_int(owner, label, value)
    d_model, n_heads = int(d_model), int(n_heads)
    if d_model % n_heads:
        raise ValueError(f"{owner} d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    return d_model, n_heads


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused QKV: softmax(q k^T * scale + causal) v."""

    def __init__(self, d_model: int, n_heads: int, *, scale: float, bias: bool,
                 dropout: float) -> None:
        super().__init__()
        # built alone (the class is public): n_heads 5 for d_model 12 was built and failed in its first forward in
        # view()'s words (0: ZeroDivisionError), n_heads=True ran as one head
        d_model, n_heads = check_heads("CausalSelfAttention", d_model, n_heads)
        self.n_heads = n_heads
        # built alone (the class is public): scale=nan gave nan attention, dropout=True dropped everything (p = 1)
        self.scale = check_real("CausalSelfAttention", "scale", scale, low=0.0, low_open=True)  # 1/sqrt(dh) or 1/dh
        self.dropout = dropout = _check_dropout("CausalSelfAttention", dropout)
        self.qkv = MaskedLinear(d_model, 3 * d_model, bias=bias)
        self.proj = MaskedLinear(d_model, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, dh)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """Position-wise MLP: ``proj(act(fc(x)))`` with a 4x expansion."""

    def __init__(self, d_model: int, *, activation: str, bias: bool, dropout: float) -> None:
        super().__init__()
        check_positive_int("FeedForward", "d_model", d_model)
        d_model = int(d_model)
        if activation not in ACTIVATIONS:  # a KeyError naming the value alone
            raise ValueError(f"FeedForward activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        self.fc = MaskedLinear(d_model, 4 * d_model, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.proj = MaskedLinear(4 * d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(_check_dropout("FeedForward", dropout))  # True was p = 1: an all-zero output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, d_model: int, n_heads: int, *, scale: float, activation: str,
                 bias: bool, dropout: float) -> None:
        super().__init__()
        # built alone (the class is public): d_model 12.5 (or True, "12") failed in LayerNorm's words
        # ("'float' object is not iterable"), and 12.0, which the GPT and the attention take as 12, too
        d_model, n_heads = check_heads("Block", d_model, n_heads)
        self.ln_1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_heads, scale=scale, bias=bias,
                                        dropout=dropout)
        self.ln_2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = FeedForward(d_model, activation=activation, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Pre-LN GPT language model: ``forward(idx: LongTensor (B, T)) -> logits (B, T, V)``.

    Args:
        vocab_size, d_model, n_layers, n_heads, context: the usual sizes
            (``d_model % n_heads == 0``; ``T <= context``).
        parametrization: ``"sp" | "mup" | "supar"`` (module docstring's table), or the
            ablations ``"supar_init"`` / ``"supar_lr"`` (:func:`catapult.parametrize.init_rule`).
        base_width: ``d_base`` for ``m_d = d_model / d_base`` (``None``: ``d_base = d_model``).
        density, base_density: kept fraction of the hidden matrices and of the base model's.
        positions: ``"learned"`` (an embedding table, role input) or ``"sinusoidal"`` (fixed,
            not in the ``state_dict``).
        tie_embeddings: use the token embedding as the unembedding.
        dropout: on embeddings, attention probabilities and residual branches.
        init_std: ``s``; alpha_in, alpha_out: muP / SμPar multipliers (must be 1 under SP).
        activation: ``"gelu" | "gelu_tanh" | "relu"``; bias: biases in Linear and LayerNorm.
        mask_method: ``"exact" | "bernoulli"``; mask_seed: seed of the mask generator
            (``None``: drawn from the global RNG before any weight).
        final_norm: the final LayerNorm ``ln_f`` before the unembedding (``False``: identity,
            the warmup paper's variant whose initial sharpness is ~100x larger).
        mask_density: density of the masks drawn at init when it differs from ``density``
            (which the parametrization uses): ``1.0`` gives all-ones masks for gradual
            magnitude pruning to ``density``, whose SμPar init and lrs are then those of ``density``'s
            count from step 0 (the dense start has ``1 / m_rho`` times a dense model's hidden init
            variance; ``density=1.0`` corrects for the dense start instead, i.e. muP). ``None``: ``density``.
            Only gmp prunes masks down to ``density``: a :class:`~catapult.sparsity.MaskUpdater` for rigl
            (which keeps each mask's count) or static masks refuses masks denser than ``density``'s count,
            whose init and lrs would stay ``mask_density / density`` times too large; a model trained with
            no updater is not checked.
    """

    #: Parameterized by its constructor (``parametrization=``), which :func:`catapult.parametrize.parametrize`
    #: refuses to redo: its forward applies the input and output multipliers and reads out through
    #: ``F.linear(h, lm_head.weight)``, its attention the logit scale.
    catapult_builtin_model = True

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        context: int = 64,
        *,
        parametrization: str = "sp",
        base_width: int | None = None,
        density: float = 1.0,
        base_density: float = 1.0,
        positions: str = "learned",
        tie_embeddings: bool = False,
        dropout: float = 0.0,
        init_std: float = 0.02,
        alpha_in: float = 1.0,
        alpha_out: float = 1.0,
        activation: str = "gelu",
        bias: bool = True,
        mask_method: str = "exact",
        mask_seed: int | None = None,
        final_norm: bool = True,
        mask_density: float | None = None,
    ) -> None:
        super().__init__()
        check_parametrization(parametrization)
        for label, value in (("vocab_size", vocab_size), ("d_model", d_model),
                             ("n_layers", n_layers), ("n_heads", n_heads), ("context", context)):
            check_positive_int("GPT", label, value)
        vocab_size, d_model, n_layers, n_heads, context = map(int, (vocab_size, d_model, n_layers, n_heads, context))
        check_heads("GPT", d_model, n_heads)
        if positions not in POSITIONS:
            raise ValueError(f"GPT positions must be one of {POSITIONS}; got {positions!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"GPT activation must be one of {sorted(ACTIVATIONS)}; "
                             f"got {activation!r}")
        check_densities("GPT", density, base_density)
        if mask_density is not None:  # refused as random_mask's density, and one below density was taken
            mask_density = check_real("GPT", "mask_density", mask_density, low=0.0, high=1.0, low_open=True)
            if mask_density < float(density):
                # its masks keep fewer weights than density's count, which SμPar corrects for: gmp prunes
                # down to density and rigl keeps the count, so nothing brings them there (0.25 for 0.5: 0.5x)
                raise ValueError(f"GPT mask_density ({mask_density:g}) is below density ({float(density):g}): masks "
                                 "start at mask_density and are pruned down to density (gmp), never grown; use "
                                 "mask_density >= density (1.0 for gmp's dense start) or leave it None")
        check_seed("GPT", "mask_seed", mask_seed)
        init_std = check_std("GPT", "init_std", init_std)  # init_std**2 raised OverflowError above 1.3e154
        dropout = _check_dropout("GPT", dropout)
        # as Python floats: alpha_out=np.float32(0.3) kept NumPy's float32 in alpha_out / m_d (0.1 for 0.3 / 3 =
        # 0.10000000397), and a float64 model's logits were 1.7e-9 off those of alpha_out=0.3 as a float
        alpha_in, alpha_out = (check_real("GPT", label, value, low=0.0, low_open=True)
                               for label, value in (("alpha_in", alpha_in), ("alpha_out", alpha_out)))
        if parametrization == "sp" and (alpha_in != 1.0 or alpha_out != 1.0):
            raise ValueError("GPT alpha_in / alpha_out apply to mup and supar only")
        check_positive_int("GPT", "base_width", base_width, optional=True)
        # bias="no", tie_embeddings="no" or final_norm=[] built what Python's truthiness said
        bias, tie_embeddings, final_norm = (check_flag("GPT", label, value) for label, value in (
            ("bias", bias), ("tie_embeddings", tie_embeddings), ("final_norm", final_norm)))
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.n_heads, self.context = n_heads, context
        self.parametrization = parametrization
        self.density, self.base_density = float(density), float(base_density)
        width_mult = d_model / (d_model if base_width is None else base_width)
        density_mult = self.density / self.base_density
        d_head = d_model // n_heads
        scale = 1.0 / math.sqrt(d_head) if parametrization == "sp" else 1.0 / d_head
        # Plain-float multipliers: part of the architecture, not of the state_dict.
        self.input_multiplier = 1.0 if parametrization == "sp" else float(alpha_in)
        self.output_multiplier = 1.0 if parametrization == "sp" else alpha_out / width_mult

        pruned = mask_density is not None and mask_density > self.density   # masks gmp prunes to density
        correction = "exact" if pruned else mask_method   # gmp keeps exact counts; at density: the masks' method
        if mask_seed is None:  # drawn first so weights do not depend on density
            mask_seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())  # cpu: also under a meta probe
        mask_generator = torch.Generator().manual_seed(int(mask_seed))

        self.wte = nn.Embedding(vocab_size, d_model)
        self.wte.catapult_role = "input"
        if positions == "learned":
            self.wpe = nn.Embedding(context, d_model)
            self.wpe.catapult_role = "input"
        else:
            self.wpe = None
            self.register_buffer("sinusoid", sinusoidal_positions(context, d_model),
                                 persistent=False)
        self.drop = nn.Dropout(dropout)
        self.drop.catapult_block = "embedding"
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, scale=scale, activation=activation, bias=bias,
                  dropout=dropout)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias) if final_norm else nn.Identity()
        if tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
            self.lm_head.catapult_role = "output"
        self.catapult_block = "logits"
        masked = mask_density is not None or self.density < 1.0
        attach_spec(self, ParamSpec(parametrization, width_mult, density_mult, "table"),  # + state_dict record
                    masks=(correction, mask_density if pruned else None) if masked else None,
                    alphas=(self.input_multiplier, 1.0 if parametrization == "sp" else alpha_out))

        # ---- initialisation (module docstring's table) ----
        with torch.no_grad():
            nn.init.normal_(self.wte.weight, 0.0, init_std)
            if self.wpe is not None:
                nn.init.normal_(self.wpe.weight, 0.0, init_std)
            for block in self.blocks:
                block.attn.catapult_block = "attention"
                block.mlp.catapult_block = "mlp"
                for layer, residual in ((block.attn.qkv, False), (block.attn.proj, True),
                                        (block.mlp.fc, False), (block.mlp.proj, True)):
                    layer.catapult_role = "hidden"
                    mask = None
                    if mask_density is not None or self.density < 1.0:
                        mask = self._mask_for(layer, mask_method, mask_generator, mask_density)
                    # m_rho of the density this matrix's mask keeps (exact masks: its count; gmp: the count
                    # it prunes to), which param_groups reads too
                    layer.catapult_density_mult = kept_density(
                        layer.weight.numel(), self.density, parts=getattr(layer, "catapult_mask_parts", 1),
                        method=correction) / self.base_density
                    std = math.sqrt(init_variance(parametrization, "hidden", init_std**2, width_mult=width_mult,
                                                  density_mult=layer.catapult_density_mult))
                    nn.init.normal_(layer.weight, 0.0, std / math.sqrt(2 * n_layers) if residual else std)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
                    if mask is not None:
                        layer.set_mask(mask)
                    if pruned:  # corrected for density's count, which only gmp prunes the masks to:
                        # MaskUpdater checks that it gets there
                        layer.catapult_final_density = self.density
            if self.lm_head is not None:
                nn.init.normal_(self.lm_head.weight, 0.0, init_std)

    def _mask_for(self, layer: MaskedLinear, method: str,
                  generator: torch.Generator, density: float | None = None) -> torch.Tensor:
        """Exact-density mask per matrix; the fused QKV gets one mask each for Q, K and V."""
        density = self.density if density is None else density
        if layer.out_features == 3 * self.d_model and layer.in_features == self.d_model:
            layer.catapult_mask_parts = 3  # dynamic sparsity keeps Q, K and V's counts apart too
            shape = (self.d_model, self.d_model)
            return torch.cat([random_mask(shape, density, method=method,
                                          generator=generator) for _ in range(3)])
        return random_mask(layer.weight.shape, density, method=method, generator=generator)

    @classmethod
    def from_config(cls, model_cfg, context: int, vocab_size: int) -> "GPT":
        """The GPT a run config's ``model`` section describes (``width`` = d_model, ``depth`` =
        blocks; a ``catapult.config.ModelConfig`` or its validated dict); ``context`` comes from
        the data.

        >>> from catapult.config import ModelConfig
        >>> lm = GPT.from_config(ModelConfig(name="gpt", width=32, depth=2, n_heads=4), 16, 50)
        >>> lm(torch.zeros(3, 16, dtype=torch.long)).shape
        torch.Size([3, 16, 50])
        """
        m = config_section(model_cfg)
        kwargs = dict(common_kwargs(m), base_width=m["base_width"], positions=m["positions"],
                      tie_embeddings=m["tie_embeddings"], final_norm=m.get("final_norm", True))
        sparsity = m.get("sparsity") or {}
        if sparsity.get("method") == "gmp" and m["density"] < 1.0:  # pruned gradually from dense
            kwargs["mask_density"] = 1.0
            if sparsity.get("supar_density", "final") == "dense":  # SμPar of the dense start (muP)
                kwargs["density"] = 1.0
        if m["init_std"] is not None:
            kwargs["init_std"] = m["init_std"]
        return cls(vocab_size, d_model=m["width"], n_layers=m["depth"], n_heads=m["n_heads"], context=context,
                   **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # .double() / .to(dtype) cast the float32 table: a float64 model read float32-rounded positions (up to
        # 3e-8 off the formula); the table is drawn again from the formula in the buffer's new dtype
        module = super()._apply(fn, *args, **kwargs)
        table = getattr(self, "sinusoid", None)
        if table is not None and table.is_floating_point() and not table.is_meta:
            fresh = sinusoidal_positions(self.context, self.d_model, torch.float64).to(table.device, table.dtype)
            if not torch.equal(table, fresh):  # a move that keeps the values (share_memory_, .to(itself)) keeps the tensor
                self.sinusoid = fresh
        return module

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (B, T); got {tuple(idx.shape)}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            # torch's words: "Expected tensor for argument #1 'indices' to have one of the following scalar types"
            raise TypeError(f"GPT expects integer token ids of shape (B, T); got {idx.dtype} of shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):  # uint8/16/32 (the token cache's uint16): embedding refused them
            idx = idx.long()
        T = idx.shape[1]
        if T > self.context:
            raise ValueError(f"GPT sequence length {T} exceeds context {self.context}")
        if self.wpe is not None:
            position = self.wpe(torch.arange(T, device=idx.device))
        else:
            position = self.sinusoid[:T]
        try:
            tokens = self.wte(idx)
        except IndexError as error:  # torch's "index out of range in self" names neither ids nor vocabulary
            raise IndexError(f"GPT token ids must lie in [0, {self.wte.num_embeddings}) (vocab_size); got ids "
                             f"from {int(idx.min())} to {int(idx.max())}") from error
        x = tokens + position
        if self.input_multiplier != 1.0:
            x = x * self.input_multiplier
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        weight = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, weight)
        return logits if self.output_multiplier == 1.0 else logits * self.output_multiplier

    def num_params(self) -> int:
        """Number of distinct parameters (a tied unembedding counted once)."""
        return sum(p.numel() for p in self.parameters())
