"""A model of yours (an ``engine.MODELS`` entry) that draws in its forward (a train-mode Dropout)
trains on a stream its config's ``seed`` decides, not on the caller's global torch state: the same
config gives the same run whatever ``torch.manual_seed`` the caller set (the README's "a seed gives
the same run bit for bit"), two seeds get two dropout streams, and the caller's stream is left
where it was ("catapult.engine neither reads nor advances your global torch generators"). Before,
the masks came from the caller's stream (restored by nothing): the run depended on it, ``seeds: 3``
of a model whose init ignores the seed trained three identical runs, and the caller's stream moved."""
from __future__ import annotations

import torch

from catapult import config as cfg
from catapult import engine

CONFIG = {"name": "drop", "dtype": "float64", "data": {"name": "digits", "n_train": 120, "n_test": 40},
          "model": {"width": 16, "depth": 2}, "optimizer": {"name": "sgd", "lr": 0.1},
          "train": {"steps": 3}, "eval": {"sharpness_every": 0, "test_every": 0}}


class DropoutNet(torch.nn.Module):
    """A fixed init (the same weights for every seed) and a train-mode Dropout(0.5)."""

    def __init__(self, model_cfg, n_in, n_out):
        super().__init__()
        self.a = torch.nn.Linear(n_in, 16)
        self.drop = torch.nn.Dropout(0.5)
        self.b = torch.nn.Linear(16, n_out)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.linspace(-0.3, 0.3, p.numel()).reshape(p.shape))

    def forward(self, x):
        return self.b(self.drop(torch.tanh(self.a(x.flatten(1)))))


def _losses(seed):
    result = engine.run(cfg.validate({**CONFIG, "seed": seed}), progress="none")
    return [row["train_loss"] for row in result.metrics]


def test_a_dropout_model_trains_on_its_seeds_stream_and_keeps_the_callers(monkeypatch):
    monkeypatch.setitem(engine.MODELS, "mlp", DropoutNet)
    torch.manual_seed(1)
    first = _losses(0)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))          # the caller's stream did not move
    torch.manual_seed(2)
    assert _losses(0) == first                        # the caller's state does not decide the run
    torch.manual_seed(1)
    other = _losses(1)
    # the same init, data and order: only the dropout stream differs between the seeds
    assert other[0] != first[0] and all(a == a and b == b for a, b in zip(first, other))


def test_the_ensemble_runs_dropout_cells_as_the_local_engine_does(monkeypatch):
    # vmap refuses the random op, and the cells run on the local engine: the same bits as engine.run
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.executors import Cell
    monkeypatch.setitem(engine.MODELS, "mlp", DropoutNet)
    cells = [Cell(i, cfg.validate({**CONFIG, "name": f"c{i}", "seed": i,
                                   "optimizer": {"name": "sgd", "lr": lr}})) for i, lr in enumerate([0.05, 0.2])]
    for kernels in (True, False):
        ensemble = dict(EnsembleExecutor(kernels=kernels).run(cells))
        for cell in cells:
            local = engine.run(cell.config, progress="none")
            assert [r["train_loss"] for r in ensemble[cell.id].metrics] == [r["train_loss"] for r in local.metrics]
