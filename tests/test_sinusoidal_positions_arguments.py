"""sinusoidal_positions (public) refuses a context or width that is not a positive integer in its
own words, naming the argument: before, 2.5 and True were torch.zeros' TypeError ('zeros() takes 1
positional argument but 2 were given'), -1 arange's RuntimeError, and 0 gave an empty table."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.models.gpt import sinusoidal_positions


@pytest.mark.parametrize("context, d_model, label, shown", [
    (2.5, 4, "context", "2.5"), (-1, 4, "context", "-1"), (True, 4, "context", "True"), (0, 4, "context", "0"),
    (3, 2.0, "d_model", "2.0"), (3, -2, "d_model", "-2"), (3, 0, "d_model", "0")])
def test_a_bad_size_is_refused_naming_it(context, d_model, label, shown):
    with pytest.raises(ValueError, match=rf"^sinusoidal_positions {label} must be an integer >= 1; got {shown}$"):
        sinusoidal_positions(context, d_model)
    # a NumPy or 0-d tensor integer is a size, as everywhere: the table's own values
    table = sinusoidal_positions(torch.tensor(3), 4, torch.float64)
    assert table.shape == (3, 4) and table[2, 1].item() == math.cos(2.0)
