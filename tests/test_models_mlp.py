"""The warmup paper's FCN: per-layer init rules, multipliers, shapes, determinism."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import catapult
from catapult.models import MLP
from rounding import assert_within_rounding, both_sides, gamma

IN, OUT = 3 * 8 * 8, 64  # OUT large enough that the readout variance estimate is tight


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _expected_rules(param, width, depth=4, base_width=None, density=1.0, base_density=1.0,
                    weight_var=2.0):
    """(variance, multiplier, bias_multiplier) per layer, written out from the paper's rules."""
    dims = [IN] + [width] * (depth - 1) + [OUT]
    rules = []
    for i in range(depth):
        n_in, n_out = dims[i], dims[i + 1]
        last = i == depth - 1
        if param == "sp":
            rules.append(((1.0 if last else weight_var) / n_in, 1.0, 1.0))
        elif param == "mup" and base_width is None:
            if last:
                rules.append((1.0 / n_in, 1.0 / math.sqrt(n_in), 1.0 / math.sqrt(n_in)))
            else:
                m = math.sqrt(n_out / n_in)
                rules.append((weight_var / n_out, m, m))
        else:
            d_base = width if base_width is None else base_width
            if i == 0:
                rules.append((weight_var / n_in, 1.0, 1.0))
            elif last:
                rules.append((1.0 / d_base, d_base / width, 1.0))
            else:  # the base's SP variance v_w / d_base, over m_d (muP) or m_d m_rho (SμPar)
                m_d, m_rho = width / d_base, density / base_density
                rules.append((weight_var / d_base / (m_d * (m_rho if param == "supar" else 1.0)), 1.0, 1.0))
    return rules


@pytest.mark.parametrize("width", [256, 1024])
@pytest.mark.parametrize("param,base_width", [("sp", None), ("mup", None), ("mup", 128),
                                              ("supar", 128)])
def test_init_variances_and_multipliers_follow_the_rules(param, base_width, width):
    torch.manual_seed(0)
    model = MLP(IN, OUT, width, 4, parametrization=param, base_width=base_width)
    for layer, (var, mult, bias_mult) in zip(model.layers, _expected_rules(param, width, 4,
                                                                           base_width)):
        w = layer.weight.detach().double()
        assert abs(w.mean().item()) < 4 * math.sqrt(var / w.numel())
        assert _rel(w.var().item(), var) < 0.06, (layer, w.var().item(), var)
        assert layer.multiplier == pytest.approx(mult)
        assert layer.bias_multiplier == pytest.approx(bias_mult)
        assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("param", ["mup", "supar"])
def test_hidden_variance_uses_the_base_density(param):
    """With base_density = 0.5 the table-form hidden variance is v_w / width (muP) or
    v_w rho_base / (width * density) (SμPar), on the live weights; the other layers as at
    rho_base = 1."""
    torch.manual_seed(0)
    model = MLP(IN, OUT, 512, 4, parametrization=param, base_width=128, density=0.25,
                base_density=0.5)
    rules = _expected_rules(param, 512, 4, 128, density=0.25, base_density=0.5)
    for layer, (var, mult, _) in zip(model.layers, rules):
        w = layer.weight.detach().double()
        w = w if layer.mask is None else w[layer.mask]
        assert _rel(w.var().item(), var) < 0.06, (layer, w.var().item(), var)
        assert layer.multiplier == pytest.approx(mult)
    assert rules[1][0] == pytest.approx(2.0 / 512 * (1.0 if param == "mup" else 0.5 / 0.25))


