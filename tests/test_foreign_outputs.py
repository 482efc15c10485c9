"""Output files catapult did not write are never changed: a user's own file of the right kind, a
symbolic link (written through, it changed the file it points to, e.g. a config), or a run
folder whose records are a user's; and the other messages of the new-user audit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from catapult import cli
from catapult.files import figure_mark, is_run_record, written_by_catapult
from tiny_run import tiny_config

TINY = tiny_config("tiny_out")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A copy of the catapult 0.1.0 store in the working directory, as ``s.db``."""
    path = tmp_path / "s.db"
    path.write_bytes((Path(__file__).parent / "data" / "store_v0.1.0.db").read_bytes())
    monkeypatch.chdir(tmp_path)
    return path


def _files(folder: Path) -> dict:
    return {p.name: (p.readlink() if p.is_symlink() else p.read_bytes()) for p in folder.iterdir()}


COMMANDS = [["export", "s.db", "--out"], ["plot", "s.db", "--out"], ["report", "s.db", "--out"],
            ["transfer", "s.db", "--out"]]
NAMES = {"export": "cells.csv", "plot": "phase.png", "report": "page.html", "transfer": "transfer.png"}


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_link_is_not_written_through(store, tmp_path, capsys, argv):
    victim = tmp_path / "sweep.yaml"
    victim.write_text("name: mine\n")
    link = tmp_path / NAMES[argv[0]]
    link.symlink_to(victim)
    before = _files(tmp_path)
    assert cli.main([*argv, link.name]) == 2
    err = capsys.readouterr().err
    assert f"{link.name} is a symbolic link" in err and "Traceback" not in err
    assert _files(tmp_path) == before and victim.read_text() == "name: mine\n"


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_users_file_of_the_same_kind_is_not_replaced_but_an_earlier_output_is(store, tmp_path, capsys, argv):
    name = NAMES[argv[0]]
    mine = tmp_path / name
    mine.write_bytes(b"a,b\n1,2\n" if name.endswith(".csv") else b"mine")
    assert cli.main([*argv, name]) == 2
    err = capsys.readouterr().err
    assert f"{name} exists and catapult did not write it" in err and "Traceback" not in err
    assert mine.read_bytes() in (b"a,b\n1,2\n", b"mine")
    mine.unlink()
    assert cli.main([*argv, name]) == 0 and written_by_catapult(mine)
    first = mine.stat().st_mtime_ns
    assert cli.main([*argv, name]) == 0 and mine.stat().st_mtime_ns >= first  # replaced: its own


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_export_without_a_suffix_is_replaced_by_the_same_command_and_a_users_file_is_not(store, tmp_path,
                                                                                            capsys, fmt):
    # `export --format parquet --out results` wrote results, then refused its own rerun: "results
    # exists and is not a .csv / .parquet / .pq file this command writes"
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    argv = ["export", "s.db", "--format", fmt, "--out", "results"]
    assert cli.main(argv) == 0
    first = (tmp_path / "results").read_bytes()
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "results").read_bytes() == first
    mine = tmp_path / "notes"
    mine.write_bytes(b"a,b\n1,2\n")
    assert cli.main(["export", "s.db", "--format", fmt, "--out", "notes"]) == 2
    assert "notes exists and catapult did not write it" in capsys.readouterr().err
    assert mine.read_bytes() == b"a,b\n1,2\n"
    other = "csv" if fmt == "parquet" else "parquet"       # one format never replaces the other's file
    if other == "parquet":
        pytest.importorskip("pyarrow")
    assert cli.main(["export", "s.db", "--format", other, "--out", "results"]) == 2
    assert (tmp_path / "results").read_bytes() == first


