"""A loss_fn that returns a complex scalar (a loss built from FFT features, missing its ``.real`` or
``.abs()``) has no real Hessian: every curvature function and ``critical_lr`` refuse it with a
ValueError naming the dtype. They raised torch's RuntimeError from deep inside instead: "grad can
be implicitly created only for real scalar outputs" (double backprop, ``memory='lean'``) or "value
cannot be converted to type double without overflow" (``float()`` of the loss: GGN, the
forward-over-reverse and finite-difference products, micro-batches, ``critical_lr``)."""
from __future__ import annotations

import pytest
import torch

import catapult

MESSAGE = r"loss_fn must return a real scalar tensor, got dtype torch\.complex64$"


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    batch = (torch.randn(12, 3), torch.randn(12, 2))

    def complex_loss(outputs, targets):   # the spectrum of the residual, its .abs() forgotten
        return (torch.fft.fft(outputs - targets) ** 2).mean()

    return model, complex_loss, batch


CALLS = {
    "sharpness": lambda m, f, b: catapult.sharpness(m, f, b),
    "sharpness_lean": lambda m, f, b: catapult.sharpness(m, f, b, memory="lean"),
    "sharpness_chunks": lambda m, f, b: catapult.sharpness(m, f, b, chunk_size=4),
    "sharpness_fd": lambda m, f, b: catapult.sharpness(m, f, b, hvp="finite_difference"),
    "top_eigenpairs_ggn": lambda m, f, b: catapult.top_eigenpairs(m, f, b, k=2, curvature="ggn"),
    "top_eigenpairs_forward": lambda m, f, b: catapult.top_eigenpairs(m, f, b, k=2, hvp="forward_over_reverse"),
    "hessian_trace": lambda m, f, b: catapult.hessian_trace(m, f, b, matvecs=6),
    "spectral_density": lambda m, f, b: catapult.spectral_density(m, f, b, runs=1, steps=2),
    "preconditioned_sharpness": lambda m, f, b: catapult.preconditioned_sharpness(
        m, f, b, torch.optim.Adam(m.parameters(), lr=1e-3)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_complex_loss_is_refused_by_the_curvature_functions(name):
    model, loss_fn, batch = problem()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="^" + MESSAGE):
        CALLS[name](model, loss_fn, batch)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_complex_loss_is_refused_by_critical_lr():
    model, loss_fn, batch = problem()
    with pytest.raises(ValueError, match="^critical_lr: " + MESSAGE):
        catapult.critical_lr(model, loss_fn, batch, torch.optim.SGD(model.parameters(), lr=0.1))
