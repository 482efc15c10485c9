"""A number's text means one thing whether it is written in the config file or given as a
``key=value`` override: the file's rule is the reference. ``seed=010`` on the command line ran
seed 10 where ``seed: 010`` in a file is refused (YAML 1.1 reads it as octal 8), ``09`` was 9
there and text here, and a float past 2**53 (``seed: 1.0e+30``, a YAML float: it has a '.')
rounded to 1000000000000000019884624838656 where ``1e30`` is read exactly. Truth: the file's
reading, Python's ``int`` of the digits written and ``10**30``."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult import config as C
from catapult.config.io import parse_override


def _both(tmp_path, key: str, text: str):
    """The file's and the override's outcome for ``key: text``: the value, or the ConfigError's text."""
    outcomes = []
    for body, overrides in ((f"{key}: {text}\n", []), ("{}\n", [f"{key}={text}"])):
        path = tmp_path / "c.yaml"
        path.write_text(body)
        try:
            outcomes.append(C.load_config(path, overrides)[key])
        except C.ConfigError as err:
            outcomes.append(str(err))
    return outcomes


@pytest.mark.parametrize("text, words", [
    ("010", "reads 010 as 8 (octal)"), ("-010", "reads -010 as -8 (octal)"), ("0_10", "reads 0_10 as 8 (octal)"),
    ("1:30", "reads 1:30 as 90 (base 60)"), ("[010, 1]", "reads 010 as 8 (octal)"),   # (a list: a grid's values)
    ("09", "'09' (str): YAML reads digits after a leading zero as text"),
    ("007", "reads 007 as 7 (octal)"),
    ("1.0e+30", "a float is exact only up to 2**53 and this one is 1000000000000000019884624838656"),
    ("12345678901234567.0", "exact only up to 2**53 and this one is 12345678901234568"),
])
def test_a_number_refused_in_the_file_is_refused_on_the_command_line_naming_the_key(tmp_path, text, words):
    from_file, from_override = _both(tmp_path, "seed", text)
    assert isinstance(from_file, str) and isinstance(from_override, str), (from_file, from_override)
    assert words in from_file and words in from_override
    assert "seed" in from_override


@pytest.mark.parametrize("text, value", [
    ("10", 10), ("0", 0), ("1e30", 10 ** 30), ("12345678901234567e3", 12345678901234567000),
    ("9007199254740992.0", 2 ** 53), ("0x10", 16),
])
def test_a_number_the_file_reads_is_read_alike_on_the_command_line(tmp_path, text, value):
    # (replaces the tests that pinned the override's base-10 reading of 010)
    assert _both(tmp_path, "seed", text) == [value, value]
    assert parse_override("data.root='010'") == ("data.root", "010")   # a quoted value keeps its text
    digits = "9" * 5000   # past int()'s 4,300 digits: text, refused by the key (not a traceback)
    assert parse_override(f"seed={digits}") == ("seed", digits)


def test_the_cli_refuses_a_leading_zero_override_with_exit_2_naming_the_key(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits, n_train: 16, n_test: 8}\nmodel: {width: 4, depth: 2}\n")
    code = cli.main(["train", str(config), "seed=010", "--out", str(tmp_path / "run"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "seed" in err and "010 as 8 (octal)" in err
    assert not (tmp_path / "run").exists()
