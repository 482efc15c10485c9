"""A YAML merge list (``<<: [*a, *b]``) whose mappings both set a key: the YAML 1.1 merge rule
takes the first, PyYAML 6.0.4 took the last (``lr`` 0.2 where the rule says 0.1), so such a file is
refused naming the key and the line; merges whose keys do not collide, or that the mapping
itself overrides, read as written."""
from __future__ import annotations

import pytest
import yaml

from catapult import cli
from catapult import config as cfg
from catapult.config.io import safe_yaml

COLLIDING = """\
fast: &fast {name: sgd, lr: 0.1}
slow: &slow {lr: 0.2, momentum: 0.5}
optimizer:
  <<: [*fast, *slow]
"""


def test_a_key_two_merged_mappings_set_is_refused_naming_it_and_the_line(tmp_path):
    path = tmp_path / "merged.yaml"
    path.write_text(COLLIDING)
    with pytest.raises(cfg.ConfigError, match=r"line 4, column 3: 'lr' is set by mappings 1 and 2"):
        cfg.read_mapping(path)


@pytest.mark.parametrize("text, optimizer", [
    # no key in two of the merged mappings: each value as written
    ("a: &a {name: sgd}\nb: &b {lr: 0.2, momentum: 0.5}\noptimizer:\n  <<: [*a, *b]\n",
     {"name": "sgd", "lr": 0.2, "momentum": 0.5}),
    # the mapping's own key wins over every merged one, in every reader
    ("a: &a {lr: 0.1}\nb: &b {lr: 0.2}\noptimizer:\n  <<: [*a, *b]\n  lr: 0.3\n", {"lr": 0.3}),
    # one merged mapping, overridden after it
    ("a: &a {name: sgd, lr: 0.1}\noptimizer:\n  <<: *a\n  lr: 0.4\n", {"name": "sgd", "lr": 0.4}),
])
def test_only_a_collision_is_refused_counting_the_keys_a_nested_merge_brings(text, optimizer):
    assert safe_yaml(text)["optimizer"] == optimizer
    # the same merges beside a list whose second mapping (*d) holds lr only through its own merge of *c
    nested = text + "c: &c {lr: 0.5}\nd: &d {<<: *c, eps: 0.1}\ne: &e {lr: 0.6}\nschedule:\n  <<: [*e, *d]\n"
    with pytest.raises(yaml.YAMLError, match=r"'lr' is set by mappings 1 and 2"):
        safe_yaml(nested)


def test_the_command_line_refuses_it_in_one_line_before_any_work(tmp_path, capsys):
    path = tmp_path / "merged.yaml"
    path.write_text(COLLIDING)
    code = cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "merged.yaml is not valid YAML: line 4, column 3: 'lr' is set by mappings 1 and 2" in err
    assert not (tmp_path / "run").exists()
