"""A sweep resumed after its data files changed is refused (exit 2 from the CLI), before any cell
runs: the cells stored so far trained on the data as it was, and a ``2^x/lambda0`` cell's lr comes
from the lambda_0 the store cached on it. An interrupted sweep over a text corpus, resumed after
the corpus was edited, trained its remaining cells on the new text at the lr of the old text's
lambda_0 (21.4 where the new text's is 26.0), and stored both as one sweep without a word.
Truth: the bytes each test writes, and the cells the run function is (not) called for."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import SpecChanged, Store

from sweep_fakes import FakeRun

GRID = {"grid": {"optimizer.lr": ["1/lambda0", "2/lambda0", "4/lambda0"]}}


def _text_config(root) -> dict:
    return cfg.validate({"name": "t", "data": {"name": "text", "root": str(root), "context": 8},
                         "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 1},
                         "loss": "cross_entropy", "train": {"steps": 3, "batch_size": 4},
                         "eval": {"sharpness_every": 0, "test_every": 0}})


def _text_sweep_yaml(folder) -> str:
    """The YAML of a sweep of :func:`_text_config` over three lrs, as a user writes it."""
    return (f"name: t\ndata: {{name: text, root: {folder}, context: 8}}\n"
            f"model: {{name: gpt, width: 8, depth: 1, n_heads: 1}}\nloss: cross_entropy\n"
            f"train: {{steps: 3, batch_size: 4}}\neval: {{sharpness_every: 0, test_every: 0}}\n"
            f"sweep: {{grid: {{optimizer.lr: [1/lambda0, 2/lambda0, 4/lambda0]}}}}\n")


def _resume_refused(folder, store, before, run_fn, error, match):
    """Resuming the text sweep on ``store`` raises ``error`` matching ``match`` before any cell
    runs, and leaves the store's bytes as ``before``."""
    with pytest.raises(error, match=match):
        run_sweep(_text_config(folder), parse_sweep(GRID), store, run_fn=run_fn, lambda0_fn=lambda c: 100.0,
                  progress="none")
    assert run_fn.calls == []
    assert store.read_bytes() == before


def _cifar_config(root) -> dict:
    return cfg.validate({"name": "t", "data": {"name": "cifar10", "root": str(root)}, "train": {"steps": 3},
                         "eval": {"sharpness_every": 0}})


class _StopsAt:
    """FakeRun that raises KeyboardInterrupt at its ``stop``-th call (Ctrl-C mid-sweep)."""

    def __init__(self, stop: int) -> None:
        self.stop, self.inner = stop, FakeRun()

    def __call__(self, config, progress=None):
        if len(self.inner.calls) + 1 == self.stop:
            raise KeyboardInterrupt
        return self.inner(config, progress)


def _interrupted(config, store) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, parse_sweep(GRID), store, run_fn=_StopsAt(2), lambda0_fn=lambda c: 100.0, progress="none")
    with Store(store, create=False) as s:
        assert [c["status"] for c in s.cells()].count("finished") == 1


def _text_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("the cat sat on the mat. " * 40)
    return folder


@pytest.mark.parametrize("change", ["edited", "added", "removed"])
def test_a_text_corpus_changed_before_the_resume_is_refused(tmp_path, change):
    folder = _text_folder(tmp_path)
    (folder / "b.txt").write_text("a dog ran far away. " * 40)
    store = tmp_path / "s.db"
    _interrupted(_text_config(folder), store)
    before, text = store.read_bytes(), {f.name: f.read_bytes() for f in folder.iterdir()}
    if change == "edited":
        (folder / "a.txt").write_text("the cat sat on the hat. " * 40)   # the same size, other bytes
        name = "a.txt has other bytes"
    elif change == "added":
        (folder / "c.txt").write_text("more text. " * 40)
        name = "c.txt is new"
    else:
        (folder / "b.txt").unlink()
        name = "b.txt was removed"
    run_fn = FakeRun()
    _resume_refused(folder, store, before, run_fn, SpecChanged, rf"data.root={folder}: {name} since the sweep started")
    # a new store takes the new data; the files put back as they were (new times, the same bytes) resume
    run_sweep(_text_config(folder), parse_sweep(GRID), tmp_path / "new.db", run_fn=run_fn,
              lambda0_fn=lambda c: 100.0, progress="none")
    assert len(run_fn.calls) == 3
    (folder / "c.txt").unlink(missing_ok=True)
    for name, data in text.items():
        (folder / name).write_bytes(data)
    run_fn = FakeRun()
    outcome = run_sweep(_text_config(folder), parse_sweep(GRID), store, run_fn=run_fn, lambda0_fn=lambda c: 100.0,
                        progress="none")
    assert outcome.mode == "resumed" and len(run_fn.calls) == 2


