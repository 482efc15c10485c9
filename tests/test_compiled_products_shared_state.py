"""hvp='compiled' against independent truth where its own forward differs from the eager
operators': a Parameter used under two names (the swap must tie them), a ``loss_fn`` that reads the
model's weight itself (the loss must run inside the swap), and the process-wide attention-kernel
flags a compiled call saves and puts back (they must come back as the user set them, not all on).
Truth: the dense float64 Hessian of the same function."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import catapult
from dense_curvature import dense_hessian
from test_curvature_tied import SharedWeight, _problem
from test_loss_reads_parameters import problem


def _compiled(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return catapult.sharpness(*args, hvp="compiled", **kwargs)


def test_a_weight_under_two_names_is_one_parameter_to_the_compiled_products():
    model, batch = _problem(SharedWeight)
    truth = np.linalg.eigvalsh(dense_hessian(model, F.cross_entropy, batch).numpy())[-1]
    est = _compiled(model, F.cross_entropy, batch, tol=1e-10)
    assert est.converged and est.value == pytest.approx(truth, rel=1e-9)
    assert model.w2 is model.a.weight


def test_a_loss_reading_the_models_weight_is_differentiated_through_it_when_compiled():
    model, batch, truth = problem()

    def loss_fn(hidden, labels):
        return F.cross_entropy(hidden @ model.emb.weight.T, labels)

    est = _compiled(model, loss_fn, batch, tol=1e-10)
    assert est.converged and est.value == pytest.approx(truth[0], rel=1e-9)


def test_a_compiled_call_leaves_the_attention_kernels_as_the_user_set_them():
    # _run records the flags before the call and puts them back after it: recorded as anything but
    # what they were, a user's enable_flash_sdp(False) came back on after every compiled call
    model, batch = _problem(SharedWeight)
    before = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()
    try:
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        _compiled(model, F.cross_entropy, batch, max_iter=3)
        assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                torch.backends.cuda.math_sdp_enabled()) == (False, False, True)
    finally:
        torch.backends.cuda.enable_flash_sdp(before[0])
        torch.backends.cuda.enable_mem_efficient_sdp(before[1])
