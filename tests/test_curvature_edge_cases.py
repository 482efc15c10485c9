"""Curvature at the edges a user or an attacker reaches: directions the Hessian sends to 0, nan
losses, half-precision models, zero losses under micro-batches, empty tuple batches, losses no
trainable parameter reaches and transposed parameters. Each against a dense float64 Hessian or
the documented refusal."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import HessianOperator
from dense_curvature import dense_hessian


def batchnorm_mlp(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    return model, (torch.randn(8, 3, dtype=dtype), torch.randn(8, 2, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_differences_along_a_direction_the_hessian_sends_to_zero(dtype):
    # the train-mode BatchNorm cancels the first layer's bias: H e = 0 there, both differences
    # are rounding, and that is no kink (it was refused as one)
    model, batch = batchnorm_mlp(dtype)
    H = dense_hessian(model, nn.MSELoss(), batch)
    bias = 12  # weight (4 x 3) first, then the bias
    assert float(H[:, bias].abs().max()) < 1e-12
    op = HessianOperator(model, nn.MSELoss(), batch, hvp="finite_difference")
    e = torch.zeros(op.numel, dtype=dtype)
    e[bias] = 1.0
    assert float(op(e).abs().max()) <= (1e-9 if dtype == torch.float64 else 1e-3) * float(H.abs().max())
    trace = catapult.hessian_trace(model, nn.MSELoss(), batch, hvp="finite_difference", matvecs=10**6)
    assert trace == pytest.approx(float(torch.trace(H)), rel=1e-8 if dtype == torch.float64 else 1e-3)


@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse", "finite_difference"])
@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_a_nan_loss_gives_nan_not_a_number_or_an_error(hvp, where):
    # a linear model's Hessian does not involve the targets: nan targets used to give a finite,
    # "converged" sharpness beside a nan loss
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    (x if where == "inputs" else y)[0, 0] = math.nan
    est = catapult.sharpness(model, nn.MSELoss(), (x, y), hvp=hvp)
    assert math.isnan(est.value) and not est.converged
    eig = catapult.top_eigenpairs(model, nn.MSELoss(), (x, y), k=2, hvp=hvp)
    assert all(math.isnan(v) for v in eig.values) and not eig.converged
    assert math.isnan(catapult.sharpness(model, nn.MSELoss(), (x, y), curvature="ggn").value)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_measured_in_float32(half):
    # in their own dtype the solvers' convergence tests sit at half precision's rounding: a wrong
    # top pair (lambda_2 for lambda_1) came back "converged"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(half)
    x, y = torch.randn(6, 3).to(half), torch.randn(6, 2).to(half)
    reference = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    exact = torch.linalg.eigvalsh(dense_hessian(reference, nn.MSELoss(), (x.double(), y.double())))
    est = catapult.sharpness(model, nn.MSELoss(), (x, y))
    assert est.converged and est.vector.dtype == torch.float32
    assert abs(est.value - float(exact[-1])) <= est.error_bound * abs(est.value) + 1e-5
    eig = catapult.top_eigenpairs(model, nn.MSELoss(), (x, y), k=2)
    assert eig.converged
    assert eig.values == pytest.approx(exact.flip(0)[:2].tolist(), rel=1e-3)
    assert catapult.sharpness(model, nn.MSELoss(), (x, y), chunk_size=2).value == pytest.approx(est.value, rel=1e-3)
    assert all(p.dtype == half for p in model.parameters())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [2, 4])
def test_micro_batches_at_a_zero_loss(reduction, chunk_size):
    # at a loss of 0 the full loss is both the chunks' mean and their sum (and rounding-level
    # losses neither): a sum loss came out halved, or the chunks were refused
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    loss_fn = nn.MSELoss(reduction=reduction)
    H = dense_hessian(model, loss_fn, (x, y))
    value = catapult.sharpness(model, loss_fn, (x, y), chunk_size=chunk_size, tol=1e-8).value
    assert value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-7)


def test_a_loss_that_is_zero_everywhere_cannot_be_split():
    model = nn.Linear(3, 1).double()
    batch = (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot tell whether loss_fn is a mean or a sum"):
        HessianOperator(model, lambda out, y: 0.0 * out.sum(), batch, chunk_size=2)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 1), nn.Linear(3, 1)

    def forward(self, pair):
        u, w = pair
        return self.a(u) + self.b(w)


@pytest.mark.parametrize("wrap", [tuple, lambda p: {"u": p[0], "w": p[1]}])
def test_an_empty_batch_of_several_inputs_is_refused(wrap):
    model = TwoInputs()
    if not isinstance(wrap((0, 0)), tuple):
        model.forward = lambda d: model.a(d["u"]) + model.b(d["w"])
    inputs = wrap((torch.zeros(0, 2), torch.zeros(0, 3)))
    with pytest.raises(ValueError, match="batch is empty"):
        catapult.sharpness(model, nn.MSELoss(), (inputs, torch.zeros(0, 1)))


class UnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(3, 2), nn.Linear(2, 2)  # the head: trainable, unused
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.backbone(x)


@pytest.mark.parametrize("call", ["sharpness", "ggn", "finite_difference", "forward_over_reverse",
                                  "trace", "chunked"])
def test_a_loss_no_trainable_parameter_reaches_is_refused(call):
    # a frozen backbone and a trainable head the forward never uses: it was autograd's
    # "element 0 of tensors does not require grad"
    model = UnusedHead()
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    run = {"sharpness": lambda: catapult.sharpness(model, nn.MSELoss(), batch),
           "ggn": lambda: catapult.sharpness(model, nn.MSELoss(), batch, curvature="ggn"),
           "finite_difference": lambda: catapult.sharpness(model, nn.MSELoss(), batch, hvp="finite_difference"),
           "forward_over_reverse": lambda: catapult.sharpness(model, nn.MSELoss(), batch,
                                                              hvp="forward_over_reverse"),
           "trace": lambda: catapult.hessian_trace(model, nn.MSELoss(), batch),
           "chunked": lambda: HessianOperator(model, nn.MSELoss(), batch, chunk_size=2)}[call]
    with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
        run()


class Transposed(nn.Module):
    """A parameter stored transposed (non-contiguous), as a weight tied to its transpose is."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4, dtype=torch.float64).t())
        self.out = nn.Linear(5, 3).double()

    def forward(self, x):
        return self.out(torch.tanh(x @ self.w))


