"""The SQLite result store: resume semantics, spec changes, failures, lambda_0 cache, export."""
from __future__ import annotations

import csv
import math
import sqlite3

import pytest

from catapult import config as cfg
from catapult.sweep.store import EXPORT_COLUMNS, SpecChanged, Store, write_csv, write_parquet
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.lambda0 import lambda0_key

from sweep_fakes import FakeLambda0, FakeRun, fake_accuracy


def _sweep(lrs=("2^-3/lambda0", "2^-2/lambda0", "2^0/lambda0"), warm=(1, 8), seeds=(0, 1), steps=4, **base):
    config = cfg.validate({"name": "t", "train": {"steps": steps}, **base})
    spec = parse_sweep({"grid": {"optimizer.lr": list(lrs), "schedule.warmup_steps": list(warm)}, "seeds": list(seeds)})
    return config, spec


def _run(config, spec, path, run_fn, lambda0_fn=None, **kw):
    return run_sweep(config, spec, path, run_fn=run_fn, lambda0_fn=lambda0_fn or FakeLambda0(), progress="none", **kw)


def test_results_are_stored_per_cell_with_final_best_and_per_step_metrics(tmp_path):
    config, spec = _sweep()
    fake, lam = FakeRun(diverge_above=1.0), FakeLambda0()
    out = _run(config, spec, tmp_path / "s.db", fake, lam)
    assert out.total == 12 and out.ran == 12 and out.mode == "new"
    # lambda_0 measured once per seed (same architecture and data), not once per cell
    assert sorted(lam.calls) == [0, 1]
    with Store(tmp_path / "s.db", create=False) as store:
        cells = store.cells()
        assert len(cells) == 12
        for cell in cells:
            lam0 = 2.0 + cell["swept"]["seed"]
            lr = cfg.resolve_lr(cell["swept"]["optimizer.lr"], lam0)
            warm = cell["swept"]["schedule.warmup_steps"]
            assert cell["lambda_0"] == lam0 and cell["lr_target"] == pytest.approx(lr, rel=1e-15, abs=0)
            assert cell["config"]["optimizer"]["lr"] == cell["swept"]["optimizer.lr"]  # config's own units
            rows = store.metrics(cell["id"])
            if lr * 8 / min(warm, 8) > 1.0:
                assert cell["status"] == "diverged" and cell["diverged_at"] == 2
                assert cell["train_loss"] == math.inf and cell["test_accuracy"] is None
                assert [r["step"] for r in rows] == [0, 1, 2]
            else:
                assert cell["status"] == "finished"
                assert cell["test_accuracy"] == fake_accuracy(lr, warm, cell["swept"]["seed"])
                assert cell["train_loss"] == pytest.approx(1 / (1 + 4 * lr))
                assert cell["best_train_loss"] == cell["train_loss"]
                assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
                assert rows[4]["test_loss"] == pytest.approx(0.1 + lr) and rows[3]["test_loss"] is None
        assert {c["status"] for c in cells} == {"finished", "diverged"}
        assert store.get_lambda0(lambda0_key(cells[0]["config"])) == 2.0


def test_rerun_never_recomputes_finished_or_diverged_cells(tmp_path):
    config, spec = _sweep()
    first = FakeRun()
    _run(config, spec, tmp_path / "s.db", first)
    with Store(tmp_path / "s.db", create=False) as store:
        before = store.cells()
    again, lam = FakeRun(), FakeLambda0()
    out = _run(config, spec, tmp_path / "s.db", again, lam)
    assert again.calls == [] and lam.calls == [] and out.ran == 0 and out.mode == "resumed"
    with Store(tmp_path / "s.db", create=False) as store:
        assert store.cells() == before


