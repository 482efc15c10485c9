"""What ``catapult demo`` makes of its runs, with the runs themselves replaced by summaries written
here (mutation pass 24): the report's table and setup line, the progress lines, which runs each
figure draws, the order of the results, the process count and the caller's torch threads. The
expected text is written out by hand from the summaries."""
from __future__ import annotations

import pytest
import torch

from catapult import demo


def _summary(name, status="finished", catapults=(), **values):
    s = {"name": name, "status": status, "diverged_at": None, "catapults": [{"start": t} for t in catapults],
         "lambda_0": 0.5, "lr_target": 16.0, "final_train_loss": 0.25, "peak_train_loss": 2.0,
         "final_sharpness": 0.1, "threshold_target": 0.125, "wall_time_s": 1.0}
    s.update(values)
    return s


def _configs(params=("mup", "sp"), steps=(1, 16)):
    return demo.demo_configs(params, steps)


def _cells(line):
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_the_table_by_hand():
    # DM15-DM21: a diverged run shows diverged@step and no final values (even where its summary
    # holds some), three catapults are listed whole and a fourth is "...", an infinite lambda_0 is
    # '-', and the separator row has one cell per column (Markdown's table rule)
    configs = _configs(("sp",), (1, 16, 64))
    summaries = {
        "fig1_sp_T1": _summary("fig1_sp_T1", "diverged", diverged_at=37, final_train_loss=1e9, final_sharpness=9.0),
        "fig1_sp_T16": _summary("fig1_sp_T16", catapults=(3, 9, 20), lambda_0=float("inf")),
        "fig1_sp_T64": _summary("fig1_sp_T64", catapults=(3, 9, 20, 41), final_sharpness=0.1, threshold_target=0.125),
    }
    lines = demo.report_table(configs, summaries).splitlines()
    assert len(_cells(lines[0])) == 11 and lines[1] == "|" + "---|" * 11
    assert _cells(lines[2]) == ["sp", "1", "0.5", "16", "diverged@37", "-", "2", "no", "-", "0.125", "-"]
    assert _cells(lines[3]) == ["sp", "16", "-", "16", "finished", "0.25", "2", "yes: step 3, 9, 20", "0.1", "0.125",
                                "0.80"]
    assert _cells(lines[4])[7] == "yes: step 3, 9, 20 ..." and _cells(lines[4])[10] == "0.80"   # 0.1 / 0.125


def _fake_runs(monkeypatch, summaries, seen=None):
    def run_one(config, out_dir):
        if seen is not None:
            seen.append((config["name"], torch.get_num_threads()))
        name = config["name"]
        return name, summaries.get(name) or _summary(name), [{"step": 0, "name": name}]

    monkeypatch.setattr(demo, "_run_one", run_one)
    monkeypatch.setattr(demo, "_worker_pool", lambda workers: pytest.fail("a process pool was started"))


def test_a_diverged_runs_progress_line_and_the_setup_line(tmp_path, monkeypatch):
    # DM13: the progress line of a diverged run (no final loss) raised formatting None; DM26: the
    # setup line said "all" training images for a config of 100
    configs = _configs(("sp",), (1,))
    configs[0]["data"]["n_train"] = 100
    lines = []
    _fake_runs(monkeypatch, {"fig1_sp_T1": _summary("fig1_sp_T1", "diverged", diverged_at=37, final_train_loss=None,
                                                   catapults=(5,), wall_time_s=0.25)})
    monkeypatch.setattr(demo, "_figures", lambda out, configs, summaries, metrics: [])
    result = demo.run_demo(tmp_path / "demo", workers=1, echo=lines.append, configs=configs)
    assert lines[1] == "[1/1] fig1_sp_T1: diverged at step 37, catapult at step 5 (0.2 s)"
    assert "; digits (100 training images); " in result.report.read_text()


