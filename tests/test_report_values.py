"""Numbers and marks of the HTML report against the fake runs' closed forms (``sweep_fakes``):
accuracies in percent, the training time summed over the cells, the seeds section of a
two-seed sweep, and no single "best" row where the best grid point averages several seeds.
Each survived mutation under test_report.py / test_report_escaping.py / test_seeds_metrics.py."""
from __future__ import annotations

import re

from catapult import config as cfg
from catapult.report import write_report
from catapult.sweep import parse_sweep, run_sweep

from sweep_fakes import FakeRun, fake_accuracy


class _TimedRun(FakeRun):
    """FakeRun whose run took ``10 + 100 lr`` seconds."""

    def __call__(self, config, progress=None):
        result = super().__call__(config, progress)
        result.summary["wall_time_s"] = 10.0 + 100.0 * float(config["optimizer"]["lr"])
        return result


def test_the_report_of_a_two_seed_sweep(tmp_path):
    spec = parse_sweep({"grid": {"optimizer.lr": [0.25, 0.5]}, "seeds": 2})
    run_sweep(cfg.validate({"name": "r", "train": {"steps": 3}}), spec, tmp_path / "s.db",
              run_fn=_TimedRun(diverge_above=100.0), lambda0_fn=lambda c: 2.0, progress="none")
    text = write_report(tmp_path / "s.db", tmp_path / "report.html").read_text(encoding="utf-8")
    # 2 cells of 35 s and 2 of 60 s
    assert "190.0 s of training in all" in text
    # every cell's final test accuracy in percent, two decimals
    for lr in (0.25, 0.5):
        for seed in (0, 1):
            assert f"<td>{100 * fake_accuracy(lr, 1, seed):.2f}%</td>" in text
    # a seed axis of two values has its mean ± std section
    assert "<h2>Over seeds (mean ± std)</h2>" in text
    # each grid point is the mean of two cells: no one cell's row is the best
    assert "<tr class='best'>" not in text
    assert len(re.findall(r"<tr class=''>", text)) == 4
