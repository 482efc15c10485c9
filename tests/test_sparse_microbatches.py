"""Sparse inputs (COO, CSR) with ``chunk_size`` or ``memory="lean"``: refused before any forward,
naming the option (torch slices no sparse tensor along dim 0 by a view: the micro-batches failed
inside torch with ``NotImplementedError: Could not run 'aten::as_strided' ... 'SparseCPU'``, lean's
sizing probe with ``Cannot access storage of SparseTensorImpl``). Without micro-batches the sparse
batch still runs. Truth: the same batch dense, and a count of the model's forwards."""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.curvature.microbatch import MicroBatchRefused


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(30, 4)
    x[x < 0.3] = 0
    return model, x, torch.randn(30, 1)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("options, message", [
    ({"chunk_size": 7}, r"chunk_size: the batch's inputs hold a sparse tensor \(torch\.sparse_c..\).*use chunk_size=None"),
    ({"memory": "lean"}, r"memory='lean': the batch's inputs hold a sparse tensor \(torch\.sparse_c..\).*use memory='fast'"),
])
def test_sparse_inputs_are_refused_where_micro_batches_would_cut_them(layout, options, message):
    model, x, y = _problem()
    sparse = x.to_sparse() if layout == "coo" else x.to_sparse_csr()
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(MicroBatchRefused, match=message) as caught:
        catapult.sharpness(model, torch.nn.MSELoss(), (sparse, y), **options)
    assert caught.value.option == ("memory" if "memory" in options else "chunk_size") and forwards == []
    hook.remove()
    # no micro-batches (none asked, or chunk_size >= the 30 samples): the sparse batch runs, as dense
    dense = catapult.sharpness(model, torch.nn.MSELoss(), (x, y), seed=0).value
    for kept in ({}, {"chunk_size": 30}):
        value = catapult.sharpness(model, torch.nn.MSELoss(), (sparse, y), seed=0, **kept).value
        assert value == pytest.approx(dense, rel=1e-5)


def test_sparse_targets_are_refused_too_naming_the_leaf():
    model, x, y = _problem()
    with pytest.raises(MicroBatchRefused, match=r"chunk_size: the batch's targets \['y'\] hold a sparse tensor"):
        catapult.sharpness(model, lambda out, t: torch.nn.functional.mse_loss(out, t["y"].to_dense()),
                           (x, {"y": y.to_sparse()}), chunk_size=7)
