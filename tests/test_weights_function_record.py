"""A run's ``model.pt`` copied away from its run folder (its ``config.yaml``) loaded silently into a
config of another ``model.activation``, ``model.alpha_out`` or (gpt) ``model.n_heads``: the same
names and shapes, another function, and ``catapult spectrum --weights`` measured that function.
A run now records the model keys that change the function in the file's ``state_dict._metadata``
and a load refuses another value naming the keys; a file without the record (an older run's, a
plain ``torch.save`` of a dict) loads as before."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from catapult import cli
from catapult.config import ConfigError
from catapult.engine import run
from catapult.engine.build import build_run
from catapult.engine.spectrum_study import load_weights, measure_spectrum

CONFIG = dict(name="tiny_function", seed=0, dtype="float64", data=dict(name="digits", n_train=48, n_test=16),
              model=dict(name="mlp", width=3, depth=2, parametrization="supar", activation="tanh", alpha_out=2.0),
              loss="mse", optimizer=dict(name="sgd", lr=0.1), train=dict(steps=2),
              eval=dict(sharpness_every=0, test_every=2))


def _with_model(**keys):
    return {**CONFIG, "model": {**CONFIG["model"], **keys}}


@pytest.fixture
def copied(tmp_path):
    run(CONFIG, out_dir=tmp_path / "run", progress="none")
    (tmp_path / "away").mkdir()
    return shutil.copy(tmp_path / "run" / "model.pt", tmp_path / "away" / "model.pt")


def test_weights_copied_away_are_refused_for_another_function_naming_the_keys(copied, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"was trained with model\.activation='tanh' \(the config: 'relu'\)"):
        measure_spectrum(_with_model(activation="relu"), weights=copied, top_k=1, trace_matvecs=0, density_runs=0)
    with pytest.raises(ConfigError, match=r"model\.activation='tanh' \(the config: 'relu'\), model\.alpha_out=2\.0 "
                                          r"\(the config: 1\.0\)"):
        measure_spectrum(_with_model(activation="relu", alpha_out=1.0), weights=copied, top_k=1, trace_matvecs=0,
                         density_runs=0)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(_with_model(alpha_out=1.0)))
    argv = ["spectrum", str(path), "--weights", str(copied), "--top-k", "1", "--trace-matvecs", "0", "--density-runs", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "model.alpha_out=2.0 (the config: 1.0)" in err and "Traceback" not in err
    # the config it was trained with: loaded, the eigenvalue the run folder's own file gives
    own = measure_spectrum(CONFIG, weights=copied, top_k=1, trace_matvecs=0, density_runs=0)["eigenvalues"]
    beside = measure_spectrum(CONFIG, weights=tmp_path / "run" / "model.pt", top_k=1, trace_matvecs=0,
                              density_runs=0)["eigenvalues"]
    assert own == beside and len(own) == 1


def test_a_file_without_the_record_loads_as_before(copied, tmp_path):
    state = torch.load(copied, map_location="cpu", weights_only=True)
    assert state._metadata[""]["catapult_model"] == {"activation": "tanh", "alpha_in": 1.0, "alpha_out": 2.0}
    torch.save(dict(state), tmp_path / "plain.pt")   # a plain dict: no _metadata, as a run before the record wrote
    other = _with_model(activation="relu")
    model = build_run(other).model
    load_weights(model, tmp_path / "plain.pt", model_config=other["model"])
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