def test_interrupted_cells_are_redone_and_only_they(tmp_path):
    config, spec = _sweep()

    class Interrupt(FakeRun):
        def __call__(self, config, progress=None):
            if len(self.calls) == 5:
                raise KeyboardInterrupt  # the process is stopped mid-cell
            return super().__call__(config, progress)

    with pytest.raises(KeyboardInterrupt):
        _run(config, spec, tmp_path / "s.db", Interrupt())
    with Store(tmp_path / "s.db", create=False) as store:
        counts = store.counts()
        done_ids = store.cell_ids(("finished", "diverged"))
    assert len(done_ids) == 5 and counts["running"] == 1 and counts["pending"] == 6  # cell 5 was cut off
    resume = FakeRun()
    out = _run(config, spec, tmp_path / "s.db", resume)
    redone = sorted(c["name"] for c in resume.calls)
    assert redone == sorted(f"t-{i}" for i in range(12) if i not in done_ids)
    assert out.counts["finished"] + out.counts["diverged"] == 12 and out.reused == 5


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on_then_retried(tmp_path):
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"schedule.lr_init": [0.0, 0.01, 0.02], "optimizer.lr": [0.02]}})
    out = _run(config, spec, tmp_path / "s.db", FakeRun(fail_lr_init=0.01))
    assert out.counts == {"pending": 0, "running": 0, "finished": 2, "diverged": 0, "failed": 1}
    with Store(tmp_path / "s.db", create=False) as store:
        failed = store.cell(1)
        assert failed["status"] == "failed"
        assert failed["error"].startswith("RuntimeError: boom: injected failure")
        assert "Traceback" in failed["error"] and store.metrics(1) == []
    # failures are not results: a rerun retries only the failed cell
    retry = FakeRun()
    out = _run(config, spec, tmp_path / "s.db", retry)
    assert [c["schedule"]["lr_init"] for c in retry.calls] == [0.01]
    assert out.counts["finished"] == 3
    with Store(tmp_path / "s.db", create=False) as store:
        assert store.cell(1)["error"] is None and store.cell(1)["attempts"] == 2


def test_a_changed_spec_is_refused_with_what_changed(tmp_path):
    config, spec = _sweep()
    _run(config, spec, tmp_path / "s.db", FakeRun())
    changed_config, changed_spec = _sweep(lrs=("2^-3/lambda0", "2^1/lambda0"), steps=5)
    fake = FakeRun()
    with pytest.raises(SpecChanged) as info:
        _run(changed_config, changed_spec, tmp_path / "s.db", fake)
    assert fake.calls == []
    assert info.value.changes == [
        "train.steps: 4 -> 5",
        'sweep.grid.optimizer.lr: ["2^-3/lambda0", "2^-2/lambda0", "2^0/lambda0"] -> ["2^-3/lambda0", "2^1/lambda0"]',
    ]
    assert "new --store path" in str(info.value)
    with Store(tmp_path / "s.db", create=False) as store:  # untouched
        assert store.counts()["finished"] + store.counts()["diverged"] == 12


def test_lambda0_failure_fails_only_its_cells(tmp_path):
    config, spec = _sweep(seeds=(0, 1))

    def lambda0_fn(config):
        if config["seed"] == 1:
            return float("nan")
        return 2.0

    out = _run(config, spec, tmp_path / "s.db", FakeRun(), lambda0_fn)
    assert out.counts["failed"] == 6
    # the outcome tells them apart from cells that ran (it said "6 failed (6 run now, ...)")
    assert out.unresolved == 6 and out.ran == 6
    with Store(tmp_path / "s.db", create=False) as store:
        for cell in store.cells():
            if cell["swept"]["seed"] == 1:
                assert cell["status"] == "failed" and "lambda_0 = nan" in cell["error"]
            else:
                assert cell["status"] in ("finished", "diverged")


def test_every_result_is_committed_at_once(tmp_path):
    """A reader sees each cell the moment it is recorded (so kill -9 cannot lose it)."""
    config, spec = _sweep()
    seen = []

    class Peek(FakeRun):
        def __call__(self, config, progress=None):
            conn = sqlite3.connect(tmp_path / "s.db")
            seen.append(conn.execute("SELECT COUNT(*) FROM cells WHERE status IN ('finished','diverged')").fetchone()[0])
            conn.close()
            return super().__call__(config, progress)

    _run(config, spec, tmp_path / "s.db", Peek())
    assert seen == list(range(12))


