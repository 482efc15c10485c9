"""The models' and parametrize()'s real-valued arguments are checked and named before anything
is built: nan, negative and string values failed inside torch ("normal expects std >= 0.0"),
or built a model whose every output was nan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from catapult.models import GPT, MLP, WRN


def _net():  # input, hidden (the layer a density masks), readout
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 1))


@pytest.mark.parametrize("build, words", [
    (lambda: MLP(3, 2, width=8, depth=2, weight_var=-1.0), "MLP weight_var must be a finite number > 0; got -1.0"),
    (lambda: MLP(3, 2, width=8, depth=2, weight_var=float("nan")), "MLP weight_var must be a finite number > 0"),
    (lambda: MLP(3, 2, width=8, depth=2, parametrization="supar", alpha_out=float("nan")), "MLP alpha_out"),
    (lambda: MLP(3, 2, width=8, depth=2, density="0.5"), r"MLP density and base_density must be in \(0, 1\]"),
    (lambda: MLP("64", 2, width=8, depth=2), "MLP in_features must be a positive integer or a shape"),
    (lambda: MLP((3, 0), 2, width=8, depth=2), "MLP in_features must be a positive integer; got 0"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, init_std=-1.0), "GPT init_std must be a finite number > 0"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, init_std=float("nan")), "GPT init_std"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, dropout=float("nan")), r"GPT dropout must be a finite number in \[0, 1\)"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, parametrization="mup", alpha_in=float("nan")), "GPT alpha_in"),
    (lambda: WRN(3, 10, depth=10, widen=1, parametrization="supar", alpha_out=-2.0), "WRN alpha_out must be a finite number > 0"),
    # WRN's weight_var went unchecked: -1 raised "math domain error", nan torch's "normal expects std >= 0.0",
    # and 0 built a network of all-zero convs
    (lambda: WRN(3, 10, depth=10, widen=1, weight_var=-1.0), "WRN weight_var must be a finite number > 0; got -1.0"),
    (lambda: WRN(3, 10, depth=10, widen=1, weight_var=0.0), "WRN weight_var must be a finite number > 0"),
    (lambda: WRN(3, 10, depth=10, widen=1, weight_var=float("nan")), "WRN weight_var"),
    (lambda: WRN(3, 10, depth=10, widen=1, weight_var="2"), "WRN weight_var"),
    (lambda: catapult.parametrize(_net(), "mup", init_std=float("nan")), r"parametrize\(\) init_std"),
    (lambda: catapult.parametrize(_net(), "mup", alpha_out=float("nan")), r"parametrize\(\) alpha_out"),
    (lambda: catapult.parametrize(_net(), "mup", base_width="4"), r"parametrize\(\) base_width must be a finite number > 0; got '4'"),
    # gain: a negative one was silently its absolute value (the variance is gain**2); nan torch's words
    (lambda: catapult.parametrize(_net(), "mup", gain=-1.0), r"parametrize\(\) gain must be a finite number in \[0, "),
    (lambda: catapult.parametrize(_net(), "mup", gain=float("nan")), r"parametrize\(\) gain"),
    (lambda: catapult.parametrize(_net(), "mup", gain=1e200), r"parametrize\(\) gain"),
    (lambda: catapult.parametrize(_net(), "supar", density=1.5), r"parametrize\(\) density and base_density must be in \(0, 1\]"),
    # mask_seed=1.5 was the seed 1; "a" and 2**64 raised int()'s / torch's words, naming no argument
    (lambda: MLP(3, 2, width=8, depth=3, density=0.5, mask_seed=1.5), r"MLP mask_seed must be an integer in \[-2\*\*63, 2\*\*64\) or None; got 1.5"),
    (lambda: MLP(3, 2, width=8, depth=3, mask_seed="a"), "MLP mask_seed must be an integer"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, mask_seed=2 ** 64), "GPT mask_seed must be an integer"),
    (lambda: GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, mask_seed=True), "GPT mask_seed must be an integer"),
    (lambda: catapult.parametrize(_net(), "supar", density=0.5, mask_seed="a"), r"parametrize\(\) mask_seed must be an integer"),
    (lambda: catapult.parametrize(_net(), "supar", density=0.5, mask_seed=1.5), r"parametrize\(\) mask_seed must be an integer"),
])
def test_bad_real_arguments_are_named(build, words):
    with pytest.raises(ValueError, match=words):
        build()


def test_in_features_may_be_a_numpy_integer_or_a_shape():
    # a NumPy integer raised "'numpy.int64' object is not iterable"; a shape is multiplied out
    assert MLP(np.int64(64), 10, width=8, depth=2).in_features == 64
    assert MLP((3, 4, 4), 10, width=8, depth=2).in_features == 48
    assert MLP([np.int32(2), 5], 10, width=8, depth=2).in_features == 10


def test_zero_dimensional_tensors_are_numbers_too():
    # torch scalars were accepted before the checks; the checks must not refuse them
    mlp = MLP(torch.tensor(12), 3, width=8, depth=3, parametrization="supar", weight_var=torch.tensor(2.0),
              density=torch.tensor(0.5), alpha_in=torch.tensor(2.0))
    assert mlp.in_features == 12 and mlp.density == 0.5
    GPT(10, d_model=8, n_layers=1, n_heads=2, context=4, init_std=torch.tensor(0.02))
    catapult.parametrize(_net(), "supar", density=np.float32(0.5), base_width=np.int64(2))


@pytest.mark.parametrize("build, x", [
    (lambda: MLP(4, 2, width=8, depth=2), torch.randn(3, 4, dtype=torch.float64)),
    (lambda: MLP(4, 2, width=8, depth=2).double(), torch.randn(3, 4)),
    (lambda: WRN(1, 10, depth=10, widen=1, channels=2), torch.randn(3, 1, 4, 4, dtype=torch.float64)),
])
def test_inputs_of_another_float_dtype_than_the_weights_are_named(build, x):
    # NumPy's float64 data into a float32 model: torch said "mat1 and mat2 must have the same dtype"
    # (MLP) or "expected scalar type Double but found Float" (WRN), not which side is which
    model = build()
    weights = next(model.parameters()).dtype
    with pytest.raises(TypeError, match=rf"weights are {weights} but the inputs of shape \({x.shape[0]}, .*\) are {x.dtype}"):
        model(x)
    assert model(x.to(weights)).dtype == weights
    if weights == torch.float32:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own casts still apply
            assert model(torch.randn(x.shape, dtype=torch.bfloat16)).shape[0] == x.shape[0]


_GPT = dict(d_model=8, n_layers=1, n_heads=2, context=4)


@pytest.mark.parametrize("build, words", [
    (lambda v: MLP(3, 2, width=8, depth=2, bias=v), "MLP: bias must be True or False"),
    (lambda v: GPT(10, bias=v, **_GPT), "GPT: bias must be True or False"),
    (lambda v: GPT(10, tie_embeddings=v, **_GPT), "GPT: tie_embeddings must be True or False"),
    (lambda v: GPT(10, final_norm=v, **_GPT), "GPT: final_norm must be True or False"),
    (lambda v: WRN(3, 10, depth=10, widen=1, channels=4, bias=v), "WRN: bias must be True or False"),
])
@pytest.mark.parametrize("value", ["no", [], None, 2])
def test_a_model_flag_that_is_not_a_bool_is_refused_naming_it(build, words, value):
    """bias="no" built biases, tie_embeddings="no" tied the embeddings (Python's truthiness)."""
    with pytest.raises(TypeError, match=words):
        build(value)


def test_a_model_flag_given_as_a_numpy_bool_or_0_1_builds_what_it_says():
    assert not any(n.endswith("bias") for n, _ in MLP(3, 2, width=8, depth=2, bias=np.False_).named_parameters())
    assert sum(p.numel() for p in MLP(3, 2, width=8, depth=2, bias=1).parameters()) == 3 * 8 + 8 + 8 * 2 + 2
    tied = GPT(10, tie_embeddings=np.True_, **_GPT)
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in GPT(10, tie_embeddings=0, **_GPT).parameters())


