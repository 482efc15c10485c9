"""Config text edges: an override's value may hold '=', a null section takes an override's key,
negative numeric text is a number, and the lr grammar's spelling (stripped, any case of lambda0)."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.sweep.spec import _value_label


def test_an_override_splits_at_its_first_equals_sign():
    assert cfg.parse_override("data.root=/data/a=b.txt") == ("data.root", "/data/a=b.txt")
    assert cfg.apply_overrides({}, ["name=x=y"]) == {"name": "x=y"}


def test_an_override_fills_a_section_the_file_left_null():
    # `augment:` with nothing under it is YAML's null: the override's key goes into a new section
    assert cfg.apply_overrides({"data": {"augment": None}}, ["data.augment.flip=true"]) == \
        {"data": {"augment": {"flip": True}}}


@pytest.mark.parametrize("text, value", [("-1e-3", -0.001), (" -2.5 ", -2.5), ("-.5", -0.5), ("+3", 3.0)])
def test_signed_numeric_text_is_a_number(text, value):
    # YAML 1.1 reads 1e-3 (no dot) as text, so a signed one arrives as text too
    assert cfg.as_float(text, "a number") == value


def test_a_relative_lr_is_stored_stripped_and_lambda0_is_spelt_in_any_case():
    config = cfg.validate({"optimizer": {"lr": "  2^5/lambda0 "}})
    assert config["optimizer"]["lr"] == "2^5/lambda0"
    for spelling in ("32/Lambda0", "32/LAMBDA_0", "32 / lambda_0"):
        assert cfg.parse_lr(spelling) == cfg.LR(32.0, relative=True)
        assert cfg.resolve_lr(spelling, 64.0) == 0.5
        assert _value_label(spelling) == "32/λ0"  # the sweep's axis label reads it the same way


@pytest.mark.parametrize("text", ["seed = 1\n[optimizer]\nlr = 0.1\n", "[run]\nname = tiny\nsteps=5\n",
                                  "optimizer.lr = 0.1\n"])
def test_a_toml_or_ini_file_is_named_as_such(tmp_path, text):
    # YAML reads `key = value` lines as one plain string: the message said "got str" and no more
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path)
    message = str(info.value)
    assert "; it looks like TOML or INI (key = value): a config is YAML, written key: value" \
        in message, message
    assert "\n" not in message


def test_a_plain_word_file_gets_no_toml_hint(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("hello world\n")
    with pytest.raises(cfg.ConfigError, match=r"got str$"):
        cfg.load_config(path)


def test_a_yaml_error_away_from_an_assignment_in_a_string_gets_no_toml_hint(tmp_path):
    # an unclosed '[' on line 3; 'lr = 0.1' is inside the block string of notes: (told 'it looks like TOML')
    path = tmp_path / "run.yaml"
    path.write_text("notes: |\n  lr = 0.1 was too high\nseed: [1\n")
    with pytest.raises(cfg.ConfigError, match=r"is not valid YAML: line 4, column 1") as info:
        cfg.load_config(path)
    assert "TOML" not in str(info.value)


@pytest.mark.parametrize("text, seed", [("1e30", 10 ** 30), ("12345678901234567e3", 12345678901234567000)])
def test_an_integer_in_exponent_text_is_the_number_written_not_its_float(text, seed):
    # YAML leaves `seed: 1e30` as text; read through a float it ran seed 1000000000000000019884624838656
    assert cfg.validate({"seed": text})["seed"] == seed


@pytest.mark.parametrize("text", ["1e-400", "1.0000000000000000001e3", "-1e-400"])
def test_exponent_text_that_is_no_integer_is_refused_though_its_float_is_one(text):
    # 1e-400 is 0.0 as a float and 1.0000000000000000001e3 is 1000.0: they ran seed 0 and 1000
    with pytest.raises(cfg.ConfigError, match=r"seed: expected an integer >= 0, got '"):
        cfg.validate({"seed": text})
