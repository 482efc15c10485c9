"""A batch held in a ``MutableMapping`` that keeps its items in an attribute (no dict, no UserDict):
``copy.copy`` of it shares its items, so the micro-batches (``chunk_size``) and the cast copies
(``dtype=``) were written into the user's batch. Truth: the closed-form Hessian top of a linear
model under a mean squared error, and the batch's own tensors, by identity, after the call."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from catapult.curvature.microbatch import map_tensors, sample_rows
from test_microbatch_containers_edges import Held


# a mapping keeping its items in an attribute (copy.copy shares them): one fixture for both files
Batch = Held


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, batch):
        return self.linear(batch["x"])


def test_pieces_and_casts_leave_the_mapping_alone():
    x = torch.arange(6.0)
    batch = Batch(x=x, flag="keep")
    piece = sample_rows(batch, 2, 4)
    assert type(piece) is Batch and piece["x"].tolist() == [2.0, 3.0] and piece["flag"] == "keep"
    cast = map_tensors(lambda t: t.double(), batch)
    assert cast["x"].dtype == torch.float64
    assert batch["x"] is x and len(batch) == 2   # (was x[2:4], then the float64 copy)


@pytest.mark.parametrize("options", [{"chunk_size": 3, "dtype": torch.float64}, {"dtype": torch.float64}])
def test_sharpness_of_a_mapping_batch_is_the_closed_form_and_the_batch_is_untouched(options):
    # mse_loss (mean over n * 2 entries) of a Linear(3, 2): H = kron(I_2, Xt^T Xt) * 2 / (2 n), Xt = [x, 1]
    # (chunk_size=3 of 8: the batch was cut to its first 3 rows, then a ZeroDivisionError)
    torch.manual_seed(0)
    model = Model()
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    batch = Batch(x=x)
    est = catapult.sharpness(model, torch.nn.functional.mse_loss, (batch, y), tol=1e-10, **options)
    xt = np.hstack([x.double().numpy(), np.ones((8, 1))])
    top = float(np.linalg.eigvalsh(xt.T @ xt)[-1]) * 2 / 16
    assert est.converged and est.value == pytest.approx(top, rel=1e-8)
    assert batch["x"] is x and x.dtype == torch.float32 and x.shape == (8, 3)
