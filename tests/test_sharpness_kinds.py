"""What the engine records as sharpness and threshold, by kind (issue 14's "not wired" items):
``auto`` measures the lr-scaled sharpness for SGD with per-group learning rates, and RAdam's
kind and threshold switch when its update is rectified. Truth: exact float64 Hessians, the
rectification written out again with NumPy, and torch's own RAdam step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from catapult import engine
from catapult.engine.build import build_run

SUPAR_SGD = {"dtype": "float64", "data": {"name": "digits", "n_train": 32, "n_test": 16},
             "model": {"width": 8, "depth": 3, "parametrization": "supar", "base_width": 2},
             "optimizer": {"lr": 0.05}, "train": {"steps": 0},
             "eval": {"sharpness_every": 1, "sharpness_tol": 1e-10, "sharpness_max_iter": 300, "test_every": 0}}


def _with(config, **sections):
    out = dict(config)
    for key, value in sections.items():
        out[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _dense_hessian(model, loss_fn, batch):
    params = dict(model.named_parameters())
    names, sizes = list(params), [p.numel() for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(flat):
        named = {n: c.reshape(params[n].shape) for n, c in zip(names, torch.split(flat, sizes))}
        return loss_fn(torch.func.functional_call(model, named, (batch[0],)), batch[1])

    return torch.func.hessian(loss_of)(flat0)


def _group_lrs(optimizer, model):
    """Each scalar parameter's lr, read from the optimizer's groups (by identity)."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return torch.cat([torch.full((p.numel(),), float(where[id(p)]["lr"]), dtype=torch.float64)
                      for p in model.parameters()])


def test_auto_is_lr_scaled_for_supar_sgd_and_records_lambda_max_of_m_half_h_m_half():
    setup = build_run(SUPAR_SGD)
    assert setup.sharpness.kind == "lr_scaled"   # auto: the groups' lrs differ
    H = _dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0))
    lrs = _group_lrs(setup.optimizer, setup.model)
    assert len(set(lrs.tolist())) > 1
    root = (lrs / float(setup.optimizer.param_groups[0]["lr"])).sqrt()
    truth = float(torch.linalg.eigvalsh(root[:, None] * H * root[None, :])[-1])
    raw = float(torch.linalg.eigvalsh(H)[-1])

    res = engine.run(SUPAR_SGD, progress="none")
    assert res.summary["sharpness_kind"] == "lr_scaled"
    assert res.metrics[0]["sharpness"] == pytest.approx(truth, rel=1e-8)
    assert abs(truth - raw) > 0.1 * raw            # a different number from the raw sharpness
    hessian = engine.run(_with(SUPAR_SGD, eval={"sharpness_kind": "hessian"}), progress="none")
    assert hessian.metrics[0]["sharpness"] == pytest.approx(raw, rel=1e-8)
    # one lr for every group (SP, or the paper's muP form): auto stays the Hessian's
    assert build_run(_with(SUPAR_SGD, model={"parametrization": "sp", "base_width": None})).sharpness.kind == "hessian"
    assert build_run(_with(SUPAR_SGD, model={"parametrization": "mup", "base_width": None})).sharpness.kind == "hessian"


@pytest.mark.parametrize("factor", [0.98, 1.02])
def test_lr_scaled_sharpness_against_two_over_lr_is_the_exact_linear_stability(factor):
    # the row says sharpness < threshold (2 / lr of the first group) exactly when GD's error map
    # I - diag(lr_i) H is stable along its top direction: lambda_max(diag(lr_i) H) < 2
    setup = build_run(SUPAR_SGD)
    lam = engine.run(SUPAR_SGD, progress="none").metrics[0]["sharpness"]
    mult0 = float(setup.optimizer.param_groups[0]["lr_mult"])
    lr = factor * 2.0 / (lam * mult0)                    # base lr whose first group sits at factor x the edge
    config = _with(SUPAR_SGD, optimizer={"lr": lr})
    row = engine.run(config, progress="none").metrics[0]
    assert row["threshold"] == pytest.approx(2.0 / (lr * mult0), rel=1e-12)
    setup = build_run(config)
    H = _dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0))
    root = _group_lrs(setup.optimizer, setup.model).sqrt()
    top = float(torch.linalg.eigvalsh(root[:, None] * H * root[None, :])[-1])  # lambda_max(diag(lr) H)
    assert (row["sharpness"] < row["threshold"]) == (top < 2.0) == (factor < 1)
    raw = float(torch.linalg.eigvalsh(H)[-1])
    if factor < 1:  # the raw Hessian's sharpness would call this stable run unstable
        assert raw > row["threshold"]


