"""Python API limits and sweep grids refused with a clear message (issue 13)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from catapult import config as C
from catapult import sharpness
from catapult.sweep import spec as S


@pytest.mark.parametrize("tol", [math.inf, math.nan, 0.0, -1.0, True])
def test_sharpness_refuses_a_tolerance_that_is_not_finite_and_positive(tol):
    model = torch.nn.Linear(3, 1)
    batch = (torch.randn(4, 3), torch.randn(4, 1))
    with pytest.raises(ValueError, match=r"tol must be a finite number in \(0, 1\)"):
        sharpness(model, torch.nn.functional.mse_loss, batch, tol=tol)


def test_a_huge_grid_is_refused_from_its_axis_lengths_before_expansion(monkeypatch):
    # no cell is enumerated on the way to the refusal (10^9 of them): the spec module's only way to
    # enumerate cells, itertools.product of the axes, raises if called (was a wall-clock bound of 5 s)
    def enumerated(*axes):
        raise AssertionError("the grid's cells were enumerated before the refusal")

    monkeypatch.setattr(S, "itertools", SimpleNamespace(product=enumerated))
    section = {"grid": {"model.width": {"range": [1, 1000]}, "train.steps": {"range": [1, 1000]},
                        "seed": {"range": [0, 999]}}}
    with pytest.raises(C.ConfigError) as info:
        S.parse_sweep(section)
    text = str(info.value)
    assert "1,000,000,000 cells" in text and f"{S.MAX_CELLS:,}" in text and len(text) < 1000
    # at the cap it is accepted
    ok = S.parse_sweep({"grid": {"model.width": {"range": [1, 1000]}, "seed": {"range": [0, 99]}}})
    assert ok.size == S.MAX_CELLS


@pytest.mark.parametrize("axis", [{"range": [0, 1e300, 1e-300]}, {"log2": [0, 5000]},
                                  {"log2": [0, 1e300, 1e-300]}])
def test_axes_that_overflow_are_config_errors(axis):
    with pytest.raises(C.ConfigError) as info:
        S.parse_sweep({"grid": {"model.width": axis}})
    assert info.value.keys == ["sweep.grid.model.width"]
