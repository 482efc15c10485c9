"""A coordinate check's run config is checked as the check builds its models: a problem between
keys that no model has (each sets its own density, static masks) does not refuse it; one that
every model has is still refused, with its line in the file."""
from __future__ import annotations

import pytest
import yaml

from catapult import config as cfg
from catapult.engine.coord_check_study import load_coord_check


def _config(tmp_path, model=None, **coord):
    config = {"name": "cc", "data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 4},
              "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "activation": "gelu", **(model or {})},
              "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 1e-3}, "train": {"batch_size": 8},
              "coord_check": {"densities": [0.25, 0.5, 1.0], "parametrizations": ["sp"], "seeds": [0], "steps": 2,
                              **coord}}
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_rigl_config_at_the_default_density_checks_over_its_densities(tmp_path):
    # refused: "model.sparsity.method: rigl changes masks: set model.density < 1", for the
    # model.density (1, the default) that a check over coord_check.densities never builds
    path = _config(tmp_path, {"sparsity": {"method": "rigl", "update_every": 5}})
    with pytest.raises(cfg.ConfigError):
        cfg.load_config(path)
    config, spec = load_coord_check(path)
    assert config["model"]["sparsity"]["method"] == "rigl" and spec["densities"] == [0.25, 0.5, 1.0]


def test_a_problem_of_every_model_is_still_refused_with_its_line(tmp_path):
    path = _config(tmp_path, {"sparsity": {"method": "rigl", "update_every": 5}})
    text = path.read_text().replace("name: adam", "name: adam\n  momentum: 0.9")
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as refused:
        load_coord_check(path)
    assert refused.value.keys == ["optimizer.momentum"]
    line = text.splitlines().index("  momentum: 0.9") + 1
    assert f"(cc.yaml line {line}, column 3)" in str(refused.value)
