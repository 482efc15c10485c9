"""engine.check_labels' edges (mutation pass 13): a negative label is refused as one past the
outputs is (cross-entropy indexes with it too; -100 is no data label), the test labels are judged
as the training ones, and the one-sample forward is the model's eval-mode forward in the model's
dtype, leaving the model in the mode it was in and the generators as they were. Truth: hand-made labels against a linear model of
known width, on digits (labels 0..9, 64 features)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from catapult import config as cfg
from catapult import engine
from catapult.engine.model_size import check_labels

CONFIG = {"data": {"name": "digits", "n_train": 32, "n_test": 16}, "loss": "cross_entropy",
          "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"steps": 2, "batch_size": 16}}


@pytest.fixture
def yours(monkeypatch):
    """``model.name=mlp`` is a model of yours (its MODELS entry replaced), so check_labels runs it."""
    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: torch.nn.Linear(n_in, n_out))
    return cfg.validate(CONFIG)


def _data(y_train, y_test, features=64, dtype=torch.float32):
    return SimpleNamespace(x_train=torch.randn(len(y_train), features, dtype=dtype), y_train=torch.tensor(y_train),
                           y_test=torch.tensor(y_test), num_classes=10)


def test_a_negative_label_is_refused_as_one_past_the_outputs(yours):
    with pytest.raises(cfg.ConfigError, match=r"the training labels of data 'digits' reach -1 \(10 classes\)"):
        check_labels(yours, torch.nn.Linear(64, 10), _data([0, -1, 9], [0]))


def test_the_test_labels_are_judged_too(yours):
    with pytest.raises(cfg.ConfigError, match=r"gives 10 outputs per sample, but the test labels of data 'digits' reach 12"):
        check_labels(yours, torch.nn.Linear(64, 10), _data([0, 9], [3, 12]))
    check_labels(yours, torch.nn.Linear(64, 10), _data([0, 9], [3, 9]))   # 0..9 for 10 outputs: fine


class _Normed(torch.nn.Module):
    """A model with batch norm: in train mode one sample is an error ('Expected more than 1 value per
    channel'), in eval mode it is fine."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("training", [True, False])
def test_the_one_sample_forward_is_in_eval_mode_and_the_mode_is_restored(yours, training):
    model = _Normed().train(training)
    running = model.body[1].running_mean.clone()
    check_labels(yours, model, _data([0, 9], [1]))
    assert model.training is training and all(m.training is training for m in model.modules())
    assert torch.equal(model.body[1].running_mean, running)   # no statistics updated by the check


def test_the_sample_is_cast_to_the_models_dtype(yours):
    # data loaded in float32 for a float64 model (the caller casts its batches): a dtype mismatch before
    check_labels(yours, torch.nn.Linear(64, 10, dtype=torch.float64), _data([0, 9], [1]))
    with pytest.raises(cfg.ConfigError, match="reach 9"):
        check_labels(yours, torch.nn.Linear(64, 4, dtype=torch.float64), _data([0, 9], [1]))


class _Noisy(torch.nn.Linear):
    """A model of yours adding noise at every forward, eval mode included."""

    def forward(self, x):
        return super().forward(x + torch.randn_like(x))


def test_the_check_leaves_the_generators_as_they_were_where_the_model_draws(yours):
    data, model = _data([0, 9], [1]), _Noisy(64, 10)
    state = torch.get_rng_state()
    check_labels(yours, model, data)
    assert torch.equal(torch.get_rng_state(), state)   # a run's seeds draw as if no check had run
