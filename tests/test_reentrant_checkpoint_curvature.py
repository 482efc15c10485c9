"""A model that calls ``torch.utils.checkpoint(..., use_reentrant=True)`` in its forward: every
curvature function raised torch's own RuntimeError ("incompatible with .grad()"), and
``hvp='compiled'`` a misleading one (a custom Function without setup_context: "use
double_backprop"). They are refused with a ValueError naming ``use_reentrant=False``, under which
the same model is measured (checked against the dense Hessian of the model without checkpoint)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import catapult
from dense_curvature import dense_hessian


class Checkpointed(nn.Module):
    def __init__(self, reentrant):
        super().__init__()
        self.first, self.out = nn.Linear(3, 4), nn.Linear(4, 2)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.reentrant = reentrant

    def forward(self, x):
        h = torch.tanh(self.first(x))
        if self.reentrant is None:
            return self.out(self.block(h))
        return self.out(checkpoint(self.block, h, use_reentrant=self.reentrant))


def _setup():
    torch.manual_seed(0)
    model = Checkpointed(True).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    return model, batch


CALLS = {
    "sharpness": lambda m, b, **kw: catapult.sharpness(m, nn.MSELoss(), b, **kw),
    "top_eigenpairs": lambda m, b, **kw: catapult.top_eigenpairs(m, nn.MSELoss(), b, k=2, **kw),
    "hessian_trace": lambda m, b, **kw: catapult.hessian_trace(m, nn.MSELoss(), b, matvecs=6, **kw),
    "spectral_density": lambda m, b, **kw: catapult.spectral_density(m, nn.MSELoss(), b, runs=1, steps=4, **kw),
}


@pytest.mark.parametrize("kwargs", [{}, {"hvp": "finite_difference"}, {"hvp": "forward_over_reverse"},
                                    {"hvp": "compiled"}, {"curvature": "ggn"}, {"chunk_size": 3},
                                    {"hvp": "finite_difference", "chunk_size": 3}])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_reentrant_checkpoint_is_refused_naming_the_way_out(call, kwargs):
    # spectral_density takes curvature="ggn" too (it was skipped here as "the Hessian only")
    model, batch = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="use_reentrant=True.*pass use_reentrant=False"):
            CALLS[call](model, batch, **kwargs)


def test_the_way_out_is_measured():
    model, batch = _setup()
    model.reentrant = False
    plain = Checkpointed(None).double()
    plain.load_state_dict(model.state_dict())
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    for kwargs in ({}, {"hvp": "finite_difference"}):
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9, **kwargs)
        assert est.converged and est.value == pytest.approx(truth, rel=1e-8), kwargs


def test_a_failed_compiled_call_leaves_saved_tensor_hooks_on():
    # torch.compile'd torch.func.grad that raised inside (a non-reentrant checkpoint, whose saved-tensor
    # hooks torch.func refuses) left saved-tensor hooks disabled for the whole process: every later
    # checkpoint call, the user's own training's included, raised "torch.func ... don't yet support
    # saved tensor hooks"
    # (and it left scaled_dot_product_attention on its math kernel alone, flash and memory-efficient
    # off, for the whole process: the user's training ran on the slower kernel, with other numerics)
    model, batch = _setup()
    model.reentrant = False
    kernels = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
               torch.backends.cuda.math_sdp_enabled())
    assert kernels == (True, True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="hvp='compiled': torch.func cannot differentiate a forward that uses "
                                             "saved-tensor hooks"):
            catapult.sharpness(model, nn.MSELoss(), batch, hvp="compiled")
    assert torch._C._autograd._saved_tensors_hooks_is_enabled()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled()) == kernels
    nn.MSELoss()(model(batch[0]), batch[1]).backward()     # the user's own training step
    plain = Checkpointed(None).double()
    plain.load_state_dict(model.state_dict())
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-9)
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


def test_critical_lr_refuses_a_reentrant_checkpoint_naming_the_way_out():
    # before: torch's raw RuntimeError from the gradient (autograd.grad)
    model, batch = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="critical_lr: the model calls torch.utils.checkpoint with "
                                             "use_reentrant=True.*pass use_reentrant=False"):
            catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    # the way out: the same search as the model without checkpoint (the same function)
    model.reentrant = False
    plain = Checkpointed(None).double()
    plain.load_state_dict(model.state_dict())
    out = catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    ref = catapult.critical_lr(plain, nn.MSELoss(), batch, torch.optim.SGD(plain.parameters(), lr=0.1))
    assert (out.lower, out.upper) == (ref.lower, ref.upper)


class _Torch22Checkpoint(torch.autograd.Function):
    """The block's pass through, whose backward raises what torch 2.2's reentrant checkpoint
    raised under autograd.grad (its words differ from newer torch's)."""

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("Checkpointing is not compatible with .grad() or when an `inputs` parameter is passed "
                           "to .backward(). Please use .backward() and do not pass its `inputs` argument.")


@pytest.mark.parametrize("call", ["sharpness", "critical_lr"])
def test_torch_22s_words_for_a_reentrant_checkpoint_are_refused_alike(call):
    # on torch 2.2.2 every curvature call and critical_lr let torch's raw RuntimeError through:
    # only the newer words ("When use_reentrant=True, ...") were recognised
    model, batch = _setup()
    model.reentrant = None
    model.block.register_forward_hook(lambda module, args, out: _Torch22Checkpoint.apply(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="use_reentrant=True.*pass use_reentrant=False"):
            if call == "critical_lr":
                catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
            else:
                catapult.sharpness(model, nn.MSELoss(), batch)
