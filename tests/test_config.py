import math
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import Field

from catapult import config as C
from catapult.config import ConfigError, load_config, parse_lr, resolve_lr, validate
from catapult.config.io import parse_override


def _error(mapping) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(mapping)
    return info.value


def test_defaults_fill_every_key_and_validation_is_idempotent():
    cfg = validate({})
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.125, "momentum": 0.0, "betas": [0.9, 0.999],
                                "eps": 1e-8, "weight_decay": 0.0, "v0": "grad", "v_bias_correction": True}
    assert cfg["train"]["batch_size"] is None and cfg["train"]["divergence_factor"] == math.inf
    assert cfg["schedule"]["warmup_steps"] == 1 and cfg["loss"] == "mse" and cfg["name"] == "run"
    assert validate(cfg) == cfg
    # round trip through the YAML a run writes
    assert validate(yaml.safe_load(C.dump_config(cfg))) == cfg


def test_unknown_key_names_the_dotted_key_and_suggests_a_close_match():
    err = _error({"model": {"widht": 128}})
    assert err.keys == ["model.widht"]
    assert "did you mean 'model.width'" in str(err)
    err = _error({"optimiser": {"lr": 0.1}})
    assert "did you mean 'optimizer'" in str(err)
    # a key in the wrong section points to where it lives
    assert "did you mean 'optimizer.lr'" in str(_error({"lr": 0.1}))


def test_bad_enum_value_lists_allowed_values():
    err = _error({"optimizer": {"name": "sdg"}})
    assert err.keys == ["optimizer.name"]
    assert "sgd, adam, adamw" in str(err) and "'sdg'" in str(err)
    assert "mse, cross_entropy" in str(_error({"loss": "l2"}))
    # enumerations match case-insensitively and store the canonical spelling
    assert validate({"model": {"parametrization": "muP"}})["model"]["parametrization"] == "mup"


def test_bad_type_and_out_of_range_name_the_expected_type():
    err = _error({"train": {"steps": "many", "batch_size": 0}, "optimizer": {"momentum": 1.0}})
    messages = dict(err.problems)
    assert set(messages) == {"train.steps", "train.batch_size", "optimizer.momentum"}
    assert "integer" in messages["train.steps"] and "'many'" in messages["train.steps"]
    assert ">= 1" in messages["train.batch_size"]
    assert "< 1" in messages["optimizer.momentum"]
    assert "integer" in str(_error({"seed": 1.5}))
    assert "true or false" in str(_error({"model": {"bias": "yes"}}))
    assert "list of 2 numbers" in str(_error({"optimizer": {"betas": [0.9]}}))
    assert "mapping" in str(_error({"model": 3}))


def test_numeric_text_and_integral_floats_are_accepted():
    cfg = validate({"optimizer": {"name": "adam", "eps": "1e-6", "lr": "1e-3"}, "train": {"steps": 2e3}})
    assert cfg["optimizer"]["eps"] == 1e-6 and cfg["optimizer"]["lr"] == 1e-3
    assert cfg["train"]["steps"] == 2000 and isinstance(cfg["train"]["steps"], int)
    with pytest.raises(ConfigError):
        validate({"train": {"steps": True}})  # bools are not numbers


def test_cross_key_checks():
    err = _error({"schedule": {"lr_final": 0.01}})
    assert err.keys == ["schedule.lr_final"]
    err = _error({"schedule": {"decay": "cosine", "warmup_steps": 100}, "train": {"steps": 50}})
    assert err.keys == ["schedule.decay"]
    assert _error({"data": {"name": "digits", "root": "/x"}}).keys == ["data.root"]


@pytest.mark.parametrize("spec, lam, expected", [
    ("32/lambda0", 50.0, 32 / 50),
    ("2^5/lambda0", 50.0, 32 / 50),
    ("2^-1.5 / lambda_0", 2.0, 2 ** -1.5 / 2),
    ("2**3/lambda0", 4.0, 2.0),
    ("0.5/lambda0", 0.25, 2.0),
    (0.125, None, 0.125),
    ("1e-3", None, 1e-3),
])
def test_lr_grammar(spec, lam, expected):
    assert resolve_lr(spec, lam) == pytest.approx(expected, rel=1e-15, abs=0)
    assert C.lr_needs_lambda0(spec) == (lam is not None)


