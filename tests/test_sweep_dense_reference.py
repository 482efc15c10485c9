"""A density grid under dynamic sparsity that includes the dense reference (``model.density`` 1
with ``model.sparsity.method`` rigl or gmp): the density-1 cells run the dense model (no masks,
stored as method static) while keeping their grid position; a single run, or a grid whose
density is not swept, with a dynamic method at density 1 is still refused."""
from __future__ import annotations

import math

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep.spec import expand, load_sweep

BASE = ("name: dyn\nseed: 0\ndata: {name: shakespeare, context: 8, n_train: 32, n_test: 8}\n"
        "model: {name: gpt, width: 8, depth: 1, n_heads: 2, density: 0.5,\n"
        "        sparsity: {method: rigl, update_every: 1, end_fraction: 0.75}}\n"
        "loss: cross_entropy\noptimizer: {name: adam, lr: 0.01}\n"
        "train: {steps: 4, batch_size: 4}\neval: {sharpness_every: 0, test_every: 0}\n")


def _write(tmp_path, grid: str, base: str = BASE):
    path = tmp_path / "dyn.yaml"
    path.write_text(base + "sweep:\n  grid:\n" + grid)
    return path


def test_a_rigl_density_grid_with_the_dense_reference_expands_and_stores_it_as_dense(tmp_path):
    # 'sweep.grid.model.density=[1.0, 0.25, 0.0625]' with method rigl was refused as a whole
    # ("rigl changes masks: set model.density < 1") for its density-1 cells
    path = _write(tmp_path, "    model.sparsity.method: [rigl, gmp]\n    model.density: [1.0, 0.25, 0.0625]\n")
    base, spec = load_sweep(path)
    cells = expand(base, spec)
    assert len(cells) == 6
    for cell in cells:
        method, density = cell.swept["model.sparsity.method"], cell.swept["model.density"]
        assert method in ("rigl", "gmp")  # the grid's coordinate, what --where selects
        assert cell.config["model"]["density"] == density
        assert cell.config["model"]["sparsity"]["method"] == ("static" if density == 1.0 else method)


def test_the_dense_reference_cell_trains_the_dense_model(tmp_path, capsys):
    from catapult.engine import run
    from catapult.engine.build import build_run
    from catapult.sparsity import masked_modules
    from catapult.sweep.store import Store

    path = _write(tmp_path, "    model.density: [1.0, 0.5]\n")
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(path), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "2 cells: 2 finished" in captured.out
    assert "model.density 1 run the dense model" in captured.err
    with Store(store, create=False, readonly=True) as s:
        dense, sparse = s.cells()
    assert dense["swept"] == {"model.density": 1.0} and dense["config"]["model"]["sparsity"]["method"] == "static"
    assert sparse["config"]["model"]["sparsity"]["method"] == "rigl"
    # the dense model: no masked matrix at all, every hidden weight free
    assert next(masked_modules(build_run(dense["config"]).model), None) is None
    assert next(masked_modules(build_run(sparse["config"]).model), None) is not None
    # and its loss is that of the plain dense run (the same config without any sparsity key)
    plain = cfg.validate({**{k: v for k, v in dense["config"].items() if k != "name"},
                          "model": {**dense["config"]["model"], "sparsity": {}}})
    result = run(plain, progress="none")
    assert dense["train_loss"] == result.metrics[-1]["train_loss"] and math.isfinite(dense["train_loss"])
    assert dense["test_loss"] == result.metrics[-1]["test_loss"]


@pytest.mark.parametrize("method", ["rigl", "gmp"])
def test_a_single_run_with_a_dynamic_method_at_density_1_is_still_refused(tmp_path, method):
    config = cfg.read_mapping(_write(tmp_path, "    model.density: [0.5]\n"))
    config.pop("sweep")
    config["model"] = {**config["model"], "density": 1.0, "sparsity": {"method": method}}
    with pytest.raises(cfg.ConfigError) as refused:
        cfg.validate(config)
    assert refused.value.keys == ["model.sparsity.method"]
    # it names both ways out: a density below 1, or the dense model (and the sweep's way)
    assert "model.sparsity.method: static for the dense model" in str(refused.value)
    assert "model.density axis may include 1" in str(refused.value)
    assert cfg.validate(cfg.apply_overrides(config, ["model.sparsity.method=static"]))["model"]["density"] == 1.0


def test_a_grid_whose_density_is_not_swept_still_refuses_a_dynamic_method_at_density_1(tmp_path, capsys):
    # every rigl cell would be the dense model under a method that never acts: the silent no-op
    path = _write(tmp_path, "    model.sparsity.method: [static, rigl]\n")
    code = cli.main(["sweep", str(path), "model.density=1.0", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "model.sparsity.method" in err and "rigl changes masks" in err, err


def test_a_method_grid_runs_each_method_without_the_options_it_does_not_read(tmp_path):
    # model.sparsity keys a method does not read are refused in a single run (silently ignored
    # before); a grid over the method means them for the methods that read them, so the others
    # run at the defaults: before, every static cell of [static, rigl] with update_every 1 was refused
    base = BASE.replace("update_every: 1, end_fraction: 0.75",
                        "update_every: 1, drop_fraction: 0.5, end_fraction: 0.75")
    path = _write(tmp_path, "    model.sparsity.method: [static, rigl, gmp]\n", base)
    cells = {c.swept["model.sparsity.method"]: c.config["model"]["sparsity"] for c in expand(*load_sweep(path))}
    default = {k: cfg.get(f"model.sparsity.{k}").default
               for k in ("update_every", "drop_fraction", "start_fraction", "end_fraction", "supar_density")}
    assert cells["static"] == {"method": "static", **default}
    assert cells["rigl"] == {**default, "method": "rigl", "update_every": 1, "drop_fraction": 0.5, "end_fraction": 0.75}
    assert cells["gmp"] == {**default, "method": "gmp", "update_every": 1, "end_fraction": 0.75}


def test_the_variant_table_names_what_each_sparsity_method_reads():
    from catapult.config.checks import SPARSITY_OPTIONS
    from catapult.sweep.variants import VARIANT_OPTIONS

    table = {option.rsplit(".", 1)[1]: set(readers) for decider, option, readers in VARIANT_OPTIONS
             if decider == "model.sparsity.method"}
    assert table == {key: {m for m, keys in SPARSITY_OPTIONS.items() if key in keys}
                     for key in ("update_every", "drop_fraction", "start_fraction", "end_fraction", "supar_density")}


def test_a_grid_that_also_sweeps_a_rigl_option_refuses_its_dense_cells(tmp_path):
    # the dense reference runs with none of the sparsity options; a grid that sweeps one of them too
    # would make its density-1 cells copies of one run, and is refused there, as any grid that sweeps
    # the option a variant does not read (README); the sparse cells expand
    path = _write(tmp_path, "    model.density: [1, 0.5]\n    model.sparsity.drop_fraction: [0.1, 0.5]\n")
    with pytest.raises(cfg.ConfigError) as err:
        expand(*load_sweep(path))
    bad = [key for key, _ in err.value.problems]
    assert len(bad) == 2 and all(key.startswith("cell 0 ") or key.startswith("cell 1 ") for key in bad), bad
    assert all("model.sparsity.drop_fraction" in key for key in bad)
