"""Every user error of ``catapult train`` is a short message and exit code 2, with no traceback
and no partial run directory (issue 13)."""
from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

from catapult import cli
from catapult import config as C
from catapult.engine import build_run, records
from catapult.engine.loop import RUN_FILES, RunDirectoryError, run
from tiny_run import tiny_config

TINY = tiny_config("tiny_err")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def _train(capsys, *argv) -> tuple[int, str]:
    code = cli.main(["train", *map(str, argv), "--progress", "none", "--threads", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) <= cli.MAX_MESSAGE + 200
    return code, err


def _bomb() -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    return "\n".join(lines) + "\noptimizer: {lr: *a5}\n"


@pytest.mark.parametrize("text, words", [
    (b"name: \xff oops\n", "not UTF-8"),
    (("a: " + "[" * 2000 + "]" * 2000 + "\n").encode(), "nested deeper"),
    (_bomb().encode(), "alias bomb"),
])
def test_hostile_config_files_exit_2_with_a_short_message(tmp_path, capsys, text, words):
    config = tmp_path / "bad.yaml"
    config.write_bytes(text)
    code, err = _train(capsys, config, "--out", tmp_path / "run")
    assert code == 2 and words in err and len(err) < 1000
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=2^2000/lambda0", "optimizer.lr"), ("optimizer.lr=0^-1/lambda0", "optimizer.lr"),
    ("optimizer.lr=1e39", "optimizer.lr"), ("schedule.lr_init=.inf", "schedule.lr_init"),
    ("schedule.power=.inf", "schedule.power"),
])
def test_bad_values_are_refused_before_any_work(tiny, tmp_path, capsys, override, key):
    code, err = _train(capsys, tiny, override, "--out", tmp_path / "run")
    assert code == 2 and key in err
    assert not (tmp_path / "run").exists()


def test_an_infinite_lr_final_is_refused_before_any_work(tiny, tmp_path, capsys):
    code, err = _train(capsys, tiny, "schedule.lr_final=.inf", "schedule.decay=cosine",
                       "schedule.warmup_steps=1", "--out", tmp_path / "run")
    assert code == 2 and "schedule.lr_final" in err and not (tmp_path / "run").exists()


def test_a_relative_lr_that_resolves_beyond_the_dtype_is_a_config_error(tiny):
    setup = build_run(C.validate({**C.read_mapping(tiny), "optimizer": {"lr": "3e38/lambda0"}}))
    setup._cache["lambda0"] = SimpleNamespace(value=0.5)
    with pytest.raises(C.ConfigError, match="beyond the range of float32"):
        setup.lr_target


def test_a_search_start_above_a_relative_target_is_a_config_error(tiny, tmp_path, capsys):
    # an absolute lr is checked with the config; c/lambda0 was silently lowered to the target
    code, err = _train(capsys, tiny, "--out", tmp_path / "run", "schedule.warmup=catapult", "schedule.lr_start=10",
                       "optimizer.lr=1/lambda0")
    assert code == 2 and "schedule.lr_start: 10 exceeds the target lr" in err
    assert not (tmp_path / "run").exists()


