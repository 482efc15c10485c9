"""The memory guard counted the weights alone: an Adam model of 8 GiB of float32 weights (24 GiB
with Adam's two moment buffers) passed it on a machine of 23.5 GiB and would run out of memory at
its first step. ``run`` now counts the optimizer's state where it trains (Adam: 2 copies). The
model is counted on the meta device (nothing of its size is allocated) and the machine's memory
is patched to 23.5 GiB (and building the model to fail)."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.engine import loop, model_size, run
from catapult.engine.model_size import model_parameters

GIB = 2 ** 30


def test_an_adam_model_whose_state_exceeds_memory_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: int(23.5 * GIB))

    def past_the_guard(config):   # the old code went on to build 8 GiB of weights: never here
        raise AssertionError("the model passed the memory guard")
    monkeypatch.setattr(loop, "build_run", past_the_guard)
    config = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 46_000, "depth": 3},
              "optimizer": {"name": "adam", "lr": 0.001}, "train": {"steps": 1}}
    weights = 4 * model_parameters(cfg.validate(config), 64, 10)   # float32; digits: 64 pixels, 10 classes
    assert 23.5 * GIB / 3 < weights < 23.5 * GIB   # 7.9 GiB: fits alone, not with two more copies
    with pytest.raises(cfg.ConfigError, match=r"model\.width=46000.*with the adam optimizer's 2 copies"):
        run(config, out_dir=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()