@pytest.mark.parametrize("density", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("param", ["mup", "supar", "supar_init", "supar_lr"])
def test_at_the_base_shape_every_parametrization_inits_like_sp(param, density):
    # a sparse base model (base_density < 1) got He init on its live fan-in under muP and SμPar,
    # twice SP's variance at density 1/2, unlike the docstring's promise and parametrize()
    torch.manual_seed(0)
    sp = MLP(IN, OUT, 256, 3, parametrization="sp", density=density, mask_seed=1)
    torch.manual_seed(0)
    model = MLP(IN, OUT, 256, 3, parametrization=param, base_width=256, density=density,
                base_density=density, mask_seed=1)
    assert torch.equal(model.layers[1].weight, sp.layers[1].weight)
    assert torch.equal(model.layers[0].weight, sp.layers[0].weight)


def test_supar_hidden_variance_counts_live_weights_only():
    torch.manual_seed(0)
    model = MLP(IN, OUT, 512, 4, parametrization="supar", base_width=128, density=0.25)
    for layer in model.layers[1:-1]:
        live = layer.weight[layer.mask].double()
        assert _rel(live.var().item(), 2.0 / (512 * 0.25)) < 0.06
        assert int(layer.mask.sum()) == round(0.25 * 512 * 512)
        assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
    assert model.layers[0].mask is None and model.layers[-1].mask is None


def test_truncated_normal_keeps_the_variance_and_the_bound():
    torch.manual_seed(0)
    model = MLP(IN, OUT, 512, 3, init="trunc_normal")
    w = model.layers[1].weight.detach().double()
    std = math.sqrt(2.0 / 512)
    assert _rel(w.var().item(), std**2) < 0.03
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6


def test_layer_forward_is_multiplier_times_affine_map():
    torch.manual_seed(0)
    # float64: float32's rounding bound for 64-term sums is looser than what a wrong multiplier moves
    model = MLP(IN, OUT, 64, 3, parametrization="mup").double()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_()
    x = torch.randn(5, IN, dtype=torch.float64)
    h = x
    for i, layer in enumerate(model.layers):
        n_in, n_out = layer.in_features, layer.out_features
        mult = 1 / math.sqrt(n_in) if i == 2 else math.sqrt(n_out / n_in)
        expected = mult * (h @ layer.weight.T + layer.bias)
        out = layer(h)
        # a length-n_in dot product, the bias and the multiplier: n_in + 2 roundings each side
        magnitude = mult * (h.abs() @ layer.weight.abs().T + layer.bias.abs())
        assert_within_rounding(out, expected, both_sides(n_in + 2, magnitude, torch.float64))
        h = torch.relu(out)
    # Table form: the bias sits outside the output multiplier.
    model = MLP(IN, OUT, 64, 3, parametrization="mup", base_width=16, alpha_out=3.0).double()
    head = model.layers[-1]
    with torch.no_grad():
        head.bias.normal_()
    h = torch.randn(5, 64, dtype=torch.float64)
    magnitude = 3.0 / 4.0 * (h.abs() @ head.weight.abs().T) + head.bias.abs()
    assert_within_rounding(head(h), 3.0 / 4.0 * (h @ head.weight.T) + head.bias,
                           both_sides(64 + 2, magnitude, torch.float64))


def test_mup_forward_scale_is_width_independent():
    """muP: preactivations O(1) at every width (same as SP); the output shrinks like 1/sqrt(width)."""
    x = torch.randn(256, 3, 8, 8)
    stats = {}
    for width in (256, 2048):
        torch.manual_seed(1)
        model = MLP((3, 8, 8), OUT, width, 4, parametrization="mup")
        h, rms = x.flatten(1), []
        for layer in model.layers:
            h = layer(h)
            rms.append(h.pow(2).mean().sqrt().item())
            h = torch.relu(h)
        stats[width] = rms
    for width, rms in stats.items():
        # E[h^2] = 2 E[x^2] = 2 for the first preactivation, and He keeps it.
        for value in rms[:-1]:
            assert 1.0 < value < 2.0, (width, rms)
    ratio = stats[256][-1] / stats[2048][-1]
    assert 2.0 < ratio < 4.5  # sqrt(8) = 2.83


def test_inputs_are_flattened_and_bad_shapes_are_named():
    torch.manual_seed(0)
    image_model = MLP((3, 32, 32), 10, 32, 3)
    assert image_model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    vec_model = MLP(64, 10, 32, 3)
    assert vec_model(torch.randn(4, 64)).shape == (4, 10)
    with pytest.raises(ValueError, match="64 features"):
        vec_model(torch.randn(4, 65))
    assert MLP(64, 10, 32, 1)(torch.randn(2, 8, 8)).shape == (2, 10)
    assert len(MLP(64, 10, 32, 5).layers) == 5


@pytest.mark.parametrize("shape", [(64,), ()])
def test_an_unbatched_input_is_a_value_error_naming_the_shape(shape):
    # One sample without its batch axis was an IndexError from flatten(1) ("Dimension out of range").
    with pytest.raises(ValueError, match=r"batch \(N, \.\.\.\).*unsqueeze"):
        MLP(64, 10, 32, 3)(torch.randn(shape))


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="parametrization"):
        MLP(8, 2, parametrization="ntk")
    with pytest.raises(ValueError, match="activation"):
        MLP(8, 2, activation="swish")
    with pytest.raises(ValueError, match="density"):
        MLP(8, 2, density=0.0)
    with pytest.raises(ValueError, match="depth"):
        MLP(8, 2, depth=0)
    with pytest.raises(ValueError, match="alpha_in"):
        MLP(8, 2, parametrization="mup", alpha_in=2.0)


