"""eval.trace_matvecs / --trace-matvecs above MAX_PRODUCTS: a count >= n (the model's trainable
parameters) is the exact trace from n products, so the bound is on min(count, n), checked once
the model is built; the config and the flag refused 10**6 before the model existed. Truth: the
trace of the dense float64 Hessian of the same model on the same batch."""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.engine import run
from catapult.engine.build import build_run
from catapult.engine.spectrum_study import measure_spectrum
from dense_curvature import dense_hessian

# 235 parameters (64 x 3 + 3, 3 x 10 + 10), float64
CONFIG = dict(name="tiny_trace", seed=0, dtype="float64", data=dict(name="digits", n_train=48, n_test=16),
              model=dict(name="mlp", width=3, depth=2, parametrization="sp"), loss="mse",
              optimizer=dict(name="sgd", lr=0.5), train=dict(steps=1),
              eval=dict(sharpness_every=1, test_every=0, sharpness_tol=1e-8, sharpness_max_iter=300))


def _dense_trace(config) -> float:
    setup = build_run(config)
    return float(torch.trace(dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0))))


def test_a_config_asking_more_products_than_parameters_logs_the_exact_trace():
    config = cfg.validate({**CONFIG, "eval": {**CONFIG["eval"], "trace_matvecs": 10 ** 6}})
    result = run(config, progress="none")
    first = next(row for row in result.metrics if row.get("hessian_trace") is not None)
    assert first["step"] == 0 and first["hessian_trace"] == pytest.approx(_dense_trace(config), rel=1e-9)


def test_the_spectrum_command_takes_a_count_above_the_bound_on_a_small_model():
    s = measure_spectrum(cfg.validate(CONFIG), top_k=0, trace_matvecs=10 ** 6, density_runs=0)
    assert s["trace_matvecs"] == 10 ** 6 and s["trace_products"] == 235
    assert s["trace"] == pytest.approx(_dense_trace(cfg.validate(CONFIG)), rel=1e-9)


def test_the_products_that_would_run_are_refused_once_the_model_is_built():
    """The default run's 563,722 parameters: 10**6 asks min(10**6, n) = 563,722 products."""
    with pytest.raises(cfg.ConfigError) as info:
        measure_spectrum(cfg.validate({}), top_k=0, trace_matvecs=10 ** 6, density_runs=0)
    assert info.value.problems == [("--trace-matvecs", "must be at most 100000 products, or at least the model's "
                                                       "563722 parameters where that is at most 100000 (the exact "
                                                       "trace); got 1000000")]
    with pytest.raises(cfg.ConfigError) as info:
        build_run(cfg.validate({"eval": {"sharpness_every": 1, "trace_matvecs": 10 ** 6}}))
    assert info.value.keys == ["eval.trace_matvecs"] and "min(it, 563722) must be at most 100000" in str(info.value)
