"""``catapult coord-check`` keeps the ``coord_check.steps`` batches every model trains on, built
before the first model; coord_check.steps=1e9 (the engine's step limit, accepted) filled the RAM
building them (10 GB and growing within a minute, no row) until the kernel killed it. Steps whose
batches would take more than half the machine's memory are now refused, exit 2 naming
coord_check.steps, before any model is built. (The machine's memory is made small here, so a
run of 300 steps stands for 1e9 on this one.)"""
from __future__ import annotations

import pytest
from test_coord_check_cli import _config

from catapult.cli import main
import catapult.engine.coord_check_study as study

pytestmark = pytest.mark.usefixtures("single_thread")


def test_steps_whose_batches_exceed_the_memory_are_refused_naming_the_key(tmp_path, capsys, monkeypatch):
    # one batch: inputs and targets of 8 x 16 int64 tokens = 2048 bytes; 300 of them 614,400 > 100,000 / 2
    monkeypatch.setattr(study, "_machine_memory", lambda device: 100_000, raising=False)  # absent before the check
    path = _config(tmp_path, densities=[0.5, 1.0], parametrizations=["sp"], steps=300)
    code = main(["coord-check", str(path), "--out", str(tmp_path / "out"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "coord_check.steps" in err and "300 batches of 2048 bytes" in err
    assert not (tmp_path / "out").exists()

    # a few steps, whose batches fit, still run (2 x 2048 bytes)
    assert main(["coord-check", str(path), "coord_check.steps=2", "--out", str(tmp_path / "out"),
                 "--progress", "none"]) == 0
    assert (tmp_path / "out" / "coord_check.csv").read_text().count("\n") == 1 + 2 * 2 * 4  # densities x steps x blocks
