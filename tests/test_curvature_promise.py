"""The promises of the curvature functions, fuzzed over their options against the dense matrix:
the Hessian, or the Gauss-Newton matrix ``J^T H_L J``, both in float64 by
``torch.autograd.functional`` (``tests/dense_curvature.py``).

- ``sharpness``: where it says ``converged``, some eigenvalue ``lambda`` has
  ``|lambda - value| <= error_bound * |value|``, and ``value`` is not above the largest.
- ``top_eigenpairs``: sorted values, orthonormal vectors, true residuals within the reported ones.
- ``hessian_trace``: exact once its products span the space (Hutch++ with ``matvecs >= 3 n``).
- ``spectral_density``: every quadrature node inside the spectrum's range, each run's weights
  summing to 1, the density integrating to 1.

Every product mode but ``"compiled"`` (whose compile costs seconds) is drawn, with ``memory``,
``coarse`` (260 samples reach the sub-batch levels), ``chunk_size``, ``max_basis``, ``dtype``,
the loss and ``curvature``. Finite differences are drawn only on smooth activations: their
promise on kinks is the kink check's (``tests/test_coarse_start.py``, ``tests/test_spectrum.py``).
A sharpness on them is drawn in float32 at every ``tol``: its ``error_bound`` includes the
products' own error (``catapult/curvature/certify.py``), so a float32 value may sit above the
largest eigenvalue by that part of it; so do ``top_eigenpairs``' ``residuals``."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dense_curvature import dense_ggn, dense_hessian

import catapult

ACTIVATIONS = {"tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "softplus": torch.nn.Softplus,
               "relu": torch.nn.ReLU}


def dense_matrix(model, loss_fn, x, y, curvature: str) -> np.ndarray:
    """The dense float64 Hessian or Gauss-Newton matrix (``tests/dense_curvature.py``)."""
    if curvature == "hessian":
        return dense_hessian(model, loss_fn, (x, y)).numpy()
    return dense_ggn(model, loss_fn, (x, y))


@st.composite
def problems(draw):
    mode = draw(st.sampled_from(["auto", "double_backprop", "forward_over_reverse", "finite_difference"]))
    double = draw(st.booleans())
    tol = draw(st.sampled_from([1e-2, 1e-3, 1e-5] if double else [1e-2, 1e-3]))
    smooth = ["tanh", "gelu", "softplus"]
    act = draw(st.sampled_from(smooth if mode == "finite_difference" else smooth + ["relu"]))
    n = draw(st.sampled_from([1, 3, 17, 260]))
    chunk_size = draw(st.sampled_from([None, 1, 7]))
    if n > 17 and chunk_size == 1:
        chunk_size = 64  # 260 micro-batches of one sample: minutes, no new path
    return dict(
        mode=mode, double=double, tol=tol, act=act,
        widths=draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)),
        inputs=draw(st.integers(1, 4)), outputs=draw(st.integers(2, 3)),
        loss=draw(st.sampled_from(["mse", "mse_sum", "ce"])),
        n=n, chunk_size=chunk_size,
        memory=draw(st.sampled_from(["fast", "lean"])), coarse=draw(st.sampled_from(["auto", None])),
        max_basis=draw(st.sampled_from([None, 3, 8])),
        curvature=draw(st.sampled_from(["hessian", "ggn"])), seed=draw(st.integers(0, 2**20)))


def build(p):
    """The drawn model, loss and batch."""
    dtype = torch.float64 if p["double"] else torch.float32
    torch.manual_seed(p["seed"])
    layers, width = [], p["inputs"]
    for hidden in p["widths"]:
        layers += [torch.nn.Linear(width, hidden), ACTIVATIONS[p["act"]]()]
        width = hidden
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, p["outputs"])).to(dtype)
    x = torch.randn(p["n"], p["inputs"], dtype=dtype)
    if p["loss"] == "ce":
        y, loss_fn = torch.randint(0, p["outputs"], (p["n"],)), torch.nn.CrossEntropyLoss()
    else:
        y = torch.randn(p["n"], p["outputs"], dtype=dtype)
        loss_fn = torch.nn.MSELoss(reduction="sum" if p["loss"] == "mse_sum" else "mean")
    return model, loss_fn, x, y


def slack_of(p, matrix_scale: float) -> float:
    """What float32 products may add: rounding of the operator, ~1e-6 .. 1e-5 of its norm."""
    return (1e-9 if p["double"] else 2e-5) * max(matrix_scale, 1e-30)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(problem=problems())
def test_a_converged_sharpness_is_within_its_error_bound_of_a_dense_eigenvalue(problem):
    p = problem
    model, loss_fn, x, y = build(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lean's "3x cannot be met" on models this small
        est = catapult.sharpness(model, loss_fn, (x, y), tol=p["tol"], hvp=p["mode"], memory=p["memory"],
                                 coarse=p["coarse"], chunk_size=p["chunk_size"], max_basis=p["max_basis"],
                                 curvature=p["curvature"], seed=p["seed"])
    eigenvalues = np.linalg.eigvalsh(dense_matrix(model, loss_fn, x, y, p["curvature"]))
    slack = slack_of(p, float(np.abs(eigenvalues).max()))
    assert math.isfinite(est.value)
    # a Ritz value of difference products carries their error, e = bound - residual (certify.py)
    product_error = (est.error_bound - est.residual) * abs(est.value) if p["mode"] == "finite_difference" else 0.0
    assert est.value <= eigenvalues[-1] + slack + product_error
    if est.converged:
        distance = float(np.abs(eigenvalues - est.value).min())
        assert distance <= est.error_bound * abs(est.value) + slack, (distance, est)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(problem=problems(), k=st.integers(1, 4), block_size=st.integers(1, 2))
def test_converged_top_eigenpairs_are_orthonormal_and_have_the_residuals_they_report(problem, k, block_size):
    """``top_eigenpairs``: values largest first, the first not above the largest eigenvalue,
    orthonormal vectors, and, where ``converged``, each pair's true relative residual
    ``||A v_i - theta_i v_i|| / |theta_i|`` (dense ``A``) within the ``residuals[i]`` it reports
    and that within ``tol``."""
    p = problem
    model, loss_fn, x, y = build(p)
    count = sum(q.numel() for q in model.parameters())
    k = min(k, count)
    block_size = min(block_size, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eig = catapult.top_eigenpairs(model, loss_fn, (x, y), k=k, tol=p["tol"], hvp=p["mode"], memory=p["memory"],
                                      chunk_size=p["chunk_size"], curvature=p["curvature"], seed=p["seed"],
                                      block_size=block_size)
    matrix = dense_matrix(model, loss_fn, x, y, p["curvature"])
    eigenvalues = np.linalg.eigvalsh(matrix)
    slack = slack_of(p, float(np.abs(eigenvalues).max()))
    values = np.asarray(eig.values, dtype=np.float64)
    vectors = eig.vectors.double().numpy()
    assert len(values) == k and vectors.shape == (k, count)
    # a Ritz value of difference products carries their error: within its reported bound
    above = eig.residuals[0] * abs(values[0]) if p["mode"] == "finite_difference" else 0.0
    assert np.all(np.diff(values) <= slack) and values[0] <= eigenvalues[-1] + slack + above
    assert np.abs(vectors @ vectors.T - np.eye(k)).max() <= (1e-8 if p["double"] else 1e-4)
    if eig.converged:
        for value, vector, reported in zip(values, vectors, eig.residuals):
            true = float(np.linalg.norm(matrix @ vector - value * vector))
            assert reported <= p["tol"] * 1.0000001
            assert true <= reported * abs(value) + 10 * slack, (true, reported, value)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(problem=problems(), extra=st.integers(0, 4))
def test_hessian_trace_is_exact_once_its_products_span_the_space(problem, extra):
    """Hutch++ spends a third of ``matvecs`` on the sketch ``Q = orth(A S)``; with ``matvecs >=
    3 n`` (``n`` parameters) ``Q`` spans ``A``'s range and ``tr(Q^T A Q)`` is the whole trace."""
    p = dict(problem, n=min(problem["n"], 17))  # 3 n products each: the batch kept small
    if p["mode"] == "finite_difference" and not p["double"]:
        return
    model, loss_fn, x, y = build(p)
    count = sum(q.numel() for q in model.parameters())
    trace = catapult.hessian_trace(model, loss_fn, (x, y), matvecs=3 * count + extra, hvp=p["mode"],
                                   chunk_size=p["chunk_size"], curvature=p["curvature"], seed=p["seed"])
    matrix = dense_matrix(model, loss_fn, x, y, p["curvature"])
    scale = float(np.abs(np.linalg.eigvalsh(matrix)).sum())
    assert abs(trace - float(np.trace(matrix))) <= (1e-8 if p["double"] else 1e-4) * max(scale, 1e-30) + 1e-12


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(problem=problems(), runs=st.integers(1, 4), steps=st.integers(1, 12),
       max_basis=st.sampled_from([None, 2, 5]))
