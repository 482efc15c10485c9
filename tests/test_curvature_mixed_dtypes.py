"""A model whose trainable parameters mix float32 and float64 (without ``dtype=``): every HVP
mode, micro-batches, the finite-difference coarse start and ``memory="lean"`` agree with the
dense float64 Hessian, instead of failing inside the model or in autograd."""
import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import dense_hessian

import catapult


class Mixed(nn.Module):
    """A float32 Linear feeding a float64 one (or the other way round); the inputs come in the
    first layer's dtype and the hidden layer is cast to the second's, as written."""

    def __init__(self, first64: bool):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        (self.a if first64 else self.b).double()
        self.second = torch.float32 if first64 else torch.float64

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)).to(self.second))


def mse(out, y):
    return nn.functional.mse_loss(out.double(), y.double())


@pytest.mark.parametrize("first64", [False, True], ids=["f32-f64", "f64-f32"])
@pytest.mark.parametrize("kwargs, rel", [
    ({}, 1e-5),                                              # coarse: forward differences
    ({"coarse": None, "hvp": "finite_difference"}, 1e-4),
    ({"coarse": None, "memory": "lean"}, 1e-5),              # products accumulated in place
    ({"memory": "lean"}, 1e-5),
    ({"coarse": None, "chunk_size": 2}, 1e-5),
])
def test_mixed_dtype_parameters_match_dense(first64, kwargs, rel):
    # "mat1 and mat2 must have the same dtype" (forward differences promoted a float32 block to
    # float64) and "attempting to assign a gradient with dtype 'float' to a tensor with
    # grad_dtype 'Double'" (lean)
    torch.manual_seed(0)
    model = Mixed(first64)
    x = torch.randn(5, 3, dtype=torch.float64 if first64 else torch.float32)
    batch = (x, torch.randn(5, 2, dtype=torch.float64))
    exact = copy.deepcopy(model).double()   # the truth: the same function in float64
    exact.second = torch.float64
    truth = np.linalg.eigvalsh(dense_hessian(exact, mse, batch).numpy())[-1]
    est = catapult.sharpness(model, mse, batch, tol=1e-6, **kwargs)
    if kwargs.get("hvp") == "finite_difference":
        # differences of float32 gradients cannot reach 1e-6, and the bound says so (certify.py)
        assert not est.converged and abs(est.value - truth) / abs(truth) <= est.error_bound
    else:
        assert est.converged
    assert est.value == pytest.approx(truth, rel=rel)
    assert model.a.weight.dtype == (torch.float64 if first64 else torch.float32)


@pytest.mark.parametrize("solve", [
    lambda m, b: catapult.sharpness(m, mse, b, tol=1e-9, coarse=None),
    lambda m, b: catapult.sharpness(m, mse, b, tol=1e-9, coarse=None, memory="lean", max_iter=400),
    lambda m, b: catapult.top_eigenpairs(m, mse, b, 2, tol=1e-9),
], ids=["fast", "lean", "top_k"])
def test_mixed_dtype_parameters_claim_no_more_than_float32_rounding(solve):
    # float64 vectors over a model with a float32 layer: the bounds took float64's rounding
    # floor, and a solve at tol=1e-9 said converged, bound 4e-10, for an error of 1.7e-8
    torch.manual_seed(0)
    model = Mixed(True)
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    exact = copy.deepcopy(model).double()
    exact.second = torch.float64
    truth = np.linalg.eigvalsh(dense_hessian(exact, mse, batch).numpy())[-1]
    est = solve(model, batch)
    value = float(est.values[0]) if hasattr(est, "values") else est.value
    bound = float(est.residuals[0]) if hasattr(est, "values") else est.error_bound
    assert not est.converged
    assert abs(value - truth) / abs(truth) <= bound
    assert bound >= 8 * torch.finfo(torch.float32).eps


def test_a_complex_trainable_parameter_is_refused_naming_it():
    # before: with dtype= (or after a real parameter) torch's raw "result type ComplexDouble can't be cast"
    class Complex(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2).double()
            self.register_parameter("phase", torch.nn.Parameter(torch.randn(2, dtype=torch.complex128)))

        def forward(self, x):
            return (self.lin(x) * self.phase).abs()

    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    for kwargs in ({}, {"dtype": torch.float32}):
        with pytest.raises(ValueError, match="parameters must be floating point, got torch.complex128 for 'phase'"):
            catapult.sharpness(Complex(), torch.nn.MSELoss(), batch, **kwargs)


