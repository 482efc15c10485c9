"""A sweep's base config is checked as its grid runs it: a cross-key problem of the base that
no cell has (its swept key replaced in each), or a swept key's base value, which no cell runs,
does not refuse the sweep; a problem every cell has is still refused once, at the base."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep.spec import expand, load_sweep

BASE = ("name: short\ndata: {name: digits, n_train: 64, n_test: 32}\nmodel: {name: mlp, width: 8, depth: 3}\n"
        "optimizer: {name: sgd, lr: 0.1}\nschedule: {warmup: linear, warmup_steps: 50, decay: cosine}\n"
        "train: {steps: 10}\neval: {sharpness_every: 0, test_every: 0}\n")


def _write(tmp_path, grid: str, base: str = BASE):
    path = tmp_path / "short.yaml"
    path.write_text(base + "sweep:\n  grid:\n" + grid)
    return path


@pytest.mark.parametrize("grid, values", [
    ("    train.steps: [60, 80]\n", {"train.steps": [60, 80]}),            # the key the check names
    ("    schedule.warmup_steps: [1, 4]\n", {"schedule.warmup_steps": [1, 4]}),  # another key it reads
])
def test_a_base_refused_alone_loads_where_every_cell_is_valid(tmp_path, grid, values):
    # the base alone (steps 10 <= warmup_steps 50 under a cosine decay) was refused:
    # "schedule.decay: cosine decay needs train.steps (10) > schedule.warmup_steps (50)"
    with pytest.raises(cfg.ConfigError):
        cfg.load_config(_write(tmp_path, grid))
    base, spec = load_sweep(_write(tmp_path, grid))
    cells = expand(base, spec)
    (key, wanted), = values.items()
    section, leaf = key.split(".")
    assert [c.config[section][leaf] for c in cells] == wanted
    for c in cells:  # the rule the base broke holds in every cell
        assert c.config["train"]["steps"] > c.config["schedule"]["warmup_steps"]


def test_the_cli_runs_such_a_sweep(tmp_path, capsys):
    path = _write(tmp_path, "    train.steps: [52, 53]\n")
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(path), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    assert "2 cells: 2 finished" in capsys.readouterr().out


def test_a_cell_that_keeps_the_problem_is_named(tmp_path, capsys):
    path = _write(tmp_path, "    train.steps: [20, 100]\n")
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cell 0 (train.steps=20) schedule.decay: cosine decay needs train.steps (20)" in err, err
    assert "cell 1" not in err and "(10)" not in err


def test_a_problem_of_every_cell_is_refused_once_at_the_base(tmp_path, capsys):
    path = _write(tmp_path, "    train.steps: [60, 80]\n")
    assert cli.main(["sweep", str(path), "optimizer.betas=[0.8,0.9]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("optimizer.betas:") == 1 and "cell " not in err, err  # named once, at the base
    with pytest.raises(cfg.ConfigError) as refused:
        load_sweep(path, ["optimizer.betas=[0.8,0.9]"])
    assert refused.value.keys == ["optimizer.betas"]


def test_a_swept_keys_own_bad_base_value_is_never_run(tmp_path):
    # model.density: 0 is no density, but every cell sets its own
    base = BASE.replace("depth: 3}", "depth: 3, density: 0}").replace("steps: 10", "steps: 60")
    base_, spec = load_sweep(_write(tmp_path, "    model.density: [0.5, 0.25]\n", base))
    assert [c.config["model"]["density"] for c in expand(base_, spec)] == [0.5, 0.25]
    with pytest.raises(cfg.ConfigError) as refused:  # a key no cell replaces still is refused
        load_sweep(_write(tmp_path, "    model.width: [8, 16]\n", base))
    assert refused.value.keys == ["model.density"]


def test_an_override_of_the_seeds_axis_names_the_axis_that_loads(tmp_path, capsys):
    # 'seed=3' on a sweep with sweep.seeds said "override the axis instead (sweep.grid.seed=[...])",
    # and that override is refused: "sweep.grid.seed: seed is swept by sweep.seeds; give it only once"
    path = _write(tmp_path, "    train.steps: [60, 80]\n").read_text() + "  seeds: 2\n"
    (tmp_path / "seeds.yaml").write_text(path)
    config = str(tmp_path / "seeds.yaml")
    assert cli.main(["sweep", config, "seed=3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "seed: is swept by sweep.seeds; override the axis instead (sweep.seeds=[...])" in err, err
    assert cli.main(["sweep", config, "sweep.seeds=[3]", "--dry-run"]) == 0
    # a grid's own seed axis keeps its grid override
    grid = _write(tmp_path, "    seed: [0, 1]\n", BASE.replace("steps: 10", "steps: 60"))
    assert cli.main(["sweep", str(grid), "seed=3", "--dry-run"]) == 2
    assert "(sweep.grid.seed=[...])" in capsys.readouterr().err
    assert cli.main(["sweep", str(grid), "sweep.grid.seed=[3]", "--dry-run"]) == 0


def test_the_base_refusal_names_the_problem_every_cell_has(tmp_path):
    # every cell keeps the base's cosine problem (train.steps 10 <= warmup_steps 50); the last cell also has
    # its own (a block of 3 above top-k 2), which is no problem of the base
    path = _write(tmp_path, "    eval.spectrum_block_size: [1, 3]\n",
                  BASE.replace("sharpness_every: 0", "sharpness_every: 5, spectrum_top_k: 2"))
    with pytest.raises(cfg.ConfigError) as err:
        load_sweep(path)
    assert [key for key, _ in err.value.problems] == ["schedule.decay"], err.value.problems
