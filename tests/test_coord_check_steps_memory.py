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


def _refused_at_300_steps(tmp_path, capsys):
    """coord-check at 300 steps of 8 x 16 int64 batches exits 2 naming the key, before any output."""
    path = _config(tmp_path, densities=[0.5, 1.0], parametrizations=["sp"], steps=300)
    code = main(["coord-check", str(path), "--out", str(tmp_path / "out"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "coord_check.steps" in err and "300 batches of 2048 bytes" in err
    assert not (tmp_path / "out").exists()
    return path


def test_steps_whose_batches_exceed_the_memory_are_refused_naming_the_key(tmp_path, capsys, monkeypatch):
    # one batch: inputs and targets of 8 x 16 int64 tokens = 2048 bytes; 300 of them 614,400 > 100,000 / 2
    monkeypatch.setattr(study, "_machine_memory", lambda device: 100_000, raising=False)  # absent before the check
    path = _refused_at_300_steps(tmp_path, capsys)

    # a few steps, whose batches fit, still run (2 x 2048 bytes)
    assert main(["coord-check", str(path), "coord_check.steps=2", "--out", str(tmp_path / "out"),
                 "--progress", "none"]) == 0
    assert (tmp_path / "out" / "coord_check.csv").read_text().count("\n") == 1 + 2 * 2 * 4  # densities x steps x blocks


def test_batches_over_half_the_memory_are_refused_though_they_would_fit_in_all_of_it(tmp_path, capsys, monkeypatch):
    # 300 x 2048 = 614,400 bytes: more than half of 1,000,000 (the models and their activations need
    # the rest), less than all of it (mutation pass 27, CC1: compared with all of it, it ran)
    monkeypatch.setattr(study, "_machine_memory", lambda device: 1_000_000, raising=False)
    _refused_at_300_steps(tmp_path, capsys)


def test_a_full_batch_stream_keeps_one_batch_whatever_the_steps(tmp_path, capsys, monkeypatch):
    # train.batch_size null: every step trains on the same 64 x 16 windows (16,384 bytes of inputs and
    # targets, kept once), so 4 steps fit in 40,000 bytes of which 4 copies would take 65,536 (mutation
    # pass 27, CC2: counted as 4 batches, refused)
    import yaml

    monkeypatch.setattr(study, "_machine_memory", lambda device: 40_000, raising=False)
    path = _config(tmp_path, densities=[0.5, 1.0], parametrizations=["sp"], steps=4)
    config = yaml.safe_load(path.read_text())
    config["train"]["batch_size"] = None
    path.write_text(yaml.safe_dump(config))
    code = main(["coord-check", str(path), "--out", str(tmp_path / "out"), "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "coord_check.csv").read_text().count("\n") == 1 + 2 * 4 * 4  # densities x steps x blocks


@pytest.mark.skipif(not __import__("os").path.exists("/proc/meminfo"), reason="Linux's /proc/meminfo")
def test_the_machines_memory_is_the_kernels_memtotal_in_bytes():
    # the CPU's memory the check compares with: MemTotal (kB) in bytes (mutation pass 27, CC3: a count
    # of pages, 4096 times too small, refused a check of more than 1,506 steps of 8 x 16 tokens on a
    # machine of 24 GB)
    with open("/proc/meminfo") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert study._machine_memory("cpu") == kb * 1024