def test_lazy_and_meta_parameters_are_refused_naming_the_way_out():
    # before: torch's raw "Can't access the shape of an uninitialized parameter" / "Tensor on device meta is
    # not on the expected device cpu!"
    batch = (torch.randn(8, 3), torch.randn(8, 2))
    # (memory="lean" met them in its sizing first: torch's "Attempted to use an uninitialized parameter in
    # <method 'numel'...>" and a RuntimeError "Tensor on device meta is not on the expected device cpu!")
    lazy = nn.Sequential(nn.LazyLinear(4), nn.Tanh(), nn.Linear(4, 2))
    for memory in ("fast", "lean"):
        with pytest.raises(ValueError, match="parameter '0.weight' is uninitialized .*run one forward"):
            catapult.sharpness(lazy, nn.MSELoss(), batch, memory=memory)
    meta = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to("meta")
    for call in (catapult.sharpness, catapult.hessian_trace, functools.partial(catapult.sharpness, memory="lean"),
                 functools.partial(catapult.top_eigenpairs, memory="lean")):
        with pytest.raises(ValueError, match="parameter '0.weight' is on the meta device .*materialize"):
            call(meta, nn.MSELoss(), batch)


def test_a_torchscript_model_is_refused_naming_the_way_out():
    # before: AttributeError "'OrderedDictWrapper' object has no attribute 'get'" from every function
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    batch = (torch.randn(8, 3), torch.randn(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated
        scripted = torch.jit.script(model)
    for call in (catapult.sharpness, catapult.top_eigenpairs):
        with pytest.raises(ValueError, match="is \\(or holds\\) a TorchScript module.*pass the nn.Module"):
            call(scripted, nn.MSELoss(), batch)
    wrapped = nn.Sequential(scripted)
    with pytest.raises(ValueError, match="critical_lr: the model is \\(or holds\\) a TorchScript module"):
        catapult.critical_lr(wrapped, nn.MSELoss(), batch, torch.optim.SGD(wrapped.parameters(), lr=0.1))


class CastsToFloat32(nn.Module):
    """A float32 model whose forward casts its input to float32 itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.float())))


@pytest.mark.parametrize("kwargs", [{"hvp": "double_backprop"}, {"hvp": "forward_over_reverse"},
                                    {"hvp": "finite_difference"}, {"chunk_size": 2}, {"curvature": "ggn"}])
def test_dtype_float64_on_a_forward_that_casts_to_float32_names_dtype(kwargs):
    # torch's raw "mat1 and mat2 must have the same dtype, but got Float and Double" came out
    torch.manual_seed(0)
    model, batch = CastsToFloat32(), (torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"dtype=torch.float64: .*two dtypes.*Float and Double.*dtype=None"):
        catapult.sharpness(model, nn.MSELoss(), batch, dtype=torch.float64, **kwargs)


def test_the_same_model_is_measured_in_its_own_dtype():
    torch.manual_seed(0)
    model, batch = CastsToFloat32(), (torch.randn(5, 3), torch.randn(5, 2))
    params = [p.detach().double() for p in model.parameters()]
    sizes, (x, y) = [p.numel() for p in params], (batch[0].double(), batch[1].double())

    def loss(flat):   # the same function in float64, written out
        w1, b1, w2, b2 = (t.view_as(p) for t, p in zip(flat.split(sizes), params))
        return (((torch.tanh(x @ w1.T + b1) @ w2.T + b2) - y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    truth = np.linalg.eigvalsh(hessian.numpy())[-1]
    assert catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-5).value == pytest.approx(truth, rel=1e-4)


def test_a_bfloat16_model_that_casts_to_bfloat16_itself_is_told_why_float32():
    # without dtype= a half-precision model is measured in float32; its own x.bfloat16() then met the float32
    # weights, and the message first said 'pass dtype=None', which the call had
    class CastsToBfloat16(CastsToFloat32):
        def forward(self, x):
            return self.b(torch.tanh(self.a(x.bfloat16())))

    torch.manual_seed(0)
    model, batch = CastsToBfloat16().bfloat16(), (torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"a float16 / bfloat16 model is measured in float32 .*BFloat16 and Float"
                                         r".*cast to the parameters' dtype") as caught:
        catapult.sharpness(model, nn.MSELoss(), batch)
    assert "dtype=None" not in str(caught.value)


class HalfCast(nn.Module):
    """A float32 Linear feeding a float64 one, its forward casting the input to float32 itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2).double()

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.float())).double())


def test_dtype_float64_on_a_model_partly_float64_that_casts_to_float32_names_dtype():
    # dtype=float64 casts the float32 layer (not every parameter was float64 already): its x.float()
    # then meets float64 weights, which is the dtype= asked for, not the model's own mix
    torch.manual_seed(0)
    model, batch = HalfCast(), (torch.randn(5, 3), torch.randn(5, 2, dtype=torch.float64))
    catapult.sharpness(model, mse, batch, tol=1e-4)   # measured in its own dtypes
    with pytest.raises(ValueError, match=r"dtype=torch.float64: .*two dtypes"):
        catapult.sharpness(model, mse, batch, dtype=torch.float64)


def test_an_error_that_is_no_dtype_mix_is_not_named_one():
    class BadShape(nn.Linear):
        def forward(self, x):
            return super().forward(x).view(-1, 7)   # 5 x 2 outputs: no shape of 7 columns

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="is invalid for input of size 10"):
        catapult.sharpness(BadShape(3, 2), nn.MSELoss(), (torch.randn(5, 3), torch.randn(5, 2)), dtype=torch.float64)
