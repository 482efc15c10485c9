"""The report's "Over seeds" table counted a cell's seeds as ``n (finished/diverged)``: a collapsed seed
was neither, yet its values are averaged (it finished), so three seeds, one finished, one collapsed,
one diverged, read ``3 (1/1)`` beside a mean ± std of two values. It now reads ``3 (1/1/1)`` under
``seeds (finished/diverged/collapsed)``. Truth: the rows written, their mean and sample std by NumPy."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np

from catapult.report import build_report
from catapult.sweep.store import Store

AXES = [{"key": "optimizer.lr", "values": [0.1], "labels": ["0.1"]},
        {"key": "seed", "values": [0, 1, 2], "labels": ["0", "1", "2"]}]
LOSSES = {0: 0.25, 1: 0.75, 2: 9.0}   # seed -> its final train loss


def _rows(loss: float) -> list[dict]:
    return [{"step": 0, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.1},
            {"step": 1, "train_loss": loss, "test_loss": loss, "test_accuracy": 0.5}]


def test_the_over_seeds_table_counts_collapsed_seeds(tmp_path):
    cells = [SimpleNamespace(id=s, config={}, swept={"optimizer.lr": 0.1, "seed": s}) for s in LOSSES]
    with Store(tmp_path / "s.db") as store:
        store.open_sweep({"base": {"name": "t"}, "sweep": {"grid": {"optimizer.lr": [0.1]}, "seeds": 3}}, cells, axes=AXES)
        for seed, status in ((0, "finished"), (1, "collapsed"), (2, "diverged")):
            store.record(seed, SimpleNamespace(status=status, metrics=_rows(LOSSES[seed]), summary={"status": status}))
    with Store(tmp_path / "s.db", create=False) as store:
        page = build_report(store)
    table = page[page.index("Over seeds"):]
    table = table[:table.index("</table>")]
    assert "<th>seeds (finished/diverged/collapsed)</th>" in table
    (row,) = re.findall(r"<tr><td class='text'>0\.1</td>(.*?)</tr>", table)
    values = re.findall(r"<td>(.*?)</td>", row)
    assert values[0] == "3 (1/1/1)"
    averaged = [LOSSES[0], LOSSES[1]]   # the finished and the collapsed seed; the diverged one is a failure
    assert values[-1] == f"{np.mean(averaged):.4g} ± {np.std(averaged, ddof=1):.4g}"
