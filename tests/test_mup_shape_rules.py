"""param_groups against microsoft/mup's rules, derived from shapes alone.

microsoft/mup compares each tensor's shape with the base model's: the dimensions that differ
are "infinite". MuAdam divides the lr of a tensor with two infinite dimensions by the fan-in's
width multiplier and leaves every other tensor's alone; MuSGD multiplies a tensor with one
infinite dimension by that dimension's multiplier, divides one with two by fan-in mult /
fan-out mult, and leaves finite-shape tensors alone. (Conv kernels' spatial dimensions are
finite.) Every built-in model in its muP table form must give those learning rates."""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.models import GPT, MLP, WRN


def _mup_multiplier(shape, base_shape, family):
    mults = [n / b for n, b in zip(shape, base_shape)]
    infinite = [i for i, m in enumerate(mults) if m != 1.0]
    if len(infinite) == 0:
        return 1.0
    if len(infinite) == 1:
        return 1.0 if family == "adam" else mults[infinite[0]]
    fan_out, fan_in = mults[0], mults[1]
    return 1.0 / fan_in if family == "adam" else fan_out / fan_in


def _lr_mults(model, family):
    by_id = {id(p): g["lr_mult"] for g in catapult.param_groups(model, 1.0, family) for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


MODELS = {
    "mlp": lambda w, b: MLP(12, 3, width=w, depth=4, parametrization="mup", base_width=b),
    "gpt": lambda w, b: GPT(11, d_model=w, n_layers=2, n_heads=2, context=8, parametrization="mup", base_width=b),
    "gpt_tied": lambda w, b: GPT(11, d_model=w, n_layers=1, n_heads=2, context=8, parametrization="mup",
                                 base_width=b, tie_embeddings=True),
    "wrn": lambda w, b: WRN(1, 10, depth=10, widen=w // 8, parametrization="mup", base_widen=b // 8),
}


@pytest.mark.parametrize("family", ["adam", "sgd"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_built_in_models_get_microsoft_mups_learning_rates(name, family):
    # The WRN's stem (conv C -> 16 and its LayerNorm: no dimension grows with widen) got the
    # input layers' SGD lr * m_d, which made its relative change grow like sqrt(widen)
    # (0.025 at widen 1, 0.093 at widen 16 after 5 steps); microsoft/mup leaves it at lr.
    torch.manual_seed(0)
    base, wide = MODELS[name](16, 16), MODELS[name](64, 16)
    base_shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    got = _lr_mults(wide, family)
    expected = {n: _mup_multiplier(tuple(p.shape), base_shapes[n], family) for n, p in wide.named_parameters()}
    assert got == pytest.approx(expected)


class _ConvNet(torch.nn.Module):
    """A user's CNN: stem conv, a depthwise conv (groups = channels, fan-in k^2 at every width),
    a pointwise conv, a readout."""

    def __init__(self, width: int):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pointwise = torch.nn.Conv2d(width, width, 1)
        self.head = torch.nn.Linear(width, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.pointwise(torch.relu(self.depthwise(h))))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("family", ["adam", "sgd"])
def test_a_depthwise_conv_gets_the_learning_rate_and_init_of_its_shape(family):
    # A depthwise conv (groups = in_channels) was a hidden layer: Adam lr / m_d and SGD lr,
    # where its fan-in (k^2) does not grow with the width: microsoft/mup's vector-like rule is
    # Adam lr and SGD lr * m_d, and its init is the base model's (init_std^2, not / m_d).
    torch.manual_seed(0)
    base = catapult.parametrize(_ConvNet(8), "mup", base_width=8)
    wide = catapult.parametrize(_ConvNet(32), "mup", base_width=8, init_std=0.5)
    base_shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    expected = {n: _mup_multiplier(tuple(p.shape), base_shapes[n], family) for n, p in wide.named_parameters()}
    assert _lr_mults(wide, family) == pytest.approx(expected)
    assert wide.depthwise.weight.std().item() == pytest.approx(0.5, rel=0.15)       # 288 draws
    assert wide.pointwise.weight.std().item() == pytest.approx(0.5 / 2, rel=0.1)    # hidden: s^2 / m_d


def test_a_depthwise_convs_fan_in_init_does_not_take_the_density_correction():
    # Under SμPar with density / base_density = 4 (a dense model from a 25%-dense proxy) the
    # fan-in init (init_std=None) gave the depthwise conv var 1 / (k^2 m_rho) = 1/36 (std 0.167),
    # although init_std= and param_groups treat it as an input weight (never masked, no density
    # correction): var 1 / k^2 (std 1/3)
    torch.manual_seed(0)
    model = catapult.parametrize(_ConvNet(256), "supar", base_width=8, density=1.0, base_density=0.25)
    assert model.depthwise.weight.std().item() == pytest.approx(1 / 3, rel=0.05)      # 2304 draws
    assert model.pointwise.weight.std().item() == pytest.approx((256 * 4) ** -0.5, rel=0.02)  # hidden: 1/(fan_in m_rho)
    groups = {g["name"]: g["lr_mult"] for g in catapult.param_groups(model, 1.0)}
    assert groups["input"] == 1.0 and groups["hidden"] == pytest.approx(1 / (32 * 4))