@pytest.mark.parametrize("kwargs", [{}, {"memory": "lean"}, {"hvp": "finite_difference"}],
                         ids=["coarse_start", "lean", "finite_difference"])
def test_a_transposed_parameter_is_measured_without_a_gradient_layout_warning(kwargs):
    torch.manual_seed(0)
    model = Transposed()
    assert not model.w.is_contiguous()
    batch = (torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,)))
    top = float(torch.linalg.eigvalsh(dense_hessian(model, nn.functional.cross_entropy, batch))[-1])
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # autograd warns once per process: every time, here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            est = catapult.sharpness(model, nn.functional.cross_entropy, batch, tol=1e-8, max_iter=200,
                                     **kwargs)
    finally:
        torch.set_warn_always(warn_always)
    assert est.value == pytest.approx(top, rel=1e-8)


@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_a_float32_hessian_of_tiny_scale_is_solved_not_called_invariant(memory):
    # eigenvalues ~2.5e-11: the invariance floor was 10 eps^2 sqrt(n) in absolute terms, above
    # every remainder, so the solves stopped after one product with the value 99% off, "converged"
    # (memory="lean" spent all 100 products on restarts)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 2))
    batch = (torch.randn(20, 3), torch.randn(20, 2))

    def tiny(out, y):
        return 1e-11 * nn.functional.mse_loss(out, y)
    H = dense_hessian(model, tiny, batch).numpy()
    eigenvalues = np.linalg.eigvalsh(H)[::-1]
    est = catapult.sharpness(model, tiny, batch, coarse=None, memory=memory)
    assert est.converged and est.matvecs > 2
    assert abs(est.value - eigenvalues[0]) <= est.error_bound * abs(est.value)
    eig = catapult.top_eigenpairs(model, tiny, batch, k=3, memory=memory)
    assert eig.converged
    slack = 1e-5 * eigenvalues[0]   # float32 products' rounding, as in test_curvature_promise.py
    for value, vector, reported in zip(eig.values, eig.vectors.double().numpy(), eig.residuals):
        assert np.linalg.norm(H @ vector - value * vector) <= reported * abs(value) + slack
    assert np.allclose(eig.values, eigenvalues[:3], rtol=1e-4, atol=0)