def test_spectral_density_nodes_lie_in_the_spectrum_and_its_mass_is_one(problem, runs, steps, max_basis):
    """Lanczos quadrature nodes are Ritz values, so they lie in ``[lambda_min, lambda_max]``;
    a run's weights are the squared first components of the tridiagonal's eigenvectors (sum 1)."""
    p = problem
    if p["mode"] == "finite_difference" and not p["double"]:
        return
    model, loss_fn, x, y = build(p)
    dens = catapult.spectral_density(model, loss_fn, (x, y), runs=runs, steps=steps, hvp=p["mode"],
                                     chunk_size=p["chunk_size"], curvature=p["curvature"], seed=p["seed"],
                                     max_basis=max_basis)
    eigenvalues = np.linalg.eigvalsh(dense_matrix(model, loss_fn, x, y, p["curvature"]))
    slack = slack_of(p, float(np.abs(eigenvalues).max())) * 10
    weighted = dens.weights > 0
    nodes = np.asarray(dens.nodes)[weighted]
    assert np.all(nodes >= eigenvalues[0] - slack) and np.all(nodes <= eigenvalues[-1] + slack)
    assert np.allclose(np.asarray(dens.weights).sum(axis=1), 1.0, atol=1e-6 if p["double"] else 1e-4)
    mass = float(np.sum((dens.density[1:] + dens.density[:-1]) / 2 * np.diff(dens.grid)))
    assert abs(mass - 1.0) <= 1e-2
