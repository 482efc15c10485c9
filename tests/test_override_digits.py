"""parse_override's reading of digits YAML keeps as text (mutation pass 13): a command line is read
as written, in base 10, around spaces and with a sign; past 100 digits it stays text (the config
then refuses it naming the key). Truth: Python's int() of the digits as written."""
from __future__ import annotations

import pytest

from catapult.config.io import parse_override


@pytest.mark.parametrize("raw, value", [
    ("010", 10), (" 010", 10), ("010 ", 10),     # YAML 1.1: octal 8; YAML keeps ' 010' as text too
    ("09", 9), ("-09", -9), ("+08", 8),           # no octal digits: YAML keeps them as text, signs included
])
def test_digits_yaml_keeps_as_text_are_read_as_written_in_base_10(raw, value):
    key, got = parse_override(f"model.width={raw}")
    assert (key, got) == ("model.width", value) and type(got) is int


def test_past_100_digits_the_text_stays_text():
    digits = "0" + "9" * 100       # 101 digits (a leading zero: YAML keeps them as text)
    assert parse_override(f"seed={digits}") == ("seed", digits)
    assert parse_override(f"seed={digits[1:]}")[1] == int(digits[1:])   # 100: read