ALPHA32 = np.float32(0.3)   # 0.30000001192092896 as a double


def _readout_multiplier(model):
    if isinstance(model, GPT):
        return model.output_multiplier
    return [m for m in model.modules() if hasattr(m, "multiplier")][-1].multiplier


@pytest.mark.parametrize("build", [
    lambda a: GPT(11, d_model=48, n_layers=1, n_heads=2, context=4, parametrization="mup", base_width=16, alpha_out=a),
    lambda a: MLP(3, 2, width=48, depth=2, parametrization="mup", base_width=16, alpha_out=a),
    lambda a: WRN(3, 10, depth=10, widen=3, parametrization="mup", base_widen=1, alpha_out=a),
    lambda a: catapult.parametrize(_net(), "mup", width=48, base_width=16, alpha_out=a),
], ids=["GPT", "MLP", "WRN", "parametrize"])
def test_a_numpy_alpha_out_is_a_python_float_in_the_readout_multiplier(build):
    # alpha_out=np.float32(0.3) kept NumPy's type: GPT's alpha_out / m_d was float32's 0.1 for the double
    # 0.30000001192092896 / 3 = 0.10000000397364299, and a float64 GPT's logits were 1.7e-9 off
    torch.manual_seed(0)
    model = build(ALPHA32).double()
    torch.manual_seed(0)
    twin = build(float(ALPHA32)).double()
    multiplier = _readout_multiplier(model)
    assert type(multiplier) is float and multiplier == float(ALPHA32) / 3
    x = torch.randint(0, 11, (2, 4)) if isinstance(model, GPT) else torch.randn(2, *((3, 8, 8) if isinstance(
        model, WRN) else (model[0].in_features,) if isinstance(model, torch.nn.Sequential) else (3,)),
        dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), twin.eval()(x))
