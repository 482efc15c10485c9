"""Per-layer rules (the SμPar table), param_groups, and parametrize() on a user's model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from rounding import assert_within_rounding, both_sides, gamma

import catapult
from catapult.parametrize import (ParamSpec, ScaledEmbedding, ScaledLinear, infer_roles,
                                  init_variance, lr_multiplier)

M_D, M_RHO = 4.0, 0.25

# The table, written out independently (kind -> (sp, mup, supar)).
ADAM = {"input": (1, 1, 1), "hidden": (1, 1 / M_D, 1 / (M_D * M_RHO)), "output": (1, 1, 1),
        "vector": (1, 1, 1), "output_bias": (1, 1, 1), "fixed": (1, 1, 1)}
SGD = {"input": (1, M_D, M_D), "hidden": (1, 1, 1 / M_RHO), "output": (1, M_D, M_D),
       "vector": (1, M_D, M_D), "output_bias": (1, 1, 1), "fixed": (1, 1, 1)}
# (mutation pass 21: "fixed", no dimension grown with the width, is 1 everywhere (PR2: SGD's muP gave m_d);
# RAdam is of the Adam family (PR6: read as SGD, its muP hidden lr was 1, not 1 / m_d))


@pytest.mark.parametrize("optimizer,table", [("adam", ADAM), ("adamw", ADAM), ("radam", ADAM), ("sgd", SGD)])
def test_lr_multipliers_match_the_table(optimizer, table):
    for kind, expected in table.items():
        for param, value in zip(("sp", "mup", "supar"), expected):
            got = lr_multiplier(param, kind, optimizer, width_mult=M_D, density_mult=M_RHO)
            assert got == pytest.approx(value), (optimizer, kind, param)
    with pytest.raises(ValueError, match="optimizer"):
        lr_multiplier("mup", "hidden", "lion")


def test_init_variances_match_the_table():
    s2 = 0.02**2
    assert init_variance("sp", "hidden", s2, width_mult=M_D, density_mult=M_RHO) == s2
    assert init_variance("mup", "hidden", s2, width_mult=M_D, density_mult=M_RHO) == s2 / M_D
    assert init_variance("supar", "hidden", s2, width_mult=M_D,
                         density_mult=M_RHO) == pytest.approx(s2 / (M_D * M_RHO))
    for role in ("input", "output"):
        assert init_variance("supar", role, s2, width_mult=M_D, density_mult=M_RHO) == s2


class TinyLM(nn.Module):
    """A user's own model: embedding -> two hidden Linears -> readout."""

    def __init__(self, vocab=16, width=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + torch.relu(self.fc1(x))
        x = x + torch.relu(self.fc2(x))
        return self.head(self.norm(x))


class TinyMLP(nn.Module):
    def __init__(self, width=256):
        super().__init__()
        self.a = nn.Linear(10, width)
        self.b = nn.Linear(width, width)
        self.c = nn.Linear(width, 3)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_roles_are_inferred_and_overridable():
    assert infer_roles(TinyLM()) == {"emb": "input", "fc1": "hidden", "fc2": "hidden",
                                     "head": "output"}
    assert infer_roles(TinyMLP()) == {"a": "input", "b": "hidden", "c": "output"}
    model = catapult.parametrize(TinyLM(), "mup", base_width=16, roles={"fc1": "input"})
    assert model.fc1.catapult_role == "input" and model.fc1.multiplier == 1.0
    with pytest.raises(ValueError, match="not an nn.Linear"):
        catapult.parametrize(TinyLM(), "mup", roles={"norm": "hidden"})
    with pytest.raises(ValueError, match="role"):
        catapult.parametrize(TinyLM(), "mup", roles={"fc1": "middle"})
    untouched = catapult.parametrize(TinyLM(), "mup", roles={"fc2": None})
    assert type(untouched.fc2) is nn.Linear


def test_parametrize_applies_init_multipliers_masks_and_groups():
    torch.manual_seed(0)
    model = TinyMLP(width=512)
    fc_b = model.b
    out = catapult.parametrize(model, "supar", base_width=128, density=0.25, alpha_out=2.0)
    assert out is model and model.b is fc_b  # in place, same objects
    assert isinstance(model.b, ScaledLinear) and model.catapult_spec == ParamSpec(
        "supar", 4.0, 0.25, "table")
    # init (fan-in rule at the base shape, gain 1)
    assert model.a.weight.var().item() == pytest.approx(1 / 10, rel=0.1)
    live = model.b.weight[model.b.mask]
    assert live.var().item() == pytest.approx(1 / (512 * 0.25), rel=0.06)
    assert int(model.b.mask.sum()) == round(0.25 * 512 * 512)
    assert model.c.weight.var().item() == pytest.approx(1 / 128, rel=0.15)
    assert torch.count_nonzero(model.a.bias) == 0
    # multipliers: the readout is alpha_out / m_d on the weights, the bias unscaled
    assert model.c.multiplier == 0.5 and model.c.bias_multiplier == 1.0
    # a float64 copy: float32's bound for 512-term sums (~3e-2 relative) is looser than its defaults
    c, h = copy.deepcopy(model.c).double(), torch.randn(4, 512, dtype=torch.float64)
    magnitude = 0.5 * h.abs() @ c.weight.abs().T + c.bias.abs()
    assert_within_rounding(c(h), 0.5 * h @ c.weight.T + c.bias,
                           both_sides(512 + 2, magnitude, torch.float64))   # length-512 dot products
    groups = {g["name"]: g for g in catapult.param_groups(model, 1e-3, "adam")}
    assert groups["hidden"]["lr_mult"] == pytest.approx(1.0) and groups["hidden"]["params"] == [
        model.b.weight]
    assert groups["hidden"]["lr"] == pytest.approx(1e-3)
    groups = {g["name"]: g for g in catapult.param_groups(model, 1e-3, "sgd")}
    assert groups["hidden"]["lr_mult"] == 4.0 and groups["input"]["lr_mult"] == 4.0
    assert groups["output_bias"]["params"] == [model.c.bias]


def test_parametrize_with_init_std_and_embeddings():
    torch.manual_seed(0)
    model = catapult.parametrize(TinyLM(width=256), "mup", base_width=64, init_std=0.05,
                                 alpha_in=3.0)
    assert isinstance(model.emb, ScaledEmbedding) and model.emb.multiplier == 3.0
    assert model.emb.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert model.fc1.weight.std().item() == pytest.approx(0.05 / 2, rel=0.05)
    assert model.head.multiplier == 0.25
    idx = torch.randint(0, 16, (2, 5))
    rows = model.emb.weight[idx]
    assert_within_rounding(model.emb(idx), 3.0 * rows, both_sides(1, 3.0 * rows.abs(), torch.float32))
    with pytest.raises(ValueError, match="SP"):
        catapult.parametrize(TinyLM(), "sp", alpha_in=2.0)


def test_param_groups_weight_decay_and_plain_models():
    torch.manual_seed(0)
    model = catapult.parametrize(TinyLM(), "mup", base_width=16)
    groups = catapult.param_groups(model, 0.1, "adamw", weight_decay=0.1)
    for group in groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] == 0.1) for p in group["params"])
        assert group["lr"] == pytest.approx(0.1 * group["lr_mult"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    plain = catapult.param_groups(nn.Linear(3, 3), 0.5)
    assert [g["lr_mult"] for g in plain] == [1.0] and plain[0]["lr"] == 0.5
    opt = torch.optim.AdamW(groups)
    assert len(opt.param_groups) == len(groups)


def test_tied_weights_are_listed_once_and_initialised_once():
    class Tied(TinyLM):
        def __init__(self):
            super().__init__()
            self.head.weight = self.emb.weight

    torch.manual_seed(0)
    model = catapult.parametrize(Tied(), "mup", base_width=16, init_std=0.02)
    assert model.head.weight is model.emb.weight
    assert model.emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    groups = catapult.param_groups(model, 1.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def _fresh(seed, **kwargs):
    torch.manual_seed(seed)
    return catapult.parametrize(TinyLM(), "supar", base_width=16, density=0.5, **kwargs)


def test_parametrized_model_survives_deepcopy_and_state_dict():
    model = _fresh(0, alpha_out=2.0)
    idx = torch.randint(0, 16, (3, 7))
    clone = copy.deepcopy(model)
    assert torch.equal(clone(idx), model(idx))
    assert clone.head.multiplier == model.head.multiplier and clone.catapult_spec == model.catapult_spec
    other = _fresh(1, alpha_out=2.0)
    assert not torch.equal(other(idx), model(idx))
    assert "fc1.mask" in model.state_dict() and "head.multiplier" not in model.state_dict()
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(idx), model(idx))


def _tiny_lm_rounding(model, idx):
    """Twice a first-order forward-error bound of ``TinyLM``'s output, entry by entry, in its dtype: a
    layer of fan-in n adds gamma_(n+3) times its absolute-value product (multipliers included) and
    carries its input's error by ``|W|``; ReLU carries it unchanged; LayerNorm, ``(x - mu) / sigma``,
    carries ``e`` as its Jacobian's absolute row sums do, ``(e + mean e + |y| mean(|y| e)) / sigma``, and
    adds its own: ``x - mu`` within gamma_(n+2) (|x| + mean |x|), the variance, ``+ eps`` and the square
    root within that error's share plus gamma_(n+4), the quotient and the affine map a few roundings."""
    dtype = next(model.parameters()).dtype
    g = lambda k: gamma(k, dtype)   # noqa: E731
    with torch.no_grad():
        x = model.emb(idx)
        e = g(1) * x.abs()
        for fc in (model.fc1, model.fc2, model.head):
            w = fc.forward_weight() if hasattr(fc, "forward_weight") else fc.weight
            m, bm = getattr(fc, "multiplier", 1.0), getattr(fc, "bias_multiplier", 1.0)
            if fc is model.head:
                norm, n = model.norm, x.shape[-1]
                xc = x - x.mean(-1, keepdim=True)
                var = xc.square().mean(-1, keepdim=True)
                sigma = (var + norm.eps).sqrt()
                y = xc / sigma
                e_xc = g(n + 2) * (x.abs() + x.abs().mean(-1, keepdim=True))
                e_y = (e + e.mean(-1, keepdim=True) + y.abs() * (y.abs() * e).mean(-1, keepdim=True)) / sigma
                rel_var = (2 * (xc.abs() * e_xc).mean(-1, keepdim=True) / (var + norm.eps)
                           + g(n + 4))
                e_y = e_y + e_xc / sigma + y.abs() * (rel_var / 2 + g(3))
                x = y * norm.weight + norm.bias
                e = e_y * norm.weight.abs() + g(2) * (x.abs() + norm.bias.abs())
            z = m * (x @ w.T) + bm * fc.bias
            e_z = (g(x.shape[-1] + 3) * (abs(m) * (x.abs() @ w.abs().T) + abs(bm) * fc.bias.abs())
                   + abs(m) * e @ w.abs().T)
            if fc is model.head:
                return 2 * e_z
            r = torch.relu(z)
            e = e + e_z + g(1) * (x.abs() + r)
            x = x + r


def test_parametrized_model_compiles():
    """Dynamo must trace the whole model (fullgraph) and AOTAutograd must functionalise it; the
    default inductor backend (checked by hand: same outputs to 5e-7) takes ~45 s on 2 CPU cores."""
    model = _fresh(0, alpha_out=2.0).double()   # float64: the bound below is then ~1e-14 relative
    idx = torch.randint(0, 16, (2, 4))
    expected = model(idx)
    # every torch>=2.2 has torch.compile (2.2.2 and 2.13 trace this model whole); a RuntimeError here
    # was a skip, which hid dynamo's own (a graph break under fullgraph=True is a RuntimeError)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = compiled(idx)
    assert_within_rounding(got, expected, _tiny_lm_rounding(model, idx))
    got.square().sum().backward()  # gradients flow through the compiled graph, masks respected
    assert torch.count_nonzero(model.fc1.weight.grad[~model.fc1.mask]) == 0
    assert torch.count_nonzero(model.fc1.weight.grad[model.fc1.mask]) > 0
    groups = catapult.param_groups(compiled, 1.0, "adam")
    assert {g["name"]: g["lr_mult"] for g in groups}["hidden"] == pytest.approx(1 / (4 * 0.5))


@pytest.mark.parametrize("optimizer,table", [("adam", ADAM), ("sgd", SGD)])
def test_ablations_take_one_half_of_supar_each(optimizer, table):
    """The SμPar paper's ablations: supar_init = SμPar init + muP lr; supar_lr = muP init + SμPar lr."""
    s2 = 0.02**2
    kw = dict(width_mult=M_D, density_mult=M_RHO)
    assert init_variance("supar_init", "hidden", s2, **kw) == pytest.approx(s2 / (M_D * M_RHO))
    assert init_variance("supar_lr", "hidden", s2, **kw) == pytest.approx(s2 / M_D)
    for kind, (_, mup, supar) in table.items():
        assert lr_multiplier("supar_init", kind, optimizer, **kw) == pytest.approx(mup), kind
        assert lr_multiplier("supar_lr", kind, optimizer, **kw) == pytest.approx(supar), kind


@pytest.mark.parametrize("ablation", ["supar_init", "supar_lr"])
def test_ablation_models_mix_the_mup_and_supar_models(ablation):
    """Built models: the ablation's init equals one parent's, its lr groups the other's, and
    its forward multipliers are muP's (which SμPar shares)."""
    init_parent, lr_parent = ("supar", "mup") if ablation == "supar_init" else ("mup", "supar")
    for build in (lambda p: catapult.models.MLP(12, 3, width=64, depth=3, parametrization=p, base_width=16,
                                                density=0.5),
                  lambda p: catapult.models.GPT(20, 32, 1, 2, 8, parametrization=p, base_width=8,
                                                density=0.5, mask_seed=3)):
        models = {}
        for p in (ablation, init_parent, lr_parent):
            torch.manual_seed(0)
            models[p] = build(p)
        for (name, a), (_, b) in zip(models[ablation].state_dict().items(),
                                     models[init_parent].state_dict().items()):
            assert torch.equal(a, b), name
        groups = {g["name"]: g["lr_mult"] for g in catapult.param_groups(models[ablation], 1.0, "adam")}
        assert groups == {g["name"]: g["lr_mult"] for g in catapult.param_groups(models[lr_parent], 1.0, "adam")}
        assert groups["hidden"] != 1.0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-0.1), ValueError, "lr must be a finite number >= 0; got -0.1"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number >= 0"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0"),
    (dict(lr="0.1"), ValueError, "^param_groups lr must be a finite number >= 0; got '0.1'$"),
    (dict(lr=0.1, weight_decay=-0.01), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(lr=0.1, weight_decay=float("nan")), ValueError, "weight_decay must be a finite"),
])
def test_param_groups_rejects_bad_lr_and_weight_decay(kwargs, error, match):
    # torch.optim validates only its default lr, so a group's negative lr would ascend silently
    with pytest.raises(error, match=match):
        catapult.param_groups(nn.Linear(3, 3), **kwargs)
    assert catapult.param_groups(nn.Linear(3, 3), 0)[0]["lr"] == 0.0


