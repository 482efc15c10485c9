"""The GPT's fixed sinusoidal position table after the model is moved (``to_empty`` after a meta build,
``.double()``, ``.half().double()``), and its float64 forward pass.

Independent truths: the table ``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(...)`` written with
Python's ``math`` in float64; the forward pass re-implemented here in plain torch ops from the model's
``state_dict`` (token + position embeddings times alpha_in, per-head causal softmax attention with the
parametrization's logit scale, the 4x MLP, pre-LN residual blocks, the final LayerNorm, the tied or untied
readout times alpha_out / m_d). Before: the table is a non-persistent buffer, cast by every move and absent
from the ``state_dict``, so ``to_empty`` left uninitialised memory in it (entries of 1e37; a
``load_state_dict`` does not restore it) and a float64 model read float32-rounded positions (3e-8 off).
"""
from __future__ import annotations

import math

import pytest
import torch

from catapult.models import GPT

V, D, HEADS, LAYERS, CONTEXT = 11, 12, 3, 2, 8


def formula(context: int, d_model: int) -> torch.Tensor:
    rows = [[(math.sin if i % 2 == 0 else math.cos)(t / 10000 ** ((i - i % 2) / d_model)) for i in range(d_model)]
            for t in range(context)]
    return torch.tensor(rows, dtype=torch.float64)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.double()).abs().max())


def build(**kwargs) -> GPT:
    return GPT(V, D, LAYERS, HEADS, CONTEXT, positions="sinusoidal", **kwargs)


def test_to_empty_after_a_meta_build_gives_the_formula_and_the_same_function():
    torch.manual_seed(0)
    twin = build(mask_seed=1)
    with torch.device("meta"):
        model = build(mask_seed=1)
    model = model.to_empty(device="cpu")
    model.load_state_dict(twin.state_dict())
    # float32 entries of magnitude <= 1: within half an ulp (2^-25) of the float64 values
    assert max_error(model.sinusoid, formula(CONTEXT, D)) <= 2.0 ** -25
    idx = torch.randint(0, V, (2, CONTEXT))
    assert torch.equal(model.eval()(idx), twin.eval()(idx))   # the same float32 operations on the same numbers
    # a move that keeps the values keeps the tensor: shared memory stays shared, and a model built under
    # inference_mode moves outside it (an in-place refill of its inference tensor was refused)
    table = twin.sinusoid
    assert twin.share_memory().sinusoid is table and table.is_shared()
    with torch.inference_mode():
        frozen = build()
    assert torch.equal(frozen.to("cpu").float().sinusoid, table)


@pytest.mark.parametrize("move", ["double", "to_float64", "half_then_double"])
def test_a_float64_model_reads_float64_positions(move):
    model = build()
    model = {"double": lambda m: m.double(), "to_float64": lambda m: m.to(torch.float64),
             "half_then_double": lambda m: m.half().double()}[move](model)
    assert model.sinusoid.dtype == torch.float64
    # libm's sin/cos and exp vs pow differ by a few float64 ulps of arguments below 8
    assert max_error(model.sinusoid, formula(CONTEXT, D)) <= 1e-14


def test_a_model_built_under_a_float64_default_dtype_reads_float64_positions():
    # as the distributed tests' ranks build their models (torch.set_default_dtype): weights float64, the
    # table was float32 whatever the default
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build()
    finally:
        torch.set_default_dtype(before)
    assert model.wte.weight.dtype == model.sinusoid.dtype == torch.float64
    assert max_error(model.sinusoid, formula(CONTEXT, D)) <= 1e-14


def _layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


ACTIVATIONS = {"gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
               "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
               "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}


def reference_logits(sd, idx, *, parametrization, base_width, alpha_in, alpha_out, tied, final_norm, activation):
    sd = {k: v.double() for k, v in sd.items()}
    T, dh = idx.shape[1], D // HEADS

    def linear(x, name):
        w = sd[name + ".weight"] * sd.get(name + ".mask", 1.0)
        return x @ w.T + sd.get(name + ".bias", 0.0)

    sp = parametrization == "sp"
    x = (sd["wte.weight"][idx] + formula(T, D)) * (1.0 if sp else alpha_in)
    scale = 1 / math.sqrt(dh) if sp else 1 / dh
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for layer in range(LAYERS):
        p = f"blocks.{layer}."
        qkv = linear(_layer_norm(x, sd.get(p + "ln_1.weight"), sd.get(p + "ln_1.bias")), p + "attn.qkv")
        heads = []
        for h in range(HEADS):
            q, k, v = (qkv[..., part * D + h * dh: part * D + (h + 1) * dh] for part in range(3))
            scores = (q @ k.transpose(-1, -2) * scale).masked_fill(future, -math.inf)
            heads.append(torch.softmax(scores, -1) @ v)
        x = x + linear(torch.cat(heads, -1), p + "attn.proj")
        hidden = ACTIVATIONS[activation](linear(_layer_norm(x, sd.get(p + "ln_2.weight"), sd.get(p + "ln_2.bias")),
                                                p + "mlp.fc"))
        x = x + linear(hidden, p + "mlp.proj")
    if final_norm:
        x = _layer_norm(x, sd.get("ln_f.weight"), sd.get("ln_f.bias"))
    readout = sd["wte.weight"] if tied else sd["lm_head.weight"]
    return x @ readout.T * (1.0 if sp else alpha_out / (D / base_width))


CASES = [  # (parametrization, density, tied, final_norm, activation, bias, T)
    ("sp", 1.0, False, True, "gelu", True, CONTEXT),
    ("sp", 1.0, True, False, "relu", False, 2),
    ("mup", 1.0, True, True, "gelu_tanh", True, 5),
    ("supar", 0.5, False, True, "gelu", False, CONTEXT),
    ("supar", 0.5, True, False, "relu", True, 3),
]


@pytest.mark.parametrize("parametrization, density, tied, final_norm, activation, bias, T", CASES)
def test_float64_forward_equals_a_plain_reimplementation(parametrization, density, tied, final_norm, activation,
                                                         bias, T):
    torch.manual_seed(0)
    multipliers = {} if parametrization == "sp" else {"base_width": 4, "alpha_in": 1.5, "alpha_out": 2.0}
    model = build(parametrization=parametrization, density=density, tie_embeddings=tied, final_norm=final_norm,
                  activation=activation, bias=bias, dropout=0.25, **multipliers).double().eval()
    with torch.no_grad():  # LayerNorm gains and biases away from (1, 0), so that they count
        for name, parameter in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    idx = torch.randint(0, V, (2, T))
    expected = reference_logits(model.state_dict(), idx, parametrization=parametrization,
                                base_width=multipliers.get("base_width", D), alpha_in=multipliers.get("alpha_in"),
                                alpha_out=multipliers.get("alpha_out"), tied=tied, final_norm=final_norm,
                                activation=activation)
    logits = model(idx)
    assert logits.shape == (2, T, V)
    # float64: logits of size ~1 after 2 blocks of width 12 sums, far below 1e-12; float32 positions: 1e-9
    assert max_error(logits, expected) <= 1e-12
