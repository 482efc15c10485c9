"""Which solver the engine's sharpness rule runs for ``eval.sharpness_memory``: ``lean`` is the
basis-free solver (:func:`catapult.curvature.lean.lean_top_eigenpair`, three parameter-sized
vectors) whatever ``eval.sharpness_max_basis`` says, ``fast`` the Krylov one; both find the dense
Hessian's top eigenvalue. A mutation that gave lean the configured basis (a thick-restart Lanczos
of ``sharpness_max_basis`` vectors) kept every value and survived the engine tests."""
import numpy as np
import pytest
import torch
from torch import nn

from dense_curvature import dense_hessian

from catapult.config import validate
from catapult.curvature import lean
from catapult.engine.sharpness_rule import sharpness_rule


@pytest.mark.parametrize("memory, basis_free", [("lean", True), ("fast", False)])
def test_lean_sharpness_is_the_basis_free_solver(memory, basis_free, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    batch = (torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64))
    loss_fn = nn.MSELoss()
    calls = []
    solver = lean.lean_top_eigenpair

    def spy(*args, **kwargs):
        calls.append(1)
        return solver(*args, **kwargs)

    monkeypatch.setattr(lean, "lean_top_eigenpair", spy)
    config = validate({"eval": {"sharpness_memory": memory, "sharpness_max_basis": 20, "sharpness_tol": 1e-10,
                                "sharpness_every": 1}, "dtype": "float64"})
    est = sharpness_rule(config, model).hessian(model, loss_fn, batch, None, None)
    assert bool(calls) == basis_free
    top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    assert float(est.value) == pytest.approx(top, rel=1e-7)
