"""``hvp="compiled"``: exact products and gradients through ``torch.compile``
(:mod:`catapult.curvature.compiled`), against dense float64 Hessians and the eager modes.

``tests/test_hvp_modes.py`` runs the mode through its dense-Hessian products, micro-batches and
top eigenvalues on six losses (``HVP_MODES``); this file checks what only this mode has: the
difference level on compiled gradients, the fall-back to eager functions when compiling fails,
and the refusal of train-mode dropout.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from catapult.curvature import HessianOperator, compiled
from catapult.curvature.hessian import math_attention
from dense_curvature import dense_hessian
from test_coarse_start import tiny_gpt
from test_spectrum import small_problem
from torch_features import needs_compile_under_func


def test_compiled_sharpness_keeps_the_tol_promise_on_a_gpt():
    # a small batch: the finite-difference level runs on compiled gradients, the exact solve
    # on compiled products; the reported bound must cover the actual error (float32 only: each
    # dtype compiles the GPT again, ~30 s)
    model, loss_fn, batch = tiny_gpt(seed=1)
    with math_attention():
        top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-3, seed=1, dtype=torch.float32,
                             hvp="compiled")
    assert est.converged and est.error_bound <= 1e-3 and est.coarse_matvecs > 0
    # the bound covers the error up to the rounding of the float32 products
    assert abs(est.value - top) / abs(top) <= est.error_bound + 1e-6


def test_compiled_gradient_and_difference_match_eager():
    model, loss_fn, batch = small_problem(seed=4)
    eager = HessianOperator(model, loss_fn, batch)
    fast = HessianOperator(model, loss_fn, batch, hvp="compiled")
    assert fast.loss == pytest.approx(eager.loss, rel=1e-12)
    assert torch.allclose(fast.gradient(), eager.gradient(), rtol=1e-12, atol=1e-14)
    v = torch.randn(eager.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = eager(v)
    # one-sided differences at h = 1.5e-8 in float64: O(h) truncation, ~1e-8 of the product
    assert torch.linalg.vector_norm(fast.forward_difference(v) - exact) <= 1e-6 * torch.linalg.vector_norm(exact)
    assert fast.matvecs == 0


def test_a_failed_compile_falls_back_to_the_eager_function(monkeypatch):
    def broken(*args):   # (dynamo's own exception type: an error of the user's code is raised as it is)
        raise torch._dynamo.exc.TorchRuntimeError("inductor: no C++ compiler\nsecond line")

    monkeypatch.setattr(compiled, "compile_failures", {})
    monkeypatch.setitem(compiled._COMPILED, "product", broken)
    model, loss_fn, batch = small_problem(seed=5)
    op = HessianOperator(model, loss_fn, batch, hvp="compiled")
    v = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="torch.compile failed on the product .*no C\\+\\+ compiler"):
        got = op(v)
    want = dense_hessian(model, loss_fn, batch) @ v
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert compiled.compile_failures == {"product": "TorchRuntimeError: inductor: no C++ compiler"}
    assert torch.allclose(op(v), want, rtol=1e-10, atol=1e-12)  # eager from then on, no new warning


def test_an_error_of_the_loss_itself_is_raised_as_it_is(monkeypatch):
    monkeypatch.setattr(compiled, "compile_failures", {})
    refuse = {"now": False}

    def loss_fn(out, target):
        if refuse["now"]:
            raise ValueError("this loss refuses")
        return out.square().mean()

    op = HessianOperator(nn.Linear(3, 2), loss_fn, (torch.randn(4, 3), torch.zeros(4)), hvp="compiled")
    refuse["now"] = True
    with pytest.raises(ValueError, match="this loss refuses"):
        op(torch.ones(op.numel))
    # the caller's error, not the compiler's (a torch that cannot compile the transforms records its own reason)
    assert compiled.compile_failures == {} or not compiled.transforms_compile()
    assert not any("this loss refuses" in reason for reason in compiled.compile_failures.values())


def test_train_mode_dropout_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.Linear(4, 1))
    batch = (torch.randn(5, 3), torch.randn(5, 1))
    with pytest.raises(ValueError, match="hvp='compiled': module '1' is a Dropout in train mode"):
        HessianOperator(model, nn.MSELoss(), batch, hvp="compiled")
    HessianOperator(model.eval(), nn.MSELoss(), batch, hvp="compiled")  # eval mode: no mask


def test_train_mode_batchnorm_and_frozen_parameters():
    # batch statistics couple the samples (a Hessian across them), the running statistics must
    # stay as they were, and a frozen parameter enters as a constant
    import copy

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    model[0].bias.requires_grad_(False)
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    before = {n: b.clone() for n, b in model.named_buffers()}
    H = dense_hessian(copy.deepcopy(model), nn.MSELoss(), batch)
    op = HessianOperator(model, nn.MSELoss(), batch, hvp="compiled")
    v = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert op.numel == H.shape[0] == sum(p.numel() for p in model.parameters()) - 5
    assert torch.allclose(op(v), H @ v, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


@needs_compile_under_func
def test_a_torch_compiled_model_is_measured_with_products_it_can_differentiate():
    # a model the user compiled for training (torch.compile's OptimizedModule, here a compiled
    # block inside it): "auto" took double backprop, which compiled graphs do not support
    # ("aot_autograd does not currently support double backward") at the first product
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
    model = nn.Sequential(block, nn.Linear(6, 2))
    batch = (torch.randn(10, 3), torch.randn(10, 2))
    loss_fn = nn.MSELoss()
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    model[0] = torch.compile(block)
    assert catapult.sharpness(model, loss_fn, batch, tol=1e-6).value == pytest.approx(top, rel=1e-4)
    with pytest.raises(ValueError, match="hvp='double_backprop' cannot differentiate a torch.compile'd model"):
        catapult.sharpness(model, loss_fn, batch, hvp="double_backprop")


@pytest.mark.parametrize("mode", ["compiled", "forward_over_reverse"])
@pytest.mark.parametrize("dynamo", [True, False])
def test_torch_22s_dynamo_error_under_torch_func_names_the_torch_not_the_models_forward(dynamo, mode):
    # torch 2.2.2's dynamo, tracing hvp='compiled' under torch.func, raised its own
    # InternalTorchDynamoError "Cannot access data pointer of Tensor that doesn't have storage" for
    # any model: catapult said the model's forward read a tensor's memory (NumPy, .data_ptr()).
    # 2.13 traces it, so the product raises 2.2's error here; the same words from the model's
    # own code keep the forward's message.
    import torch._dynamo.exc as dynamo_exc

    from catapult.curvature.torch_errors import named_missing_derivatives

    words = "Cannot access data pointer of Tensor that doesn't have storage"
    error = dynamo_exc.InternalTorchDynamoError(words) if dynamo else RuntimeError(words)

    # forward_over_reverse (a compiled function the model calls, on 2.2.2): the same misreading
    class Op:
        @named_missing_derivatives
        def product(self):
            raise error

    op = Op()
    op.mode = mode
    with pytest.raises(ValueError) as refusal:
        op.product()
    if dynamo:
        assert f"torch {torch.__version__}'s torch.compile" in str(refusal.value)
        way_out = "hvp='forward_over_reverse'" if mode == "compiled" else "hvp='finite_difference'"
        assert way_out in str(refusal.value) and "reads a tensor" not in str(refusal.value)
    else:
        assert "reads a tensor's memory" in str(refusal.value)
