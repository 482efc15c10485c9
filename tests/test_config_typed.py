"""The typed config (pydantic models): declarations by field, messages, YAML places, round trips."""
import ast
from pathlib import Path

import pydantic
import pytest
import yaml

from catapult import config as C
from catapult.config import ConfigError, load_config, parse, validate

# The hand-kept list the ensemble used before the fields declared it (issue 12).
OLD_PER_MEMBER_KEYS = (
    "name", "seed", "optimizer.lr", "optimizer.momentum", "optimizer.betas", "optimizer.eps",
    "optimizer.weight_decay", "schedule", "train.steps", "train.divergence_factor", "eval.sharpness_every",
    "eval.test_every", "eval.sharpness_tol", "eval.sharpness_max_iter",
    "eval.sharpness_start",  # stop 47
)


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _error(mapping) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(mapping)
    return info.value


def test_per_member_declaration_equals_the_old_constant():
    keys = C.per_member_keys()
    assert sorted(keys) == sorted(OLD_PER_MEMBER_KEYS) and len(set(keys)) == len(keys)
    from catapult.sweep.ensemble import PER_MEMBER_KEYS

    assert set(PER_MEMBER_KEYS) == set(OLD_PER_MEMBER_KEYS)
    # the whole schedule section is per member, none of its leaves is declared on its own
    assert not any(k.startswith("schedule.") for k in keys)


def test_known_keys_are_the_leaves_of_the_default_config():
    known = C.known_keys()
    assert known == frozenset(_leaves(C.defaults()))
    assert "optimizer.lr" in known and "schedule" not in known and len(known) == 82   # 56 + eval.sharpness_start (stop 47) + train.fsdp + issue 16: eval.sharpness_memory/spectrum_top_k/spectrum_block_size/trace_matvecs + issue 14: model.widen, data.augment.{flip,crop,mixup}, train.accuracy_failure, eval.lambda0_batches + issue 15: data.tokenizer/vocab_size/cache_dir, model.final_norm, model.sparsity.* (5), train.compile + issue 14 wiring: schedule.rtol, model.channels, data.text_key + stop 65: model.sparsity.supar_density
    assert C.leaf_keys() == list(_leaves(C.defaults()))  # declaration order
    for key in known:  # each leaf has its check, default and doc
        option = C.get(key)
        assert option.default == _get(C.defaults(), key) and option.doc
    with pytest.raises(KeyError):
        C.get("schedule")


def _get(node, key):
    for part in key.split("."):
        node = node[part]
    return node


def test_unknown_key_names_the_key_and_suggests():
    err = _error({"schedule": {"warmup_step": 10}, "eval": {"sharpnes_every": 5}})
    assert err.keys == ["schedule.warmup_step", "eval.sharpnes_every"]
    assert "did you mean 'schedule.warmup_steps'" in str(err)
    assert "did you mean 'eval.sharpness_every'" in str(err)
    # nothing close: the message lists what is valid at that level
    assert "valid keys here: warmup, delta" in str(_error({"schedule": {"zzz": 1}}))
    # a non-string key is an unknown key too
    assert _error({1: 2}).keys == ["1"]


def test_bad_choice_lists_the_allowed_values():
    err = _error({"schedule": {"decay": "exp"}, "model": {"mask_method": "random"}})
    messages = dict(err.problems)
    assert "allowed values: constant, cosine, linear" in messages["schedule.decay"]
    assert "allowed values: exact, bernoulli" in messages["model.mask_method"]
    assert "'exp'" in messages["schedule.decay"]
    # aliases and case map to the declared spelling
    assert validate({"optimizer": {"name": "GiAdam"}})["optimizer"]["name"] == "gi-adam"


def test_out_of_range_number_names_the_key_and_the_range():
    err = _error({"data": {"val_fraction": 1.0}, "train": {"divergence_factor": 1}, "model": {"density": 0}})
    messages = dict(err.problems)
    assert set(messages) == {"data.val_fraction", "train.divergence_factor", "model.density"}
    assert "> 0 and < 1" in messages["data.val_fraction"] and "out of range" in messages["data.val_fraction"]
    assert "> 1" in messages["train.divergence_factor"]
    assert "> 0 and <= 1" in messages["model.density"]
    assert "must not be null" in str(_error({"train": {"steps": None}}))


def test_every_problem_is_reported_at_once_in_config_order():
    err = _error({"zz": 1, "seed": -1, "model": {"width": 0, "wdth": 3}, "eval": {"test_every": "x"}})
    assert err.keys == ["zz", "seed", "model.wdth", "model.width", "eval.test_every"]
    assert str(err).startswith("5 problems in the config:")


def test_yaml_line_and_column_are_named(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seed: 1\noptimizer:\n  name: sdg\nmodel:\n    widht: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    messages = dict(info.value.problems)
    assert messages["optimizer.name"].endswith("(exp.yaml line 3, column 3)")
    assert "did you mean 'model.width'" in messages["model.widht"]
    assert messages["model.widht"].endswith("(exp.yaml line 5, column 5)")
    # an overridden value is not the file's: no place given for it
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optimizer.name=sdgg", "model.widht=1"])
    assert info.value.keys == ["model.widht"]  # overrides check keys first
    path.write_text("seed: 1\noptimizer:\n  name: sdg\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optimizer.name=sdgg"])
    assert info.value.keys == ["optimizer.name"] and "line" not in str(info.value)
    assert C.key_positions("a:\n  b: 1\n  c:\n    d: 2\n") == {"a": (1, 1), "a.b": (2, 3), "a.c": (3, 3),
                                                             "a.c.d": (4, 5)}


