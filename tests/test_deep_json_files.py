"""JSON files a run reads from folders it did not make, nested too deeply for Python's parser (a
file of 60,000 ``[``: ``RecursionError``, which is no ``ValueError``): the run manifest
``.catapult-run.json`` and a ``summary.json`` in a folder given as ``--out --overwrite``, and
``vocab_size.json`` beside ``.npy`` shards. Before, each was a RecursionError traceback; now the
manifest and the summary are not a run's (the folder is refused by name, exit 2, its files kept) and
the vocabulary file is a ConfigError on ``data.root`` naming it, as any other bad content is."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult.engine.run_dir import MANIFEST, RunDirectoryError, check_out_dir, created_files
from catapult.files import is_run_record, recorded_digests
from tiny_run import tiny_config

DEEP = "[" * 60000


def test_a_deep_manifest_is_not_a_runs_and_the_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / MANIFEST).write_text(DEEP)
    assert created_files(out) is None
    with pytest.raises(RunDirectoryError, match=MANIFEST):
        check_out_dir(out, overwrite=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config("tiny"))
    assert cli.main(["train", str(config), "--out", str(out), "--overwrite", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert MANIFEST in err and "Traceback" not in err and "RecursionError" not in err
    assert (out / MANIFEST).read_text() == DEEP


def test_a_deep_summary_is_no_run_record(tmp_path):
    (tmp_path / "summary.json").write_text(DEEP)
    assert not is_run_record(tmp_path / "summary.json")
    assert recorded_digests(tmp_path / "summary.json") == {}