def test_lr_scaled_rows_log_the_spectrum_and_trace_of_m_half_h_m_half():
    # eval.spectrum_top_k / eval.trace_matvecs follow the row's kind: under lr_scaled their
    # eig_i and hessian_trace are M^1/2 H M^1/2's, so eig_1 is the row's sharpness
    small = _with(SUPAR_SGD, model={"width": 4})
    setup = build_run(small)
    assert setup.sharpness.kind == "lr_scaled"
    H = _dense_hessian(setup.model, setup.loss_fn, setup.batches.batch(0))
    n = H.shape[0]
    root = (_group_lrs(setup.optimizer, setup.model) / float(setup.optimizer.param_groups[0]["lr"])).sqrt()
    A = root[:, None] * H * root[None, :]
    truth = torch.linalg.eigvalsh(A).flip(0)[:3].tolist()
    config = _with(small, eval={"spectrum_top_k": 3, "trace_matvecs": 3 * n})  # Hutch++'s Q spans R^n: exact
    row = engine.run(config, progress="none").metrics[0]
    assert [row[f"eig_{i}"] for i in (1, 2, 3)] == pytest.approx(truth, rel=1e-7)
    assert row["sharpness"] == pytest.approx(row["eig_1"], rel=1e-7)
    assert row["hessian_trace"] == pytest.approx(float(torch.trace(A)), rel=1e-8)
    assert abs(float(torch.trace(A)) - float(torch.trace(H))) > 1e-3 * float(torch.trace(H))
    # sharpness_kind: hessian keeps every column the raw Hessian's
    raw = engine.run(_with(config, eval={"sharpness_kind": "hessian"}), progress="none").metrics[0]
    assert [raw[f"eig_{i}"] for i in (1, 2, 3)] == pytest.approx(torch.linalg.eigvalsh(H).flip(0)[:3].tolist(), rel=1e-7)
    assert raw["sharpness"] == pytest.approx(raw["eig_1"], rel=1e-7)
    assert raw["hessian_trace"] == pytest.approx(float(torch.trace(H)), rel=1e-8)


# ------------------------------------------------------------------------------------ RAdam
def _first_rectified_step(beta2: float, horizon: int = 100) -> int | None:
    """torch's first rectified step (1-based): rho_t > 5, rho_t written out here in NumPy."""
    t = np.arange(1, horizon + 1, dtype=np.float64)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho = rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)
    hits = np.nonzero(rho > 5.0)[0]
    return int(t[hits[0]]) if hits.size else None


def _r(t: int, beta2: float) -> float:
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho = rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


RADAM = {"dtype": "float64", "data": {"name": "digits", "n_train": 32, "n_test": 16},
         "model": {"width": 8, "depth": 3, "parametrization": "sp"}, "train": {"steps": 10},
         "eval": {"sharpness_every": 1, "sharpness_tol": 1e-9, "sharpness_max_iter": 200, "test_every": 0}}


@pytest.mark.parametrize("beta2", [0.999, 0.9, 0.6])
def test_radam_records_hessian_until_rectified_then_preconditioned(beta2):
    lr, b1 = 1e-3, 0.9
    first = _first_rectified_step(beta2)     # 6 at 0.999 and 0.9; never at 0.6 (rho_inf = 4)
    assert first == {0.999: 6, 0.9: 6, 0.6: None}[beta2]
    res = engine.run(_with(RADAM, optimizer={"name": "radam", "lr": lr, "betas": [b1, beta2]}), progress="none")
    assert res.summary["sharpness_kind"] == "hessian_then_preconditioned"
    base = (2 + 2 * b1) / ((1 - b1) * lr)
    for row in res.metrics:
        step = row["step"] + 1               # row t is before torch's step t + 1
        rectified = first is not None and step >= first
        assert row["sharpness_kind"] == ("preconditioned" if rectified else "hessian")
        expected = base / _r(step, beta2) if rectified else base
        assert row["threshold"] == pytest.approx(expected, rel=1e-12)
    # row 0 reuses lambda_0 (the Hessian's), as every Hessian-kind run does
    assert res.metrics[0]["sharpness"] == pytest.approx(res.summary["lambda_0"], rel=1e-12)
    with_hessian = engine.run(_with(RADAM, optimizer={"name": "radam", "lr": lr, "betas": [b1, beta2]},
                                    eval={"sharpness_kind": "hessian"}), progress="none")
    for a, b in zip(res.metrics, with_hessian.metrics):   # the same Hessian rows, then another kind
        if a["sharpness_kind"] == "hessian":
            assert a["sharpness"] == pytest.approx(b["sharpness"], rel=1e-6)