def test_one_config_runs_in_this_process_and_gives_the_threads_back(tmp_path, monkeypatch):
    # DM10: workers=4 for one config said "in 4 processes" and started a pool of 4; DM11: the
    # caller's torch thread count stayed 1 after the demo
    lines, seen = [], []
    _fake_runs(monkeypatch, {}, seen)
    monkeypatch.setattr(demo, "_figures", lambda out, configs, summaries, metrics: [])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.run_demo(tmp_path / "demo", workers=4, echo=lines.append, configs=_configs(("mup",), (1,)))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert lines[0].endswith(" in 1 process -> " + str(tmp_path / "demo") + "/")
    assert seen == [("fig1_mup_T1", 1)] and after == 2


def test_results_are_in_config_order_whatever_order_the_runs_end_in(tmp_path, monkeypatch):
    # DM12: the summaries came in the order the pool's runs ended
    from concurrent.futures import ThreadPoolExecutor

    configs = _configs(("mup", "sp"), (1,))
    _fake_runs(monkeypatch, {})
    monkeypatch.setattr(demo, "_worker_pool", lambda workers: ThreadPoolExecutor(workers))
    monkeypatch.setattr("concurrent.futures.as_completed", lambda futures: list(reversed(list(futures))))
    monkeypatch.setattr(demo, "_figures", lambda out, configs, summaries, metrics: [])
    lines = []
    result = demo.run_demo(tmp_path / "demo", workers=2, echo=lines.append, configs=configs)
    assert lines[1].startswith("[1/2] fig1_sp_T1: ")   # the runs did end in reverse
    assert list(result.summaries) == list(result.metrics) == ["fig1_mup_T1", "fig1_sp_T1"]


def test_each_figure_draws_its_parametrizations_runs(tmp_path, monkeypatch):
    # DM14: every run went to every figure, and the labels T_wrm=1 of both took the last one's metrics
    drawn = {}

    def plot(curves, fh, title, statuses):
        drawn[title.split(":")[0]] = (curves, statuses)
        fh.write(b"figure")

    monkeypatch.setattr("catapult.plots.plot_trajectories", plot)
    configs = _configs(("mup", "sp"), (1, 16))
    metrics = {c["name"]: [{"step": 0, "of": c["name"]}] for c in configs}
    summaries = {c["name"]: _summary(c["name"], "diverged" if c["name"] == "fig1_sp_T1" else "finished")
                 for c in configs}
    out = tmp_path / "demo"
    out.mkdir()
    figures = demo._figures(out, configs, summaries, metrics)
    assert [f.name for f in figures] == ["fig1_mup.png", "fig1_sp.png"]
    for title, param in (("muP", "mup"), ("SP", "sp")):
        curves, statuses = drawn[title]
        assert curves == {f"T_wrm={t}": metrics[f"fig1_{param}_T{t}"] for t in (1, 16)}
        assert statuses == {"T_wrm=1": "diverged" if param == "sp" else "finished", "T_wrm=16": "finished"}


def test_a_report_that_fails_names_the_figures_as_kept(tmp_path, monkeypatch):
    # DM25: the figures, written before the report, were left out of ResultsKept's list
    from catapult.engine.run_dir import ResultsKept

    _fake_runs(monkeypatch, {})

    def figures(out, configs, summaries, metrics):
        path = out / demo.figure_name("mup")
        path.write_bytes(b"figure")
        return [path]

    def full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo, "_figures", figures)
    monkeypatch.setattr(demo, "write_text_whole", full)
    with pytest.raises(ResultsKept) as failed:
        demo.run_demo(tmp_path / "demo", workers=1, echo=lambda line: None, configs=_configs(("mup",), (1,)))
    assert failed.value.failed == "report.md" and "fig1_mup.png" in failed.value.kept


def test_the_workers_run_one_torch_thread_each(monkeypatch):
    # DM24: the spawned workers ran torch's default thread count (the cores), two workers oversubscribing
    import subprocess
    import sys

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):   # a worker would inherit them and start at 1
        monkeypatch.delenv(name, raising=False)
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout
    if int(default) <= 1:
        pytest.skip("torch's default here is one thread: a worker left at it would pass")
    with demo._worker_pool(1) as pool:
        assert pool.submit(torch.get_num_threads).result(timeout=120) == 1
