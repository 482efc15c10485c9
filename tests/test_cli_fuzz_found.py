"""Inputs a fuzzer found that ended in a traceback (mutations of the repository's configs run
through the CLI): each is now exit code 2 with one line naming the key, before any work."""
from __future__ import annotations

import pytest

from catapult import cli
from tiny_run import tiny_config


def _error(capsys, tmp_path, command: str, *overrides: str, base: str | None = None) -> str:
    """Run ``catapult COMMAND`` on a tiny config with ``overrides``: exit code 2, one line on
    stderr, no traceback, no run directory; returns the message."""
    config = tmp_path / "tiny.yaml"
    config.write_text(base if base is not None else tiny_config("fuzz"))
    out = tmp_path / "run"
    argv = [command, str(config), *overrides, "--progress", "none", "--threads", "1"]
    if command == "train":
        argv += ["--out", str(out)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "radam"])
def test_a_weight_decay_beyond_float32_is_refused(capsys, tmp_path, optimizer):
    # was RuntimeError "value cannot be converted to type float without overflow" at the first
    # step: torch's coupled L2 is grad.add(param, alpha=weight_decay) in the parameters' dtype
    err = _error(capsys, tmp_path, "train", f"optimizer.name={optimizer}", "optimizer.weight_decay=1e300")
    assert "optimizer.weight_decay" in err and "float32" in err