@pytest.mark.parametrize("bad", ["32/lambda", "x/lambda0", "-1/lambda0", "0", -0.1, "fast", True, [1]])
def test_bad_lr_is_rejected_with_the_grammar(bad):
    err = _error({"optimizer": {"lr": bad}})
    assert err.keys == ["optimizer.lr"] and "lambda0" in str(err)


def test_relative_lr_needs_a_positive_lambda0():
    with pytest.raises(ValueError, match="lambda_0"):
        parse_lr("8/lambda0").resolve(None)
    with pytest.raises(ValueError):
        resolve_lr("8/lambda0", float("nan"))


def test_overrides_are_yaml_scalars_on_dotted_keys(tmp_path):
    path = tmp_path / "exp_one.yaml"
    path.write_text("optimizer:\n  lr: 0.1\nmodel:\n  width: 64\n")
    cfg = load_config(path, ["optimizer.name=adam", "optimizer.lr=32/lambda0", "optimizer.betas=[0.9, 0.95]", "data.n_train=null",
                             "train.steps=10", "eval.sharpness_tol=1e-4"])
    assert cfg["name"] == "exp_one"  # defaults to the file's stem
    assert cfg["optimizer"]["lr"] == "32/lambda0" and cfg["optimizer"]["betas"] == [0.9, 0.95]
    assert cfg["model"]["width"] == 64 and cfg["train"]["steps"] == 10
    assert math.isclose(cfg["eval"]["sharpness_tol"], 1e-4)


def test_bad_overrides_collect_every_problem(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optimzer.lr=3", "data=3", "nonsense", "optimizer.name=rmsprop"])
    err = info.value
    assert err.keys == ["optimzer.lr", "data", "nonsense"]  # key problems first; values after
    assert "did you mean 'optimizer.lr'" in str(err)
    with pytest.raises(ConfigError, match="allowed values: sgd, adam, adamw"):
        load_config(path, ["optimizer.name=rmsprop"])


@pytest.mark.parametrize("override, words", [
    ("data.root=/data/a #2.txt", "YAML reads the '#' in '/data/a #2.txt' as a comment"),
    ("name=#run", "YAML reads the '#' in '#run' as a comment"),
    ("data.root=/data/my: file.txt", "YAML reads '/data/my: file.txt' as a mapping"),
])
def test_an_override_that_yaml_would_change_is_refused_with_the_quoting(tmp_path, override, words):
    # a plain path with ' #' was cut to what came before it (a YAML comment), silently; one with
    # ': ' became a mapping, refused as "got {...} (dict)" with no word on why
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: {words}.*quote the value: {key}='\.\.\.'"):
        load_config(path, [override])
    quoted = override.replace("=", "='", 1) + "'"
    assert parse_override(quoted) == (key, override.split("=", 1)[1])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_schema_is_extensible_by_subclassing():
    # the typed models replace add_choices/add_section: subclass a section (a wider Literal, a
    # new field) and RunConfig, and validate with model=
    class LionOptimizer(C.OptimizerConfig):
        name: Annotated[Literal["sgd", "adam", "adamw", "radam", "gi-adam", "lion"], C.choice()] = "sgd"

    class Repeats(C.Section):
        repeats: Annotated[int, C.integer(low=1)] = 1

    class Extended(C.RunConfig):
        optimizer: LionOptimizer = Field(default_factory=LionOptimizer)
        sweep: Repeats = Field(default_factory=Repeats)

    assert validate({"optimizer": {"name": "lion"}}, model=Extended)["optimizer"]["name"] == "lion"
    with pytest.raises(ConfigError, match="lion"):
        validate({"optimizer": {"name": "lamb"}}, model=Extended)
    assert validate({"sweep": {"repeats": 3}}, model=Extended)["sweep"]["repeats"] == 3
    with pytest.raises(ConfigError) as info:
        validate({"sweep": {"repeats": 0}}, model=Extended)
    assert info.value.keys == ["sweep.repeats"]
    assert C.get("sweep.repeats", Extended).default == 1
    # the base config is untouched
    assert "lion" in str(_error({"optimizer": {"name": "lion"}}))
    assert _error({"sweep": {"repeats": 3}}).keys == ["sweep"]