def test_not_a_store_is_a_clear_error(tmp_path):
    from catapult.sweep.store import StoreError

    bogus = tmp_path / "x.db"
    bogus.write_text("hello, not sqlite " * 100)
    with pytest.raises(StoreError, match="not a catapult sweep store"):
        Store(bogus, create=False)
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "missing.db", create=False)


# ---- export


def _exported_store(tmp_path):
    config, spec = _sweep(steps=3)
    _run(config, spec, tmp_path / "s.db", FakeRun())
    return tmp_path / "s.db"


def test_export_csv_has_one_row_per_cell_and_the_documented_columns(tmp_path):
    path = _exported_store(tmp_path)
    with Store(path, create=False) as store:
        write_csv(store, tmp_path / "out.csv")
        cells = store.cells()
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
        fh.seek(0)
        header = next(csv.reader(fh))
    assert header == ["cell_id", "optimizer.lr", "schedule.warmup_steps", "seed", *EXPORT_COLUMNS]
    for needed in ("status", "train_loss", "test_loss", "test_accuracy"):
        assert needed in header
    assert len(rows) == len(cells) == 12
    for row, cell in zip(rows, cells):
        assert int(row["cell_id"]) == cell["id"]
        assert row["optimizer.lr"] == cell["swept"]["optimizer.lr"]
        assert int(row["schedule.warmup_steps"]) == cell["swept"]["schedule.warmup_steps"]
        assert row["status"] == cell["status"]
        assert float(row["train_loss"]) == cell["train_loss"]  # exact round trip
        if cell["status"] == "finished":
            assert float(row["test_accuracy"]) == cell["test_accuracy"]
            assert float(row["test_loss"]) == cell["test_loss"]
        else:
            assert row["test_accuracy"] == "" and row["train_loss"] == "inf"


def test_export_parquet_matches_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path = _exported_store(tmp_path)
    with Store(path, create=False) as store:
        write_parquet(store, tmp_path / "out.parquet")
        cells = store.cells()
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["cell_id", "optimizer.lr", "schedule.warmup_steps", "seed", *EXPORT_COLUMNS]
    data = table.to_pydict()
    assert data["cell_id"] == [c["id"] for c in cells]
    assert data["optimizer.lr"] == [c["swept"]["optimizer.lr"] for c in cells]
    assert data["status"] == [c["status"] for c in cells]
    assert data["test_accuracy"] == [c["test_accuracy"] for c in cells]
    assert data["train_loss"] == [c["train_loss"] for c in cells]


def test_export_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    path = _exported_store(tmp_path)
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with Store(path, create=False) as store, pytest.raises(ImportError, match=r"catapult\[parquet\]"):
        write_parquet(store, tmp_path / "out.parquet")


def test_export_command_line(tmp_path, capsys):
    from catapult.cli import main

    path = _exported_store(tmp_path)
    assert main(["export", str(path), "--out", str(tmp_path / "e.csv")]) == 0
    assert (tmp_path / "e.csv").read_text().startswith("cell_id,optimizer.lr,")
    assert main(["export", str(tmp_path / "nope.db"), "--out", str(tmp_path / "e.csv")]) == 2
    assert "store not found" in capsys.readouterr().err


def _spectrum_stores(tmp_path):
    """A sweep whose cells log the spectrum, and one that logs none. eig_1 = 10 + t, eig_2 = 5 + t,
    trace = 100 t at the even steps t with a finite loss: the last t is 4 in a finished cell of 4
    steps, 0 in one that diverged at step 2."""
    fake = FakeRun(diverge_above=1.0)

    def run_fn(config, progress=None):
        result = fake(config, progress)
        for row in result.metrics:
            if row["step"] % 2 == 0 and math.isfinite(row["train_loss"]):
                row.update(eig_1=10.0 + row["step"], eig_2=5.0 + row["step"], hessian_trace=100.0 * row["step"])
        return result

    config, spec = _sweep(eval={"sharpness_every": 2, "spectrum_top_k": 2, "trace_matvecs": 10})
    _run(config, spec, tmp_path / "s.db", run_fn)
    config, spec = _sweep()
    _run(config, spec, tmp_path / "plain.db", FakeRun())
    return tmp_path / "s.db", tmp_path / "plain.db"