def test_a_cifar_batch_replaced_before_the_resume_is_refused_by_the_cli(tmp_path, capsys):
    from catapult.cli import main

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(name.encode())   # never read: the run function is a fake
    store = tmp_path / "s.db"
    _interrupted(_cifar_config(tmp_path), store)
    (folder / "data_batch_3").write_bytes(b"another download")
    config = tmp_path / "sweep.yaml"
    config.write_text(f"name: t\ndata: {{name: cifar10, root: {tmp_path}}}\ntrain: {{steps: 3}}\n"
                      f"eval: {{sharpness_every: 0}}\nsweep: {{grid: {{optimizer.lr: [1/lambda0, 2/lambda0, 4/lambda0]}}}}\n")
    assert main(["sweep", str(config), "--store", str(store), "--dry-run"]) == 2   # it said "would resume"
    assert f"data.root={tmp_path}: data_batch_3 has other bytes since the sweep started" in capsys.readouterr().err
    assert main(["sweep", str(config), "--store", str(store), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert f"data.root={tmp_path}: data_batch_3 has other bytes since the sweep started" in err
    assert "data_batch_1" not in err


def test_the_digests_are_of_each_distinct_data_once_and_none_for_embedded_data(tmp_path):
    # data_digests: one entry per distinct (data.name, data.root) whose files are yours, the SHA-256
    # of each file's bytes; the embedded digits and Shakespeare have none (no entry: a store of such cells keeps none)
    import hashlib
    from types import SimpleNamespace

    from catapult.sweep.driver import data_digests

    folder = _text_folder(tmp_path)
    (folder / "b.txt").write_text("a dog ran far away. " * 40)
    text = SimpleNamespace(config={"data": {"name": "text", "root": str(folder)}})
    digits = SimpleNamespace(config={"data": {"name": "digits", "root": None}})
    truth = {name: "sha256:" + hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("a.txt", "b.txt")}
    assert data_digests([text, digits, text, text]) == [{"name": "text", "root": str(folder), "files": truth}]
    assert data_digests([digits, digits]) == []
    # data.name text with no root is the embedded Shakespeare (a package's files, not yours): none either
    shakespeare = SimpleNamespace(config={"data": {"name": "text", "root": None}})
    assert data_digests([shakespeare, digits]) == []


def test_a_dry_run_on_a_store_without_the_digests_writes_none(tmp_path, capsys):
    # a store from before the digests were kept (no meta data_json) records them at its next resume,
    # not at a dry run, which reads the store without writing it
    import sqlite3

    from catapult.cli import main
    from catapult.sweep.driver import DATA_META

    folder = _text_folder(tmp_path)
    store = tmp_path / "s.db"
    _interrupted(_text_config(folder), store)
    with sqlite3.connect(store) as conn:
        conn.execute("DELETE FROM meta WHERE key = ?", (DATA_META,))
    conn.close()
    config = tmp_path / "sweep.yaml"
    config.write_text(_text_sweep_yaml(folder))
    assert main(["sweep", str(config), "--store", str(store), "--dry-run"]) == 0
    assert "would resume the sweep" in capsys.readouterr().out
    with Store(store, create=False) as s:
        assert s.meta(DATA_META) is None
    run_sweep(_text_config(folder), parse_sweep(GRID), store, run_fn=FakeRun(), lambda0_fn=lambda c: 100.0,
              progress="none")
    with Store(store, create=False) as s:
        assert s.meta(DATA_META) is not None


def test_the_cifar_files_hashed_are_the_archive_or_each_file_the_loader_reads(tmp_path):
    # data.data_files (the files a resume's digests cover): the archive where the loader reads the
    # archive, else the batch and meta files of the extracted folder (not its other files), for
    # CIFAR-10 and CIFAR-100 alike. Truth: the names the CIFAR sites ship, written here
    from catapult.data import data_files

    folders = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
               "cifar100": ("cifar-100-python", ["train", "test", "meta"])}
    for name, (folder, files) in folders.items():
        root = tmp_path / name
        (root / folder).mkdir(parents=True)
        for file in files + ["readme.html"]:
            (root / folder / file).write_bytes(file.encode())
        assert data_files(name, root) == [root / folder / file for file in files]
    archive = tmp_path / "archive" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"not read")
    assert data_files("cifar10", archive.parent) == [archive]


