"""A sweep says at once what it starts (``--progress lines``): how many cells and on what executor.
Nothing was printed until the first cell finished, a minute on 2 cores with Ray (the instance
starts, then whole cells run), with every executor. The Ray executor's lines go through the
executor's progress hook; a stand-in ``ray`` module runs its tasks here, so no Ray starts."""
from __future__ import annotations

import io
from types import SimpleNamespace

from catapult import config as cfg
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.executors import CellResult, Executor, LocalExecutor

BASE = {"name": "st", "data": {"name": "digits", "n_train": 16, "n_test": 8}, "model": {"width": 4, "depth": 2},
        "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0}}
GRID = {"grid": {"optimizer.lr": [0.1, 0.2]}}


def finished(config, progress="none"):
    return CellResult("finished", [], {"final_test_accuracy": 0.5})


def _sweep(tmp_path, executor):
    stream = io.StringIO()
    run_sweep(cfg.validate(BASE), parse_sweep(GRID), tmp_path / "s.db", executor=executor, progress="lines",
              stream=stream)
    return stream.getvalue().splitlines()


def test_the_local_executor_starts_with_a_line(tmp_path):
    lines = _sweep(tmp_path, LocalExecutor(finished, threads=1))
    assert lines[0] == ("[st] 2 cells to run (0 of 2 already in the store) on the local executor "
                        "(one cell at a time in this process, 1 torch thread)")
    assert lines[1].startswith("[st] cell 0 finished") and len(lines) == 3
    assert _sweep(tmp_path, LocalExecutor(finished)) == []   # resumed with nothing left: no line


class Talking(Executor):
    name = "talking"

    def run(self, cells):
        self.say("warming up")
        for cell in cells:
            yield cell.id, finished(cell.config)


def test_an_executor_speaks_through_its_progress_hook_while_the_sweep_runs(tmp_path):
    executor = Talking()
    lines = _sweep(tmp_path, executor)
    assert lines[:2] == ["[st] 2 cells to run (0 of 2 already in the store) on the talking executor",
                         "[st] warming up"]
    assert executor.progress is None   # the hook is the driver's only while it runs the cells
    executor.say("after the sweep")     # shows nothing, raises nothing


def fake_ray(cpus=4.0):
    """A stand-in for the ``ray`` module: tasks run when their result is asked for."""
    calls = []

    class Ref:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

    class Task:
        def __init__(self, fn):
            self.fn = fn

        def options(self, **kwargs):
            return self

        def remote(self, *args):
            calls.append("remote")
            return Ref(self.fn, args)

    state = {"up": False}

    def init(**kwargs):
        calls.append("init")
        state["up"] = True

    return SimpleNamespace(
        is_initialized=lambda: state["up"], init=init, shutdown=lambda: state.update(up=False),
        remote=Task, put=lambda value: value, wait=lambda refs, num_returns=1: (refs[:1], refs[1:]),
        get=lambda ref: ref.fn(*ref.args), cluster_resources=lambda: {"CPU": cpus},
        exceptions=SimpleNamespace(RayTaskError=type("RayTaskError", (Exception,), {}),
                                   RayError=type("RayError", (Exception,), {}))), calls


def test_the_ray_executor_says_what_it_starts_before_the_first_cell_finishes(tmp_path, monkeypatch):
    from catapult.sweep import ray_executor

    ray, calls = fake_ray()
    monkeypatch.setattr(ray_executor, "import_ray", lambda: ray)
    executor = ray_executor.RayExecutor(finished, num_cpus=2, threads=1)
    lines = _sweep(tmp_path, executor)
    assert lines[:3] == [
        "[st] 2 cells to run (0 of 2 already in the store) on the ray executor (a local Ray instance on 2 CPUs; "
        "1 cell and 1 CPU a task)",
        "[st] starting Ray for 2 cells",
        "[st] ray: 2 tasks submitted to 4 CPUs, up to 2 running at once; results come as each task finishes"]
    assert lines[3].startswith("[st] cell 0 finished") and calls[:3] == ["init", "remote", "remote"]
    cluster = ray_executor.RayExecutor(finished, address="auto", chunk_size=3, cpus_per_task=0.5)
    assert cluster.describe() == "the ray executor (the Ray cluster at auto; 3 cells and 0.5 CPUs a task)"
