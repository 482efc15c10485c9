"""Labels past a model's outputs are refused once, before any work (train, sweep, the batched engine).

A label ``>= K`` for ``K`` outputs is, in the loss at the first step, a CUDA device-side assert
(the process unusable afterwards) or torch's IndexError on the CPU. catapult's own models have the
data's class count of outputs by construction; a model of yours (an ``engine.MODELS`` entry) is
run once on one sample and its width compared with the labels. Truth: digits' labels are 0..9
(scikit-learn's), a model of 4 outputs cannot take 9.
"""
from __future__ import annotations

import pytest
import torch

from catapult import cli, engine
from catapult import config as cfg

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "loss": "cross_entropy",
          "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"steps": 2, "batch_size": 16},
          "eval": {"sharpness_every": 0, "test_every": 0}}


@pytest.fixture
def four_outputs(monkeypatch):
    """``model.name=mlp`` builds a user's model that ignores ``out_features``: 4 outputs; the
    forwards it runs are counted (one sample's probe, then none: no work)."""
    forwards = []

    class Four(torch.nn.Linear):
        def forward(self, x):
            forwards.append(x.shape[0])
            return super().forward(x.flatten(1))

    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: Four(n_in, 4))
    return forwards


def test_train_refuses_a_model_with_fewer_outputs_than_labels_before_any_step(four_outputs):
    # before: cross_entropy's ValueError (CPU) from lambda_0 / the first step, after work; on CUDA
    # a device-side assert
    with pytest.raises(cfg.ConfigError, match=r"model.name: model 'mlp' gives 4 outputs per sample, but the "
                                              r"training labels of data 'digits' reach 9 \(10 classes\)"):
        engine.run(cfg.validate(CONFIG), progress="none")
    assert four_outputs == [1]   # the probe's one sample, no batch


def test_the_cli_exits_2_naming_the_key(four_outputs, tmp_path, capsys):
    path = tmp_path / "four.yaml"
    path.write_text("data: {name: digits, n_train: 32, n_test: 16}\nloss: cross_entropy\n"
                    "optimizer: {name: sgd, lr: 0.1}\ntrain: {steps: 2, batch_size: 16}\n"
                    "eval: {sharpness_every: 0, test_every: 0}\n")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "4 outputs" in err and "Traceback" not in err
    store = tmp_path / "s.db"
    path.write_text(path.read_text() + "sweep: {grid: {optimizer.lr: [0.1, 0.2]}}\n")
    # before: the store written, every cell a stored ValueError, exit 1
    assert cli.main(["sweep", str(path), "--store", str(store), "--progress", "none", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "4 outputs" in err and "Traceback" not in err and not store.exists()


def test_the_batched_engine_refuses_it_before_its_first_step(four_outputs):
    from catapult.sweep.batched import run_group
    from catapult.sweep.executors import Cell

    with pytest.raises(cfg.ConfigError, match=r"gives 4 outputs per sample"):
        list(run_group([Cell(0, cfg.validate(CONFIG))]))
    assert four_outputs == [1]


def test_a_model_with_enough_outputs_and_catapults_own_are_not_run_by_the_check(monkeypatch):
    from catapult.engine.model_size import check_labels

    data = engine.load_data(cfg.validate(CONFIG))
    forwards = []

    class Ten(torch.nn.Linear):
        def forward(self, x):
            forwards.append(x.shape[0])
            return super().forward(x.flatten(1))

    check_labels(cfg.validate(CONFIG), Ten(64, 10), data)             # catapult's mlp: trusted, not run
    assert forwards == []
    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: Ten(n_in, n_out))
    model, state = Ten(64, 10), torch.get_rng_state()
    check_labels(cfg.validate(CONFIG), model, data)                   # a user's: one sample, passes
    assert forwards == [1] and torch.equal(torch.get_rng_state(), state)
