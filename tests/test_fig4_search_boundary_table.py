"""bench/study_fig4_search.py heatmap's boundary table from hand-made run records: a (optimizer,
T_wrm) that was never run has no row, and a seed that fails at every x of the grid is not dropped
from the mean (which then is not given), where before the first printed "none, none, none | nan"
(read as "never trained") and the second a mean over the other seeds only."""
from __future__ import annotations

import json
from types import SimpleNamespace

from bench_module import bench_module


def _run(opt, warm, x, seed, failed):
    loss = 6.0 if failed else 5.0
    return dict(tag="t", optimizer=opt, warmup_steps=warm, x=x, seed=seed, status="finished",
                test_loss=loss, unigram=5.8, initial_loss=7.0, failed=failed)


def _table(capsys, tmp_path, runs):
    out = tmp_path / "runs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in runs))
    bench_module("study_fig4_search").cmd_heatmap(
        SimpleNamespace(out=str(out), tag="t", x="", fig=str(tmp_path / "f.png"), title=""))
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("adam", "gi-adam"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_no_row_for_a_cell_never_run_and_no_mean_over_survivors(capsys, tmp_path):
    runs = []
    for seed, fails_from in ((0, 22), (1, 20), (2, 18)):   # seed 2 fails already at the grid's 18
        runs += [_run("adam", 1, x, seed, x >= fails_from) for x in (18, 20, 22)]
        runs += [_run("adam", 64, x, seed, x >= 22) for x in (18, 20, 22)]
        runs += [_run("gi-adam", 1, x, seed, False) for x in (18, 20, 22)]
    rows = _table(capsys, tmp_path, runs)
    # gi-adam was never run at T_wrm 64 (it is in the warmup axis through adam): no row
    assert set(rows) == {("adam", "1"), ("adam", "64"), ("gi-adam", "1")}
    # adam T_wrm 1: boundaries 20, 18 and below 18; the mean of 20 and 18 (19) would hide seed 2
    assert rows[("adam", "1")] == ["20, 18, < 18", "- (1 of 3 seeds fail at every x)", "-"]
    # every seed with a boundary: mean 20, sample std 0, lr 1e-4 * 2^10 = 0.1024
    assert rows[("adam", "64")] == ["20, 20, 20", "20.00 ± 0.00", "0.102"]
