"""``catapult transfer`` on a store of a sweep stopped (Ctrl-C) before any cell had its result:
exit code 2 with a message saying so, before any figure is written (it was a ZeroDivisionError
traceback from plot_transfer, which had no panel to lay out)."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.cli import main
from catapult.plots.transfer import TransferCurves, plot_transfer
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.store import Store

from sweep_fakes import FakeLambda0


def _stopped_at_once(config, progress=None):
    raise KeyboardInterrupt   # Ctrl-C during the first cell


@pytest.fixture
def stopped_store(tmp_path):
    path = tmp_path / "s.db"
    config = cfg.validate({"name": "t", "train": {"steps": 3}})
    spec = parse_sweep({"grid": {"optimizer.lr": [0.1, 0.2], "model.width": [8, 16]}})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, spec, path, run_fn=_stopped_at_once, lambda0_fn=FakeLambda0(), progress="none")
    with Store(path, create=False) as store:
        assert [c["status"] for c in store.cells()] == ["interrupted", "pending", "pending", "pending"]
    return path


@pytest.mark.parametrize("flags", [[], ["--series", "model.width"], ["--json"]])
def test_a_store_without_results_is_refused_with_a_message(stopped_store, tmp_path, capsys, flags):
    out = tmp_path / "t.png"
    assert main(["transfer", str(stopped_store), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err == (f"catapult transfer: error: no cell of {stopped_store} has a result yet (4 not run or "
                   f"interrupted); run or resume the sweep first\n"), err
    assert not out.exists()


def test_plot_transfer_of_no_curves_says_so():
    curves = TransferCurves("test_loss", "optimizer.lr", None, None, {}, {(None, None): 3})
    with pytest.raises(ValueError, match=r"no curves to draw \(3 cells have no result yet\)"):
        plot_transfer(curves)