def test_a_dry_run_for_a_ray_cluster_leaves_the_data_to_its_machines(tmp_path, capsys):
    # with --ray-address the cells run on the cluster's machines, whose data this one need not hold (the
    # run itself hashes none there): a dry run here says what the store holds, whether the data files
    # are here or not
    import shutil

    from catapult.cli import main

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(name.encode())
    store = tmp_path / "s.db"
    _interrupted(_cifar_config(tmp_path), store)
    shutil.rmtree(folder)
    config = tmp_path / "sweep.yaml"
    config.write_text(f"name: t\ndata: {{name: cifar10, root: {tmp_path}}}\ntrain: {{steps: 3}}\n"
                      f"eval: {{sharpness_every: 0}}\nsweep: {{grid: {{optimizer.lr: [1/lambda0, 2/lambda0, 4/lambda0]}}}}\n")
    argv = ["sweep", str(config), "--store", str(store), "--dry-run", "--executor", "ray", "--ray-address", "10.0.0.1:6379"]
    assert main(argv) == 0
    assert f"would resume the sweep in {store} (1 of 3 cells already done)" in capsys.readouterr().out


@pytest.mark.parametrize("entry, problem", [
    ({"name": "text", "root": "ROOT", "files": ["a.txt"]}, "has files that are not an object"),
    ({"name": "text", "root": "ROOT"}, "has files that are not an object"),
    ("text", "is not an object"),
    ({"root": "ROOT", "files": {}}, "has no text name"),
    ({"name": "text", "root": "ROOT", "files": {"a.txt": 5}}, "has a file digest that is not text"),
    # (mutation pass 27, DJ2: a root of another type was kept under a key no cell's data has, unchecked)
    ({"name": "text", "root": 5, "files": {}}, "has a root that is neither text nor null"),
])
def test_a_damaged_data_json_entry_is_refused_naming_the_store_and_the_row(tmp_path, capsys, entry, problem):
    # a hand-edited or damaged meta data_json entry was skipped: its data's check was skipped without a word
    # (the edited corpus below resumed). Like every other damaged row, it is refused (exit 2) naming the store
    # and the row, before any cell runs
    import json
    import sqlite3

    from catapult.cli import main
    from catapult.sweep.driver import DATA_META
    from catapult.sweep.store import StoreError

    folder = _text_folder(tmp_path)
    store = tmp_path / "s.db"
    _interrupted(_text_config(folder), store)
    entry = json.loads(json.dumps(entry).replace("ROOT", str(folder)))
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps([entry]), DATA_META))
    conn.close()
    (folder / "a.txt").write_text("the cat sat on the hat. " * 40)
    before = store.read_bytes()
    _resume_refused(folder, store, before, run_fn=FakeRun(), error=StoreError,
                    match=rf"{store} is damaged: meta data_json entry 0 {problem}")
    config = tmp_path / "sweep.yaml"
    config.write_text(_text_sweep_yaml(folder))
    assert main(["sweep", str(config), "--store", str(store), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{store} is damaged: meta data_json entry 0 {problem}" in err and "Traceback" not in err
    assert store.read_bytes() == before