def test_density_multiplier_is_relative_to_the_base_density():
    """m_rho = density / base_density (the SμPar table), not the density itself: at density 0.25
    over a base density 0.5 the hidden init variance is 1 / (fan_in * 0.5) and SμPar's Adam hidden
    lr multiplier 1 / (m_d * 0.5)."""
    torch.manual_seed(0)
    model = catapult.parametrize(TinyMLP(width=512), "supar", base_width=128, density=0.25,
                                 base_density=0.5)
    assert model.catapult_spec == ParamSpec("supar", 4.0, 0.5, "table")
    live = model.b.weight[model.b.mask]
    assert int(model.b.mask.sum()) == round(0.25 * 512 * 512)      # masks draw the density itself
    assert live.var().item() == pytest.approx(1 / (512 * 0.5), rel=0.06)
    groups = {g["name"]: g for g in catapult.param_groups(model, 1e-3, "adam")}
    assert groups["hidden"]["lr_mult"] == pytest.approx(1 / (4.0 * 0.5))
    groups = {g["name"]: g for g in catapult.param_groups(model, 1e-3, "sgd")}
    assert groups["hidden"]["lr_mult"] == pytest.approx(1 / 0.5)


def test_scaled_layers_apply_a_bias_multiplier_of_its_own():
    """y = multiplier * x W^T + bias_multiplier * b (Linear) and the same for Conv2d, also when
    the bias multiplier is neither 1 nor the weight multiplier (the built-in models use only
    those two, which take shortcuts)."""
    from catapult.scaled_layers import ScaledConv2d

    torch.manual_seed(0)
    layer = ScaledLinear(3, 2, multiplier=0.5, bias_multiplier=3.0)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 3)
    magnitude = 0.5 * x.abs() @ layer.weight.abs().T + 3.0 * layer.bias.abs()
    assert_within_rounding(layer(x), 0.5 * x @ layer.weight.T + 3.0 * layer.bias,
                           both_sides(3 + 3, magnitude, torch.float32))   # 3 products, 2 multipliers, the sum
    conv = ScaledConv2d(2, 3, 3, padding=1, multiplier=0.25, bias_multiplier=2.0)
    with torch.no_grad():
        conv.bias.normal_()
    img = torch.randn(1, 2, 5, 5)
    expected = 0.25 * torch.nn.functional.conv2d(img, conv.weight, padding=1) + 2.0 * conv.bias.view(1, 3, 1, 1)
    magnitude = (0.25 * torch.nn.functional.conv2d(img.abs(), conv.weight.abs(), padding=1)
                 + 2.0 * conv.bias.abs().view(1, 3, 1, 1))
    assert_within_rounding(conv(img), expected, both_sides(2 * 3 * 3 + 3, magnitude, torch.float32))


@pytest.mark.parametrize("kwargs, name", [({"width_mult": 0}, "width_mult"), ({"width_mult": -4.0}, "width_mult"),
                                          ({"density_mult": float("nan")}, "density_mult"),
                                          ({"density_mult": 0.0}, "density_mult")])
def test_rule_functions_refuse_multipliers_that_are_not_positive(kwargs, name):
    # 0 was a ZeroDivisionError, -4 a negative lr multiplier and variance (-0.25), nan a nan lr
    with pytest.raises(ValueError, match=rf"lr_multiplier {name} must be a finite number > 0"):
        lr_multiplier("supar", "hidden", "adam", **kwargs)
    with pytest.raises(ValueError, match=rf"init_variance {name} must be a finite number > 0"):
        init_variance("supar", "hidden", 1.0, **kwargs)
    with pytest.raises(ValueError, match=r"init_variance sigma2 must be a finite number >= 0"):
        init_variance("mup", "hidden", -1.0)
