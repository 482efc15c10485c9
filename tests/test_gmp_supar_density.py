"""``model.sparsity.supar_density`` (gmp): which density SμPar's init and lrs correct for from step 0.

``final`` (the default) is ``GPT(density=d, mask_density=1.0)``: the masks start all ones and SμPar
corrects for ``d``'s count; ``dense`` is the dense start, ``GPT(density=1.0, mask_density=1.0)`` pruned
by ``MaskUpdater(model, "gmp", final_density=d)`` (m_rho = 1: SμPar under gmp is muP), which only the
Python route could build before. Truth: the Python route's models (the README's two recipes), built
from the same seeds, and the lr multipliers' closed form ``1 / (m_d m_rho)``.
"""
from __future__ import annotations

import pytest
import torch

import catapult
from catapult.cli import main
from catapult.config import ConfigError, validate
from catapult.engine.build import build_mask_updater
from catapult.models import GPT
from catapult.sweep.variants import cell_mapping


def _config(parametrization="supar", **sparsity):
    return {"data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 8},
            "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "density": 0.25,
                      "parametrization": parametrization, "sparsity": {"method": "gmp", "update_every": 1,
                                                                       **sparsity}},
            "optimizer": {"name": "adam", "lr": 1e-3}, "loss": "cross_entropy",
            "train": {"steps": 8, "batch_size": 4}, "eval": {"sharpness_every": 0, "test_every": 0}}


def _hidden_lr_mults(model):
    groups = catapult.param_groups(model, 1.0, "adam")
    hidden = [m.weight for m in model.modules() if getattr(m, "catapult_role", None) == "hidden"]
    return [next(g["lr_mult"] for g in groups if any(p is w for p in g["params"])) for w in hidden]


@pytest.mark.parametrize("choice, python_density, m_rho", [("final", 0.25, 0.25), ("dense", 1.0, 1.0)])
def test_the_config_builds_the_python_routes_gmp_model(choice, python_density, m_rho):
    config = validate(_config(supar_density=choice))
    torch.manual_seed(3)
    built = GPT.from_config(config["model"], context=8, vocab_size=65)
    torch.manual_seed(3)
    python = GPT(65, d_model=8, n_layers=1, n_heads=2, context=8, parametrization="supar", density=python_density,
                 mask_density=1.0)
    assert built.state_dict().keys() == python.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), python.state_dict().values()))
    assert all(bool(m.mask.all()) for m in built.modules() if getattr(m, "mask", None) is not None)  # dense start
    assert _hidden_lr_mults(built) == pytest.approx([1 / m_rho] * 4, rel=1e-12)   # m_d = 1: 1 / m_rho
    updater = build_mask_updater(config, built)          # either way pruned to model.density
    assert updater.method == "gmp" and updater.final_density == 0.25


@pytest.mark.parametrize("config, says", [
    (_config(supar_density="dense"), None),
    (dict(_config(), model=dict(_config()["model"], sparsity={"method": "rigl", "update_every": 1,
                                                              "supar_density": "dense"})),
     "is read by model.sparsity.method gmp only (method is 'rigl')"),
    (_config("mup", supar_density="dense"), "is read by model.parametrization supar, supar_init, supar_lr only"),
    (_config("sp", supar_density="dense"), "is read by model.parametrization supar, supar_init, supar_lr only"),
])
def test_supar_density_where_nothing_reads_it_is_refused(config, says):
    if says is None:
        assert validate(config)["model"]["sparsity"]["supar_density"] == "dense"
        return
    with pytest.raises(ConfigError) as refused:
        validate(config)
    assert [key for key, _ in refused.value.problems] == ["model.sparsity.supar_density"]
    assert says in str(refused.value)


def test_catapult_train_exits_2_naming_the_key(tmp_path, capsys):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config("sp", supar_density="dense")))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.sparsity.supar_density" in err and "supar, supar_init, supar_lr only" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    assert main(["train", str(path), "model.sparsity.supar_density=sideways", "--out", str(tmp_path / "run")]) == 2
    assert "model.sparsity.supar_density" in capsys.readouterr().err


def test_a_sweep_over_parametrizations_runs_sp_and_mup_without_it():
    base = validate(_config(supar_density="dense"))
    assert cell_mapping(base, {"model.parametrization": "sp"})[0]["model"]["sparsity"]["supar_density"] == "final"
    assert cell_mapping(base, {"model.parametrization": "supar_lr"})[0]["model"]["sparsity"]["supar_density"] == "dense"
    assert cell_mapping(base, {"model.sparsity.method": "rigl"})[0]["model"]["sparsity"]["supar_density"] == "final"