def test_radam_preconditioned_sharpness_is_that_of_torchs_rectified_step():
    # after 6 torch steps, step 7 is rectified: torch moves by lr r_7 P^-1 m' with
    # P = (1 - b1^7)(sqrt(v') + eps) / sqrt(1 - b2^7); the engine's kind measures lambda_max(P^-1 H)
    from catapult.engine.sharpness_rule import sharpness_rule

    config = _with(RADAM, optimizer={"name": "radam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-3})
    setup = build_run(config)
    model, loss_fn, opt = setup.model, setup.loss_fn, setup.optimizer
    batch = setup.batches.batch(0)
    for _ in range(6):
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()
    params = list(model.parameters())
    opt.zero_grad()
    loss_fn(model(batch[0]), batch[1]).backward()
    g = torch.cat([p.grad.reshape(-1) for p in params])
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    b1, b2, eps, t = 0.9, 0.999, 1e-3, 7
    m_next, v_next = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    P = (1 - b1 ** t) * (v_next.sqrt() + eps) / math.sqrt(1 - b2 ** t)
    before = torch.cat([p.detach().reshape(-1) for p in params])
    rule = sharpness_rule(setup.config, model)
    assert rule.kind_at(opt, 6) == "preconditioned" and rule.kind_at(opt, 4) == "hessian"
    est = rule.measure(model, loss_fn, batch, opt, None, kind="preconditioned")
    H = _dense_hessian(model, loss_fn, batch)
    d = P.rsqrt()
    assert est.value == pytest.approx(float(torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1]), rel=1e-7)
    opt.step()                                                # torch's rectified step
    after = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.allclose(before - after, 1e-3 * _r(t, b2) * m_next / P, rtol=1e-10, atol=1e-15)


def test_radam_metrics_csv_has_the_kind_column_and_reads_back(tmp_path):
    config = _with(RADAM, optimizer={"name": "radam", "lr": 1e-3}, train={"steps": 7},
                   eval={"sharpness_every": 3, "sharpness_tol": 1e-3})
    res = engine.run(config, out_dir=tmp_path / "run", progress="none")
    back = engine.read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r.get("sharpness_kind") for r in res.metrics] == [r["sharpness_kind"] for r in back] == \
        ["hessian", None, None, "hessian", None, None, "preconditioned", "preconditioned"]
    assert "sharpness_kind" not in engine.metric_columns(_with(config, eval={"sharpness_every": 0}))


def test_the_threshold_at_lr_zero_is_infinite():
    # a schedule at lr 0 (cosine to lr_final = 0): nothing is unstable, and instability_threshold
    # itself refuses lr 0
    from catapult.engine.sharpness_rule import threshold

    w = [torch.nn.Parameter(torch.zeros(2))]
    assert threshold(torch.optim.SGD(w, lr=0.0)) == math.inf
    assert threshold(torch.optim.SGD(w, lr=0.5), lr=0.0) == math.inf
    assert threshold(torch.optim.SGD(w, lr=0.5)) == pytest.approx(4.0)


def test_spectrum_columns_take_at_least_three_products_per_eigenpair():
    # eval.sharpness_max_iter below spectrum_top_k: the top-k solve still gets 3 k products (it
    # refused max_iter < k); Ritz values are at most the dense Hessian's (interlacing)
    from catapult import config as C
    from catapult.engine.sharpness_rule import spectrum_estimates
    from dense_curvature import dense_hessian

    config = C.validate({"eval": {"sharpness_every": 1, "sharpness_max_iter": 2, "spectrum_top_k": 3,
                                  "sharpness_tol": 1e-8}})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    batch = (torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64))
    eig, trace = spectrum_estimates(config, model, torch.nn.MSELoss(), batch, top_k=3, trace_matvecs=0)
    truth = np.linalg.eigvalsh(dense_hessian(model, torch.nn.MSELoss(), batch).numpy())[::-1][:3]
    assert trace is None and len(eig.values) == 3 and eig.matvecs <= 3 * 3 + 2   # a block is finished
    # 9 products of 20 dimensions: the top value is the dense one, the others Ritz values below theirs
    assert eig.values[0] == pytest.approx(truth[0], rel=1e-6)
    assert all(v <= t * (1 + 1e-9) for v, t in zip(eig.values, truth))
