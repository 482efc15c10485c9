"""The ensemble against ``catapult train`` where Adam's coupled L2 divides rounding noise by eps.

A one-layer GPT's attention key bias has an analytically zero gradient (softmax ignores a shift of
every key by the same vector); its computed gradient is rounding noise (1e-23 .. 1e-17), which
the local engine (one model's autograd) and the batched torch.func engine (``vmap``) round
differently. Adam's pre-conditioner there is ``eps`` plus that noise, and with a coupled L2
(``adam``/``radam`` ``weight_decay > 0``) the pre-conditioned operator holds ``wd / P`` on those
entries: its top eigenvalue is set by the noise. The script trains one cell (float64, cold
Lanczos starts at tol 1e-12) both ways and prints the sharpness rows, for eps 1e-8, eps 1e-5 and
a model without biases::

    OMP_NUM_THREADS=1 .venv/bin/python bench/ensemble_zero_gradient_noise.py
"""
from __future__ import annotations

import argparse
import copy

import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import Cell

BASE = {"data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 8},
        "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "activation": "gelu",
                  "parametrization": "supar_init", "tie_embeddings": True, "base_width": 4},
        "loss": "cross_entropy", "dtype": "float64", "seed": 2, "name": "c0",
        "optimizer": {"name": "adam", "lr": "2/lambda0", "betas": [0.9, 0.99], "weight_decay": 0.01},
        "schedule": {"warmup": "linear", "warmup_steps": 4},
        "train": {"steps": 6, "batch_size": 8},
        "eval": {"sharpness_every": 2, "test_every": 3, "sharpness_tol": 1e-12, "sharpness_max_iter": 300,
                 "sharpness_max_basis": 300, "sharpness_start": "cold", "lambda0_batches": 2}}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    config = cfg.validate(BASE)
    device = torch.device("cpu")
    data = train.load_data(config, device, torch.float64)
    model = train.build_model(config, data.in_features, data.num_classes, device, torch.float64)
    x, y = train.batch_stream(config, data).batch(0)
    torch.nn.functional.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
    width = BASE["model"]["width"]
    for part, grad in zip("qkv", model.blocks[0].attn.qkv.bias.grad.split(width)):
        print(f"step 0 gradient of the attention {part} bias: max |g| {grad.abs().max().item():.1e}")
    for label, over in (("eps 1e-8", {}), ("eps 1e-5", {"optimizer": {"eps": 1e-5}}),
                        ("no biases", {"model": {"bias": False}})):
        config = copy.deepcopy(BASE)
        for section, values in over.items():
            config[section].update(values)
        cell = Cell(0, cfg.validate(config))
        local = train.run(cell.config, progress="none")
        batched = dict(EnsembleExecutor(kernels=False).run([cell]))[0]
        for a, b in zip(local.metrics, batched.metrics):
            if a["sharpness"] is not None:
                rel = abs(a["sharpness"] - b["sharpness"]) / abs(a["sharpness"])
                print(f"{label:9s} step {a['step']}: local {a['sharpness']:.10g}  ensemble {b['sharpness']:.10g}"
                      f"  rel {rel:.1e}")


if __name__ == "__main__":
    main()
