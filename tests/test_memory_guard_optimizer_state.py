"""The memory guard counted the weights alone: an Adam model of 8 GiB of float32 weights (24 GiB
with Adam's two moment buffers) passed it on a machine of 23.5 GiB and would run out of memory at
its first step. ``run`` now counts the gradients and the optimizer's state where it trains (Adam: 3
copies; sgd with momentum 2, as torch's state after one real step has them). The
model is counted on the meta device (nothing of its size is allocated) and the machine's memory
is patched to 23.5 GiB (and building the model to fail)."""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.engine import loop, model_size, run
from catapult.engine.build import OPTIMIZERS
from catapult.engine.model_size import model_parameters, training_copies

GIB = 2 ** 30


def test_an_adam_model_whose_state_exceeds_memory_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: int(23.5 * GIB))

    def past_the_guard(config, **kwargs):   # (trains=True) the old code went on to build 8 GiB of weights: never here
        raise AssertionError("the model passed the memory guard")
    monkeypatch.setattr(loop, "build_run", past_the_guard)
    config = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 46_000, "depth": 3},
              "optimizer": {"name": "adam", "lr": 0.001}, "train": {"steps": 1}}
    weights = 4 * model_parameters(cfg.validate(config), 64, 10)   # float32; digits: 64 pixels, 10 classes
    assert 23.5 * GIB / 3 < weights < 23.5 * GIB   # 7.9 GiB: fits alone, not with two more copies
    with pytest.raises(cfg.ConfigError, match=r"model\.width=46000.*with 3 more copies of its weights \(its gradients "
                                              r"and the adam optimizer's state\)"):
        run(config, out_dir=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "momentum": 0.0}, {"name": "sgd", "momentum": 0.9},
                                       {"name": "adam"}, {"name": "adamw"}, {"name": "radam"},
                                       {"name": "gi-adam"}, {"name": "gi-adam", "v0": "random"}])
def test_the_copies_counted_are_the_gradients_and_the_state_torch_keeps(optimizer):
    # truth: torch's own state after one real step, each of its tensors the shape of a parameter
    config = cfg.validate({"optimizer": {"lr": 0.01, **optimizer}})
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    opt = OPTIMIZERS[optimizer["name"]](model, 0.01, dict(config["optimizer"], _seed=0))
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    params = list(model.parameters())
    sized = sum(1 for p in params for v in opt.state.get(p, {}).values() if torch.is_tensor(v) and v.shape == p.shape)
    assert all(p.grad is not None for p in params)   # one gradient per parameter, kept between steps
    assert training_copies(config) == sized // len(params) + 1
    assert sized % len(params) == 0


def test_an_sgd_momentum_model_whose_gradients_and_buffer_exceed_memory_is_refused(monkeypatch, tmp_path):
    # 7.9 GiB of weights: with its gradients 15.8 GiB, with the momentum buffer too 23.7 GiB > 23.5
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: int(23.5 * GIB))

    def past_the_guard(config, **kwargs):   # (trains=True)
        raise AssertionError("the model passed the memory guard")
    monkeypatch.setattr(loop, "build_run", past_the_guard)
    config = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 46_000, "depth": 3},
              "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9}, "train": {"steps": 1}}
    weights = 4 * model_parameters(cfg.validate(config), 64, 10)
    assert 23.5 * GIB / 3 < weights < 23.5 * GIB / 2
    with pytest.raises(cfg.ConfigError, match=r"model\.width=46000.*with 2 more copies of its weights \(its gradients "
                                              r"and the sgd optimizer's state\)"):
        run(config, out_dir=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()
