"""bench/study_adam.py on tiny versions of the three study configs (smoke + the failure rule)."""
from pathlib import Path

import pytest

from bench_module import bench_module
from catapult.cli import main
from catapult.sweep.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _study():
    return bench_module("study_adam")


def test_failure_rule_is_the_papers():
    study = _study()
    ok = {"status": "finished", "summary": {"final_train_accuracy": 0.16, "final_train_loss": 1.0}}
    low = {"status": "finished", "summary": {"final_train_accuracy": 0.14, "final_train_loss": 1.0}}
    nan = {"status": "finished", "summary": {"final_train_accuracy": 0.9, "final_train_loss": float("nan")}}
    div = {"status": "diverged", "summary": {"final_train_accuracy": 0.9, "final_train_loss": 1e9}}
    assert [study.failed(c) for c in (ok, low, nan, div)] == [False, True, True, True]
    assert study.failed(low, num_classes=100) is False       # 1.5x chance = 0.015


@pytest.mark.parametrize("config, kind, overrides", [
    ("configs/adam/fig2_mechanisms.yaml", "fig2", ["sweep.grid.schedule.warmup_steps=[1,4]",
                                                   "eval.sharpness_every=2", "model.width=16"]),
    ("configs/adam/table1_failure.yaml", "table1", ["sweep.grid.schedule.warmup_steps=[1]",
                                                    "sweep.grid.optimizer.lr=[0.01,1.0]", "model.width=16"]),
    ("configs/warmup/fig5_steps_saved.yaml", "fig5", ["sweep.grid.schedule.warmup_steps=[4]",
                                                      "sweep.grid.optimizer.lr=[8/lambda0]", "model.width=16"]),
])
def test_study_script_turns_a_sweep_store_into_a_table_and_figure(tmp_path, capsys, config, kind, overrides):
    store = tmp_path / "s.db"
    args = ["sweep", str(ROOT / config), "--store", str(store), "--threads", "1", "--progress", "none",
            "train.steps=6", "data.n_train=100", "data.n_test=20", "eval.test_every=0", *overrides]
    assert main(args) == 0
    capsys.readouterr()
    study = _study()
    out = tmp_path / "fig.png"
    assert study.main([kind, str(store), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    n = len(Store(store, create=False).cells())
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| optimizer")
            and not line.startswith("| lr_trgt")]
    if kind == "table1":
        assert len(rows) == 3                                 # one row per (optimizer, T_wrm)
        assert all(r.split("|")[4].strip() == "F" for r in rows if "adam |" in r)   # lr 1.0 fails
    else:
        assert len(rows) == n
    if kind == "fig2":
        assert "Adam / GI-Adam" in text


def test_missing_store_exits_2(tmp_path):
    assert _study().main(["fig5", str(tmp_path / "none.db"), "--out", str(tmp_path / "f.png")]) == 2


def test_fig5_marks_a_critical_lr_the_search_only_bounded(tmp_path, capsys):
    # lr_trgt = 0.0625/lambda_0 lies far below the critical lr (~2/lambda_0 and above): both searches stop
    # at lr_trgt with the loss still falling, so lr_c = lr_trgt is a lower bound and lr_c * lambda_0 = 0.0625
    store = tmp_path / "s.db"
    args = ["sweep", str(ROOT / "configs/warmup/fig5_steps_saved.yaml"), "--store", str(store), "--threads", "1",
            "--progress", "none", "train.steps=3", "data.n_train=100", "data.n_test=20", "model.width=16",
            "sweep.grid.schedule.warmup_steps=[4]", "sweep.grid.optimizer.lr=[0.0625/lambda0]",
            "sweep.grid.schedule.warmup=[catapult,persistent]"]
    assert main(args) == 0
    capsys.readouterr()
    cells = Store(store, create=False).cells()
    assert all(c["summary"]["lr_critical_lower"] == c["summary"]["lr_critical_upper"] == c["lr_target"] for c in cells)
    assert _study().main(["fig5", str(store), "--out", str(tmp_path / "f.png")]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.0625/lambda0")]
    assert len(rows) == 2 and all(r[5].strip().startswith(">= ") and r[6].strip() == ">= 0.0625" for r in rows)