@pytest.mark.parametrize("argv, name, mine", [
    (["export", "s.db", "--out"], "cells.txt", b"a,b\n1,2\n"),
    (["export", "s.db", "--format", "csv", "--out"], "cells", b"cell_id\tstatus\n"),   # .tsv: refused
    (["report", "s.db", "--out"], "page", b"<html>mine</html>"),
])
def test_an_output_under_another_suffix_is_replaced_by_the_same_command_and_a_users_file_is_not(
        store, tmp_path, capsys, argv, name, mine):
    # `export --out cells.txt` (and `report --out page`) wrote the file, then refused its own
    # rerun: "cells.txt exists and is not a .csv / .parquet / .pq file this command writes";
    # such a name is judged as the format the command writes there
    assert cli.main([*argv, name]) == 0
    first = (tmp_path / name).read_bytes()
    assert cli.main([*argv, name]) == 0, capsys.readouterr().err
    assert (tmp_path / name).read_bytes() == first
    (tmp_path / name).write_bytes(mine)
    assert cli.main([*argv, name]) == 2
    err = capsys.readouterr().err
    assert f"{name} exists and " in err and "Traceback" not in err
    assert (tmp_path / name).read_bytes() == mine


@pytest.mark.parametrize("name", ["page.txt", "page.md", "page.PDF"])
def test_a_report_under_a_name_of_another_format_is_refused(store, tmp_path, capsys, name):
    # `report --out page.txt` wrote the HTML page under a name that promised text; refused as
    # `export --out x.xlsx` is, naming the file and the format, and nothing is written
    before = _files(tmp_path)
    assert cli.main(["report", "s.db", "--out", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"catapult report: error: --out: {name} names no format report writes: HTML (.html, .htm)")
    assert "Traceback" not in err and _files(tmp_path) == before
    from catapult.report import write_report

    with pytest.raises(ValueError, match=rf"^out: {name} names no format write_report writes: HTML"):
        write_report(store, tmp_path / name)
    assert _files(tmp_path) == before
    for ok in ("page.htm", "page.HTML"):  # the HTML suffixes, any case
        assert cli.main(["report", "s.db", "--out", ok]) == 0
        assert (tmp_path / ok).read_bytes().lstrip().lower().startswith(b"<!doctype html")


def test_a_users_page_that_mentions_catapult_is_not_replaced_by_a_report(store, tmp_path, capsys):
    # "written by catapult" anywhere in an HTML file made it a report of ours: a notebook page that
    # said so in its text was replaced, exit 0
    page = tmp_path / "notebook.html"
    page.write_text("<!DOCTYPE html>\n<html><body><h1>Notes</h1><p>The figures below were written by catapult; "
                    "my notes on them follow.</p></body></html>\n")
    before = _files(tmp_path)
    assert cli.main(["report", "s.db", "--out", page.name]) == 2
    err = capsys.readouterr().err
    assert err == f"catapult report: error: --out: {page.name} exists and catapult did not write it; give a new file name (or remove it first)\n"
    assert _files(tmp_path) == before


def test_a_report_does_not_replace_a_figure_catapult_drew(store, tmp_path, capsys):
    # `report --out fig.png` over a marked figure: judged as an .html file, the figure's mark made
    # it "ours", and the report replaced the PNG with HTML
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = tmp_path / "fig.png"
    Figure().savefig(path, **figure_mark(path))
    before = path.read_bytes()
    assert cli.main(["report", str(store), "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fig.png exists and is not a .html / .htm file this command writes" in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", ["png", "svg", "svgz", "pdf", "jpg", "tiff", "eps", "gif", "webp", "avif"])
def test_every_marked_figure_format_is_known_again(tmp_path, suffix):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = tmp_path / f"f.{suffix}"
    Figure().savefig(path, **figure_mark(path))
    assert written_by_catapult(path)
    Figure().savefig(tmp_path / f"g.{suffix}")  # someone else's figure
    assert not written_by_catapult(tmp_path / f"g.{suffix}")


def test_an_upper_case_suffix_is_marked_as_its_format(tmp_path):
    # fig.PNG is a PNG and fig.JPG a JPEG to matplotlib: each carries the mark in its format's own
    # metadata (read back by Pillow), so the next run knows it as its own and replaces it
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from PIL import Image

    from catapult.files import save_figure

    save_figure(Figure(figsize=(1, 1)), tmp_path / "f.PNG")
    save_figure(Figure(figsize=(1, 1)), tmp_path / "f.JPG")
    with Image.open(tmp_path / "f.PNG") as png, Image.open(tmp_path / "f.JPG") as jpg:
        assert (png.format, png.text.get("Software")) == ("PNG", "written by catapult")
        assert (jpg.format, jpg.info.get("comment")) == ("JPEG", b"written by catapult")
    assert written_by_catapult(tmp_path / "f.PNG") and written_by_catapult(tmp_path / "f.JPG")


def test_a_parquet_export_is_marked(store, tmp_path):
    pytest.importorskip("pyarrow")
    assert cli.main(["export", "s.db", "--out", "cells.parquet"]) == 0
    assert written_by_catapult(tmp_path / "cells.parquet")
    assert cli.main(["export", "s.db", "--out", "cells.parquet"]) == 0
    assert written_by_catapult(tmp_path / "cells.parquet")
    assert cli.main(["export", "s.db", "--out", "agg.csv", "--aggregate"]) == 0
    assert written_by_catapult(tmp_path / "agg.csv")  # known by the aggregate's header


@pytest.mark.parametrize("files, shown", [
    ({"metrics.csv": "metrics mine\n", "config.yaml": "cfg mine\n"}, "config.yaml, metrics.csv"),  # named like a run's: replaced
    ({"notes.txt": "mine\n"}, "notes.txt"),   # a folder of notes: the run's files were written beside them
])
def test_overwrite_refuses_a_users_folder_and_keeps_its_files(tmp_path, capsys, files, shown):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    mine = tmp_path / "userdir"
    mine.mkdir()
    for name, text in files.items():
        (mine / name).write_text(text)
    assert _train(config, mine, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"userdir is not an earlier run's directory (it holds {shown}" in err and "but not a run's" in err
    assert {p.name: p.read_text() for p in mine.iterdir()} == files


def test_run_records_are_known_by_their_contents(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,lr,train_loss\n0,0.1,2.3\n")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "steps_completed": 2}))
    assert is_run_record(tmp_path / "metrics.csv") and is_run_record(tmp_path / "summary.json")
    (tmp_path / "metrics.csv").write_text("epoch,loss\n")
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert not is_run_record(tmp_path / "metrics.csv") and not is_run_record(tmp_path / "summary.json")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_config_is_refused(tmp_path, capsys, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "empty.yaml is empty (no keys)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "critical-lr", "spectrum", "sweep", "coord-check"])
def test_a_missing_config_names_only_the_config(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "required: CONFIG" in err and "key=value" not in err.splitlines()[-1]


def test_a_store_that_cannot_be_written_says_so(tmp_path, capsys, monkeypatch):
    # SQLite said "unable to open database file" of a valid store on a read-only mount (where
    # even root cannot write: os.access answers for the mount, patched here)
    import os

    config = tmp_path / "sweep.yaml"
    config.write_text(TINY + "sweep: {grid: {optimizer.lr: [0.1]}}\n")
    argv = ["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode & os.W_OK else real(path, mode))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "is a catapult sweep store, but it cannot be written here" in err and "Traceback" not in err
    # every reader of a store is named (transfer was left out)
    assert "`export`, `plot`, `transfer` and `report` can still read it" in err


def _train(config, out, *extra) -> int:
    return cli.main(["train", str(config), "--progress", "none", "--threads", "1", "--out", str(out), *extra])


def test_overwrite_refuses_a_users_file_under_a_run_files_name(tmp_path, capsys):
    # an earlier run's directory with the user's own trajectories.png and model.pt (plain text):
    # --overwrite replaced both without a word
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    assert _train(config, tmp_path / "r1") == 0
    r2 = tmp_path / "r2"
    r2.mkdir()
    for source in (tmp_path / "r1").iterdir():
        (r2 / source.name).write_bytes(source.read_bytes())
    (r2 / "trajectories.png").write_text("USER PNG\n")
    (r2 / "model.pt").write_text("USER MODEL\n")
    before = _files(r2)
    capsys.readouterr()
    assert _train(config, r2, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"{r2 / 'trajectories.png'}, {r2 / 'model.pt'} are not files a catapult run wrote" in err
    assert "Traceback" not in err and _files(r2) == before
    # a leftover partial file of a name the run writes is judged the same way: the write removes it
    (r2 / "trajectories.png").write_bytes((tmp_path / "r1" / "trajectories.png").read_bytes())
    (r2 / "model.pt").write_bytes((tmp_path / "r1" / "model.pt").read_bytes())
    (r2 / ".partial-model.pt").write_text("USER MODEL\n")
    assert _train(config, r2, "--overwrite") == 2
    assert ".partial-model.pt is not a file a catapult run wrote" in capsys.readouterr().err
    (r2 / ".partial-model.pt").write_bytes((tmp_path / "r1" / "model.pt").read_bytes()[:100])   # a cut-off save
    assert _train(config, r2, "--overwrite") == 0
    assert not (r2 / ".partial-model.pt").exists()


def test_overwrite_replaces_what_earlier_versions_wrote(tmp_path):
    # before figures carried catapult's mark trajectories.png had matplotlib's; config.yaml is
    # written in place, so a killed run can leave it cut off mid-write
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from catapult.files import run_output_of_ours

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    assert _train(config, out) == 0
    Figure().savefig(out / "trajectories.png")   # unmarked, as an earlier version saved it
    summary = json.loads((out / "summary.json").read_text())
    del summary["written"]   # earlier versions recorded no digests
    (out / "summary.json").write_text(json.dumps(summary))
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text[:text.index("\nmodel:") + 4])   # cut inside the key `model`
    for name in ("trajectories.png", "config.yaml", "model.pt", "metrics.csv", "summary.json"):
        assert run_output_of_ours(out / name), name
    assert _train(config, out, "--overwrite") == 0
    assert written_by_catapult(out / "trajectories.png") and (out / "config.yaml").read_text() == text


@pytest.mark.parametrize("name, content", [
    ("config.yaml", b"name: tiny\ndata: {name: digits}\nmodel: {width: 8}\n"),   # a user's config: sections left out
    ("config.yaml", b"# my notes\n"), ("model.pt", b"PK\x03\x04 a zip of mine"),
    ("trajectories.png", b"\x89PNG\r\n\x1a\n a PNG of mine"), ("summary.json", b'{"status": "mine"}'),
])
def test_a_users_file_is_not_a_run_output(tmp_path, name, content):
    from catapult.files import run_output_of_ours

    (tmp_path / name).write_bytes(content)
    assert not run_output_of_ours(tmp_path / name)


@pytest.mark.parametrize("argv, name", [(["export", "s.db", "--out"], "metrics.csv"),
                                        (["plot", "s.db", "--out"], "trajectories.png"),
                                        (["transfer", "s.db", "--out"], "trajectories.png")],
                         ids=["export", "plot", "transfer"])
def test_an_output_never_replaces_a_train_runs_own_file(store, tmp_path, capsys, argv, name):
    # a run's metrics.csv (a run record) and trajectories.png (marked) count as catapult's, so
    # `export --out run/metrics.csv` replaced the run's record with a sweep table and `plot --out
    # run/trajectories.png` its figure; the run's directory was then refused by `train --overwrite`
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert _train(tmp_path / "tiny.yaml", tmp_path / "run") == 0
    before = _files(tmp_path / "run")
    capsys.readouterr()
    assert cli.main([*argv, f"run/{name}"]) == 2
    err = capsys.readouterr().err
    assert f"run/{name} is a file of the `catapult train` run in run" in err and len(err.splitlines()) == 1
    assert _files(tmp_path / "run") == before
    assert _train(tmp_path / "tiny.yaml", tmp_path / "run", "--overwrite") == 0


def test_a_config_yaml_catapults_reader_refuses_is_not_a_run_output(tmp_path):
    # a config.yaml is judged by catapult's own YAML reader (config.io.safe_yaml): every section there
    # but `seed: 010`, which catapult never writes (it dumps 8) and which YAML 1.1 alone reads as 8,
    # is a user's file; the same file with `seed: 8` reads as a run's
    from catapult.files import run_output_of_ours

    sections = "name: a\ndata: {}\nmodel: {}\noptimizer: {}\nschedule: {}\ntrain: {}\neval: {}\n"
    path = tmp_path / "config.yaml"
    path.write_text(sections + "seed: 8\n")
    assert run_output_of_ours(path) is True
    path.write_text(sections + "seed: 010\n")
    assert run_output_of_ours(path) is False
