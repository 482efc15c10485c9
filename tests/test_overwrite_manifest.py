"""``--overwrite`` of a run killed before its summary replaces only what that run wrote: the run
writes a manifest (``.catapult-run.json``) before any run file and adds each file it creates, so a
user's own ``torch.save`` file put there as ``model.pt`` afterwards is refused by name (exit 2) and
left as it was; it was taken for the run's by its format alone (a torch zip). The kill is a
``KeyboardInterrupt`` in the final ``torch.save``, which, as a kill does, leaves the run's files."""
from __future__ import annotations

import json

import pytest
import torch

from catapult import cli
from catapult.config import load_config
from catapult.engine.run_dir import MANIFEST, RunDirectoryError, check_out_dir
from tiny_run import tiny_config


@pytest.fixture
def killed(tmp_path, monkeypatch):
    """The folder of a tiny run killed before its model.pt and summary (its config beside it)."""
    import catapult.engine.loop as loop

    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config("tiny"))
    out = tmp_path / "run"

    def killed_in_save(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop, "_save_weights", killed_in_save)
        with pytest.raises(KeyboardInterrupt):
            loop.run(load_config(str(config)), out_dir=out, progress="none")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "config.yaml", "metrics.csv"])
    return config, out


def _user_model(path):
    torch.save({"w": torch.arange(3.0)}, path)   # a torch zip, as a run's model.pt is
    return path.read_bytes()


