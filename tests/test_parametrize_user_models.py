"""parametrize() on users' models: argument checks, embeddings with padding, re-parametrizing,
models whose only weight layer is the readout, and param_groups through wrappers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import catapult


def mlp(width: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1))


@pytest.mark.parametrize("density", [0.0, -0.5, 1.5, float("inf"), float("nan")])
def test_a_density_outside_0_1_is_a_value_error_naming_it(density):
    # It was a ZeroDivisionError (0), 'math domain error' (< 0), a torch RuntimeError (NaN), or
    # silently accepted (> 1: a "supar" model with density_mult 1.5 and hidden lr / 1.5).
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        catapult.parametrize(mlp(), "supar", base_width=4, density=density)


def test_density_is_checked_even_without_hidden_layers():
    with pytest.raises(ValueError, match="density"):
        catapult.parametrize(nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)), "supar", density=0.0)


def test_a_nan_base_width_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="base_width must be positive"):
        catapult.parametrize(mlp(), "mup", base_width=float("nan"))
