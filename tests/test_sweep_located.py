"""catapult sweep names where in its config file a problem is, as catapult train does: before, a sweep's
base-config problem read '-3 is out of range; ...' with no '(file line L, column C)' that train gives for
the same key of the same file (load_sweep read the file with read_mapping, without key positions)."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.sweep.spec import load_sweep

TEXT = """name: s
train:
  steps: -3
optimizer:
  lr: 0.1
sweep:
  grid:
    optimizer.lr: [0.1, 0.2]
  seeds: [0, 0]
"""


def _problems(call) -> dict:
    with pytest.raises(cfg.ConfigError) as err:
        call()
    return dict(err.value.problems)


def test_a_base_problem_names_its_line_and_column_as_train_does(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(TEXT)
    swept = _problems(lambda: load_sweep(path))
    trained = _problems(lambda: cfg.load_config(path))
    # steps is on line 3, column 3 of TEXT above; seeds on line 9, column 3
    assert swept["train.steps"].endswith("(grid.yaml line 3, column 3)")
    assert swept["train.steps"] == trained["train.steps"]
    assert swept["sweep.seeds"].endswith("(grid.yaml line 9, column 3)")


def test_an_overridden_key_is_not_placed_in_the_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(TEXT)
    swept = _problems(lambda: load_sweep(path, ["train.steps=-2"]))
    assert "-2 is out of range" in swept["train.steps"] and "line" not in swept["train.steps"]
    assert swept["sweep.seeds"].endswith("(grid.yaml line 9, column 3)")   # still the file's
    swept = _problems(lambda: load_sweep(path, ["sweep.seeds=[1, 1]"]))
    assert "line" not in swept["sweep.seeds"] and swept["train.steps"].endswith("(grid.yaml line 3, column 3)")


def test_a_sweep_that_is_no_mapping_names_its_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: s\n\nsweep: 3\n")
    assert _problems(lambda: load_sweep(path))["sweep"].endswith("(grid.yaml line 3, column 1)")
