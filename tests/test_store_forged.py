"""Store files that are not quite a catapult store: another program's SQLite file with the same
table names (it was upgraded in place, then crashed), a store whose tables lost columns, a
tampered lambda_0 cache row; and a forged parametrization record in saved weights."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from catapult import cli
from tiny_run import tiny_config

LEGACY = Path(__file__).parent / "data" / "store_v0.1.0.db"
TINY = tiny_config("tiny_forged") + "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_another_programs_file_with_a_stores_table_names_is_left_unchanged(tmp_path, capsys):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.executescript("CREATE TABLE meta(key TEXT, value TEXT); INSERT INTO meta VALUES ('schema_version', '1');"
                       "CREATE TABLE cells(x); CREATE TABLE metrics(y);")
    conn.commit()
    conn.close()
    before = _md5(other)
    config = tmp_path / "sweep.yaml"
    config.write_text(TINY)
    assert cli.main(["sweep", str(config), "--store", str(other), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "is not a catapult sweep store" in err and "left unchanged" in err and "Traceback" not in err
    assert _md5(other) == before


@pytest.mark.parametrize("command", ["export", "report", "plot"])
def test_a_store_whose_tables_lost_columns_is_named_damaged(tmp_path, capsys, monkeypatch, command):
    store = tmp_path / "s.db"
    store.write_bytes(LEGACY.read_bytes())
    conn = sqlite3.connect(store)
    conn.executescript("CREATE TABLE cells2 AS SELECT id, config_json, swept_json, status FROM cells;"
                       "DROP TABLE cells; ALTER TABLE cells2 RENAME TO cells;")
    conn.commit()
    conn.close()
    monkeypatch.chdir(tmp_path)
    argv = {"export": ["export", "s.db", "--out", "t.csv"], "report": ["report", "s.db", "--out", "r.html"],
            "plot": ["plot", "s.db", "--out", "p.png"]}[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("not a catapult sweep store" in err or "lack the columns cells.error" in err)


@pytest.mark.parametrize("value", ["'abc'", "0.0", "-1.0", "'inf'"])
def test_a_tampered_lambda0_row_is_named_not_used(tmp_path, capsys, value):
    config = tmp_path / "sweep.yaml"
    config.write_text(TINY.replace("optimizer.lr: [0.1, 0.2]", "optimizer.lr: {log2_over_lambda0: [0, 1, 1]}"))
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]
    assert cli.main(argv) == 0
    conn = sqlite3.connect(store)
    conn.execute(f"UPDATE lambda0 SET value = {value}")
    conn.execute("UPDATE cells SET status = 'pending'")
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "is damaged: its cached lambda_0" in err and "Traceback" not in err


@pytest.mark.parametrize("density", ["abc", None, [1], "0.5", True])
def test_a_forged_parametrization_record_in_weights_is_a_mismatch_not_a_crash(density):
    from catapult.models import MLP
    from catapult.parametrize_state import ParametrizationMismatch

    model = MLP(4, 2, width=8, depth=2, parametrization="mup", base_width=8)
    state = model.state_dict()
    state._metadata[""]["catapult"] = {**state._metadata[""]["catapult"], "density": density,
                                       "density_mult": density}
    with pytest.raises(ParametrizationMismatch, match="Refusing to load it"):
        MLP(4, 2, width=8, depth=2, parametrization="mup", base_width=8).load_state_dict(state)


def test_the_columns_a_store_must_have_are_those_a_new_store_gets(tmp_path):
    from catapult.sweep.store import Store
    from catapult.sweep.store_schema import STORE_COLUMNS

    assert sorted(STORE_COLUMNS) == ["cells", "meta", "metrics"]   # a loop over no table checked nothing
    with Store(tmp_path / "new.db") as store:
        for table, columns in STORE_COLUMNS.items():
            assert tuple(r[1] for r in store.conn.execute(f"PRAGMA table_info({table})")) == columns


def test_a_grid_whose_keys_are_listed_in_another_order_is_not_resumed(tmp_path, capsys):
    # the spec hash sorts the grid's keys, but their order numbers the cells: a resume trained
    # other cells' configs under the stored cells' ids
    grid = "sweep: {grid: {optimizer.lr: [0.1, 0.2], schedule.warmup_steps: [1, 2]}}\n"
    config = tmp_path / "sweep.yaml"
    config.write_text(tiny_config("tiny_order") + grid)
    argv = ["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none", "--threads", "1"]
    assert cli.main(argv) == 0
    before = _md5(tmp_path / "s.db")
    config.write_text(tiny_config("tiny_order")
                      + "sweep: {grid: {schedule.warmup_steps: [1, 2], optimizer.lr: [0.1, 0.2]}}\n")
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "the cells are numbered differently" in err and "Traceback" not in err
    assert _md5(tmp_path / "s.db") == before
    # --dry-run looks at the store too (it said "all valid" for a store it would refuse)
    assert cli.main([*argv, "--dry-run"]) == 2
    assert "the cells are numbered differently" in capsys.readouterr().err
    assert _md5(tmp_path / "s.db") == before


def test_a_dry_run_says_what_a_run_would_do_with_the_store(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(TINY)
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--threads", "1"]
    assert cli.main([*argv, "--dry-run"]) == 0
    assert f"a new store would be written at {store}" in capsys.readouterr().out
    assert not store.exists()
    assert cli.main([*argv, "--progress", "none"]) == 0
    before = _md5(store)
    capsys.readouterr()
    assert cli.main([*argv, "--dry-run"]) == 0
    assert f"would resume the sweep in {store} (2 of 2 cells already done)" in capsys.readouterr().out
    other = tmp_path / "other.yaml"  # another sweep: refused, naming what changed
    other.write_text(TINY.replace("0.2]", "0.3]"))
    assert cli.main(["sweep", str(other), "--store", str(store), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and "[0.1, 0.2] -> [0.1, 0.3]" in err
    assert _md5(store) == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.yaml", "s.db", "sweep.yaml"]
    foreign = tmp_path / "notes.db"
    foreign.write_text("mine")
    assert cli.main(["sweep", str(config), "--store", str(foreign), "--dry-run"]) == 2
    assert "not a catapult sweep store" in capsys.readouterr().err and foreign.read_text() == "mine"


def test_a_store_reached_through_a_link_shows_what_its_writer_committed(tmp_path):
    # SQLite keeps the -wal beside the link's target: the reader looked beside the link, found
    # none, and read the main file alone ("holds no sweep yet")
    from catapult.sweep.store import Store
    from catapult.sweep.store_file import connect_readonly

    real = tmp_path / "real.db"
    with Store(real) as writer:
        writer.conn.execute("PRAGMA wal_autocheckpoint = 0")
        writer.conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'committed')")
        assert (tmp_path / "real.db-wal").exists()
        link = tmp_path / "link.db"
        link.symlink_to(real)
        reader = connect_readonly(link)
        assert reader.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("committed",)
        reader.close()


@pytest.mark.parametrize("command, name", [("plot", "s_test_accuracy.png"), ("transfer", "s_transfer.png")])
def test_default_figure_names_are_not_a_users_files(tmp_path, capsys, monkeypatch, command, name):
    (tmp_path / "s.db").write_bytes(LEGACY.read_bytes())
    (tmp_path / name).write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, "s.db"]) == 2
    assert "catapult did not write it" in capsys.readouterr().err
    assert (tmp_path / name).read_text() == "mine\n"


def test_a_sweep_with_a_failed_cell_exits_1_and_keeps_the_others(tmp_path, capsys):
    # it exited 0, so a script or CI carried on past cells that never ran. The failing cell asks
    # more windows than a text file holds, which only reading it tells (a digits sweep asking
    # more images than digits has is refused before the store: test_cli_errors)
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question. " * 10)
    config = tmp_path / "sweep.yaml"
    config.write_text(f"name: tiny_fail\ndata: {{name: text, root: {tmp_path / 'corpus.txt'}, context: 8, n_test: 2}}\n"
                      "model: {name: gpt, width: 8, depth: 1, n_heads: 2}\nloss: cross_entropy\n"
                      "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 2, batch_size: 2}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {data.n_train: [4, 5000]}}\n")
    argv = ["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none", "--threads", "1"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "2 cells: 1 finished, 0 diverged, 1 failed" in captured.out
    assert "1 cell failed with an error" in captured.err and "Traceback" not in captured.err
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert dict(conn.execute("SELECT id, status FROM cells")) == {0: "finished", 1: "failed"}


def test_ctrl_c_before_the_store_exists_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    # it offered `catapult export` of a store that did not exist
    from catapult.sweep import driver

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_sweep", interrupted)
    config = tmp_path / "sweep.yaml"
    config.write_text(TINY)
    assert cli.main(["sweep", str(config), "--store", str(tmp_path / "s.db")]) == 130
    err = capsys.readouterr().err
    assert "interrupted before any cell ran" in err and "export" not in err and not (tmp_path / "s.db").exists()


def test_the_summary_line_counts_collapsed_cells(tmp_path, capsys):
    # a collapsed cell is stored as finished (its summary says collapsed): the line said "2 finished"
    config = tmp_path / "sweep.yaml"
    config.write_text(TINY)
    argv = ["sweep", str(config), "--store", str(tmp_path / "s.db"), "--progress", "none", "--threads", "1"]
    assert cli.main(argv) == 0
    assert "2 cells: 2 finished, 0 diverged" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "s.db") as conn:   # what record() writes for a collapsed run
        conn.execute("UPDATE cells SET summary_json = json_set(summary_json, '$.status', 'collapsed') WHERE id = 1")
    assert cli.main(argv) == 0
    assert "2 cells: 2 finished (1 collapsed), 0 diverged" in capsys.readouterr().out


def _damaged_store(tmp_path: Path) -> Path:
    """A store file cut inside its first page (a copy or a full disk cut it short)."""
    from catapult.sweep.store_file import create_store_file

    path = tmp_path / "cut.db"
    assert create_store_file(path, "CREATE TABLE cells (id INTEGER)")
    path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("create, advice", [(False, "Restore it from a copy."),
                                            (True, "Give --store a new path, or restore the store from a copy.")])
def test_a_damaged_store_is_refused_with_the_advice_of_its_caller(tmp_path, create, advice):
    """Mutation pass 20 (FP3): a damaged SQLite file given to `catapult sweep` (create=True) is told to take a
    new path or restore the store; a reader (create=False) only to restore it. The file is left as it was."""
    from catapult.sweep.store import Store, StoreError, file_problem

    path = _damaged_store(tmp_path)
    before = _md5(path)
    problem = file_problem(path, create=create)
    assert problem.startswith(f"{path} is a damaged SQLite file (SQLite says: ") and problem.endswith(
        "catapult cannot read it, and left it unchanged. " + advice), problem
    with pytest.raises(StoreError) as raised:
        Store(path, create=create)
    assert str(raised.value) == problem
    assert _md5(path) == before


@pytest.mark.parametrize("create, advice", [(False, "Give the path of a sweep store."),
                                            (True, "Give --store a new path or an existing store.")])
def test_a_foreign_file_is_refused_with_the_advice_of_its_caller(tmp_path, create, advice):
    """Mutation pass 20 (FP4): a text file given to `catapult sweep` (create=True) is told to take a new path or
    an existing store, a reader the path of a store; the words Store raises, the file unchanged."""
    from catapult.sweep.store import Store, StoreError, file_problem

    notes = tmp_path / "notes.db"
    notes.write_text("not a database")
    problem = file_problem(notes, create=create)
    assert problem == (f"{notes} is not a catapult sweep store (no catapult application_id 0x43745074 in its "
                       f"SQLite header, and not a store of catapult 0.1.0); it was left unchanged. {advice}")
    with pytest.raises(StoreError) as raised:
        Store(notes, create=create)
    assert str(raised.value) == problem
    assert notes.read_text() == "not a database"


def test_a_file_that_cannot_be_read_is_a_problem_naming_it_not_an_os_error(tmp_path, monkeypatch, capsys):
    """Mutation pass 20 (FP5): reading the header failing (a file this user may not read; root reads every
    file, so the read is made to fail) is the Store's 'cannot read PATH: why', returned, not an OSError raised
    out of the CLI's check."""
    import catapult.sweep.store as store

    path = tmp_path / "locked.db"
    path.write_text("x")

    def denied(_path):
        raise PermissionError(13, "Permission denied", str(_path))
    monkeypatch.setattr(store, "identify", denied)
    assert store.file_problem(path) == f"cannot read {path}: Permission denied"
    assert cli.main(["export", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert f"cannot read {path}: Permission denied" in capsys.readouterr().err
