"""A batch made inside torch.inference_mode() (an evaluation loop's) in the containers the
curvature functions walk (microbatch.map_tensors: a UserDict such as HF's BatchEncoding, a dict
subclass, a dataclass): the inference-mode clone reaches its tensors, so catapult.sharpness
equals the dense float64 Hessian's top. torch's pytree, used before, took these containers for
leaves and left their inference tensors in: "Inference tensors cannot be saved for backward"."""
from __future__ import annotations

import dataclasses
from collections import UserDict

import numpy as np
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian

LOSS = nn.MSELoss()


class Encoding(UserDict):
    pass


class Features(dict):
    pass


@dataclasses.dataclass
class Inputs:
    x: torch.Tensor


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()

    def forward(self, inputs):
        return self.net(inputs.x if isinstance(inputs, Inputs) else inputs["x"])


@pytest.mark.parametrize("wrap", [lambda x: Encoding(x=x), lambda x: Features(x=x), lambda x: Inputs(x=x),
                                  lambda x: {"x": x}])
def test_a_batch_made_in_inference_mode_is_cloned_in_every_container(wrap):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, generator=gen, dtype=torch.float64), torch.randn(10, 2, generator=gen, dtype=torch.float64)
    model = DictNet()
    top = float(np.linalg.eigvalsh(dense_hessian(model.net, LOSS, (x, y)).numpy())[-1])
    with torch.inference_mode():
        batch = (wrap(x.clone()), y.clone())
        est = catapult.sharpness(model, LOSS, batch, tol=1e-10, max_iter=200)
    assert est.value == pytest.approx(top, rel=1e-8)
    inner = batch[0].x if isinstance(batch[0], Inputs) else batch[0]["x"]
    assert inner.is_inference() and type(batch[0]).__name__ in ("Encoding", "Features", "Inputs", "dict")
    # the caller's batch is not changed: its tensors are still the inference-mode ones
