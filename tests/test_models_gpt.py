"""Pre-LN GPT: shapes, causality, the parameterization table, masks, multipliers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import catapult
from catapult.models import GPT
from catapult.models.gpt import sinusoidal_positions
from rounding import assert_within_rounding, both_sides, gamma

V = 40


def test_forward_backward_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = GPT(V, 32, 2, 4, 16)
    idx = torch.randint(0, V, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, V)
    F.cross_entropy(logits.reshape(-1, V), idx.reshape(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model(idx[:, :5]).shape == (3, 5, V)


@pytest.mark.parametrize("param", ["sp", "mup", "supar"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_causal_a_future_token_does_not_change_earlier_logits(param, positions):
    torch.manual_seed(0)
    model = GPT(V, 32, 2, 4, 16, parametrization=param, density=0.5, positions=positions,
                base_width=16).eval()
    idx = torch.randint(0, V, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % V
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_init_follows_the_table_with_residual_scaling():
    s, n_layers, d, d_base = 0.02, 2, 128, 32
    for param, hidden_var in (("sp", s**2), ("mup", s**2 / 4), ("supar", s**2 / (4 * 0.5))):
        torch.manual_seed(0)
        model = GPT(V, d, n_layers, 4, 8, parametrization=param, base_width=d_base,
                    density=0.5)
        assert model.wte.weight.std().item() == pytest.approx(s, rel=0.05)
        assert model.wpe.weight.std().item() == pytest.approx(s, rel=0.1)
        assert model.lm_head.weight.std().item() == pytest.approx(s, rel=0.05)
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        for layer, var in ((attn.qkv, hidden_var), (mlp.fc, hidden_var),
                           (attn.proj, hidden_var / (2 * n_layers)),
                           (mlp.proj, hidden_var / (2 * n_layers))):
            live = layer.weight[layer.mask]
            assert live.var().item() == pytest.approx(var, rel=0.06), (param, layer)
            assert torch.count_nonzero(layer.bias) == 0
        assert torch.equal(model.blocks[1].ln_1.weight, torch.ones(d))


def test_masks_are_exact_per_matrix_including_q_k_v():
    torch.manual_seed(0)
    model = GPT(V, 64, 1, 4, 8, parametrization="supar", density=0.3)
    qkv = model.blocks[0].attn.qkv.mask.view(3, 64, 64)
    assert qkv.sum(dim=(1, 2)).tolist() == [round(0.3 * 64 * 64)] * 3
    assert int(model.blocks[0].mlp.fc.mask.sum()) == round(0.3 * 256 * 64)
    assert model.wte.weight.count_nonzero() == model.wte.weight.numel()
    dense = GPT(V, 64, 1, 4, 8)
    assert dense.blocks[0].attn.qkv.mask is None and "blocks.0.attn.qkv.mask" not in dense.state_dict()


def _attention_by_hand(attn, x, scale):
    B, T, C = x.shape
    H = attn.n_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return y @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("param,power", [("sp", 0.5), ("mup", 1.0)])
def test_attention_logit_scale(param, power):
    torch.manual_seed(0)
    model = GPT(V, 32, 1, 2, 8, parametrization=param, init_std=0.3)
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.qkv.bias.normal_()
        attn.proj.bias.normal_()
    x = torch.randn(2, 8, 32)
    scale = 16 ** -power
    # in float64: float32's rounding bound (init_std 0.3 makes the scores cancel) would miss a scale 1e-3
    # off, which the float32 defaults caught; float64's catches one 1e-9 off
    attn, x = attn.double(), x.double()
    assert_within_rounding(attn(x), _attention_by_hand(attn, x, scale), _attention_rounding(attn, x, scale))


def _attention_rounding(attn, x, scale):
    """Twice a first-order forward-error bound of causal attention in ``x``'s dtype, entry by entry: each
    product of length n adds gamma_(n+1) times its absolute-value product, a score error e_s moves a
    softmax weight P by at most P (e_s + max e_s of its row), the softmax's own roundings (s - max, an exp
    of a few ulps, a sum of T terms, a quotient) at most gamma_(T+8) P, and errors carry through the
    products by their absolute values. Fused attention kernels round in other places; every such order
    is within this bound of the exact value."""
    B, T, C = x.shape
    H, d, f32 = attn.n_heads, C // attn.n_heads, x.dtype
    x, w, b = x.double(), attn.qkv.weight.detach().double(), attn.qkv.bias.detach().double()
    wp, bp = attn.proj.weight.detach().double(), attn.proj.bias.detach().double()
    heads = lambda t: t.view(B, T, H, d).transpose(1, 2)   # noqa: E731
    q, k, v = (heads(t) for t in (x @ w.T + b).split(C, dim=2))
    eq, ek, ev = (heads(t) for t in (gamma(C + 1, f32) * (x.abs() @ w.abs().T + b.abs())).split(C, dim=2))
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    s = (q @ k.transpose(-1, -2)) * scale
    e_s = scale * (gamma(d + 2, f32) * (q.abs() @ k.abs().transpose(-1, -2)) + eq @ k.abs().transpose(-1, -2)
                   + q.abs() @ ek.transpose(-1, -2))
    s_abs = s.abs().masked_fill(causal, 0)
    e_s = (e_s + gamma(2, f32) * (s_abs + s_abs.amax(-1, keepdim=True))).masked_fill(causal, 0)
    P = s.masked_fill(causal, -math.inf).softmax(-1)
    e_P = P * (e_s + e_s.amax(-1, keepdim=True) + gamma(T + 8, f32))
    y = P @ v
    e_y = gamma(T + 1, f32) * (P @ v.abs()) + e_P @ v.abs() + P @ ev
    y, e_y = (t.transpose(1, 2).reshape(B, T, C) for t in (y, e_y))
    return 2 * (gamma(C + 1, f32) * (y.abs() @ wp.abs().T + bp.abs()) + e_y @ wp.abs().T)


def test_multipliers_and_tied_embeddings():
    torch.manual_seed(0)
    model = GPT(V, 64, 1, 2, 8, parametrization="mup", base_width=16, alpha_in=2.0,
                alpha_out=3.0, tie_embeddings=True, positions="sinusoidal")
    assert model.lm_head is None and model.output_multiplier == 3.0 / 4.0
    idx = torch.randint(0, V, (2, 8))
    captured = {}
    model.drop.register_forward_hook(lambda m, i, o: captured.__setitem__("emb", o))
    model.ln_f.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    logits = model(idx)
    emb = 2.0 * (model.wte.weight[idx] + sinusoidal_positions(8, 64))
    # one rounding (the sum; the factor 2 is exact) each side
    pos = sinusoidal_positions(8, 64)
    assert_within_rounding(captured["emb"], emb,
                           both_sides(1, 2.0 * (model.wte.weight[idx].abs() + pos.abs()), torch.float32))
    # a length-64 dot product and the multiplier: 65 roundings each side
    h = captured["h"]
    assert_within_rounding(logits, 0.75 * h @ model.wte.weight.T,
                           both_sides(65, 0.75 * h.abs() @ model.wte.weight.abs().T, torch.float32))
    assert "sinusoid" not in model.state_dict()
    untied = GPT(V, 64, 1, 2, 8, tie_embeddings=False)
    assert untied.num_params() - GPT(V, 64, 1, 2, 8, tie_embeddings=True).num_params() == V * 64


def test_sinusoidal_table():
    table = sinusoidal_positions(5, 6)
    assert table[3, 0] == pytest.approx(math.sin(3.0))
    assert table[3, 1] == pytest.approx(math.cos(3.0))
    assert table[2, 4] == pytest.approx(math.sin(2 / 10000 ** (4 / 6)))


def test_param_groups_for_gpt():
    torch.manual_seed(0)
    model = GPT(V, 64, 2, 4, 8, parametrization="supar", base_width=16, density=0.5)
    groups = {g["name"]: g for g in catapult.param_groups(model, 1e-2, "adam", weight_decay=0.1)}
    assert groups["hidden"]["lr_mult"] == pytest.approx(1 / (4 * 0.5))
    assert len(groups["hidden"]["params"]) == 8 and len(groups["input"]["params"]) == 2
    assert groups["output"]["params"] == [model.lm_head.weight]
    assert groups["vector"]["weight_decay"] == 0.0 and groups["hidden"]["weight_decay"] == 0.1
    sgd = {g["name"]: g["lr_mult"] for g in catapult.param_groups(model, 1e-2, "sgd")}
    assert sgd == {"input": 4.0, "vector": 4.0, "hidden": 2.0, "output": 4.0}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="divisible"):
        GPT(V, 30, 1, 4, 8)
    with pytest.raises(ValueError, match="positions"):
        GPT(V, 32, 1, 4, 8, positions="rope")
    with pytest.raises(ValueError, match="alpha_in"):
        GPT(V, 32, 1, 4, 8, alpha_in=2.0)
    with pytest.raises(ValueError, match=r"GPT base_width must be a positive integer or None; got 2.5"):
        GPT(V, 32, 1, 4, 8, parametrization="mup", base_width=2.5)
    model = GPT(V, 32, 1, 4, 8)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(9, dtype=torch.long))


def test_token_ids_of_any_integer_dtype_float_ids_are_named():
    # the token cache's own uint16 ids (and uint8) were refused by the embedding; float ids gave
    # torch's "Expected tensor for argument #1 'indices' to have one of the following scalar types"
    torch.manual_seed(0)
    model = GPT(V, 16, 1, 2, 8)
    idx = torch.randint(0, V, (2, 8))
    want = model(idx)
    for dtype in (torch.int32, torch.uint8, getattr(torch, "uint16", torch.int64), torch.int16):  # uint16: torch 2.3+
        assert torch.equal(model(idx.to(dtype)), want), dtype
    for dtype in (torch.float32, torch.bool):
        with pytest.raises(TypeError, match=rf"integer token ids of shape \(B, T\); got {dtype} of shape \(2, 8\)"):
            model(idx.to(dtype))


def test_token_ids_outside_the_vocabulary_are_named():
    # torch's embedding said only "index out of range in self": neither the id nor vocab_size
    model = GPT(V, 16, 1, 2, 8)
    for bad, lo, hi in ((V, 0, V), (-1, -1, 3)):
        idx = torch.tensor([[0, 3, bad]])
        with pytest.raises(IndexError, match=rf"token ids must lie in \[0, {V}\) \(vocab_size\); got ids from {lo} to {hi}"):
            model(idx)
