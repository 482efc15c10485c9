"""What the training loop's per-step path may cost: work that a step can leave to a hot moment
(a flush, the end of a chunk) is not done inside the step, where it runs cold (RESULTS, "Engine
overhead"). Each test also pins the values: the same bytes, the same rows."""
from __future__ import annotations

import math

from catapult.engine import records
from catapult.engine.records import METRIC_COLUMNS, MetricsFile, write_metrics


def _rows(n: int) -> list[dict]:
    rows = []
    for t in range(n):
        row = dict.fromkeys(METRIC_COLUMNS)
        row.update(step=t, lr=0.1 * (t + 1), threshold=2 / (0.1 * (t + 1)), train_loss=1.0 / (t + 3),
                   train_accuracy=t / 7, test_loss=math.inf if t == 2 else None, sharpness=math.nan if t == 1 else None)
        rows.append(row)
    return rows


def test_metrics_file_formats_rows_at_its_flushes_not_at_each_write(tmp_path, monkeypatch):
    # every write formatted its nine cells (9 csv_cell calls, ~35 us of a step's CPU, cold);
    # now the rows wait for the flush (first row, then once a second, close) and the file is the
    # same bytes as write_metrics (csv_text) gives for those rows
    calls = []
    cell = records.csv_cell
    monkeypatch.setattr(records, "csv_cell", lambda value: calls.append(value) or cell(value))
    rows = _rows(5)
    mf = MetricsFile(tmp_path / "metrics.csv", flush_seconds=3600.0)
    mf.write(rows[0])                      # the first row is flushed at once
    assert len(calls) == len(METRIC_COLUMNS)
    for row in rows[1:]:
        mf.write(row)
    assert len(calls) == len(METRIC_COLUMNS)  # nothing formatted inside the later steps
    mf.close()
    assert len(calls) == len(METRIC_COLUMNS) * len(rows)
    monkeypatch.undo()
    write_metrics(rows, tmp_path / "whole.csv")
    assert (tmp_path / "metrics.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def _tiny(steps: int = 70, **train) -> dict:
    return {"seed": 5, "data": {"name": "digits", "n_train": 64, "n_test": 16},
            "model": {"width": 8, "depth": 3}, "optimizer": {"name": "adam", "lr": 3e-2},
            "train": {"steps": steps, "batch_size": 16, "accuracy_failure": "off", **train},
            "eval": {"sharpness_every": 0, "test_every": 0}}


def _recorded_run(config: dict, **kwargs):
    """``engine.train`` of ``config`` with a forward hook that keeps each training forward's outputs
    and the run's argmax calls counted: ``(result, [(outputs, labels) per step], argmax calls)``."""
    import torch

    from catapult import engine

    setup = engine.build_run(config)
    seen = []
    setup.model.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()) if m.training else None)
    calls = []
    argmax = torch.Tensor.argmax
    torch.Tensor.argmax = lambda self, *a, **k: calls.append(1) or argmax(self, *a, **k)
    try:
        result = engine.train(setup, **kwargs)
    finally:
        torch.Tensor.argmax = argmax
    labels = [y for _, y in setup.batches.first_batches(len(seen))]
    return result, seen, labels, len(calls)


def test_the_loop_counts_a_classifiers_hits_a_chunk_of_steps_at_a_time_with_the_same_accuracies():
    # each step's accuracy took four cold torch calls inside the step (~45 us of a 2.3 ms step of
    # the benchmark's MLP); now the batches wait and CHUNK steps are counted in one stacked call.
    # Truth: each step's own outputs (a forward hook) and labels, counted row by row in NumPy
    import numpy as np

    from catapult.engine.step_accuracy import StepAccuracies

    steps = StepAccuracies.CHUNK + 6
    result, outputs, labels, argmax_calls = _recorded_run(_tiny(steps), progress="none")
    assert len(outputs) == steps + 1 == len(result.metrics)
    for row, out, y in zip(result.metrics, outputs, labels):
        hits = int(np.sum(np.argmax(out.numpy(), axis=1) == y.numpy()))
        assert row["train_accuracy"] == hits / y.shape[0]
    # the training rows' arg-maxes: one per chunk (two here), then the final evaluation's one
    assert argmax_calls == 3


