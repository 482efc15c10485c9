"""RAdam under muP / SμPar in the engine: the groups step at different lrs, so RAdam's
un-rectified updates (EMA-momentum SGD, no pre-conditioner) are bounded by SGD's lr-scaled
sharpness ``M^1/2 (H + W) M^1/2``, not ``lambda_max(H)``, which the engine recorded there (kind
``hessian``) while the tracker had been fixed. Truth: the linearisation of torch RAdam's
un-rectified step on the dense float64 Hessian (``test_tracker_radam_unrectified``'s map, checked
there against torch's step): the factor ``c`` on every group's lr at which the map first has the
root ``-1`` (the map is affine in ``c``, ``A(c) = A0 + c A1``: ``c = -1 / mu`` for the eigenvalues
``mu`` of ``(A0 + I)^-1 A1``). An MLP's Hessian has negative eigenvalues, so the spectral radius
exceeds 1 at every lr; the flip at ``-1`` is the edge the threshold is. Run at that lr, the engine's
row-0 ratio must be 1."""
from __future__ import annotations

import numpy as np
import pytest

from catapult import engine
from catapult.engine.build import build_run
from test_sharpness_kinds import _dense_hessian, _group_lrs, _with
from test_tracker_radam_unrectified import B1, _step_map

WD = 0.05
BASE = {"dtype": "float64", "data": {"name": "digits", "n_train": 32, "n_test": 16},
        "model": {"width": 4, "depth": 3, "parametrization": "supar", "base_width": 1},
        "optimizer": {"name": "radam", "lr": 1e-3, "betas": [B1, 0.999], "weight_decay": WD},
        "train": {"steps": 0},
        "eval": {"sharpness_every": 1, "sharpness_tol": 1e-10, "sharpness_max_iter": 300, "test_every": 0}}

# the hidden group below the first group's lr (width 4x base: lr / 4), and above it (SμPar at a
# width below base_width: lr x 4), where lambda_max(H) under-stated the step's sharpness
MODELS = {"hidden_slower": {"width": 4, "base_width": 1}, "hidden_faster": {"width": 4, "base_width": 16}}


def _flip_edge(H: np.ndarray, lrs: np.ndarray, wd: float) -> float:
    """The least ``c > 0`` at which the un-rectified step's map at lrs ``c * lrs`` has the root -1."""
    n = len(lrs)
    A0 = _step_map(H, 0 * lrs, wd + 0 * lrs, False)
    A1 = _step_map(H, lrs, wd + 0 * lrs, False) - A0
    mu = np.linalg.eigvals(np.linalg.solve(A0 + np.eye(2 * n), A1))
    real = mu[(np.abs(mu.imag) < 1e-9 * np.abs(mu).max()) & (mu.real < 0)].real
    c = float((-1.0 / real).min())
    roots = np.linalg.eigvals(_step_map(H, c * lrs, wd + 0 * lrs, False))
    assert np.abs(roots + 1).min() < 1e-8
    return c


@pytest.mark.parametrize("case", list(MODELS))
def test_the_engines_unrectified_radam_row_sits_at_the_steps_edge(case):
    config = _with(BASE, model=MODELS[case])
    setup = build_run(config)
    H = _dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0)).numpy()
    lrs = _group_lrs(setup.optimizer, setup.model).numpy()
    assert len(set(lrs.tolist())) > 1
    c = _flip_edge(H, lrs, WD)          # every group's lr times c: the step's edge
    res = engine.run(_with(config, optimizer={"lr": c * 1e-3}), progress="none")
    row = res.metrics[0]
    assert res.summary["sharpness_kind"] == "lr_scaled_then_preconditioned"
    assert row["sharpness_kind"] == "lr_scaled"
    assert row["sharpness"] / row["threshold"] == pytest.approx(1.0, rel=1e-7)


def test_the_kind_switches_to_preconditioned_at_rectification():
    res = engine.run(_with(BASE, train={"steps": 7}), progress="none")
    kinds = [row["sharpness_kind"] for row in res.metrics]
    assert kinds == ["lr_scaled"] * 5 + ["preconditioned"] * 3     # torch steps 1-5 un-rectified at b2 0.999


def test_radam_at_one_lr_keeps_the_hessian_rows():
    res = engine.run(_with(BASE, model={"parametrization": "sp"}, train={"steps": 1}), progress="none")
    assert res.summary["sharpness_kind"] == "hessian_then_preconditioned"
    assert [row["sharpness_kind"] for row in res.metrics] == ["hessian", "hessian"]
