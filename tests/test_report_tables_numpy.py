"""``catapult report``'s tables against the store's rows recomputed with NumPy: two learning rates
of three seeds each, at the first a finished, a diverged and a collapsed seed. The "Over seeds"
table's mean ± sample std of each shown metric (over the finished and collapsed seeds: a diverged
seed's values are from before it blew up), its seed counts, the results table's value of every cell,
the status counts and the training time summed. Truth: the rows this test wrote, reduced by NumPy
(``np.mean``, ``np.std(ddof=1)``, ``max``/``min`` over the rows); each printed number is held to
half a unit of its last printed digit (``.4g``, and ``.2f`` of a percentage)."""
from __future__ import annotations

import math
import re
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pytest

from catapult.report import build_report
from catapult.sweep.store import Store

LRS, SEEDS = (0.1, 0.2), (0, 1, 2)
AXES = [{"key": "optimizer.lr", "values": list(LRS), "labels": ["0.1", "0.2"]},
        {"key": "seed", "values": list(SEEDS), "labels": ["0", "1", "2"]}]
STATUS = {(0.1, 0): "finished", (0.1, 1): "diverged", (0.1, 2): "collapsed",
          (0.2, 0): "finished", (0.2, 1): "finished", (0.2, 2): "finished"}
SHOWN = ("best_test_accuracy", "test_accuracy", "best_test_loss", "train_loss")


def _runs():
    """``{(lr, seed): (status, rows, wall_time_s, lambda_0)}``, in grid order."""
    rng = np.random.default_rng(7)
    out = {}
    for (lr, seed), status in STATUS.items():
        rows = [{"step": t, "train_loss": float(rng.uniform(0.1, 2)), "test_loss": float(rng.uniform(0.1, 2)),
                 "test_accuracy": float(rng.uniform(0.1, 0.9))} for t in range(4)]
        if status == "diverged":   # its last row: the blow-up, no evaluation
            rows[-1] = {"step": 3, "train_loss": math.inf}
        out[(lr, seed)] = (status, rows, float(rng.uniform(1, 10)), float(rng.uniform(1, 5)))
    return out


def _truth(rows) -> dict:
    """A seed's final and best values from its rows (NumPy)."""
    tested = [r for r in rows if r.get("test_loss") is not None]
    return {"train_loss": rows[-1]["train_loss"], "test_loss": tested[-1]["test_loss"],
            "test_accuracy": tested[-1]["test_accuracy"],
            "best_train_loss": float(np.min([r["train_loss"] for r in rows if np.isfinite(r["train_loss"])])),
            "best_test_loss": float(np.min([r["test_loss"] for r in tested])),
            "best_test_accuracy": float(np.max([r["test_accuracy"] for r in tested]))}


def _close(text: str, truth: float, what) -> None:
    """``text`` (``0.3964``, ``64.82%``) is ``truth`` within half a unit of its last printed digit;
    an accuracy's (``what`` names it) printed as a percentage of it, every other value as it is."""
    percent = "accuracy" in str(what)
    assert text.endswith("%") == percent, (what, text)
    digits = Decimal(text.rstrip("%"))
    half = Decimal(1).scaleb(digits.as_tuple().exponent) / 2
    want = 100 * truth if percent else truth
    assert abs(float(digits) - want) <= float(half) * (1 + 1e-9), (what, text, want)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "s.db"
    runs = _runs()
    cells = [SimpleNamespace(id=i, config={}, swept={"optimizer.lr": lr, "seed": s}) for i, (lr, s) in enumerate(runs)]
    with Store(path) as store:
        store.open_sweep({"base": {"name": "t"}, "sweep": {"grid": {"optimizer.lr": list(LRS)}, "seeds": 3}},
                         cells, axes=AXES)
        for i, (status, rows, wall, lam) in enumerate(runs.values()):
            store.record(i, SimpleNamespace(status=status, metrics=rows,
                                            summary={"status": status, "wall_time_s": wall}), lambda_0=lam)
    with Store(path, create=False) as store:
        return build_report(store), runs


def _table(page: str, heading: str) -> list[list[str]]:
    table = page[page.index(heading):].split("</table>")[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]]


def test_the_over_seeds_table_is_numpys_mean_and_sample_std(page):
    text, runs = page
    rows = _table(text, "<h2>Over seeds")
    assert [r[0] for r in rows] == ["0.1", "0.2"]
    for lr, row in zip(LRS, rows):
        statuses = [runs[(lr, s)][0] for s in SEEDS]
        assert row[1] == f"3 ({statuses.count('finished')}/{statuses.count('diverged')}/{statuses.count('collapsed')})"
        kept = [_truth(runs[(lr, s)][1]) for s in SEEDS if runs[(lr, s)][0] != "diverged"]
        assert len(row) == 2 + len(SHOWN)
        for metric, cell in zip(SHOWN, row[2:]):
            values = np.array([t[metric] for t in kept])
            mean, sd = cell.split(" ± ")
            _close(mean, float(np.mean(values)), (lr, metric, "mean"))
            _close(sd, float(np.std(values, ddof=1)), (lr, metric, "std"))
    assert rows[0][1] == "3 (1/1/1)" and rows[1][1] == "3 (3/0/0)"


def test_the_results_table_and_the_counts_are_the_rows_written(page):
    text, runs = page
    rows = _table(text, "<h2>Results")
    head = re.findall(r"<th>(.*?)</th>", text[text.index("<h2>Results"):].split("</tr>")[0])
    assert len(rows) == 6
    for i, ((lr, seed), (status, written, wall, lam)) in enumerate(runs.items()):
        row = dict(zip(head, rows[i]))
        assert (row["cell"], row["optimizer.lr"], row["seed"], row["status"]) == (str(i), str(lr), str(seed), status)
        truth = _truth(written)
        if status == "diverged":   # no final test values; its final train loss is the blow-up
            assert (row["train_loss"], row["test_loss"], row["test_accuracy"]) == ("inf", "", "")
            checked = ("best_train_loss", "best_test_loss", "best_test_accuracy")
        else:
            checked = ("train_loss", "test_loss", "test_accuracy", "best_train_loss", "best_test_loss",
                       "best_test_accuracy")
        for metric in checked:
            _close(row[metric], truth[metric], (i, metric))
        _close(row["lambda_0"], lam, (i, "lambda_0"))
        _close(row["time (s)"], wall, (i, "time"))
        assert row["steps"] == "3"
    statuses = [r[0] for r in runs.values()]
    counts = re.findall(r"<span><b>(\d+)</b> (\w+)</span>", text)
    assert sorted((s, int(n)) for n, s in counts) == sorted((s, statuses.count(s)) for s in set(statuses))
    total = re.search(r"; ([0-9.]+) s of training in all", text).group(1)
    _close(total, float(np.sum([r[2] for r in runs.values()])), "total time")