def test_base_width_must_be_an_integer_as_for_the_wrn():
    # base_width is the table form's d_base (m_d = width / d_base): a fraction of a unit is no
    # width; the WRN already refused a fractional base_widen, the MLP and GPT took 2.5 silently
    with pytest.raises(ValueError, match=r"MLP base_width must be a positive integer or None; got 2.5"):
        MLP(8, 2, width=8, parametrization="mup", base_width=2.5)
    with pytest.raises(ValueError, match=r"MLP base_width .* got 0"):
        MLP(8, 2, width=8, parametrization="mup", base_width=0)
    assert MLP(8, 2, width=8, parametrization="mup", base_width=4).base_width == 4


def test_deterministic_under_manual_seed_and_bias_false():
    torch.manual_seed(3)
    a = MLP(16, 4, 32, 4, parametrization="mup", density=0.5)
    torch.manual_seed(3)
    b = MLP(16, 4, 32, 4, parametrization="mup", density=0.5)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    no_bias = MLP(16, 4, 32, 3, bias=False)
    assert all(layer.bias is None for layer in no_bias.layers)
    assert len(list(no_bias.parameters())) == 3


def test_param_groups_for_the_mlp():
    torch.manual_seed(0)
    paper = MLP(IN, OUT, 512, 4, parametrization="mup")
    groups = catapult.param_groups(paper, 0.1, optimizer="sgd")
    assert all(g["lr_mult"] == 1.0 and g["lr"] == 0.1 for g in groups)
    table = MLP(IN, OUT, 512, 4, parametrization="supar", base_width=128, density=0.5)
    mults = {g["name"]: g["lr_mult"] for g in catapult.param_groups(table, 1.0, "adam")}
    assert mults == {"input": 1.0, "vector": 1.0, "hidden": 1 / (4 * 0.5), "output": 1.0,
                     "output_bias": 1.0}
    mults = {g["name"]: g["lr_mult"] for g in catapult.param_groups(table, 1.0, "sgd")}
    assert mults == {"input": 4.0, "vector": 4.0, "hidden": 1 / 0.5, "output": 4.0,
                     "output_bias": 1.0}
    n_params = sum(len(g["params"]) for g in catapult.param_groups(table, 1.0))
    assert n_params == len(list(table.parameters()))