def test_dump_then_load_gives_the_same_config(tmp_path):
    config = validate({"name": "trip", "seed": 3, "optimizer": {"name": "adam", "lr": "2^5/lambda0",
                                                               "betas": [0.8, 0.95]},
                       "schedule": {"warmup_steps": 8, "decay": "cosine", "lr_final": 0.0},
                       "eval": {"sharpness_dtype": "float64"}, "model": {"base_width": 64, "alpha_in": 2.0}})
    path = tmp_path / "other_stem.yaml"
    path.write_text(C.dump_config(config))
    assert load_config(path) == config
    # the typed object dumps the same text
    assert C.dump_config(parse(config)) == C.dump_config(config)
    assert list(yaml.safe_load(C.dump_config(config))) == list(C.RunConfig.model_fields)


def test_parse_gives_attribute_access():
    run = parse({"model": {"width": 64, "parametrization": "SP"}, "optimizer": {"lr": "32/lambda0"},
                 "train": {"steps": 2e3}})
    assert isinstance(run, C.RunConfig) and isinstance(run.model, C.ModelConfig)
    assert run.model.width == 64 and run.model.parametrization == "sp"
    assert run.optimizer.lr == "32/lambda0" and C.resolve_lr(run.optimizer.lr, 64.0) == 0.5
    assert run.train.steps == 2000 and isinstance(run.train.steps, int)
    assert run.name == "run" and run.optimizer.betas == [0.9, 0.999]
    assert run.model_dump() == validate(run.model_dump())
    # assignment is checked with the same rule and message
    with pytest.raises(pydantic.ValidationError, match="expected an integer >= 1"):
        run.model.width = 0
    # the cross-key checks hold for parse as for validate
    with pytest.raises(ConfigError) as info:
        parse({"schedule": {"lr_final": 0.01}})
    assert info.value.keys == ["schedule.lr_final"]


def test_text_datasets_match_the_data_layer():
    from catapult.data import TEXT_DATASETS

    assert tuple(C.TEXT_DATASETS) == tuple(TEXT_DATASETS)


def test_config_imports_no_other_catapult_package():
    root = Path(C.__file__).parent
    paths = sorted(root.glob("*.py"))
    assert root / "__init__.py" in paths and len(paths) > 3   # a scan of no files finds nothing
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith("catapult") or name.startswith("catapult.config"), (path, name)
        assert len(path.read_text().splitlines()) < 600, path


def test_an_integer_above_two_to_the_53_is_kept_exactly():
    # through a float, 12345678901234567891 would become ...7892 (or ...7168): another seed
    from catapult.config import validate

    big = 12345678901234567891
    assert float(big) != big
    assert validate({"seed": big})["seed"] == big
    assert validate({"seed": "2e3"})["seed"] == 2000  # numeric text still accepted


def test_a_subclass_dict_field_given_a_list_names_what_it_got():
    """A RunConfig subclass's dict-typed field given a list or a string is a ConfigError naming the
    key and the value it got, like a section's (mutation pass 22b, CV6: pydantic's 'dict_type' error
    then read 'Input should be a valid dictionary', without the value)."""
    class Tagged(C.RunConfig):
        tags: dict[str, float] = {}

    assert validate({"tags": {"a": 1}}, Tagged)["tags"] == {"a": 1.0}
    for bad, shown in (([1, 2], r"\[1, 2\] \(list\)"), ("a", r"'a' \(str\)")):
        with pytest.raises(ConfigError, match=rf"^tags: expected a mapping, got {shown}$"):
            validate({"tags": bad}, Tagged)


def test_a_mapping_with_no_key_list_to_show_reads_without_an_empty_one():
    """A field expecting a mapping whose keys the config cannot list (a dict-typed field, an Optional
    section, a list of sections, a section with no fields) read 'expected a mapping of keys (), got
    [1, 2] (list)'; it reads 'expected a mapping, got ...', naming the field. A section still lists its keys."""
    from typing import Optional

    class Part(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        a: int = 1
        b: float = 2.0

    class Blank(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")

    class Wide(C.RunConfig):
        tags: dict[str, float] = {}
        part: Part = Part()
        maybe: Optional[Part] = None
        parts: list[Part] = []
        blank: Blank = Blank()

    cases = (({"tags": [1, 2]}, "tags: expected a mapping, got [1, 2] (list)"),
             ({"maybe": [1]}, "maybe: expected a mapping, got [1] (list)"),
             ({"parts": [[1]]}, "parts.0: expected a mapping, got [1] (list)"),
             ({"blank": 3}, "blank: expected a mapping, got 3 (int)"),
             ({"part": 3}, "part: expected a mapping of keys (a, b), got 3 (int)"))
    for bad, message in cases:
        with pytest.raises(ConfigError) as info:
            validate(bad, Wide)
        assert str(info.value) == message
        assert info.value.keys == [message.split(":")[0]]
