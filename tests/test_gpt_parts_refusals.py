"""The GPT's public parts built alone (``CausalSelfAttention``, ``Block``, ``FeedForward``) refuse a head
count that does not divide the width, and sizes or an activation they cannot use, at construction naming
the class and the argument, as ``GPT`` does. Before: ``CausalSelfAttention(12, 5)`` was built and failed in
its first forward in ``view()``'s words ("shape '[2, 3, 5, 2]' is invalid for input of size 72"; n_heads 0:
ZeroDivisionError), ``n_heads=True`` ran as one head, ``n_heads=2.0`` failed in ``view()``'s words where the
GPT takes 2.0 as 2, and ``FeedForward(activation="swish")`` raised a bare KeyError."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.models.gpt import Block, CausalSelfAttention, FeedForward


@pytest.mark.parametrize("d_model, n_heads, words", [
    (12, 5, r"CausalSelfAttention d_model \(12\) must be divisible by n_heads \(5\)"),
    (10, 3, r"CausalSelfAttention d_model \(10\) must be divisible by n_heads \(3\)"),
    (12, 0, r"CausalSelfAttention n_heads must be a positive integer; got 0"),
    (12, -3, r"CausalSelfAttention n_heads must be a positive integer; got -3"),
    (12, True, r"CausalSelfAttention n_heads must be a positive integer; got True"),
    (12, 2.5, r"CausalSelfAttention n_heads must be a positive integer; got 2.5"),
    (0, 1, r"CausalSelfAttention d_model must be a positive integer; got 0"),
])
def test_attention_refuses_heads_that_do_not_divide_the_width(d_model, n_heads, words):
    with pytest.raises(ValueError, match=words):
        CausalSelfAttention(d_model, n_heads, scale=0.5, bias=True, dropout=0.0)


def test_block_refuses_them_too():
    with pytest.raises(ValueError, match=r"d_model \(12\) must be divisible by n_heads \(5\)"):
        Block(12, 5, scale=0.5, activation="gelu", bias=True, dropout=0.0)


@pytest.mark.parametrize("d_model, words", [
    (12.5, r"^Block d_model must be a positive integer; got 12.5$"),
    (True, r"^Block d_model must be a positive integer; got True$"),
    ("12", r"^Block d_model must be a positive integer; got '12'$"),
    (-4, r"^Block d_model must be a positive integer; got -4$"),
])
def test_block_refuses_a_width_that_is_no_positive_integer_naming_itself(d_model, words):
    # before: LayerNorm's words ("'float' object is not iterable", "empty(): argument 'size' ..."),
    # or for -4 the attention's, a class the caller never built
    with pytest.raises(ValueError, match=words):
        Block(d_model, 2, scale=0.5, activation="gelu", bias=True, dropout=0.0)


def test_block_takes_an_integral_float_width_as_that_many_features():
    # as GPT(d_model=12.0) and CausalSelfAttention(12.0, ...) take it: every layer 12 wide
    block = Block(12.0, 2, scale=0.5, activation="gelu", bias=True, dropout=0.0)
    assert block.ln_1.normalized_shape == block.ln_2.normalized_shape == (12,)
    assert block.attn.qkv.weight.shape == (36, 12) and block.mlp.fc.weight.shape == (48, 12)
    assert block(torch.zeros(1, 3, 12)).shape == (1, 3, 12)


@pytest.mark.parametrize("d_model, activation, words", [
    (12, "swish", r"FeedForward activation must be one of \['gelu', 'gelu_tanh', 'relu'\]; got 'swish'"),
    (0, "gelu", r"FeedForward d_model must be a positive integer; got 0"),
])
def test_feed_forward_refuses_what_it_cannot_build(d_model, activation, words):
    with pytest.raises(ValueError, match=words):
        FeedForward(d_model, activation=activation, bias=True, dropout=0.0)


def test_an_integral_float_head_count_is_that_many_heads():
    # as GPT(n_heads=2.0): two heads of 6, checked against the per-head softmax written out here
    torch.manual_seed(0)
    attention = CausalSelfAttention(12, 2.0, scale=1 / math.sqrt(6), bias=True, dropout=0.0).double()
    assert attention.n_heads == 2 and isinstance(attention.n_heads, int)
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(12, dim=-1)
    future = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
    heads = [torch.softmax((q[..., h * 6:(h + 1) * 6] @ k[..., h * 6:(h + 1) * 6].transpose(-1, -2) / math.sqrt(6))
                           .masked_fill(future, -math.inf), -1) @ v[..., h * 6:(h + 1) * 6] for h in range(2)]
    expected = torch.cat(heads, -1) @ attention.proj.weight.T + attention.proj.bias
    # float64, sums of 12 terms of size ~1: far below 1e-12
    assert float((attention(x) - expected).detach().abs().max()) <= 1e-12


@pytest.mark.parametrize("d_model, n_heads", [(12, 5), (10, 4)])
def test_the_gpt_names_itself_when_its_heads_do_not_divide_its_width(d_model, n_heads):
    # Mutation pass 23b (GP5): without the GPT's own check_heads the refusal came from its first block,
    # naming CausalSelfAttention, a class the caller never built
    from catapult.models import GPT

    assert d_model % n_heads != 0
    with pytest.raises(ValueError, match=rf"^GPT d_model \({d_model}\) must be divisible by n_heads \({n_heads}\)$"):
        GPT(50, d_model=d_model, n_layers=1, n_heads=n_heads, context=4)
