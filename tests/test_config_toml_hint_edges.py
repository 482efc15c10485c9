"""The TOML / INI hint of a refused config at its edges (mutation pass 15): an INI section's
indented ``key = value`` lines are named, while a YAML syntax error, a YAML list, or an ``=`` inside
a plain sentence get no hint. Truth: the formats of the texts as written."""
from __future__ import annotations

import pytest

from catapult import config as cfg

HINT = "; it looks like TOML or INI (key = value)"


def _message(tmp_path, text) -> str:
    path = tmp_path / "run.cfg"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path)
    return str(info.value)


def test_an_ini_section_with_indented_keys_is_named(tmp_path):
    assert HINT in _message(tmp_path, "[run]\n    name = tiny\n    steps = 5\n")


@pytest.mark.parametrize("text, ends", [
    ("model: [1, 2\n", None),                  # YAML, a bracket left open: its syntax error alone
    ("- |\n  seed = 1\n", "got list"),           # a YAML list (of a text holding '=')
    ("hello a = b\n", "got str"),                # a sentence, no key = value line
])
def test_yaml_that_is_no_mapping_gets_no_toml_hint(tmp_path, text, ends):
    message = _message(tmp_path, text)
    assert HINT not in message, message
    if ends:
        assert message.endswith(ends), message
