"""``sharpness(curvature="ggn")`` and ``preconditioned_sharpness(curvature="ggn")`` against the
dense Gauss-Newton matrix ``J^T H_L J`` of small float64 MLPs (Jacobian and output Hessian by
``torch.autograd.functional``), eigendecomposed by NumPy.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dense_curvature import adam_next_preconditioner, dense_ggn, dense_hessian

import catapult


def problem(loss="mse", seed=0, n=24, width=6, out=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, out)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    if loss == "mse":
        return model, nn.MSELoss(), (x, torch.randn(n, out, dtype=torch.float64))
    return model, nn.CrossEntropyLoss(), (x, torch.randint(0, out, (n,)))


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("memory", ["fast", "lean"])
def test_ggn_sharpness_is_the_top_eigenvalue_of_the_dense_gauss_newton_matrix(loss, memory):
    model, loss_fn, batch = problem(loss, seed=1)
    G = dense_ggn(model, loss_fn, batch)
    w, V = np.linalg.eigh(G)
    H_top = np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1]
    assert abs(H_top - w[-1]) > 1e-3 * w[-1]  # the two curvatures differ here: the test can tell
    est = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", memory=memory,
                             max_iter=300)
    assert est.converged
    assert est.value == pytest.approx(w[-1], rel=1e-8)
    assert abs(float(est.vector.numpy() @ V[:, -1])) / float(est.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    # the default is still the Hessian
    assert catapult.sharpness(model, loss_fn, batch, tol=1e-9).value == pytest.approx(H_top, rel=1e-8)


def test_ggn_sharpness_warm_start_and_micro_batches_keep_the_answer():
    model, loss_fn, batch = problem("ce", seed=2)
    top = np.linalg.eigvalsh(dense_ggn(model, loss_fn, batch))[-1]
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn")
    warm = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", init=cold.vector)
    chunked = catapult.sharpness(model, loss_fn, batch, tol=1e-9, curvature="ggn", chunk_size=5)
    for est in (cold, warm, chunked):
        assert est.value == pytest.approx(top, rel=1e-8)
    assert warm.matvecs < cold.matvecs


def test_preconditioned_ggn_sharpness_matches_dense_adam():
    model, loss_fn, batch = problem("mse", seed=3, width=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    loss_fn(model(batch[0]), batch[1]).backward()
    opt.step()
    opt.zero_grad()
    P = adam_next_preconditioner(model, loss_fn, batch, opt)  # from the formula, not the library
    G = dense_ggn(model, loss_fn, batch)
    truth = np.linalg.eigvalsh(G / np.sqrt(P)[:, None] / np.sqrt(P)[None, :])[-1]
    est = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-10,
                                            curvature="ggn")
    assert est.value == pytest.approx(truth, rel=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    ({"curvature": "fisher"}, r"curvature must be one of \('hessian', 'ggn'\), got 'fisher'"),
    ({"curvature": None}, r"curvature must be one of"),
    ({"curvature": "ggn", "coarse": [(2, 1e-2)]}, r"coarse levels are Hessian solves"),
])
def test_bad_curvature_arguments_are_refused_before_any_product(kwargs, message):
    model, loss_fn, batch = problem()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=message):
        catapult.sharpness(model, loss_fn, batch, **kwargs)
    assert not calls
