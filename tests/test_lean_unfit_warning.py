"""memory='lean''s warning that 3x a training step cannot be met names the caller's line and the
basis the solve uses. It named a line of catapult's (stacklevel=4: ``spectrum.py`` under
``top_eigenpairs``, ``sharpness.py`` under ``sharpness``), so Python's default filter showed it once
per process whatever the call site; and under ``top_eigenpairs`` it said "using the minimum basis of
3" where the solve used its restart floor (62 vectors for k=26)."""
from __future__ import annotations

import warnings

import pytest
import torch

import catapult
from catapult.curvature import spectrum
from catapult.curvature.top_k import restart_floor


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    batch = (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64))
    return model, torch.nn.MSELoss(), batch


def caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    unfit = [w for w in seen if "cannot be met" in str(w.message)]
    assert len(unfit) == 1, [str(w.message) for w in seen]
    return result, unfit[0]


@pytest.mark.parametrize("k, block", [(26, 1), (5, 2)])
def test_top_eigenpairs_names_the_basis_it_uses_at_the_callers_line(monkeypatch, k, block):
    model, loss_fn, batch = tiny()
    used = {}
    solve = spectrum.lanczos_top_k

    def spy(*args, **kwargs):
        used["basis"] = kwargs["max_basis"]
        return solve(*args, **kwargs)

    monkeypatch.setattr(spectrum, "lanczos_top_k", spy)
    _, warning = caught(lambda: catapult.top_eigenpairs(model, loss_fn, batch, k=k, block_size=block, memory="lean"))
    assert used["basis"] == restart_floor(k, block, 32)   # (3k + b, or 2k + 10 + b - 1 past 32)
    assert str(warning.message).endswith(f"; using a basis of {used['basis']}")
    assert warning.filename == __file__


def test_sharpness_with_an_explicit_basis_names_the_minimum_at_the_callers_line():
    model, loss_fn, batch = tiny()
    _, warning = caught(lambda: catapult.sharpness(model, loss_fn, batch, memory="lean", max_basis=3))
    assert str(warning.message).endswith("; using a basis of 3")
    assert warning.filename == __file__