def test_out_pointing_at_a_file_is_refused(tiny, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("mine")
    code, err = _train(capsys, tiny, "--out", target)
    assert code == 2 and "not a directory" in err and target.read_text() == "mine"
    code, err = _train(capsys, tiny, "--out", target / "sub")
    assert code == 2 and "is a file" in err


def test_an_existing_run_directory_needs_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(capsys, tiny, "--out", out)[0] == 0
    (out / "notes.txt").write_text("keep me")
    stale = '{"status": "stale", "steps_completed": 0}'   # an earlier run's summary (a run's by content)
    (out / "summary.json").write_text(stale)
    code, err = _train(capsys, tiny, "--out", out)
    assert code == 2 and "--overwrite" in err and (out / "summary.json").read_text() == stale
    assert _train(capsys, tiny, "--out", out, "--overwrite")[0] == 0
    assert (out / "summary.json").read_text() != stale and (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(capsys, tiny, "--out", empty)[0] == 0  # an empty directory is no earlier run


def test_overwrite_never_replaces_a_users_own_files(tiny, tmp_path, capsys):
    # --out given as the user's own folder (here the one holding the config): --overwrite would
    # have replaced its config.yaml; a run file that is a link would be written through
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my config, with comments\nsweep: {}\n")
    code, err = _train(capsys, tiny, "--out", mine, "--overwrite")
    assert code == 2 and "not an earlier run's directory" in err and "config.yaml" in err
    assert (mine / "config.yaml").read_text().startswith("# my config")
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]  # refused before any work
    out = tmp_path / "run"
    assert _train(capsys, tiny, "--out", out)[0] == 0
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_text("a user's figure")
    (out / "trajectories.png").unlink()
    (out / "trajectories.png").symlink_to(elsewhere)
    code, err = _train(capsys, tiny, "--out", out, "--overwrite")
    assert code == 2 and "trajectories.png (not a plain file)" in err
    assert elsewhere.read_text() == "a user's figure"


def test_overwrite_refuses_a_users_file_saved_in_place_of_a_runs_though_its_format_is_a_runs(tiny, tmp_path, capsys):
    # a torch.save zip and a matplotlib PNG pass the content check; the digests the run's
    # summary.json recorded are what tell them from the run's own files
    import hashlib
    import json

    import torch
    from matplotlib.figure import Figure

    out = tmp_path / "run"
    assert _train(capsys, tiny, "--out", out)[0] == 0
    written = json.loads((out / "summary.json").read_text())["written"]
    assert sorted(written) == ["metrics.csv", "model.pt", "trajectories.png"]
    for name, digest in written.items():   # the bytes on disk, by an independent hash
        assert digest == "sha256:" + hashlib.sha256((out / name).read_bytes()).hexdigest()
    torch.save({"my.weight": torch.ones(3)}, out / "model.pt")
    code, err = _train(capsys, tiny, "--out", out, "--overwrite")
    assert code == 2 and f"{out / 'model.pt'} is not the file the earlier run wrote" in err and "Traceback" not in err
    assert torch.load(out / "model.pt", weights_only=True)["my.weight"].sum() == 3
    (out / "model.pt").unlink()
    Figure().savefig(out / "trajectories.png")   # a user's own figure (matplotlib's tag, no mark)
    mine = (out / "trajectories.png").read_bytes()
    code, err = _train(capsys, tiny, "--out", out, "--overwrite")
    assert code == 2 and "trajectories.png is not the file" in err and (out / "trajectories.png").read_bytes() == mine
    (out / "trajectories.png").unlink()
    assert _train(capsys, tiny, "--out", out, "--overwrite")[0] == 0   # the run's own files: replaced
    assert _train(capsys, tiny, "--out", out, "--overwrite")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    del summary["written"]   # a run written before the digests: judged by content, as before
    (out / "summary.json").write_text(json.dumps(summary))
    assert _train(capsys, tiny, "--out", out, "--overwrite")[0] == 0


def test_a_full_disk_is_a_message_and_leaves_no_run_directory(tiny, tmp_path, capsys, monkeypatch):
    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.csv"))

    monkeypatch.setattr(records.MetricsFile, "write", full)
    code, err = _train(capsys, tiny, "--out", tmp_path / "run")
    assert code == 2 and "No space left on device" in err and "metrics.csv" in err
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_midway_removes_only_what_it_wrote(tiny, tmp_path, monkeypatch):
    # (model.pt's write: before it the run holds nothing worth keeping; a figure or summary that
    # fails after it keeps the run's files: tests/test_results_kept_after_training.py)
    def boom(*args, **kwargs):
        raise RuntimeError("save failed")

    monkeypatch.setattr("catapult.engine.loop._save_weights", boom)
    config = C.load_config(tiny)
    with pytest.raises(RuntimeError):
        run(config, out_dir=tmp_path / "new", progress="none")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    monkeypatch.undo()
    run(config, out_dir=kept, progress="none")   # an earlier run's directory, where --overwrite may write
    monkeypatch.setattr("catapult.engine.loop._save_weights", boom)
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        run(config, out_dir=kept, progress="none", overwrite=True)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    with pytest.raises(RunDirectoryError):
        run(config, out_dir=kept, progress="none")
    assert set(RUN_FILES) == {"config.yaml", "metrics.csv", "summary.json", "trajectories.png", "model.pt"}


def test_a_long_message_is_cut(capsys):
    cli._error("train", "x" * 100_000)
    err = capsys.readouterr().err
    assert len(err) < cli.MAX_MESSAGE + 200 and "more characters" in err


@pytest.mark.parametrize("command", ["export", "plot", "transfer", "report"])
def test_an_output_file_that_is_a_directory_is_refused_before_any_work(command, tmp_path, capsys):
    import shutil

    from catapult.cli import main

    store = tmp_path / "s.db"
    shutil.copyfile(Path(__file__).parent / "data" / "store_v0.1.0.db", store)
    before = store.read_bytes()
    assert main([command, str(store), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err
    assert store.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_coord_check_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    from catapult.cli import main

    in_the_way = tmp_path / "file"
    in_the_way.write_text("mine")
    root = Path(__file__).resolve().parents[1]
    assert main(["coord-check", str(root / "configs" / "supar" / "coord_check_small.yaml"), "--out",
                 str(in_the_way), "--progress", "none"]) == 2
    captured = capsys.readouterr()
    assert "not a directory" in captured.err and "seed" not in captured.err and in_the_way.read_text() == "mine"


def test_a_store_on_a_full_disk_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import sqlite3

    from catapult.cli import main
    from catapult.sweep.store import Store

    def full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "record", full)
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                      "model: {name: mlp, width: 8, depth: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
                      "train: {steps: 1}\neval: {sharpness_every: 0}\nsweep: {grid: {seed: [0]}}\n")
    assert main(["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.db'} cannot be written: database or disk is full" in err and "Traceback" not in err


@pytest.mark.parametrize("width, depth, words", [(10**9, 2, "GiB"), (10**25, 2, "overflows"),
                                                 (10**11, 3, "overflows")])  # width**2 elements > int64
def test_a_model_too_large_to_build_is_a_config_error(tiny, tmp_path, capsys, width, depth, words):
    # torch's allocation failure is a C++ traceback; the user gave a width, so name it
    code, err = _train(capsys, tiny, f"model.width={width}", f"model.depth={depth}", "--out", tmp_path / "run")
    assert code == 2 and "model.width" in err and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _damaged_store(tmp_path) -> Path:
    """A real store whose pages past the header page (meta, its index, cells) are garbage."""
    from catapult.sweep.store import Store

    path = tmp_path / "damaged.db"
    Store(path).close()
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xde\xad" * 2048 * 3)
    return path


@pytest.mark.parametrize("command", ["export", "plot", "transfer", "report"])
def test_a_store_damaged_past_its_header_is_a_message_not_a_traceback(command, tmp_path, capsys):
    # the header (application_id) is intact, so the damage shows only when a page is read
    store = _damaged_store(tmp_path)
    # export --out out.png and report --out out.png: refused by their suffix
    out = tmp_path / {"export": "out.csv", "report": "out.html"}.get(command, "out.png")
    assert cli.main([command, str(store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged.db" in err and "malformed" in err
    assert not out.exists()


def test_a_store_damaged_in_its_metrics_is_a_message_not_a_traceback(tmp_path, capsys):
    # meta and cells read fine; the damage shows only once the metrics are read, mid-command
    store = tmp_path / "late.db"
    store.write_bytes((Path(__file__).parent / "data" / "store_v0.1.0.db").read_bytes())
    with open(store, "r+b") as fh:
        fh.seek(4096 * 4)  # page 5: the metrics table's root
        fh.write(b"\xde\xad" * 2048)
    assert cli.main(["report", str(store), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "late.db is a damaged SQLite file" in err
    assert not (tmp_path / "r.html").exists()


def _legacy_store(tmp_path) -> Path:
    """A copy of the catapult 0.1.0 store (swept: optimizer.lr, schedule.warmup_steps)."""
    store = tmp_path / "s.db"
    store.write_bytes((Path(__file__).parent / "data" / "store_v0.1.0.db").read_bytes())
    return store


@pytest.mark.parametrize("argv, option", [
    (["plot", "--out", "fig.txt"], "--out"),
    (["plot", "--trajectories-out", "fig.xyz"], "--trajectories-out"),
    (["transfer", "--out", "fig.xyz"], "--out"),
])
def test_a_figure_file_matplotlib_cannot_write_is_refused_before_any_work(tmp_path, capsys, argv, option):
    # matplotlib refuses the suffix only when it saves, after the work, with a bare ValueError
    store = _legacy_store(tmp_path)
    command, *flags = argv
    flags[-1] = str(tmp_path / flags[-1])
    assert cli.main([command, str(store), *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and option in err and "cannot write a figure" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_plot_refuses_unknown_cells_before_writing_the_heatmap(tmp_path, capsys):
    store = _legacy_store(tmp_path)
    assert cli.main(["plot", str(store), "--cells", "99", "--out", str(tmp_path / "h.png")]) == 2
    assert "no cells [99]" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("flags, words", [
    (["--panel", "optimizer.lr"], "--x and --panel are both 'optimizer.lr'"),
    (["--series", "schedule.warmup_steps", "--panel", "schedule.warmup_steps"], "--series and --panel"),
])
def test_transfer_refuses_one_key_in_two_roles(tmp_path, capsys, flags, words):
    store = _legacy_store(tmp_path)
    assert cli.main(["transfer", str(store), *flags, "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not (tmp_path / "t.png").exists()


GRID = TINY.replace("name: tiny_err", "name: grid_err") + "sweep: {grid: {seed: [0, 1]}}\n"


@pytest.mark.parametrize("flags, words", [
    (["--executor", "ray", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    (["--executor", "ray", "--num-cpus", "-1"], "--num-cpus must be >= 1"),
    (["--executor", "ensemble", "--ensemble-memory-mb", "inf"], "--ensemble-memory-mb must be a finite"),
    (["--threads", "0", "--dry-run"], "--threads must be >= 1"),
])
def test_bad_sweep_flags_are_refused_before_the_store_or_ray_starts(tmp_path, capsys, flags, words):
    # Ray refused these only once started (a traceback), after the store file was created
    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(config), "--store", str(store), "--progress", "none", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not store.exists()


def test_train_ddp_without_a_data_root_names_the_key(tmp_path, capsys):
    # a built-in corpus has no root: the shard reader got None and raised a TypeError
    config = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "fig4_gpt_small_bpe.yaml"
    assert cli.main(["train-ddp", str(config), "train.steps=2", "--out", str(tmp_path / "run"),
                     "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "Traceback" not in err and not (tmp_path / "run").exists()
    assert cli.main(["train-ddp", str(config), "data.name=text", f"data.root={tmp_path / 'nowhere'}", "data.n_train=null",
                     "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("name: [unclosed\n  foo: : :\n", "line 2, column 6: expected ',' or ']', but got ':'"),
    ('a: "open\n', "line 2, column 1: found unexpected end of stream"),
    ("a: 1\n\tb: 2\n", "line 2, column 1: found character '\\t'"),
])
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, capsys, text, words):
    # PyYAML's text spans several lines, quoting "<unicode string>" with a caret under the column
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    code, err = _train(capsys, config, "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "broken.yaml is not valid YAML" in err and words in err and "<unicode string>" not in err


def test_a_key_written_twice_is_refused_not_silently_overridden(tmp_path, capsys):
    # YAML keeps the last `optimizer:` mapping: lr 0.5 would be dropped without a word
    config = tmp_path / "twice.yaml"
    config.write_text(TINY + "optimizer: {lr: 0.5}\noptimizer: {name: adam}\n")
    code, err = _train(capsys, config, "--out", tmp_path / "run")
    assert code == 2 and "optimizer: written twice in twice.yaml (line 6 and line 7)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_file_where_a_folder_is_needed_is_named_as_such(tmp_path, capsys):
    # mkdir's "File exists" named the file but not the problem
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("mine")
    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    assert cli.main(["sweep", str(config), "--store", str(in_the_way / "s.db"), "--progress", "none"]) == 2
    assert f"{in_the_way} is a file where a directory is needed" in capsys.readouterr().err
    store = _legacy_store(tmp_path)
    assert cli.main(["export", str(store), "--out", str(in_the_way / "x.csv")]) == 2
    assert f"--out: {in_the_way} is a file, not a folder" in capsys.readouterr().err
    assert in_the_way.read_text() == "mine"


@pytest.mark.parametrize("argv, written", [
    (["plot", "--out", "heat", "--trajectories-out", "traj"], ["heat.png", "traj.png"]),
    (["transfer", "--out", "curves"], ["curves.png"]),
])
def test_a_figure_name_without_suffix_is_written_and_reported_as_png(tmp_path, capsys, monkeypatch, argv, written):
    # matplotlib adds .png to such a name; the command must name the file it really wrote
    store = _legacy_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    command, *flags = argv
    assert cli.main([command, str(store), *flags]) == 0
    out = capsys.readouterr().out
    for name in written:
        assert (tmp_path / name).is_file() and f"wrote {name}\n" in out
    assert not any((tmp_path / name.removesuffix(".png")).exists() for name in written)


def test_export_refuses_a_format_that_contradicts_the_file_name(tmp_path, capsys):
    store = _legacy_store(tmp_path)
    out = tmp_path / "cells.csv"
    assert cli.main(["export", str(store), "--format", "parquet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--format parquet does not match --out cells.csv" in err and "Traceback" not in err
    assert not out.exists()
    assert cli.main(["export", str(store), "--format", "csv", "--out", str(out)]) == 0  # agreeing: fine
    assert out.read_text().startswith("cell_id,")


@pytest.mark.parametrize("name, fmt", [("cells.xlsx", None), ("cells.XLS", None), ("cells.json", "csv"),
                                       ("cells.csv.gz", None), ("cells.tsv", "parquet")])
def test_export_refuses_a_suffix_of_a_format_it_does_not_write(tmp_path, capsys, name, fmt):
    # `export --out cells.xlsx` wrote CSV text under a spreadsheet's name (exit 0), which Excel then
    # refused to open; the suffixes written are .csv and .txt (CSV), .parquet and .pq, and a name
    # without one (CSV)
    store = _legacy_store(tmp_path)
    out = tmp_path / name
    assert cli.main(["export", str(store), "--out", str(out), *(["--format", fmt] if fmt else [])]) == 2
    err = capsys.readouterr().err
    assert f"--out: {name} names no format export writes: csv (.csv, .txt) or parquet (.parquet, .pq)" in err and "Traceback" not in err
    assert not out.exists()
    assert cli.main(["export", str(store), "--out", str(tmp_path / "cells")]) == 0   # no suffix: CSV, as before
    assert (tmp_path / "cells").read_text().startswith("cell_id,")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_store_sqlite_cannot_open_is_a_message_not_a_traceback(tmp_path, capsys):
    # SQLite refuses a file under /proc even for root (and any folder it may not write, for others)
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                      "model: {name: mlp, width: 8, depth: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
                      "train: {steps: 1}\neval: {sharpness_every: 0}\nsweep: {grid: {seed: [0]}}\n")
    assert cli.main(["sweep", str(config), "--store", "/proc/self/catapult-test.db", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "the store /proc/self/catapult-test.db cannot be opened: unable to open database file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, target", [
    (["export", "s.db", "--out", "s.db"], "s.db"),             # a CSV was written over the store it read
    (["report", "s.db", "--out", "s.db"], "s.db"),
    (["report", "s.html"], "s.html"),                          # the default <store>.html is the store
    (["plot", "s.db", "--out", "other.png"], "other.png"),     # another sweep's store, whatever its name
    (["transfer", "s.db", "--out", "other.png"], "other.png"),
])
def test_an_output_file_that_is_a_sqlite_store_is_refused_unchanged(tmp_path, capsys, monkeypatch, argv, target):
    _legacy_store(tmp_path)
    (tmp_path / "s.html").write_bytes((tmp_path / "s.db").read_bytes())
    (tmp_path / "other.png").write_bytes((tmp_path / "s.db").read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out: {target} is an SQLite database (a sweep store?)" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("argv", [
    ["export", "s.db", "--out", "sweep.yaml"],                 # the config: a CSV would replace it
    ["report", "s.db", "--out", "notes.txt"],
])
def test_an_existing_file_of_another_kind_is_not_replaced(tmp_path, capsys, monkeypatch, argv):
    _legacy_store(tmp_path)
    (tmp_path / argv[-1]).write_text("mine\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out: {argv[-1]} exists and is not a" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # an earlier output of the command is written again (test_foreign_outputs.py: and a user's
    # file of the same kind is not)
    out = "cells.csv" if argv[0] == "export" else "page.html"
    assert cli.main([*argv[:-1], out]) == 0 and cli.main([*argv[:-1], out]) == 0


@pytest.mark.parametrize("argv, start", [
    (["export", "s.db", "--out", "notes.txt"], "catapult export: error: --out: notes.txt exists"),
    (["report", "s.db", "--out", "notes.txt"], "catapult report: error: --out: notes.txt exists"),
    (["demo", "--workers", "0"], "catapult demo: error: --workers: must be >= 1"),
])
def test_a_bad_option_is_named_as_the_option_not_as_an_invalid_config(tmp_path, capsys, monkeypatch, argv, start):
    # export, report and demo read no config: "invalid config: --out: ..." sent the user to look for one
    _legacy_store(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and "config" not in err


def test_a_bad_config_key_is_still_an_invalid_config(tiny, tmp_path, capsys):
    code, err = _train(capsys, tiny, "optimizer.lrr=1", "--out", tmp_path / "run")
    assert code == 2 and err.startswith("catapult train: error: invalid config: optimizer.lrr: unknown key")


def test_a_sweep_without_its_cifar_files_is_refused_before_the_store(tmp_path, capsys):
    # the sweep wrote its store and recorded every cell 'failed' (lambda_0 could not load the
    # data), exit 0, without a word under --progress none; catapult train on the same config exits 2
    from test_data_cifar import make_cifar10

    config = tmp_path / "cifar_sweep.yaml"
    config.write_text("name: cifar_sweep\ndata: {name: cifar10, n_train: 8, n_test: 6}\n"
                      "model: {width: 8, depth: 2}\noptimizer: {lr: 2/lambda0}\ntrain: {steps: 2}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {schedule.warmup_steps: [1, 2]}}\n")
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]
    assert cli.main([*argv, f"data.root={tmp_path / 'cifar'}"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and str(tmp_path / "cifar") in err and "Traceback" not in err
    assert not store.exists()
    make_cifar10(tmp_path / "cifar")
    assert cli.main([*argv, f"data.root={tmp_path / 'cifar'}"]) == 0
    assert "2 cells: 2 finished" in capsys.readouterr().out


def test_a_reader_of_stdout_that_goes_away_is_no_input_error(tmp_path, capsys, monkeypatch):
    # `catapult sweep CONFIG --dry-run | head -1` printed "catapult sweep: error: Broken pipe" and
    # exited 2, the code of bad input
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    config = tmp_path / "grid.yaml"
    config.write_text(TINY + "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert cli.main(["sweep", str(config), "--dry-run", "--store", str(tmp_path / "s.db")]) == 141
    assert capsys.readouterr().err == "" and not (tmp_path / "s.db").exists()


def test_a_bad_or_unreachable_ray_address_is_refused_before_the_store(tmp_path, capsys):
    # ray.init retried such an address for minutes, and only after the store was written and
    # its cells claimed; the form is checked with the flags, reachability before the store
    import socket

    from catapult.sweep.ray_executor import ray_address_endpoint

    assert ray_address_endpoint("ray://head:10001") == ("head", 10001)
    assert ray_address_endpoint("[::1]:6379") == ("::1", 6379)
    assert ray_address_endpoint("auto") is None and ray_address_endpoint("local") is None
    for bad in ("head", "head:", "head:0", "head:70000", "ray://head:1/x", ":6379"):
        with pytest.raises(ValueError, match="is not auto, local, host:port or ray://host:port"):
            ray_address_endpoint(bad)
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "s.yaml"
    config.write_text("name: s\ndata: {name: digits, n_train: 32, n_test: 16}\nmodel: {width: 8, depth: 2}\n"
                      "train: {steps: 1}\neval: {sharpness_every: 0, test_every: 0}\n"
                      "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")
    store = tmp_path / "s.db"
    for address, message in (("head", "--ray-address 'head' is not auto"),
                             (f"127.0.0.1:{port}", f"--ray-address cannot reach 127.0.0.1:{port}")):
        code = cli.main(["sweep", str(config), "--store", str(store), "--executor", "ray",
                         "--ray-address", address, "--progress", "none"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not store.exists()


@pytest.mark.parametrize("command", ["train", "critical-lr", "spectrum"])
def test_difference_products_a_relu_model_refuses_exit_2_before_any_work(tiny, tmp_path, capsys, command):
    # without the config's check the first product raised from inside the solver (a traceback)
    argv = [command, str(tiny), "eval.sharpness_hvp=finite_difference", "optimizer.lr=0.1"]
    code = cli.main(argv + (["--out", str(tmp_path / "run"), "--progress", "none"] if command == "train" else []))
    err = capsys.readouterr().err
    assert code == 2 and "model.activation" in err and "ReLU kinks" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
