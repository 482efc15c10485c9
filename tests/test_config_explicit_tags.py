"""An explicit YAML tag on text it does not match is refused with the key's line and column (exit
2 from the CLI): ``seed: !!bool maybe`` raised PyYAML's KeyError and ``seed: !!timestamp x`` its
AttributeError, each a traceback and exit 1 from ``catapult train``, in a file or an override.
Truth: the text each test writes (where the tag stands) and YAML's own words for the valid forms."""
from __future__ import annotations

import datetime

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.config.io import safe_yaml


def _refused_at_its_place(tmp_path, tagged, kind, capsys):
    """``seed: <tagged>`` in a config file: a ConfigError at line 2, column 7, and exit 2 from
    ``catapult train`` with no run folder made."""
    path = tmp_path / "run.yaml"
    path.write_text(f"name: a\nseed: {tagged}\n")
    with pytest.raises(cfg.ConfigError, match=rf"run.yaml is not valid YAML: line 2, column 7: .* is not a YAML {kind}"):
        cfg.load_config(path)
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"is not a YAML {kind}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tagged, kind", [("!!bool maybe", "boolean"), ("!!timestamp x", "timestamp"),
                                          ("!!timestamp 2001-12-14 nonsense", "timestamp")])
def test_a_tag_on_text_it_cannot_read_is_a_config_error_at_its_place(tmp_path, tagged, kind, capsys):
    _refused_at_its_place(tmp_path, tagged, kind, capsys)
    # on the command line the value stays text, which the key then refuses
    with pytest.raises(cfg.ConfigError, match=r"seed: expected an integer"):
        cfg.validate(cfg.apply_overrides({}, [f"seed={tagged}"]))
    # the tags still read what YAML gives them
    assert safe_yaml("[!!bool yes, !!bool off, !!timestamp 2001-12-14]") == [True, False, datetime.date(2001, 12, 14)]


@pytest.mark.parametrize("tagged, kind", [("!!int ''", "integer"), ("!!int _", "integer"), ("!!float ''", "number"),
                                          ("!!float '_'", "number")])
def test_an_int_or_float_tag_on_empty_text_is_a_config_error_at_its_place(tmp_path, tagged, kind, capsys):
    # PyYAML's int and float constructors read text[0]: empty text (or '_' only, its '_'s dropped) was
    # an IndexError, a traceback and exit 1 from catapult train
    _refused_at_its_place(tmp_path, tagged, kind, capsys)
    # the tags still read what YAML gives them
    assert safe_yaml("[!!int '1_0', !!float '2.5', !!int 0x1f, !!float .inf]") == [10, 2.5, 31, float("inf")]


def test_the_refusal_quotes_at_most_60_characters_of_the_text(tmp_path):
    # a long value under a tag it does not match is quoted by its first 60 characters, not whole
    text = "maybe" + "x" * 995
    path = tmp_path / "run.yaml"
    path.write_text(f"name: a\nseed: !!bool {text}\n")
    with pytest.raises(cfg.ConfigError) as refused:
        cfg.load_config(path)
    said = str(refused.value)
    assert f"line 2, column 7: {text[:60]!r} is not a YAML boolean" in said and text[:61] not in said
