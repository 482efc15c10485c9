"""``catapult.writing.csv_text``: the one writer of catapult's CSV tables. Every float reads back
bit-for-bit, NumPy's included, and any text survives quoting (read back by the standard
``csv`` module, an independent reader)."""
from __future__ import annotations

import csv
import io
import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from catapult.writing import csv_cell, csv_text

_cells = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(),
                   st.floats().map(np.float64))


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@given(st.lists(st.lists(_cells, min_size=3, max_size=3), max_size=6))
def test_every_cell_reads_back_as_written(rows):
    text = csv_text(["a", "b", "c"], rows)
    header, *read = list(csv.reader(io.StringIO(text, newline="")))
    assert header == ["a", "b", "c"]
    assert len(read) == len(rows)
    for written, got in zip(rows, read):
        for value, cell in zip(written, got):
            if value is None:
                assert cell == ""
            elif isinstance(value, float):
                back = float(cell)
                assert (math.isnan(value) and math.isnan(back)) or _bits(back) == _bits(float(value))
            else:
                assert cell == str(value)


def test_a_numpy_float_is_written_as_its_number_not_its_repr():
    # repr(np.float64(0.1)) is "np.float64(0.1)" under NumPy 2, which no reader takes for a number
    assert csv_cell(np.float64(0.1)) == "0.1"
    assert csv_text(["x"], [[np.float64(-2.5e-300)]]).splitlines()[1] == "-2.5e-300"


def test_a_float_subclass_is_written_as_its_number_not_its_str():
    # a float is written by float's own repr, whatever its class prints (here 3 digits)
    class Rounded(float):
        def __str__(self):
            return f"{float(self):.3g}"

    assert str(Rounded(0.123456789)) == "0.123"
    assert csv_cell(Rounded(0.123456789)) == "0.123456789"
