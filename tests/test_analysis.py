"""catapult.analysis.is_finite_number: the one "measured value" test that the store, the
trajectory figure, the phase/transfer plots and the catapult detector share."""
import math

import numpy as np
import pytest

from catapult.analysis import is_finite_number


@pytest.mark.parametrize("value, expected", [
    (0, True), (-3, True), (2.5, True), (np.float64(1e300), True),  # np.float64 is a float
    (math.nan, False), (math.inf, False), (-math.inf, False), (None, False),
    (True, False), (False, False),  # a flag in a row is not a measurement
    ("1.0", False), ([1.0], False),
])
def test_is_finite_number(value, expected):
    assert is_finite_number(value) is expected
