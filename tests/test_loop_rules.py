"""Three rules of the training loop (:mod:`catapult.engine.loop`) that survived mutation under the
engine tests: the test loss averages chunks weighted by their rows (a short last chunk counted as
a full one), each sharpness solve warm-starts from the previous solve's vector (the first from
``randn(P)`` of the sharpness seed), and the summary's ``threshold_target`` is the first param
group's threshold at ``lr_target`` times that group's ``lr_mult``. Truth: a NumPy mean, the seed
rule of :func:`catapult.engine.seeds.seeds` written out again, the solves' own vectors, ``2 / lr``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult import engine
from catapult.engine.loop import evaluate

TINY = {"dtype": "float64", "seed": 3, "data": {"name": "digits", "n_train": 32, "n_test": 16},
        "model": {"width": 8, "depth": 2}, "train": {"steps": 3},
        "eval": {"sharpness_every": 1, "test_every": 0, "sharpness_tol": 1e-10, "sharpness_max_iter": 300}}


def test_the_test_loss_weights_each_chunk_by_its_rows():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        out = model(x).numpy()
    truth = float(np.mean((out - y.numpy()) ** 2))   # MSE over every row (and output)
    loss, _ = evaluate(model, torch.nn.MSELoss(), x, y, chunk=3)   # chunks of 3, 3 and 1 rows
    assert loss == pytest.approx(truth, rel=1e-12)


def test_each_sharpness_solve_starts_from_the_previous_solves_vector(monkeypatch):
    import catapult.curvature as curvature

    solves, solve = [], curvature.sharpness

    def recorded(*args, init=None, **kwargs):
        est = solve(*args, init=init, **kwargs)
        solves.append((None if init is None else init.clone(), est.vector.clone()))
        return est

    monkeypatch.setattr(curvature, "sharpness", recorded)
    res = engine.run(TINY, progress="none")
    assert len(solves) == 4   # lambda_0 (row 0 reuses it), then rows 1, 2, 3
    # the first from randn(P) drawn with the third of SeedSequence(seed)'s three 32-bit states
    sharpness_seed = int(np.random.SeedSequence(TINY["seed"]).generate_state(3)[2])
    first = torch.randn(res.summary["num_params"], generator=torch.Generator().manual_seed(sharpness_seed))
    assert torch.equal(solves[0][0], first.to(torch.float64))
    for (_, before), (init, _) in zip(solves, solves[1:]):
        assert torch.equal(init, before)


def test_threshold_target_is_the_first_groups_threshold_at_lr_target():
    # SμPar with SGD: the first group (the input layer) has lr_mult != 1, so its lr at the
    # target is lr_target * lr_mult, and GD's threshold there is 2 / that lr
    from catapult.engine.build import build_run

    config = {**TINY, "model": {"width": 8, "depth": 3, "parametrization": "supar", "base_width": 2},
              "optimizer": {"lr": 0.05}, "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0}}
    group = build_run(config).optimizer.param_groups[0]
    assert group["lr_mult"] != 1.0
    res = engine.run(config, progress="none")
    assert res.summary["lr_target"] == 0.05
    assert res.summary["threshold_target"] == pytest.approx(2 / (0.05 * group["lr_mult"]), rel=1e-12)
    assert res.metrics[-1]["threshold"] == pytest.approx(res.summary["threshold_target"], rel=1e-12)