def test_progress_lines_and_metrics_csv_show_the_accuracies_still_waiting(tmp_path, capsys, monkeypatch):
    # a line or a flush of metrics.csv comes before its rows' chunk is counted: it counts them first
    import re

    from catapult.engine.records import read_metrics

    monkeypatch.setattr("catapult.engine.loop.plot_run", lambda *args, **kwargs: None)  # no matplotlib here
    result, outputs, labels, _ = _recorded_run(_tiny(20), progress="lines", out_path=tmp_path)
    assert all(row["train_accuracy"] == float((out.argmax(1) == y).sum()) / y.shape[0]
               for row, out, y in zip(result.metrics, outputs, labels))
    shown = {int(t): float(acc) for t, acc in re.findall(r"step (\d+)/20 loss \S+ acc (\S+)", capsys.readouterr().err)}
    assert sorted(shown) == list(range(0, 21, 2))
    for t, acc in shown.items():
        assert acc == float(f"{result.metrics[t]['train_accuracy']:.3f}")
    assert read_metrics(tmp_path / "metrics.csv") == result.metrics


def test_step_accuracies_equal_accuracy_batch_by_batch_on_ties_nans_and_changing_shapes():
    # truth: losses.accuracy of each batch on its own (its own arg-max of each row), on logits with
    # ties, NaNs, infinities and signed zeros; batches whose shape changes, token logits and soft
    # targets (counted at once, in order) between them
    import torch

    from catapult.engine.step_accuracy import StepAccuracies
    from catapult.losses import accuracy

    g = torch.Generator().manual_seed(4)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=torch.float64)
    batches = []
    for t in range(150):
        n = (16, 16, 16, 9)[t // 40]
        logits = torch.randint(0, 3, (n, 5), generator=g).double()
        mask = torch.rand(n, 5, generator=g) < 0.1
        logits[mask] = special[torch.randint(0, 5, (int(mask.sum()),), generator=g)]
        labels = torch.randint(0, 5, (n,), generator=g)
        if t % 37 == 5:
            logits, labels = logits.reshape(1, n, 5), labels.reshape(1, n)       # token logits
        elif t % 41 == 7:
            labels = torch.softmax(torch.randn(n, 5, generator=g), dim=-1)     # soft targets
        batches.append((logits.float() if t % 3 else logits, labels))
    acc, rows = StepAccuracies(), []
    for t, (logits, labels) in enumerate(batches):
        row = {}
        assert acc.add(row, torch.tensor(0.25 * t), logits, labels) == 0.25 * t
        rows.append(row)
        if t == 100:
            acc.resolve()
            acc.resolve()  # nothing waits: nothing to do
    acc.resolve()
    assert [row["train_accuracy"] for row in rows] == [accuracy(o, y) for o, y in batches]


def test_a_steps_row_and_rules_cost_one_copy_one_test_rule_and_no_progress_work(monkeypatch):
    # new_row built a keyword dict for dict.update (~5 us cold, 2.7 now); the loop asked
    # evaluates_test twice a step; Progress("none").update read the row at every step
    import sys

    from catapult.engine import loop, step
    from catapult.engine.progress import Progress

    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(arg.__name__) if event == "c_call" else None)
    try:
        row = step.new_row(7, 0.5, 4.0)
    finally:
        sys.setprofile(None)
    assert [c for c in calls if c != "setprofile"] == ["copy"]
    assert list(row.items()) == [(c, {"step": 7, "lr": 0.5, "threshold": 4.0}.get(c)) for c in METRIC_COLUMNS]
    row["train_loss"] = 1.0
    assert step.new_row(8, 0.5, 4.0)["train_loss"] is None      # the template is not the row

    class Unread(dict):
        def __getitem__(self, key):
            raise AssertionError("read")

        get = __getitem__

    Progress("none", 10, "x").update(Unread())
    asked = []
    rule = loop.evaluates_test
    monkeypatch.setattr(loop, "evaluates_test", lambda *a: asked.append(a[0]) or rule(*a))
    result = loop.run(_tiny(9), progress="none")
    assert asked == list(range(10)) and result.metrics[-1]["test_loss"] is not None


def test_processes_that_combine_their_means_get_the_accuracy_with_the_loss_at_once():
    # data-parallel processes all-reduce the loss and the accuracy together (Processes.mean): no
    # accuracy waits there. A stand-in whose mean halves both shows each row went through it
    import numpy as np

    from catapult import engine
    from catapult.engine.loop import Processes

    class Halves(Processes):
        def mean(self, values, rows=None):
            return tuple(v / 2 for v in values)

    config = _tiny(5)
    setup = engine.build_run(config)
    seen = []
    setup.model.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()) if m.training else None)
    result = engine.train(setup, progress="none", processes=Halves())
    labels = [y for _, y in setup.batches.first_batches(len(seen))]
    for row, out, y in zip(result.metrics, seen, labels):
        assert row["train_accuracy"] == int(np.sum(np.argmax(out.numpy(), axis=1) == y.numpy())) / y.shape[0] / 2
