"""The memory guard counted a model's values alone: a narrow model of millions of layers holds far
more in its tensors than in its weights (an MLP of width 8 and depth 10**7: 2.9 GiB of float32
weights, 2 * 10**7 parameter tensors; its build had taken 11 GiB of RSS after 5 minutes on a 23.5 GiB
machine, ~2.4 KiB a tensor, on its way to ~45 GiB), and passed. ``check_fits`` now adds
``TENSOR_BYTES`` (1 KiB) on the CPU for each parameter tensor and, for a run that trains, for each
tensor of each copy of its weights it holds (its gradients, its optimizer's state), a lower bound:
the first test measures a real model's bytes a tensor in a fresh process (RSS before and after
building it, after its backward pass and after an Adam step). The guard's tests patch the machine's
memory and the model's build to fail, so nothing of the model's size is made."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from catapult import config as cfg
from catapult.engine import loop, model_size, run
from catapult.engine.build import build_model
from catapult.engine.model_size import TENSOR_BYTES, check_fits, model_parameters, training_fit

MIB = 2 ** 20

_MEASURE = """
import os, torch
from catapult.models import MLP
torch.set_num_threads(1)
def resident():   # bytes now resident (the peak, ru_maxrss, may have been the imports')
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
model = MLP(64, 10, width=8, depth=10_000)
built = resident()
values = sum(p.numel() for p in model.parameters()) * 4
model(torch.randn(4, 64)).logsumexp(1).mean().backward()
backward = resident()
torch.optim.Adam(model.parameters(), lr=1e-3).step()
stepped = resident()
print(built - before, backward - built, stepped - backward, values, len(list(model.parameters())))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_built_models_tensors_take_more_than_tensor_bytes_each_beside_their_values():
    out = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=300, check=True)
    built, gradients, state, values, tensors = map(int, out.stdout.split())
    assert tensors == 20_000
    assert built - values > TENSOR_BYTES * tensors, (built, values, tensors)              # measured 2.2 KiB a tensor
    assert gradients - values > TENSOR_BYTES * tensors, (gradients, values, tensors)      # 2.9 KiB a gradient
    assert state - 2 * values > 2 * TENSOR_BYTES * tensors, (state, values, tensors)      # adam's 2 copies: 4.1 KiB


def test_a_deep_narrow_model_whose_tensors_exceed_memory_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 100 * MIB)

    def past_the_guard(config, **kwargs):   # (trains=True) the old code went on to build 200,000 tensors: never here
        raise AssertionError("the model passed the memory guard")
    monkeypatch.setattr(loop, "build_run", past_the_guard)
    config = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 100_000},
              "optimizer": {"name": "sgd", "lr": 0.01}, "train": {"steps": 1}}
    weights = 4 * model_parameters(cfg.validate(config), 64, 10)   # float32; digits: 64 pixels, 10 classes
    assert 2 * weights < 60 * MIB   # 27.5 MiB of values, as much of gradients: fits; 400,000 tensors of >= 1 KiB do not
    with pytest.raises(cfg.ConfigError, match=r"model\.width=8 and model\.depth=100000 make a model of 0\.4 GiB "
                                             r"with 1 more copy of its weights \(its gradients; "
                                             r"200,000 parameter tensors and 200,000 more for their gradients, "
                                             r"of at least 1024 bytes each beside their values\), more than this "
                                             r"machine's 0\.1 GiB"):
        run(config, out_dir=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optimizer, copies", [({"name": "sgd", "lr": 0.1}, 2),
                                               ({"name": "sgd", "lr": 0.1, "momentum": 0.9}, 3),
                                               ({"name": "adam", "lr": 0.001}, 4)])
def test_each_copy_a_run_trains_holds_counts_its_tensors(optimizer, copies, monkeypatch):
    # truth: the built model's own parameters; weights, gradients and each state buffer are one tensor a parameter
    config = cfg.validate({"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 3},
                           "optimizer": optimizer})
    params = list(build_model(config, 64, 10).parameters())
    need = copies * (4 * sum(p.numel() for p in params) + TENSOR_BYTES * len(params))
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: need)
    check_fits(config, 64, 10, torch.device("cpu"), torch.float32, **training_fit(config))
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: need - 1)   # one byte short: the last copy's tensors
    with pytest.raises(cfg.ConfigError, match=r"model\.width=8 and model\.depth=3 .*more than this machine's"):
        check_fits(config, 64, 10, torch.device("cpu"), torch.float32, **training_fit(config))


def test_a_run_on_another_device_holds_its_copies_tensors_on_the_cpu_but_not_their_values(monkeypatch):
    # (mutation pass 23) weights built on the CPU then moved: the CPU keeps each tensor's own bytes
    # (TENSOR_BYTES) for the weights, gradients and adam's two state copies, their values the device
    config = cfg.validate({"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 3},
                           "optimizer": {"name": "adam", "lr": 0.001}})
    params = list(build_model(config, 64, 10).parameters())
    values, tensors = 4 * sum(p.numel() for p in params), len(params)
    held = 4 * TENSOR_BYTES * tensors
    assert held > values + TENSOR_BYTES * tensors   # the build's own need is the smaller
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: held if device.type == "cpu" else None)
    check_fits(config, 64, 10, torch.device("cuda"), torch.float32, **training_fit(config))
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: held - 1 if device.type == "cpu" else None)
    with pytest.raises(cfg.ConfigError, match=r"model\.width=8 and model\.depth=3 .*more than this machine's"):
        check_fits(config, 64, 10, torch.device("cuda"), torch.float32, **training_fit(config))


def test_the_device_holds_the_weights_and_every_copy_a_run_trains(monkeypatch):
    # (mutation pass 23) on the device: adam's run holds weights, gradients and two state copies,
    # 4 x the float32 values; exactly that fits, one byte less is refused naming the device
    config = cfg.validate({"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 3},
                           "optimizer": {"name": "adam", "lr": 0.001}})
    values = 4 * sum(p.numel() for p in build_model(config, 64, 10).parameters())
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 4 * values if device.type == "cuda" else None)
    check_fits(config, 64, 10, torch.device("cuda"), torch.float32, **training_fit(config))
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 4 * values - 1 if device.type == "cuda" else None)
    with pytest.raises(cfg.ConfigError, match=r"with 3 more copies of its weights .*more than cuda's"):
        check_fits(config, 64, 10, torch.device("cuda"), torch.float32, **training_fit(config))
