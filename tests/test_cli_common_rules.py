"""Two rules of :mod:`catapult.cli.common` that survived mutation under the CLI tests: the
``--threads`` ceiling is 4 per CPU (at least 64), which a 2-core test machine never reaches, and a
key given twice is found with spaces around it (``load_config`` strips them, so the later one
would have been taken silently)."""
from __future__ import annotations

import argparse

import pytest

from catapult.cli import common
from catapult.config import ConfigError


@pytest.mark.parametrize("cpus, most", [(None, 64), (2, 64), (16, 64), (17, 68), (32, 128)])
def test_the_thread_ceiling_is_four_per_cpu_and_at_least_64(monkeypatch, cpus, most):
    monkeypatch.setattr(common.os, "cpu_count", lambda: cpus)
    assert common.max_threads() == most
    assert common.threads_problem(most) is None and f"(at most {most})" in common.threads_problem(most + 1)


def test_a_key_given_twice_is_found_with_spaces_around_it():
    args = argparse.Namespace(overrides=["model.width=8", " model.width =9"], device=None)
    with pytest.raises(ConfigError, match="model.width: given twice on the command line"):
        common.overrides_from_args(args)


def test_the_config_loader_strips_an_overrides_key(tmp_path):
    # why the duplicate check must strip: the loader takes " model.width =9" for model.width
    from catapult.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("model: {width: 8}\n")
    assert load_config(path, [" model.width =9"])["model"]["width"] == 9
