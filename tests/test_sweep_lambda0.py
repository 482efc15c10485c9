"""lambda_0 measured once by the sweep equals the engine's, and a cell run with the resolved
absolute lr reproduces the engine's own ``"2^x/lambda0"`` run exactly."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep import parse_sweep, run_sweep
from catapult.sweep.executors import LocalExecutor, torch_threads
from catapult.sweep.lambda0 import lambda0_key, measure_lambda0
from catapult.sweep.store import Store

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "n_train": 128, "n_test": 64},
    "model": {"width": 16, "depth": 2, "parametrization": "sp"},
    "train": {"steps": 12, "batch_size": 32},
    "eval": {"sharpness_every": 0, "test_every": 4, "sharpness_max_iter": 30},
    "optimizer": {"lr": "2^1/lambda0"},
}


def test_lambda0_key_ignores_optimizer_and_schedule_but_not_seed_or_data():
    a = cfg.validate(TINY)
    same = cfg.validate({**TINY, "optimizer": {"lr": 0.3, "momentum": 0.9}, "schedule": {"warmup_steps": 7},
                         "train": {"steps": 99, "batch_size": 32}})
    assert lambda0_key(a) == lambda0_key(same)
    for change in ({"seed": 1}, {"data": {"name": "digits", "n_train": 64}},
                   {"train": {"steps": 12, "batch_size": 16}}, {"model": {"width": 32, "depth": 2}}):
        assert lambda0_key(cfg.validate({**TINY, **change})) != lambda0_key(a), change


def test_sweep_cell_equals_the_engine_run_with_the_relative_lr():
    config = cfg.validate(TINY)
    with torch_threads(1):
        direct = train.run(config, progress="none")
        lam = measure_lambda0(config)
    assert lam == direct.summary["lambda_0"]  # bit for bit: same seeds, batch and solver

    spec = parse_sweep({"grid": {"optimizer.lr": {"log2_over_lambda0": [1, 1]}}})
    calls = []

    def counting(config):
        calls.append(1)
        return measure_lambda0(config)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_sweep(config, spec, f"{tmp}/s.db", executor=LocalExecutor(threads=1), lambda0_fn=counting,
                  progress="none")
        with Store(f"{tmp}/s.db", create=False) as store:
            cell = store.cell(0)
            rows = store.metrics(0)
    assert calls == [1]
    assert cell["lambda_0"] == lam and cell["lr_target"] == direct.summary["lr_target"]
    assert cell["status"] == direct.status
    assert len(rows) == len(direct.metrics)
    for got, want in zip(rows, direct.metrics):
        for key in ("step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert got[key] == want[key], (key, got, want)


@pytest.mark.parametrize("change", [{"dtype": "float64"}, {"device": "cuda"}, {"loss": "cross_entropy"},
                                   {"eval": {"sharpness_tol": 1e-5}}, {"eval": {"sharpness_max_iter": 7}}])
def test_lambda0_key_holds_every_input_its_docstring_names(change):
    # a float64 run measures its own lambda_0: with one cached for float32 it resolved c/lambda0
    # with a value of another precision, silently
    a = cfg.validate(TINY)
    changed = {**TINY, **change, **({"eval": {**TINY.get("eval", {}), **change["eval"]}} if "eval" in change else {})}
    assert lambda0_key(cfg.validate(changed)) != lambda0_key(a), change