def test_mse_training_step_runs():
    torch.manual_seed(0)
    model = MLP(IN, 10, 64, 4, parametrization="mup")
    opt = torch.optim.SGD(catapult.param_groups(model, 0.1, "sgd"))
    x, y = torch.randn(32, IN), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(5):
        loss = 0.5 * F.mse_loss(model(x), F.one_hot(y, 10).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_paper_mup_under_sgd_equals_per_layer_lrs_on_effective_weights():
    """One SGD step with a global lr on the muP FCN == SP-form weights W_eff = c W stepped
    with per-layer lr * c^2 (input lr*width/in, hidden lr, readout lr/width)."""
    torch.manual_seed(0)
    width, lr = 48, 0.3
    model = MLP(IN, 10, width, 3, parametrization="mup").double()
    x, y = torch.randn(16, IN, dtype=torch.float64), torch.randint(0, 10, (16,))
    # the paper's muP multiplies the whole affine map, bias included
    weights = [(layer.multiplier * layer.weight.detach()).requires_grad_()
               for layer in model.layers]
    biases = [(layer.multiplier * layer.bias.detach()).requires_grad_() for layer in model.layers]

    def plain_forward(x):
        h = x
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w.T + b
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h

    def rounding(x):
        # twice a first-order forward-error bound, layer by layer: a fan-in of n adds gamma_(n+3) times the
        # absolute-value product (the multiplier on either side, c W rounded once), |W| carries the error in
        e, h = torch.zeros_like(x), x
        for i, (w, b) in enumerate(zip(weights, biases)):
            w, b = w.detach(), b.detach()
            e = gamma(h.shape[-1] + 3, torch.float64) * (h.abs() @ w.abs().T + b.abs()) + e @ w.abs().T
            h = torch.relu(h @ w.T + b) if i < len(weights) - 1 else h
        return 2 * e

    assert_within_rounding(model(x), plain_forward(x), rounding(x))
    assert all(g["lr_mult"] == 1.0 for g in catapult.param_groups(model, lr, "sgd"))
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():  # plain SGD, one global lr
            p -= lr * p.grad
    F.cross_entropy(plain_forward(x), y).backward()
    with torch.no_grad():
        for layer, w, b in zip(model.layers, weights, biases):
            c2 = layer.multiplier**2
            w -= lr * c2 * w.grad
            b -= lr * c2 * b.grad
    assert [layer.multiplier**2 for layer in model.layers] == pytest.approx(
        [width / IN, 1.0, 1.0 / width])
    torch.testing.assert_close(model(x), plain_forward(x))


def test_table_form_alphas_density_refusals_and_the_repr():
    # mutation pass 21: the table form's input multiplier alpha_in (ML5), alpha_out refused outside it (ML2), a
    # density refused at depth 2, which has no hidden layer (ML1), and a base_density alone in the repr (ML11)
    model = MLP(8, 2, 16, 3, parametrization="supar", alpha_in=2.5, alpha_out=3.0)
    assert (model.layers[0].multiplier, model.layers[0].bias_multiplier) == (2.5, 1.0)
    with pytest.raises(ValueError, match="alpha_in / alpha_out apply to the table form only"):
        MLP(8, 2, parametrization="mup", alpha_out=2.0)
    with pytest.raises(ValueError, match="depth 2 has none"):
        MLP(8, 2, 16, 2, density=0.5)
    assert "density=1, base_density=0.5" in repr(MLP(8, 2, 16, 3, parametrization="supar", base_density=0.5))


def test_in_features_as_a_zero_d_array_is_its_value_and_a_string_is_refused_naming_it():
    # mutation pass 21: a 0-d tensor or array is the number it holds (ML10: iterated, a TypeError), and a string
    # is refused in the words that name it (ML9: its characters were read as a shape)
    import numpy as np

    for size in (torch.tensor(12), np.array(12), np.int64(12)):
        assert MLP(size, 2, 4, 2).in_features == 12
    with pytest.raises(ValueError, match="must be a positive integer or a shape of them; got '64'"):
        MLP("64", 2, 4, 2)
