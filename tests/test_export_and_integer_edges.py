"""Two edges left by the last stop's tests (mutation pass 13): the export's ``lambda_0_converged``
is given only where the cell's summary holds a measured lambda_0 (a NaN lambda_0 is stored as
null: its mark is of no value there), and an integer key takes the exponent text YAML leaves
unparsed with a signed exponent (``2e+3``) as it takes ``2e3``, and a real key a NumPy float32. Truth: cell_marks' and integer()'s
docstrings."""
from __future__ import annotations

from catapult.config.options import integer
from catapult.sweep.store_export import cell_marks


def test_a_cell_without_a_measured_lambda0_has_no_lambda0_mark():
    assert cell_marks(None, {"id": 1, "summary": {"lambda_0": None, "lambda_0_converged": False}}) == {}
    assert cell_marks(None, {"id": 1, "summary": {"lambda_0": 2.5, "lambda_0_converged": True}}) == {"lambda_0_converged": 1}


def test_an_integer_key_takes_exponent_text_with_a_signed_exponent():
    check = integer(low=1).check
    assert check("2e+3") == check("2e3") == check("2E+03") == 2000


def test_a_real_key_takes_a_numpy_float32():
    # a generated grid's values (np.float32) were refused as no number
    import numpy as np

    from catapult.config.options import number

    assert number(low=0.0).check(np.float32(0.25)) == 0.25 and number(low=0.0).check(np.int64(3)) == 3.0
