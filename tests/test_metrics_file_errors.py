"""A full disk while ``metrics.csv`` is written: the error names the file. It was OSError(28)
with no file name, so ``catapult train`` printed ``error: No space left on device`` alone."""
from __future__ import annotations

import csv
import os

import pytest

from catapult.cli import report
from catapult.engine.records import METRIC_COLUMNS, MetricsFile

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on every write)")


def test_a_full_disk_at_the_header_names_the_file(capsys):
    with pytest.raises(OSError) as info:
        MetricsFile("/dev/full")
    assert info.value.errno == 28 and info.value.filename == "/dev/full"
    assert report("train", info.value) == 2
    assert capsys.readouterr().err.strip() == "catapult train: error: /dev/full: No space left on device"


def test_a_full_disk_mid_run_names_metrics_csv(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    records = MetricsFile(path)
    records.fh.close()
    records.fh = open("/dev/full", "w", newline="")  # the disk fills after the header
    records.writer = csv.writer(records.fh)
    row = dict.fromkeys(METRIC_COLUMNS, 0.5)
    with pytest.raises(OSError) as info:
        records.write(row)  # the first row is flushed at once
    assert info.value.errno == 28 and info.value.filename == str(path)
    with pytest.raises(OSError) as info:
        records.close()
    assert info.value.filename == str(path)
    assert report("train", info.value) == 2
    assert capsys.readouterr().err.strip() == f"catapult train: error: {path}: No space left on device"
    assert path.read_bytes() == (",".join(METRIC_COLUMNS) + "\r\n").encode()  # the header, flushed before


def test_a_full_disk_at_config_yaml_names_it_and_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    import pathlib

    from catapult.cli import main
    from tiny_run import tiny_config

    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config("tiny"))
    write_text = pathlib.Path.write_text

    def full_at_config(self, text, *args, **kwargs):
        if self.name != "config.yaml":
            return write_text(self, text, *args, **kwargs)
        with open("/dev/full", "w") as fh:  # what the file system says of a full disk
            fh.write(text)

    monkeypatch.setattr(pathlib.Path, "write_text", full_at_config)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--progress", "none"]) == 2
    assert capsys.readouterr().err.strip() == f"catapult train: error: {out / 'config.yaml'}: No space left on device"
    assert not out.exists()
