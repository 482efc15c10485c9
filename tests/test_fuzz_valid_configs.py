"""Valid configs that the engine must run to a result (found by a fuzz of valid key combinations).

A config that :func:`catapult.config.validate` accepts either trains (a diverged run is a result)
or is refused before any work; these cases raised a traceback mid-run or reported a wrong status.
"""
from __future__ import annotations

import math

import pytest

from catapult import engine

pytestmark = pytest.mark.usefixtures("single_thread")


def _adam_eps0(warmup: str) -> dict:
    # muP's zero-initialised readout gives the hidden weights a zero gradient at step 0: Adam with
    # eps = 0 divides it by sqrt(v) = 0, so its first update is nan and the run diverges at step 1
    return {"name": f"eps0-{warmup}", "data": {"name": "digits", "n_train": 32, "n_test": 8},
            "model": {"name": "mlp", "width": 8, "depth": 3, "parametrization": "mup"},
            "optimizer": {"name": "adam", "lr": 0.01, "eps": 0.0}, "schedule": {"warmup": warmup},
            "train": {"steps": 3, "accuracy_failure": "off"}, "eval": {"sharpness_every": 0, "test_every": 0}}


def test_persistent_warmup_whose_first_step_is_nan_diverges_as_a_result():
    linear = engine.run(_adam_eps0("linear"), progress="none")
    assert (linear.status, linear.summary["diverged_at"]) == ("diverged", 1)  # the reference
    result = engine.run(_adam_eps0("persistent"), progress="none")  # was NonFiniteStepError, a traceback
    assert (result.status, result.summary["diverged_at"]) == ("diverged", 1)
    assert result.summary["failure"] == "non_finite_loss"
    assert result.metrics[0]["lr"] == pytest.approx(1e-4)  # lr_start, as the catapult warmup logs
    assert not math.isfinite(result.metrics[1]["train_loss"])


def test_persistent_warmup_whose_first_step_is_nan_diverges_in_the_batched_engine():
    from catapult import config as cfg
    from catapult.sweep.batched import run_group
    from catapult.sweep.executors import Cell

    cells = [Cell(i, cfg.validate({**_adam_eps0("persistent"), "name": f"c{i}",
                                   "optimizer": {"name": "adam", "lr": lr, "eps": 0.0}}))
             for i, lr in enumerate([0.01, 0.02])]
    results = dict(run_group(cells))  # was NonFiniteStepError out of the whole group
    for cell in cells:
        assert (results[cell.id].status, results[cell.id].summary["diverged_at"]) == ("diverged", 1)


@pytest.mark.parametrize("sparsity, key", [
    ({"drop_fraction": 0.9}, "drop_fraction"),                      # static masks: nothing reads it
    ({"update_every": 1}, "update_every"),
    ({"method": "rigl", "update_every": 1, "start_fraction": 0.5}, "start_fraction"),   # gmp's
    ({"method": "gmp", "update_every": 1, "drop_fraction": 0.9}, "drop_fraction"),      # rigl's
])
def test_a_sparsity_key_its_method_does_not_read_is_refused(sparsity, key):
    from catapult import config as cfg

    model = {"name": "gpt", "width": 8, "n_heads": 2, "depth": 1, "density": 0.5, "sparsity": sparsity}
    config = {"data": {"name": "shakespeare"}, "model": model, "loss": "cross_entropy", "train": {"steps": 10}}
    with pytest.raises(cfg.ConfigError) as err:  # was accepted, and the run was the same for any value
        cfg.validate(config)
    assert [k for k, _ in err.value.problems] == [f"model.sparsity.{key}"]
    # the keys at their defaults, or read by the method, stay valid (the demo configs spell every key)
    cfg.validate({**config, "model": {**model, "sparsity": {"method": "static", "update_every": 100,
                                                            "drop_fraction": 0.3, "start_fraction": 0.0}}})
    cfg.validate({**config, "model": {**model, "sparsity": {"method": "rigl", "update_every": 2, "drop_fraction": 0.9}}})
    cfg.validate({**config, "model": {**model, "sparsity": {"method": "gmp", "update_every": 2, "start_fraction": 0.2}}})



# init normal: torch's trunc_normal_ draws other numbers from one seed on 2.2 (inverse CDF) than on 2.13,
# and the run with trunc_normal, seed 1, crossed no kink on 2.2.2 (seed 7 with normal crosses on both)
FD_RELU_FLOAT64 = """\
name: fd
dtype: float64
seed: 7
data: {name: digits, n_train: 16, n_test: 8}
model: {name: mlp, width: 8, depth: 3, activation: relu, init: normal, parametrization: mup, base_width: 8, alpha_out: 2.0}
optimizer: {name: adam, lr: 0.5/lambda0}
schedule: {warmup: catapult, delta: 0.01, warmup_steps: 8}
train: {steps: 4, batch_size: 8}
eval: {sharpness_every: 2, test_every: 1, sharpness_max_iter: 5, sharpness_hvp: finite_difference}
"""


def test_finite_difference_products_that_cross_kinks_mid_run_end_in_one_line_not_a_traceback(tmp_path, capsys):
    # float64 passes the config's kink check, yet Adam's pre-conditioned operator (P^-1/2 ~ 1/eps on the
    # entries of zero gradient) steps across ReLU kinks: the run cannot measure, which is its failure
    from catapult.cli import main
    from catapult.config import validate
    from catapult.curvature.difference import UnreliableDifferenceError
    import yaml

    path = tmp_path / "fd.yaml"
    path.write_text(FD_RELU_FLOAT64)
    validate(yaml.safe_load(FD_RELU_FLOAT64))                         # accepted
    with pytest.raises(UnreliableDifferenceError):                    # a ValueError, as before
        engine.run(yaml.safe_load(FD_RELU_FLOAT64), progress="none")
    code = main(["train", str(path), "--out", str(tmp_path / "run"), "--progress", "none"])  # was a traceback
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("catapult train: error: finite-difference Hessian-vector products") and err.count("\n") == 1
    assert "eval.sharpness_hvp: double_backprop" in err
    assert not (tmp_path / "run").exists()                            # no partial run directory
