"""A run folder trained on a relative ``data.root`` reloads from any working directory: its
``summary.json`` records the root as given and where it was read (``catapult.run_root``), and
``catapult train RUN/config.yaml``, ``spectrum`` and ``critical-lr`` read the data the run read
from another directory; where the data moved they stop with exit code 2 naming ``data.root`` and
both paths. The truths: real text files and run folders on disk, the rerun's ``model.pt`` and
``metrics.csv`` byte-equal to the run's, and each command's output equal to its output from the
run's own directory (where the root names the data as given)."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from catapult.cli import main

CONFIG = """name: tiny_text
seed: 0
dtype: float64
data: {name: text, root: corpus, context: 8, n_train: 32, n_test: 8}
model: {name: gpt, width: 8, depth: 1, n_heads: 2}
loss: cross_entropy
optimizer: {name: adam, lr: 0.01}
train: {steps: 3, batch_size: 4}
eval: {sharpness_every: 0}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project folder with a run trained from it on ``corpus/`` (data.root ``corpus``, relative)."""
    home = tmp_path_factory.mktemp("trained") / "project"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    (home / "tiny.yaml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["train", "tiny.yaml", "--out", "runs/tiny", "--progress", "none"]) == 0
    return home


@pytest.fixture
def project(trained, tmp_path, monkeypatch):
    """``(project folder, run folder, another folder)``: the trained project as if trained in a
    folder of this test's own (a copy, its summary's record naming the copy's corpus, as a run
    there writes it), the cwd another folder."""
    home = tmp_path / "project"
    shutil.copytree(trained, home)
    summary_path = home / "runs" / "tiny" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["data_root"] == {"given": "corpus", "read": str(trained / "corpus")}
    summary["data_root"]["read"] = str(home / "corpus")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return home, home / "runs" / "tiny", elsewhere


def test_the_summary_records_the_root_as_given_and_where_it_was_read(project):
    home, run, _ = project
    assert json.loads((run / "summary.json").read_text())["data_root"] == {"given": "corpus",
                                                                          "read": str(home / "corpus")}
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == "corpus"   # as given


def test_train_of_the_run_config_from_elsewhere_repeats_the_run(project, capsys):
    home, run, elsewhere = project
    assert main(["train", str(run / "config.yaml"), "--out", "again", "--progress", "none"]) == 0  # was 2
    for name in ("model.pt", "metrics.csv"):
        assert (elsewhere / "again" / name).read_bytes() == (run / name).read_bytes()


@pytest.mark.parametrize("command", [["spectrum", "--top-k", "2", "--trace-matvecs", "4", "--density-runs", "0"],
                                     ["critical-lr"]])
def test_spectrum_and_critical_lr_from_elsewhere_read_what_they_read_beside_the_data(project, monkeypatch, capsys,
                                                                                     command):
    home, run, _ = project
    weights = ["--weights", str(run / "model.pt")] if command[0] == "spectrum" else []
    argv = [command[0], str(run / "config.yaml"), *command[1:], *weights, "--json"]
    assert main(argv) == 0  # was 2: no corpus/ here
    here = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(home)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == here


def test_moved_data_are_refused_naming_the_key_and_both_paths(project, capsys):
    home, run, elsewhere = project
    (home / "corpus").rename(home / "moved")
    assert main(["train", str(run / "config.yaml"), "--out", "again", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and str(home / "corpus") in err and str(elsewhere / "corpus") in err
    assert "Traceback" not in err and not (elsewhere / "again").exists()
    # the new place given on the command line: the run again
    assert main(["train", str(run / "config.yaml"), f"data.root={home / 'moved'}", "--out", "again",
                 "--progress", "none"]) == 0
    assert (elsewhere / "again" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()


def test_data_gone_from_the_run_s_place_are_read_as_given_from_here(project):
    """A copied project (its data beside its runs) reads the root as given, as before."""
    home, run, elsewhere = project
    shutil.copytree(home, elsewhere / "copy")
    shutil.rmtree(home / "corpus")
    copy = elsewhere / "copy"
    assert main(["train", str(copy / "runs" / "tiny" / "config.yaml"), "--out", "again", "--progress", "none"]) == 2
    import os
    os.chdir(copy)
    assert main(["train", "runs/tiny/config.yaml", "--out", "again", "--progress", "none"]) == 0
    assert (copy / "again" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()


def test_an_edited_root_an_override_and_an_older_run_folder_keep_the_root_as_they_give_it(project, capsys):
    home, run, elsewhere = project
    (elsewhere / "corpus").mkdir()
    (elsewhere / "corpus" / "b.txt").write_text("other text, other characters: 0123456789! " * 20)
    # an override of data.root: the user's own root, read from here
    assert main(["train", str(run / "config.yaml"), "data.root=corpus", "--out", "other", "--progress", "none"]) == 0
    assert (elsewhere / "other" / "model.pt").read_bytes() != (run / "model.pt").read_bytes()
    # an older run folder (no record in its summary): as given, from here, as before
    summary = json.loads((run / "summary.json").read_text())
    del summary["data_root"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["train", str(run / "config.yaml"), "--out", "old", "--progress", "none"]) == 0
    assert (elsewhere / "old" / "metrics.csv").read_bytes() == (elsewhere / "other" / "metrics.csv").read_bytes()


def test_from_the_run_s_own_directory_the_config_is_written_as_given(project, monkeypatch):
    home, run, _ = project
    monkeypatch.chdir(home)
    assert main(["train", "runs/tiny/config.yaml", "--out", "again", "--progress", "none"]) == 0
    assert (home / "again" / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    assert (home / "again" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()


def test_the_record_is_the_path_as_named_from_here_and_only_a_runs_summary_holds_one(tmp_path, monkeypatch):
    # (mutation pass 19) 'read' is the working directory joined with the root, '~' expanded, no link
    # resolved and no '..' folded (RR1 resolved it: the link's target), '~' expanded (RR2 kept it);
    # only a run's summary.json (status, steps_completed) is read for it (RR3: any summary.json file)
    import os

    from catapult.run_root import data_root_record, recorded_root

    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root_record("link/../link")["data_root"] == {"given": "link/../link",
                                                            "read": os.path.join(str(tmp_path), "link/../link")}
    assert data_root_record("~/tiny")["data_root"]["read"] == os.path.join(str(tmp_path), "home", "tiny")
    run = tmp_path / "run"
    run.mkdir()
    record = {"data_root": {"given": "tiny", "read": "/d"}}
    (run / "summary.json").write_text(json.dumps(record))          # not a run's: no status, no step count
    assert recorded_root(run) is None
    (run / "summary.json").write_text(json.dumps({"status": "finished", "steps_completed": 1, **record}))
    assert recorded_root(run) == {"given": "tiny", "read": "/d"}


def test_relocated_root_moves_only_the_recorded_relative_root_to_where_it_was_read(tmp_path, monkeypatch):
    # (mutation pass 19) the run read 'tiny' at <run place>/tiny; from another directory that also
    # holds a 'tiny', the run's place wins (RR8 preferred the one here); an edited root (RR6 moved it
    # all the same), a '~' root (absolute: RR5 moved it) and a record whose 'read' is no path (RR4
    # took it) keep the root as it stands
    from catapult.run_root import relocated_root

    place, here, run = tmp_path / "place", tmp_path / "here", tmp_path / "run"
    for folder in (place / "tiny", here / "tiny", run, tmp_path / "home"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(here)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def record(given, read):
        (run / "summary.json").write_text(json.dumps({"status": "finished", "steps_completed": 3,
                                                      "data_root": {"given": given, "read": read}}))
        return run / "config.yaml"

    config = record("tiny", str(place / "tiny"))
    assert relocated_root(config, {"data": {"root": "tiny"}}) == (str(place / "tiny"), None)
    assert relocated_root(config, {"data": {"root": "other"}}) == (None, None)
    assert relocated_root(record("~/tiny", str(place / "tiny")), {"data": {"root": "~/tiny"}}) == (None, None)
    assert relocated_root(record("tiny", 3), {"data": {"root": "tiny"}}) == (None, None)
