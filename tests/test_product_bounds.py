"""Counts of curvature products and solves are bounded (``MAX_PRODUCTS`` = 10**5 products a call,
``MAX_LAMBDA0_BATCHES`` = 1,000 solves for lambda_0): ``eval.sharpness_max_iter: 1e9`` or
``max_iter=10**9`` ran until killed, ``eval.lambda0_batches: 1e9`` filled memory with batches before
its first solve. Refused before any work: exit 2 naming the key (config), a ValueError naming the
argument (Python), in check_integer's words."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import catapult
from catapult import arguments
from catapult import config as cfg
from catapult.config import options

MOST = 100_000


def test_the_config_keeps_the_librarys_bounds():
    assert options.MAX_PRODUCTS == arguments.MAX_PRODUCTS == MOST
    assert options.MAX_LAMBDA0_BATCHES == 1000


@pytest.mark.parametrize("key, most, low", [
    ("sharpness_max_iter", MOST, 1), ("lambda0_batches", 1000, 1), ("spectrum_top_k", MOST // 3, 0),
])
def test_count_keys_refuse_more_than_their_bound_naming_the_key(key, most, low):
    for value in (most + 1, "1e9", 1e26, 10 ** 30):
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate({"eval": {key: value}})
        assert err.value.keys == [f"eval.{key}"]
        assert f"expected an integer >= {low} and <= {most}" in str(err.value)
    cfg.validate({"eval": {key: most}})   # the bound is in


def test_trace_matvecs_is_bounded_too():
    # the products that run, min(it, n), are bounded once the model is built (test_trace_matvecs_cap);
    # the config holds a 64-bit integer
    for value in (2 ** 63, 1e26, "1e30"):
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate({"eval": {"trace_matvecs": value}})
        assert err.value.keys == ["eval.trace_matvecs"] and "0 (off) or an integer >= 3" in str(err.value)
        assert f"at most {MOST}" in str(err.value)
    for value in (MOST, MOST + 1, 2 ** 63 - 1, "1e9"):
        assert cfg.validate({"eval": {"trace_matvecs": value}})["eval"]["trace_matvecs"] == (10 ** 9 if value == "1e9" else value)


@pytest.mark.parametrize("key", ["lambda0_batches", "sharpness_max_iter"])
def test_the_command_line_refuses_a_huge_count_before_any_work(tmp_path, capsys, key):
    from catapult import cli

    config = tmp_path / "huge.yaml"
    config.write_text("data: {name: digits, n_train: 8, n_test: 8}\nmodel: {width: 4, depth: 2}\n"
                      f"train: {{steps: 2, batch_size: 4}}\neval: {{{key}: 1e9}}\n")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"eval.{key}" in err and "<= " in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_measure_lambda0_refuses_a_huge_batch_count():
    from catapult.sweep.lambda0 import measure_lambda0

    with pytest.raises(cfg.ConfigError, match=r"eval\.lambda0_batches"):
        measure_lambda0({"data": {"name": "digits", "n_train": 8, "n_test": 8}, "model": {"width": 4, "depth": 2},
                         "train": {"batch_size": 4}, "eval": {"lambda0_batches": 10 ** 9}})


def _problem():
    torch.manual_seed(0)
    return nn.Linear(3, 2), nn.MSELoss(), (torch.randn(8, 3), torch.randn(8, 2))


@pytest.mark.parametrize("owner, call", [
    ("sharpness", lambda m, l, b, n: catapult.sharpness(m, l, b, max_iter=n)),
    ("sharpness", lambda m, l, b, n: catapult.sharpness(m, l, b, max_iter=n, memory="lean")),
    ("top_eigenpairs", lambda m, l, b, n: catapult.top_eigenpairs(m, l, b, k=2, max_iter=n)),
    ("preconditioned_sharpness", lambda m, l, b, n: catapult.preconditioned_sharpness(
        m, l, b, torch.optim.Adam(m.parameters()), max_iter=n)),
])
def test_the_solvers_refuse_a_huge_max_iter(owner, call):
    model, loss_fn, batch = _problem()
    with pytest.raises(ValueError, match=rf"^{owner} max_iter must be an integer in \[1, {MOST}\]; got 1000000000$"):
        call(model, loss_fn, batch, 10 ** 9)


def test_the_bare_solvers_refuse_a_huge_max_iter_before_any_product():
    from catapult.curvature import batched_lanczos, lanczos_top_eigenpair
    from catapult.curvature.lean import lean_top_eigenpair
    from catapult.curvature.top_k import lanczos_top_k

    products = []

    def matvec(v):
        products.append(1)
        return v

    v0 = torch.ones(4, dtype=torch.float64)
    for owner, call in (("lanczos_top_eigenpair", lambda: lanczos_top_eigenpair(matvec, v0, max_iter=MOST + 1)),
                        ("lean_top_eigenpair", lambda: lean_top_eigenpair(matvec, v0, max_iter=MOST + 1)),
                        ("lanczos_top_k", lambda: lanczos_top_k(matvec, v0, 2, max_iter=MOST + 1)),
                        ("batched_lanczos", lambda: batched_lanczos(matvec, v0[None], tol=[1e-3], max_iter=[MOST + 1]))):
        with pytest.raises(ValueError, match=rf"^{owner} max_iter(\[0\])? must be an integer in \[\d, {MOST}\]"):
            call()
    assert not products
    assert lanczos_top_eigenpair(matvec, v0, max_iter=MOST).converged   # the bound is in


def test_a_trace_is_bounded_by_the_products_it_spends():
    from catapult.curvature.spectrum import hutch_plus_plus

    products = []

    def matvec(v):
        products.append(1)
        return v

    # a count >= the dimension is the exact trace from n products: taken on a small operator
    assert hutch_plus_plus(matvec, 30, 10 ** 6) == pytest.approx(30.0) and len(products) == 30
    products.clear()
    with pytest.raises(ValueError, match=r"^hutch_plus_plus matvecs must be an integer in \[3, 100000\], or at least "
                                         r"the operator's dimension .*; got 1000000 for dimension 10000000$"):
        hutch_plus_plus(matvec, 10 ** 7, 10 ** 6)
    assert not products
    big = nn.Linear(400, 300)    # 120,300 parameters: refused once the operator knows them, before a product
    x, y = torch.randn(2, 400), torch.randn(2, 300)
    with pytest.raises(ValueError, match=r"^hessian_trace matvecs must be an integer in \[3, 100000\]"):
        catapult.hessian_trace(big, nn.MSELoss(), (x, y), matvecs=10 ** 6)


def test_a_density_is_bounded_by_runs_x_steps():
    model, loss_fn, batch = _problem()
    with pytest.raises(ValueError, match=r"^spectral_density steps must be an integer in \[1, 100000\]; got 1000000000$"):
        catapult.spectral_density(model, loss_fn, batch, steps=10 ** 9)
    big = nn.Linear(40, 30)  # 1,230 parameters: steps=1000 all run
    x, y = torch.randn(2, 40), torch.randn(2, 30)
    with pytest.raises(ValueError, match=r"^spectral_density runs x steps must be at most 100000 products; "
                                         r"got 1000 x 1000 = 1000000$"):
        catapult.spectral_density(big, loss_fn, (x, y), runs=1000, steps=1000)
    # steps above the dimension: 200 runs x min(1000, 1230)
    with pytest.raises(ValueError, match=r"^spectral_density runs x steps must be at most 100000 products; "
                                         r"got 101 x 1000 = 101000$"):
        catapult.spectral_density(big, loss_fn, (x, y), runs=101, steps=1000)
    with pytest.raises(ValueError, match=r"got 100 x 1230 = 123000 \(steps capped at the operator's dimension 1230\)$"):
        catapult.spectral_density(big, loss_fn, (x, y), runs=100, steps=2000)


def test_a_density_caps_the_products_that_run_not_runs_x_steps(monkeypatch):
    """A run of Lanczos quadrature stops at the dimension n (8 here): 3 runs x 10**5 steps is
    24 products, under the cap; it was refused as 3 x 10**5."""
    from catapult.curvature import density

    model, loss_fn, batch = _problem()
    n = sum(p.numel() for p in model.parameters())
    lengths = []
    real = density.lanczos_quadrature

    def counted(matvec, v, steps, *args, **kwargs):
        lengths.append(min(steps, v.numel()))
        return real(matvec, v, steps, *args, **kwargs)

    monkeypatch.setattr(density, "lanczos_quadrature", counted)
    dens = catapult.spectral_density(model, loss_fn, batch, runs=3, steps=10 ** 5)
    assert n == 8 and lengths == [8, 8, 8]
    # nodes/weights: runs x min(steps, n), not runs x steps (mostly zero-weight padding)
    assert dens.nodes.shape == dens.weights.shape == (3, 8)
    # a Linear(3, 2) under MSE over N d = 16 entries: H = (2 / 16) kron(I_2, X^T X), X with a
    # column of ones (the bias); every node of weight is one of its eigenvalues
    x = torch.cat([batch[0], torch.ones(8, 1)], dim=1).double()
    eigenvalues = np.linalg.eigvalsh((x.T @ x).numpy() / 8)
    nodes = dens.nodes[dens.weights > 1e-9]
    assert np.abs(nodes[:, None] - eigenvalues[None, :]).min(axis=1).max() <= 1e-4 * eigenvalues.max()
    assert np.allclose(dens.weights.sum(axis=1), 1.0)


def test_catapult_spectrum_names_the_flag():
    from catapult.engine.spectrum_study import measure_spectrum

    with pytest.raises(cfg.ConfigError) as info:
        measure_spectrum(cfg.validate({}), top_k=MOST, trace_matvecs=10 ** 9, density_runs=8, density_steps=10 ** 5)
    # (--trace-matvecs: min(it, n) run, checked once the model is built: test_trace_matvecs_cap)
    assert info.value.problems == [("--top-k", "must be an integer in [0, 33333]; got 100000")]
    # runs x steps is checked against the products that run, runs x min(steps, n), once the model is
    # built (563,722 parameters in the default run): 8 x 10**5 is refused, with its flag
    with pytest.raises(cfg.ConfigError) as info:
        measure_spectrum(cfg.validate({}), top_k=0, trace_matvecs=0, density_runs=8, density_steps=10 ** 5)
    assert info.value.problems == [("--density-runs", "x --density-steps must be at most 100000 products; got 8 x 100000")]


def test_spectral_density_bounds_its_grid_and_draws_a_large_one_in_blocks(monkeypatch):
    """grid_points=10**9 spent every product, then raised NumPy's MemoryError (a 1.9 TiB grid x nodes
    matrix): refused first now, naming it; a grid at the bound is drawn in blocks of rows, each
    point the Gaussian mixture of the returned nodes and weights (re-derived in NumPy)."""
    import numpy as np

    from catapult.curvature import density

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    calls = []
    monkeypatch.setattr(density, "lanczos_quadrature", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"^spectral_density grid_points must be an integer in \[2, 1000000\]; got 1000000001$"):
        catapult.spectral_density(model, nn.MSELoss(), batch, grid_points=10 ** 9 + 1)
    assert calls == []                       # before any product
    monkeypatch.undo()
    dens = catapult.spectral_density(model.double(), nn.MSELoss(), (batch[0].double(), batch[1].double()),
                                     runs=2, steps=3, grid_points=density.MAX_GRID_POINTS)
    assert dens.grid.size == 10 ** 6
    at = np.r_[0:5, 499_998:500_003, 10 ** 6 - 5:10 ** 6]
    z = (dens.grid[at, None] - dens.nodes.ravel()[None, :]) / dens.sigma
    direct = np.exp(-0.5 * z ** 2) @ dens.weights.ravel() / (2 * dens.sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(dens.density[at], direct, rtol=1e-12, atol=1e-300)