def test_a_users_model_put_in_a_killed_runs_folder_is_not_replaced(killed, capsys):
    config, out = killed
    mine = _user_model(out / "model.pt")
    assert cli.main(["train", str(config), "--out", str(out), "--overwrite", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "Traceback" not in err
    assert (out / "model.pt").read_bytes() == mine          # was replaced by the run's weights


def test_a_killed_runs_own_files_are_replaced(killed, capsys):
    config, out = killed
    (out / "config.yaml").write_text((out / "config.yaml").read_text() + "# my note\n")   # edits are allowed
    assert cli.main(["train", str(config), "--out", str(out), "--overwrite", "--progress", "none"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"]
    listed = json.loads((out / MANIFEST).read_text())["catapult_run_created"]
    assert sorted(listed) == ["config.yaml", "metrics.csv", "model.pt", "trajectories.png"]
    assert listed["model.pt"].startswith("sha256:")
    check_out_dir(out, overwrite=True)      # the finished run's folder may be overwritten again


def test_a_model_pt_after_the_run_wrote_its_own_is_judged_by_the_recorded_bytes(killed):
    _, out = killed
    from catapult.engine.run_dir import record_created

    torch.save({"w": torch.zeros(2)}, out / "model.pt")  # as if the run had written it, then been killed
    record_created(out, "model.pt")
    check_out_dir(out, overwrite=True)                   # the run's own: may be replaced
    _user_model(out / "model.pt")                        # a user's saved over it since
    with pytest.raises(RunDirectoryError, match="model.pt is not the file the earlier run wrote"):
        check_out_dir(out, overwrite=True)


def test_a_killed_run_of_an_earlier_version_may_not_hold_a_model_pt(killed):
    _, out = killed
    (out / MANIFEST).unlink()                            # no manifest: written before this version
    check_out_dir(out, overwrite=True)                   # its config and records are still the run's
    _user_model(out / "model.pt")
    with pytest.raises(RunDirectoryError, match="model.pt is not a file a catapult run wrote"):
        check_out_dir(out, overwrite=True)


@pytest.mark.parametrize("text", ['{"mine": 1}', "not json", '{"catapult_run_created": {"model.pt": 3}}',
                                  '{"catapult_run_created": {}, "mine": 1}'])
def test_a_file_of_the_manifests_name_that_no_run_wrote_is_refused(killed, text):
    _, out = killed
    (out / MANIFEST).write_text(text)
    with pytest.raises(RunDirectoryError, match=r"\.catapult-run\.json"):
        check_out_dir(out, overwrite=True)
    assert (out / MANIFEST).read_text() == text


def test_a_users_file_at_the_manifests_partial_name_is_not_removed(killed, capsys):
    """The run's first write (the manifest, written whole through ``.partial-.catapult-run.json``)
    removes a leftover at that name: a user's file there went without a word."""
    config, out = killed
    mine = out / (".partial-" + MANIFEST)
    mine.write_text("my notes\n")
    assert cli.main(["train", str(config), "--out", str(out), "--overwrite", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert mine.name in err and "Traceback" not in err
    assert mine.read_text() == "my notes\n"


@pytest.mark.parametrize("text", ['{"catapult_run_created": {}, "mine": 1}', '{"catapult_run_created": 3}',
                                  '{"catapult_run_created": [], "x": {}}'])
def test_a_partial_manifest_that_holds_more_or_other_than_a_runs_is_not_ours(killed, text):
    # (mutation pass 19, RD3 / RD4 of pass 18) a run's manifest holds its one key, a dict: a
    # .partial-.catapult-run.json with another key beside it, or that key naming no dict, is a user's
    # (RD3 took any dict holding the key, RD4 any value of it: the run's first write removed the file)
    _, out = killed
    mine = out / (".partial-" + MANIFEST)
    mine.write_text(text)
    with pytest.raises(RunDirectoryError, match=r"\.partial-\.catapult-run\.json"):
        check_out_dir(out, overwrite=True)
    assert mine.read_text() == text


def test_a_cut_off_copy_of_the_runs_own_manifest_is_replaced_and_a_long_one_is_not_ours(killed, tmp_path):
    # (mutation pass 19, RD7 / RD6 of pass 18) a killed write of the manifest leaves a start of the bytes
    # the run writes (indented JSON: RD7 wrote it on one line, so its cut-off starts were not the
    # recognised start); a manifest-shaped file over 64 KiB is no run's (RD6 read it whole and took it)
    _, out = killed
    from catapult.engine.run_dir import start_manifest

    (tmp_path / "fresh").mkdir()
    start_manifest(tmp_path / "fresh")   # a run's first write: the manifest of no file yet
    partial = out / (".partial-" + MANIFEST)
    for written in ((out / MANIFEST).read_bytes(), (tmp_path / "fresh" / MANIFEST).read_bytes()):
        partial.write_bytes(written[:12])
        check_out_dir(out, overwrite=True)
    big = json.dumps({"catapult_run_created": {}}, indent=1).replace("{}", "{" + " " * (1 << 16) + "}")
    partial.write_text(big)
    assert json.loads(big) == {"catapult_run_created": {}}
    with pytest.raises(RunDirectoryError, match=r"\.partial-\.catapult-run\.json"):
        check_out_dir(out, overwrite=True)


@pytest.mark.parametrize("left", ["", '{\n "catapult_run_', '{\n "catapult_run_created": {\n  "metrics.csv": null\n }\n}\n'])
def test_a_manifest_write_left_by_a_killed_run_is_replaced(killed, left):
    config, out = killed
    (out / (".partial-" + MANIFEST)).write_text(left)   # nothing, a cut-off start, or a whole manifest not renamed
    assert cli.main(["train", str(config), "--out", str(out), "--overwrite", "--progress", "none"]) == 0
    assert not (out / (".partial-" + MANIFEST)).exists()


def test_a_link_or_a_fifo_at_the_manifests_name_is_not_read_as_a_manifest(killed, tmp_path):
    """Mutation pass 17 (RD1, RD2, RD6): the manifest is read only where it is a plain file. A link to
    a run's own manifest, or to nothing, is not the run's (refused, the link kept); a FIFO (its writer would feed
    any manifest) is refused without being opened (a read would wait for a writer)."""
    import os
    import threading

    _, out = killed
    copy = tmp_path / "elsewhere.json"
    copy.write_bytes((out / MANIFEST).read_bytes())
    (out / MANIFEST).unlink()
    (out / MANIFEST).symlink_to(copy)
    with pytest.raises(RunDirectoryError, match=r"\.catapult-run\.json is not the manifest"):
        check_out_dir(out, overwrite=True)
    assert (out / MANIFEST).is_symlink()
    copy.unlink()        # a link to nothing (RD6: not there, so judged by the run's records alone)
    with pytest.raises(RunDirectoryError, match=r"\.catapult-run\.json is not the manifest"):
        check_out_dir(out, overwrite=True)
    (out / MANIFEST).unlink()
    os.mkfifo(out / MANIFEST)
    fed = threading.Thread(target=lambda: (out / MANIFEST).write_text(copy.read_text()), daemon=True)
    fed.start()   # blocks until someone opens the FIFO for reading
    try:
        with pytest.raises(RunDirectoryError, match=r"\.catapult-run\.json is not the manifest"):
            check_out_dir(out, overwrite=True)
    finally:
        os.close(os.open(out / MANIFEST, os.O_RDONLY | os.O_NONBLOCK))   # let the writer go
        fed.join(5)


def test_a_figure_the_killed_run_did_not_list_is_refused(killed):
    """Mutation pass 17 (RD9): a run killed before its summary lists what it created; a
    matplotlib PNG put there as trajectories.png (a run's figure by its format) is not in it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, out = killed
    fig = plt.figure()
    fig.savefig(out / "trajectories.png")
    plt.close(fig)
    mine = (out / "trajectories.png").read_bytes()
    with pytest.raises(RunDirectoryError, match="trajectories.png is not a file a catapult run wrote"):
        check_out_dir(out, overwrite=True)
    assert (out / "trajectories.png").read_bytes() == mine


def test_a_folder_holding_only_a_fresh_manifest_is_an_earlier_runs(tmp_path):
    """Mutation pass 17 (RD12): a run killed right after its manifest (before the records' header
    reached the disk) left a folder that --overwrite takes; it was judged by the records alone."""
    from catapult.engine.run_dir import start_manifest

    out = tmp_path / "run"
    out.mkdir()
    start_manifest(out)
    assert check_out_dir(out, overwrite=True) == out


def test_a_run_that_fails_in_a_folder_it_did_not_create_leaves_no_manifest(tmp_path, monkeypatch):
    """Mutation pass 17 (RD11): a run that raises after it started writing into an existing empty
    folder removes what it wrote, its manifest included: the folder is empty again."""
    import catapult.engine.loop as loop

    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config("tiny"))
    out = tmp_path / "run"
    out.mkdir()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "_save_weights", full_disk)
    with pytest.raises(OSError):
        loop.run(load_config(str(config)), out_dir=out, progress="none")
    assert list(out.iterdir()) == []
