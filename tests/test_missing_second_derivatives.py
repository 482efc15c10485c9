"""A model torch cannot differentiate twice (``nn.EmbeddingBag``: no derivative of its backward,
no forward-AD formula) raised torch's NotImplementedError from deep inside a product; the
operators name ``hvp`` and the mode that needs gradients alone, which measures it (truth: the
same lookup as ``nn.Embedding`` and a mean)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian

import catapult


class Pooled(nn.Module):
    def __init__(self, bag: bool):
        super().__init__()
        self.bag = bag
        self.embed = nn.EmbeddingBag(7, 4, mode="mean") if bag else nn.Embedding(7, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens):
        h = self.embed(tokens) if self.bag else self.embed(tokens).mean(1)
        return self.out(torch.tanh(h))


def problem(bag):
    torch.manual_seed(1)
    model = Pooled(bag).double()
    torch.manual_seed(0)
    return model, (torch.randint(0, 7, (12, 3)), torch.randint(0, 3, (12,)))


@pytest.mark.parametrize("hvp, named", [("auto", "double_backprop"), ("double_backprop", "double_backprop"),
                                        ("forward_over_reverse", "forward_over_reverse")])
def test_a_missing_second_derivative_names_hvp(hvp, named):
    model, batch = problem(bag=True)
    with pytest.raises(ValueError, match=rf"hvp='{named}': torch has no second derivative of this model .*"
                                         r"hvp='finite_difference'"):
        catapult.sharpness(model, F.cross_entropy, batch, hvp=hvp)


def test_finite_differences_measure_it():
    model, batch = problem(bag=True)
    plain, _ = problem(bag=False)
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, batch).numpy())[-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-9, hvp="finite_difference")
    assert abs(est.value - truth) <= max(est.error_bound, 1e-8) * truth
