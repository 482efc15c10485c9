"""The step rules both engines share (:mod:`catapult.engine.step`) at their boundaries, against
hand-computed values: the collapsed-output test."""
from __future__ import annotations

import pytest
import torch

from catapult.engine.step import output_collapsed


# Mutation pass 22 (EP10): all-zero outputs count as collapsed (0 <= rtol * 0)
@pytest.mark.parametrize("outputs, collapsed", [
    ([[0.0, 0.0], [0.0, 0.0]], True),
    ([[1.0, 2.0], [1.0, 2.0 + 1e-3]], False),
])
def test_a_collapsed_output_is_one_whose_spread_is_within_rtol_of_its_size(outputs, collapsed):
    assert output_collapsed(torch.tensor(outputs, dtype=torch.float64)) is collapsed