def test_export_has_the_last_logged_spectrum_of_cells_that_log_it(tmp_path):
    # eval.spectrum_top_k / eval.trace_matvecs cells log eig_i and hessian_trace on their sharpness
    # steps (the metrics' extra columns); the export gives each cell's last logged values, and the
    # aggregate their mean over seeds
    from catapult.report import build_report
    from catapult.sweep.store_export import aggregate_table

    logged, plain = _spectrum_stores(tmp_path)
    with Store(logged, create=False) as store:
        write_csv(store, tmp_path / "out.csv")
        columns, rows = aggregate_table(store)
        page = build_report(store)
    with open(tmp_path / "out.csv", newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert list(exported[0])[-3:] == ["eig_1", "eig_2", "hessian_trace"]
    for row in exported:
        if row["status"] == "finished":
            assert (float(row["eig_1"]), float(row["eig_2"]), float(row["hessian_trace"])) == (14.0, 9.0, 400.0)
        else:  # like its sharpness: a value from before it blew up would flatter it
            assert (row["eig_1"], row["eig_2"], row["hessian_trace"]) == ("", "", "")
    assert columns[-9:] == [f"{m}_{s}" for m in ("eig_1", "eig_2", "hessian_trace") for s in ("mean", "std", "n")]
    finished = [r for r in rows if r[columns.index("status")] == "finished"]
    assert finished and all(r[-9:-6] == [14.0, 0.0, 2] for r in finished)  # both seeds: eig_1 = 14
    # the report's results table shows them too
    assert "<th>eig_2</th><th>hessian_trace</th>" in page and "<td>14</td>" in page
    # a sweep that logs no spectrum keeps the documented columns only
    with Store(plain, create=False) as store:
        write_csv(store, tmp_path / "plain.csv")
        assert "eig_1" not in build_report(store)
    with open(tmp_path / "plain.csv", newline="") as fh:
        assert next(csv.reader(fh))[-1] == "error"


def _marked_runs(value: str, mark: str):
    """FakeRun cells whose even finite rows log ``value`` = 10 + step with a convergence ``mark``:
    seed 0's last solve (step 4) is cut short, seed 1's first (step 0) only."""
    fake = FakeRun(diverge_above=1.0)

    def run_fn(config, progress=None):
        result = fake(config, progress)
        for row in result.metrics:
            if row["step"] % 2 == 0 and math.isfinite(row["train_loss"]):
                last = row["step"] == 4
                row.update({value: 10.0 + row["step"], mark: int(last != (config["seed"] == 0))})
        return result
    return run_fn


def test_export_marks_whether_the_last_eig_i_converged(tmp_path):
    # each row's eig_converged (1 / 0) goes through the store's extra columns; the export gives the
    # mark of the row whose eig_i it shows (not the last mark of any row), the aggregate the
    # fraction of seeds that converged (the report's table takes the export's spectrum columns). A
    # store without marks (written before them: _spectrum_stores) keeps its columns (test above)
    from catapult.sweep.store_export import aggregate_table

    marked = _marked_runs("eig_1", "eig_converged")

    def run_fn(config, progress=None):
        result = marked(config, progress)
        if result.metrics[-1]["step"] == 4:   # a later row with a NaN solve does not move the mark
            result.metrics.append({**result.metrics[-1], "step": 5, "eig_1": float("nan"), "eig_converged": 0})
        return result

    config, spec = _sweep(lrs=("2^-3/lambda0", "2^0/lambda0"), warm=(1,), eval={"sharpness_every": 2, "spectrum_top_k": 1})
    _run(config, spec, tmp_path / "s.db", run_fn)
    with Store(tmp_path / "s.db", create=False) as store:
        write_csv(store, tmp_path / "out.csv")
        columns, rows = aggregate_table(store)
    with open(tmp_path / "out.csv", newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert list(exported[0])[-2:] == ["eig_1", "eig_converged"]
    finished = [r for r in exported if r["status"] == "finished"]
    assert finished and {r["seed"] for r in finished} == {"0", "1"}
    for row in exported:
        if row["status"] == "finished":
            assert row["eig_1"] == "14.0" and row["eig_converged"] == ("0" if row["seed"] == "0" else "1")
        else:
            assert row["eig_converged"] == ""
    means = [r[columns.index("eig_converged_mean")] for r in rows if r[columns.index("n_finished")] == 2]
    assert means and all(m == 0.5 for m in means)


def test_plot_shows_the_last_logged_spectrum(tmp_path, capsys):
    # catapult plot --metric eig_<i> / hessian_trace: the heatmap of each cell's last logged value
    # (means over seeds); refused, exit 2 and nothing written, where no cell logged it
    from catapult.cli import main
    from catapult.plots.phase import phase_grid
    from catapult.sweep.store_export import last_spectrum

    logged, plain = _spectrum_stores(tmp_path)
    with Store(logged, create=False) as store:
        cells = [{**c, **last_spectrum(store, c)} for c in store.cells()]
        axes = store.axes()
        grid = phase_grid(cells, axes, "eig_2")
    ok = [(i, j) for i, row in enumerate(grid.status) for j, s in enumerate(row) if s == "ok"]
    assert ok and all(grid.values[ij] == 9.0 for ij in ok)  # eig_2 = 5 + 4 in both seeds
    assert any(s == "diverged" for row in grid.status for s in row)
    assert grid.best is None  # a curvature measure has no "best" cell to outline
    as_sharpness = [{**c, "sharpness": c.get("eig_1")} for c in cells]
    assert phase_grid(as_sharpness, axes, "sharpness").best is None
    assert phase_grid(as_sharpness, axes, "test_loss").best is not None
    out = tmp_path / "eig.png"
    assert main(["plot", str(logged), "--metric", "hessian_trace", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for store, metric, need in ((logged, "eig_3", "eval.spectrum_top_k >= 3"),
                                (plain, "hessian_trace", "eval.trace_matvecs > 0")):
        assert main(["plot", str(store), "--metric", metric, "--out", str(tmp_path / "no.png")]) == 2
        assert f"logged {metric} (it needs {need})" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["plot", str(logged), "--metric", "eig_0"])
    assert exit_.value.code == 2 and "unknown metric 'eig_0'" in capsys.readouterr().err


def test_a_lambda0_another_driver_stored_first_is_the_one_every_cell_uses(tmp_path):
    # two sweeps on one store measure lambda_0 at once; the later measurement (another thread
    # count or CPU rounds differently) replaced the first in the cache while the cells of each
    # driver resolved their lr with their own: one phase diagram over two lambda_0 values
    config, spec = _sweep(seeds=(0,))
    path = tmp_path / "s.db"

    def lambda0_racing_another_driver(cell_config):
        with Store(path) as other:  # the other driver stores 2.5 while this one measures
            other.put_lambda0(lambda0_key(cell_config), 2.5)
        return 2.0 + 1e-7

    _run(config, spec, path, FakeRun(diverge_above=1.0), lambda0_racing_another_driver)
    with Store(path, create=False) as store:
        cells = store.cells()
        assert store.get_lambda0(lambda0_key(cells[0]["config"])) == 2.5
        for cell in cells:
            assert cell["lambda_0"] == 2.5
            assert cell["lr_target"] == pytest.approx(cfg.resolve_lr(cell["swept"]["optimizer.lr"], 2.5), rel=1e-15, abs=0)
    with Store(tmp_path / "t.db") as store:  # the first value stored is kept and returned
        assert store.put_lambda0("k", 3.0) == 3.0 and store.put_lambda0("k", 4.0) == 3.0
        assert store.get_lambda0("k") == 3.0


def test_an_export_stopped_mid_write_leaves_no_truncated_csv(tmp_path, monkeypatch):
    # Ctrl-C halfway through the rows left a CSV that read back as a shorter, valid table
    from catapult.sweep import store_export

    path = _exported_store(tmp_path)
    with Store(path, create=False) as store:
        columns, rows = store_export.export_table(store)

    class Interrupted:
        def __str__(self):
            raise KeyboardInterrupt

    stopped = [list(r) for r in rows]
    stopped[1][0] = Interrupted()
    monkeypatch.setattr(store_export, "export_table", lambda store: (columns, stopped))
    with Store(path, create=False) as store, pytest.raises(KeyboardInterrupt):
        write_csv(store, tmp_path / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".partial"))) == []


class _CellsStore:
    """The read side of a store that export_table / aggregate_table use, over given cells."""

    def __init__(self, cells, metrics=None):
        self._cells, self._metrics = cells, metrics or {}

    def axes(self):
        return [{"key": "optimizer.lr"}, {"key": "seed"}]

    def cells(self):
        return self._cells

    def metrics(self, cell_id):
        return self._metrics.get(cell_id, [])


def test_aggregate_counts_and_averages_the_seeds_with_a_result_only():
    # n_seeds and the means / sample stds are over finished, diverged and collapsed seeds; an
    # interrupted seed is none of them; a group whose statuses differ is "mixed"
    import statistics
    from catapult.sweep.store_export import aggregate_table

    def cell(i, lr, seed, status, acc):
        return {"id": i, "swept": {"optimizer.lr": lr, "seed": seed}, "status": status, "config": None,
                "test_accuracy": acc}
    cells = [cell(1, 0.1, 0, "finished", 0.5), cell(2, 0.1, 1, "diverged", None),
             cell(3, 0.1, 2, "collapsed", 0.3), cell(4, 0.1, 3, "interrupted", 0.9),
             cell(5, 0.2, 0, "finished", 0.7), cell(6, 0.2, 1, "finished", 0.8)]
    columns, rows = aggregate_table(_CellsStore(cells))
    got = [dict(zip(columns, r)) for r in rows]
    assert [g["optimizer.lr"] for g in got] == [0.1, 0.2]
    mixed, same = got
    assert [mixed[k] for k in ("n_seeds", "n_finished", "n_diverged", "n_collapsed", "status")] == [3, 1, 1, 1, "mixed"]
    assert mixed["test_accuracy_mean"] == pytest.approx(0.4) and mixed["test_accuracy_n"] == 2
    assert mixed["test_accuracy_std"] == pytest.approx(statistics.stdev([0.5, 0.3]))
    assert [same[k] for k in ("n_seeds", "n_finished", "status", "test_accuracy_n")] == [2, 2, "finished", 2]


def test_aggregate_std_of_a_single_seed_is_left_empty_not_zero(tmp_path):
    # the sample std of one value is undefined (statistics.stdev refuses it, the phase diagram
    # and transfer curves show no spread): the export wrote 0.0, as if the seeds agreed exactly,
    # and the report "50.00% ± 0.00%"
    import csv
    import statistics
    from catapult.report import _seeds_section
    from catapult.sweep.store_export import aggregate_table, mean_std

    with pytest.raises(statistics.StatisticsError):
        statistics.stdev([0.5])
    assert mean_std([0.5, None]) == (0.5, None, 1)

    def cell(i, lr, seed, status, acc):
        return {"id": i, "swept": {"optimizer.lr": lr, "seed": seed}, "status": status, "config": None,
                "test_accuracy": acc, "best_test_accuracy": acc}
    cells = [cell(1, 0.1, 0, "finished", 0.5), cell(2, 0.1, 1, "diverged", None),
             cell(3, 0.2, 0, "finished", 0.7), cell(4, 0.2, 1, "finished", 0.8)]
    store = _CellsStore(cells)
    columns, rows = aggregate_table(store)
    one, two = (dict(zip(columns, r)) for r in rows)
    assert (one["test_accuracy_mean"], one["test_accuracy_std"], one["test_accuracy_n"]) == (0.5, None, 1)
    assert two["test_accuracy_std"] == pytest.approx(statistics.stdev([0.7, 0.8]))
    from catapult.writing import csv_text

    read = list(csv.DictReader(csv_text(columns, rows).splitlines()))
    assert read[0]["test_accuracy_std"] == "" and read[0]["test_accuracy_mean"] == "0.5"
    store.axes = lambda: [{"key": "optimizer.lr", "values": [0.1, 0.2]}, {"key": "seed", "values": [0, 1]}]
    page = "".join(_seeds_section(store, store.axes()))
    assert "50.00%" in page and "50.00% ±" not in page and "± 0.00%" not in page


def test_aggregate_mean_and_std_are_the_exact_ones_rounded_once():
    # fsum / n rounded twice: three seeds at lr_target 0.1 averaged to 0.10000000000000002 with
    # std 1.7e-17, and three equal train losses 0.7272727272727273 to ...272 with std 1.4e-16
    # (NumPy gives the same), so lr_target_mean == 0.1 matched no row
    import random
    import statistics
    from fractions import Fraction
    from catapult.sweep.store_export import mean_std

    assert mean_std([0.1, 0.1, 0.1]) == (0.1, 0.0, 3)
    assert mean_std([0.7272727272727273] * 3) == (0.7272727272727273, 0.0, 3)
    rng = random.Random(0)
    for _ in range(200):
        xs = [rng.uniform(-1, 1) * 10 ** rng.randint(-3, 3) for _ in range(rng.randint(2, 7))]
        mean, std, n = mean_std(xs)
        exact = sum(map(Fraction, xs)) / len(xs)
        assert mean == float(exact) and n == len(xs)
        var = sum((Fraction(x) - exact) ** 2 for x in xs) / (len(xs) - 1)
        assert std == pytest.approx(float(var) ** 0.5, rel=1e-15, abs=0)
        assert std == pytest.approx(statistics.stdev(xs), rel=1e-15, abs=0)


def test_last_spectrum_skips_values_that_are_not_finite():
    from catapult.sweep.store_export import last_spectrum

    cell = {"id": 1, "status": "finished", "config": {"eval": {"spectrum_top_k": 1, "trace_matvecs": 5}}}
    rows = [{"eig_1": 3.0, "hessian_trace": 7.0}, {"eig_1": float("nan"), "hessian_trace": None},
            {"eig_1": float("inf"), "hessian_trace": 8.0}]
    assert last_spectrum(_CellsStore([cell], {1: rows}), cell) == {"eig_1": 3.0, "hessian_trace": 8.0}


@pytest.mark.parametrize("first, then", [(2, [0, 1]), ([0, 1], 2)])
def test_seeds_as_a_count_or_as_its_list_resume_the_same_sweep(tmp_path, first, then):
    # `seeds: 2` and `seeds: [0, 1]` are the same cells; a store made with one refused the other
    # ("sweep.seeds: 2 -> [0, 1]")
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    grid = {"optimizer.lr": [0.01, 0.02]}
    _run(config, parse_sweep({"grid": grid, "seeds": first}), tmp_path / "s.db", FakeRun())
    fake = FakeRun()
    out = _run(config, parse_sweep({"grid": grid, "seeds": then}), tmp_path / "s.db", fake)
    assert out.mode == "resumed" and out.ran == 0 and fake.calls == []
    for other in (3, [1, 0], [0, 2]):  # other seeds, or the same ones in another order, are other cells
        with pytest.raises(SpecChanged):
            _run(config, parse_sweep({"grid": grid, "seeds": other}), tmp_path / "s.db", FakeRun())


def _export_round(tmp_path, run_fn):
    """A sweep of two relative lrs (2^-3/lambda0, 2^0/lambda0) over seeds 0 and 1 run by ``run_fn``,
    exported (write_csv), aggregated (aggregate_table) and reported (write_report): the exported
    rows, the aggregate's columns and rows, and the report's HTML."""
    from catapult.report import write_report
    from catapult.sweep.store_export import aggregate_table

    config, spec = _sweep(lrs=("2^-3/lambda0", "2^0/lambda0"), warm=(1,), eval={"sharpness_every": 2})
    _run(config, spec, tmp_path / "s.db", run_fn)
    with Store(tmp_path / "s.db", create=False) as store:
        write_csv(store, tmp_path / "out.csv")
        columns, rows = aggregate_table(store)
    write_report(tmp_path / "s.db", tmp_path / "report.html")
    with open(tmp_path / "out.csv", newline="") as fh:
        exported = list(csv.DictReader(fh))
    return exported, columns, rows, (tmp_path / "report.html").read_text()


def test_export_marks_whether_the_final_sharpness_converged(tmp_path, monkeypatch):
    # the export's final sharpness had no mark of its solve (only summary_json's run-level count):
    # sharpness_converged is the mark of the row the final sharpness came from (not the last mark of
    # any row), empty where the cell has no final sharpness, last; --aggregate gives its mean over
    # seeds, and the report's results table takes the same column
    exported, columns, rows, report = _export_round(tmp_path, _marked_runs("sharpness", "sharpness_converged"))
    assert list(exported[0])[-1] == "sharpness_converged"
    finished = [r for r in exported if r["status"] == "finished"]
    assert finished and {r["seed"] for r in finished} == {"0", "1"}
    for row in exported:
        if row["status"] == "finished":
            assert row["sharpness"] == "14.0" and row["sharpness_converged"] == ("0" if row["seed"] == "0" else "1")
        else:
            assert row["sharpness"] == "" and row["sharpness_converged"] == ""
    means = [r[columns.index("sharpness_converged_mean")] for r in rows if r[columns.index("n_finished")] == 2]
    assert means and all(m == 0.5 for m in means)
    assert "<th>sharpness_converged</th>" in report
    # catapult plot --metric sharpness: the heatmap's cells know which of their seeds' values are approximate
    import catapult.plots.phase as phase
    from catapult import cli

    grids = []
    drawn = phase.plot_phase_diagram

    def keep(grid, *args, **kwargs):
        grids.append(grid)
        return drawn(grid, *args, **kwargs)

    monkeypatch.setattr(phase, "plot_phase_diagram", keep)
    assert cli.main(["plot", str(tmp_path / "s.db"), "--metric", "sharpness", "--out", str(tmp_path / "h.png"),
                     "--trajectories-out", str(tmp_path / "t.png")]) == 0
    (grid,) = grids
    finished = {(i, j) for i, row in enumerate(grid.status) for j, s in enumerate(row) if s == "ok"}
    assert finished and all(grid.unconverged[i, j] == 1 for i, j in finished)   # seed 0's, of two


def test_a_store_without_sharpness_marks_exports_without_the_column(tmp_path):
    # stores written before the mark: their rows have none; the export keeps its columns
    from catapult.sweep.store_export import export_table

    config, spec = _sweep(lrs=("2^-3/lambda0",), warm=(1,), eval={"sharpness_every": 2})
    _run(config, spec, tmp_path / "s.db", FakeRun(diverge_above=1.0))
    with Store(tmp_path / "s.db", create=False) as store:
        columns, _ = export_table(store)
    assert "sharpness_converged" not in columns and columns[-1] == "error"


def test_export_marks_whether_each_cells_lambda0_converged(tmp_path):
    # a cell's summary says whether its lambda_0 solve converged (lambda_0_converged); the export,
    # --aggregate (the fraction of seeds, diverged ones too, as lambda_0's mean) and the report's
    # table gave lambda_0 with no mark. Seed 0's solve is cut short; a summary without the key
    # (written before it) exports an empty mark
    fake = FakeRun(diverge_above=1.0)

    def run_fn(config, progress=None):
        result = fake(config, progress)
        if config["optimizer"]["lr"] < 0.1:   # 2^-3/lambda0 (lambda_0 2 or 3): marked; 2^0: no key
            result.summary.update(lambda_0=2.0 + config["seed"], lambda_0_converged=config["seed"] == 1)
        return result

    exported, columns, rows, report = _export_round(tmp_path, run_fn)
    assert list(exported[0])[-1] == "lambda_0_converged"
    marks = sorted((r["optimizer.lr"], r["seed"], r["lambda_0_converged"]) for r in exported)
    assert marks == [("2^-3/lambda0", "0", "0"), ("2^-3/lambda0", "1", "1"), ("2^0/lambda0", "0", ""),
                     ("2^0/lambda0", "1", "")]
    lr = columns.index("optimizer.lr")
    means = {r[lr]: r[columns.index("lambda_0_converged_mean")] for r in rows}
    assert means == {"2^-3/lambda0": 0.5, "2^0/lambda0": None}
    assert "<th>lambda_0_converged</th>" in report
