"""``catapult spectrum``: the config's model's top eigenvalues, trace and density, at
initialisation or from a run's ``model.pt``, against the dense float64 Hessian and Gauss-Newton
matrix of the same model on the same batch; and its refusals (exit 2, before any product)."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import yaml

from catapult import cli
from catapult.config import ConfigError
from catapult.engine import run
from catapult.engine.build import build_run
from catapult.engine.spectrum_study import format_spectrum, load_weights, measure_spectrum
from dense_curvature import dense_hessian, flat_loss

# 64 inputs x 3 + 3, then 3 x 10 + 10: 235 parameters, float64 so the solver's answers
# can be held to 1e-6 of the dense truth
CONFIG = dict(name="tiny_spectrum", seed=0, dtype="float64", data=dict(name="digits", n_train=48, n_test=16),
              model=dict(name="mlp", width=3, depth=2, parametrization="sp"), loss="mse",
              optimizer=dict(name="sgd", lr=0.5), train=dict(steps=20),
              eval=dict(sharpness_every=0, test_every=20, sharpness_tol=1e-8, sharpness_max_iter=300))


def _dense(config, weights=None, curvature="hessian"):
    """(eigenvalues descending, trace) of the dense float64 curvature of the config's model on
    batch 0, after loading ``weights``."""
    setup = build_run(config)
    if weights is not None:
        setup.model.load_state_dict(torch.load(weights, weights_only=True))
    batch = setup.batches.batch(0)
    if curvature == "hessian":
        matrix = dense_hessian(setup.model, setup.loss_fn, batch)
    else:  # J^T H_out J, H_out the loss's Hessian in the outputs
        _, outputs_of, theta = flat_loss(setup.model, setup.loss_fn, batch)
        out = outputs_of(theta).detach()
        jac = torch.autograd.functional.jacobian(outputs_of, theta).reshape(out.numel(), -1)
        y = batch[1]
        h_out = torch.autograd.functional.hessian(lambda o: setup.loss_fn(o.reshape(out.shape), y),
                                                  out.reshape(-1))
        matrix = jac.T @ h_out @ jac
    values = torch.linalg.eigvalsh(matrix).flip(0)
    return values, float(torch.trace(matrix))


def test_at_init_the_eigenvalues_and_trace_are_the_dense_hessians():
    values, trace = _dense(CONFIG)
    n = len(values)
    s = measure_spectrum(CONFIG, top_k=3, trace_matvecs=n, density_runs=2, density_steps=10)
    assert s["n_params"] == n == 235 and s["batch_size"] == 48 and s["converged"]
    assert s["eigenvalues"] == pytest.approx(values[:3].tolist(), rel=1e-6)
    assert s["trace"] == pytest.approx(trace, rel=1e-9)  # matvecs >= n: Hutch++ takes the exact diagonal
    # from n products, however many were asked (the report said "Hutch++, 1000000000 products"; the
    # most one may ask is now MAX_PRODUCTS, 10**5)
    many = measure_spectrum(CONFIG, top_k=0, trace_matvecs=10**5, density_runs=0)
    assert many["trace_products"] == n and many["trace"] == pytest.approx(trace, rel=1e-9)
    assert "trace (exact: the diagonal, one product per parameter, 235 products)" in format_spectrum(many)
    dens = s["density"]
    assert float(torch.trapezoid(torch.from_numpy(dens.density), torch.from_numpy(dens.grid))) == \
        pytest.approx(1.0, abs=1e-2)
    # the density's quadrature nodes lie in the spectrum
    assert dens.nodes.max() <= values[0] + 1e-6 and dens.nodes.min() >= values[-1] - 1e-6


def test_gauss_newton_spectrum_is_the_dense_ggn():
    values, trace = _dense(CONFIG, curvature="ggn")
    s = measure_spectrum(CONFIG, top_k=2, trace_matvecs=len(values), density_runs=0, curvature="ggn")
    assert s["eigenvalues"] == pytest.approx(values[:2].tolist(), rel=1e-6)
    assert s["trace"] == pytest.approx(trace, rel=1e-9) and s["density"] is None


def test_the_random_probes_follow_the_configs_seed(tmp_path):
    # the probes were seed 0 whatever the config said: two seeds gave the same "random" trace
    weights = tmp_path / "w.pt"
    torch.save(build_run(CONFIG).model.state_dict(), weights)  # one model for both seeds
    _, trace = _dense(CONFIG, weights)
    other = dict(CONFIG, seed=1)

    def estimate(config):
        return measure_spectrum(config, top_k=0, trace_matvecs=12, density_runs=1, density_steps=5,
                                weights=weights)

    first, again, second = estimate(CONFIG), estimate(CONFIG), estimate(other)
    assert first["trace"] == again["trace"]  # a seed reproduces its estimate
    assert first["trace"] != second["trace"]  # another seed draws other probes
    assert not (first["density"].nodes == second["density"].nodes).all()
    for s in (first, second):  # 12 of 235 products: an estimate, near the truth
        assert s["trace"] == pytest.approx(trace, rel=0.5)


def test_trained_weights_from_the_run_directory(tmp_path):
    result = run(CONFIG, out_dir=tmp_path / "run", progress="none")
    weights = tmp_path / "run" / "model.pt"
    values, _ = _dense(CONFIG, weights)
    s = measure_spectrum(CONFIG, weights=weights, top_k=2, trace_matvecs=0, density_runs=0)
    assert s["eigenvalues"] == pytest.approx(values[:2].tolist(), rel=1e-6)
    # and those are the trained model's, not the initial one's
    at_init, _ = _dense(CONFIG)
    assert abs(values[0] - at_init[0]) > 1e-3 * abs(at_init[0])
    setup = build_run(CONFIG)  # the model the run ended with, on the same batch
    trained = torch.linalg.eigvalsh(dense_hessian(result.model, setup.loss_fn, setup.batches.batch(0)))
    assert s["eigenvalues"][0] == pytest.approx(float(trained[-1]), rel=1e-6)


def test_a_ddp_state_dict_loads_too(tmp_path):
    model = build_run(CONFIG).model
    state = {f"module.{k}": v + 1 for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "ddp.pt")
    load_weights(model, tmp_path / "ddp.pt")
    assert all(torch.equal(model.state_dict()[k[7:]], v) for k, v in state.items())


def test_the_command_prints_json_and_draws_the_density(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert cli.main(["spectrum", str(path), "--top-k", "2", "--trace-matvecs", "9", "--density-runs", "2",
                     "--density-steps", "8", "--json", "--plot", str(tmp_path / "d")]) == 0
    doc = json.loads(capsys.readouterr().out)
    values, _ = _dense(CONFIG)
    assert doc["eigenvalues"] == pytest.approx(values[:2].tolist(), rel=1e-6)
    assert doc["trace_matvecs"] == doc["trace_products"] == 9 and len(doc["density"]["grid"]) == len(doc["density"]["density"]) == 1000
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the defaults come from the config's eval.spectrum_top_k / eval.trace_matvecs when set
    assert cli.main(["spectrum", str(path), "eval.spectrum_top_k=4", "--density-runs", "0",
                     "--trace-matvecs", "0"]) == 0
    out = capsys.readouterr().out
    assert "top 4 eigenvalues" in out and "trace" not in out and "density" not in out


def _hostile_pickle(path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {path}.ran",))
    path.write_bytes(pickle.dumps({"layers.0.weight": Payload()}))


@pytest.mark.parametrize("case", ["missing", "text", "hostile", "shape", "entries", "nan", "list", "overflow",
                                  "sparse", "meta", "complex", "integer", "parametrization", "finer"])
def test_bad_weights_exit_2_naming_the_problem(case, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    # finer: a float64 run's weights for a float32 config were rounded without a word
    path.write_text(yaml.safe_dump(dict(CONFIG, dtype="float32") if case == "finer" else CONFIG))
    state = build_run(CONFIG).model.state_dict()
    weights = tmp_path / "w.pt"
    first = next(iter(state))
    if case == "text":
        weights.write_text("not weights")
    elif case == "hostile":
        _hostile_pickle(weights)
    elif case == "shape":
        torch.save({**state, first: torch.zeros(2, 2)}, weights)
    elif case == "entries":
        torch.save({k: v for k, v in state.items() if k != first} | {"extra.weight": torch.zeros(1)}, weights)
    elif case == "nan":
        torch.save({**state, first: torch.full_like(state[first], float("nan"))}, weights)
    elif case == "list":
        torch.save([1, 2], weights)
    elif case == "overflow":  # finite weights whose outputs are not: the loss is inf
        torch.save({k: torch.full_like(v, 1e300) for k, v in state.items()}, weights)
    elif case == "sparse":  # these three were a traceback from load_state_dict or the first product
        torch.save({**state, first: state[first].to_sparse()}, weights)
    elif case == "meta":
        torch.save({**state, first: state[first].to("meta")}, weights)
    elif case == "complex":  # the imaginary part was dropped without a word
        torch.save({**state, first: state[first] * (1 + 1j)}, weights)
    elif case == "integer":  # load_state_dict cast it to float without a word
        torch.save({**state, first: torch.ones_like(state[first], dtype=torch.int64)}, weights)
    elif case == "parametrization":  # a muP run's model.pt for an SP config: was a ParametrizationMismatch traceback
        torch.save(build_run(dict(CONFIG, model=dict(CONFIG["model"], parametrization="mup"))).model.state_dict(),
                   weights)
    elif case == "finer":
        torch.save(state, weights)
    assert cli.main(["spectrum", str(path), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "Traceback" not in err and len(err.splitlines()) == 1
    expected = {"missing": "no such file", "text": "not a state_dict", "hostile": "objects other than tensors",
                "shape": f"{first} has shape (2, 2)", "entries": f"missing {first}; unexpected extra.weight",
                "nan": "non-finite", "list": "holds no state_dict", "overflow": "the loss on batch 0 is",
                "sparse": f"{first} is a sparse tensor", "meta": f"{first} is a meta (data-less) tensor",
                "complex": f"{first} is a complex tensor", "integer": f"{first} is torch.int64",
                "parametrization": "saved from a model with parametrization 'mup'",
                "finer": f"{first} is torch.float64, the config's model has torch.float32 (loading would round the "
                         f"weights): set dtype: float64"}[case]
    assert expected in err
    if case == "text":  # a text file was said to hold 'objects other than tensors, refused unread'
        assert "objects other than tensors" not in err
    assert "weights_only" not in err  # torch's advice to load with weights_only=False is not passed on
    assert not (tmp_path / "w.pt.ran").exists()


@pytest.mark.parametrize("argv, key", [
    (["--top-k", "-1"], "--top-k"),
    (["--density-steps", "0"], "--density-steps"),
    (["--trace-matvecs", "2"], "--trace-matvecs"),                # Hutch++ needs 3 (a traceback)
    (["--preconditioned"], "--preconditioned"),                  # sgd has no preconditioner
    (["--plot", "x.png", "--density-runs", "0"], "--plot"),
    (["--plot", "c.yaml/x.png"], "--plot"),                       # a file where a folder goes (a missing one is made)
    (["--top-k", "236"], "--top-k"),                              # more than the 235 parameters
])
def test_bad_options_exit_2_before_any_product(argv, key, tmp_path, capsys, monkeypatch):
    import catapult

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(catapult.curvature, "top_eigenpairs", lambda *a, **k: pytest.fail("solver ran"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["spectrum", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


def test_preconditioned_is_the_adam_first_step_operator_and_refused_with_weights(tmp_path):
    import catapult

    adam = {**CONFIG, "optimizer": dict(name="adam", lr=1e-2)}
    s = measure_spectrum(adam, top_k=1, trace_matvecs=0, density_runs=0, preconditioned=True)
    setup = build_run(adam)
    ref = catapult.preconditioned_sharpness(setup.model, setup.loss_fn, setup.batches.batch(0), setup.optimizer,
                                            scale_by_group_lr=True, tol=1e-8, max_iter=300)
    assert s["preconditioned"] and s["eigenvalues"][0] == pytest.approx(ref.value, rel=1e-6)
    assert s["eigenvalues"][0] != pytest.approx(measure_spectrum(adam, top_k=1, trace_matvecs=0,
                                                                 density_runs=0)["eigenvalues"][0], rel=1e-2)
    with pytest.raises(ConfigError, match="--preconditioned"):
        measure_spectrum(adam, weights=tmp_path / "w.pt", preconditioned=True)


def test_preconditioned_radam_is_refused_saying_its_first_steps_have_no_preconditioner():
    """RAdam is of the Adam family, yet --preconditioned refuses it: its first steps (rho_t <= 5) are
    un-rectified momentum SGD, with no P. The refusal said only 'needs an Adam-family optimizer (adam,
    adamw, gi-adam), the config has optimizer.name=radam', which reads as a contradiction."""
    radam = {**CONFIG, "optimizer": dict(name="radam", lr=1e-2)}
    with pytest.raises(ConfigError, match="--preconditioned") as err:
        measure_spectrum(radam, top_k=1, trace_matvecs=0, density_runs=0, preconditioned=True)
    assert "un-rectified" in str(err.value) and "optimizer.name=radam" in str(err.value)


def test_a_plot_name_without_suffix_is_checked_as_the_png_it_writes(tmp_path, capsys):
    # "--plot fig" writes fig.png: a user's fig.png was replaced, and a link fig.png written through
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "mine.png").write_text("mine")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "link.png").symlink_to(tmp_path / "notes.txt")
    argv = ["spectrum", str(path), "--top-k", "1", "--trace-matvecs", "0", "--density-runs", "2", "--density-steps", "5"]
    assert cli.main([*argv, "--plot", str(tmp_path / "mine")]) == 2
    assert cli.main([*argv, "--plot", str(tmp_path / "link")]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert (tmp_path / "mine.png").read_text() == "mine" and (tmp_path / "notes.txt").read_text() == "notes"


def test_weights_of_a_run_measured_with_another_model_config_are_refused(tmp_path, capsys):
    # the weights load (same shapes), but another activation or multiplier is another function:
    # its spectrum was measured silently
    run(CONFIG, out_dir=tmp_path / "run", progress="none")
    config = tmp_path / "run" / "config.yaml"
    weights = str(tmp_path / "run" / "model.pt")
    argv = ["spectrum", str(config), "--weights", weights, "--top-k", "1", "--trace-matvecs", "0", "--density-runs", "0"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main([*argv, "model.activation=tanh"]) == 2
    err = capsys.readouterr().err
    assert "was trained with model.activation='relu' (the config: 'tanh')" in err and "Traceback" not in err


def test_float32_differences_below_their_own_error_say_what_to_do(capsys):
    # a tanh model (differences are refused on ReLU below float64): at tol 1e-6 float32 difference
    # products cannot converge (their residuals include their own error, certify.py); float64 can
    config = dict(CONFIG, dtype="float32", model=dict(CONFIG["model"], activation="tanh"),
                  eval=dict(CONFIG["eval"], sharpness_hvp="finite_difference", sharpness_tol=1e-6))
    s = measure_spectrum(config, top_k=2, trace_matvecs=0, density_runs=0)
    assert not s["converged"] and s["residual"] > 1e-6 and s["hvp"] == "finite_difference"
    line = format_spectrum(s)
    assert "NOT converged: the largest residual is" in line and "eval.sharpness_dtype=float64" in line
    # below its product budget: more products would not help, and the line does not ask for them
    assert s["eigen_matvecs"] < s["max_iter"] and "raise eval.sharpness_max_iter" not in line
    values, _ = _dense(dict(config, dtype="float64"))
    double = measure_spectrum(dict(config, eval=dict(config["eval"], sharpness_dtype="float64")), top_k=2,
                              trace_matvecs=0, density_runs=0)
    assert double["converged"] and double["residual"] <= 1e-6
    assert double["eigenvalues"] == pytest.approx(values[:2].tolist(), rel=1e-5)


def density_plot_argv(tmp_path, figure: str) -> list[str]:
    """``catapult spectrum`` on CONFIG (written to ``tmp_path``), the density alone, drawn to
    ``tmp_path / figure``."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return ["spectrum", str(path), "--top-k", "0", "--trace-matvecs", "0", "--density-runs", "1",
            "--density-steps", "3", "--plot", str(tmp_path / figure)]


@pytest.mark.parametrize("suffix", ["gif", "webp", "avif"])
def test_a_figure_format_pillow_writes_is_replaced_on_a_second_run(suffix, tmp_path, capsys):
    # these were written unmarked, so the same command run again refused its own figure as
    # "exists and catapult did not write it"
    argv = density_plot_argv(tmp_path, f"d.{suffix}")
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["raw", "rgba"])
def test_an_existing_figure_that_carries_no_mark_is_refused_for_what_it_is(suffix, tmp_path, capsys):
    # a headerless pixel dump cannot say who wrote it: "catapult did not write it" was untrue
    # of the command's own figure from the run before
    argv = density_plot_argv(tmp_path, f"d.{suffix}")
    assert cli.main(argv) == 0
    first = (tmp_path / f"d.{suffix}").read_bytes()
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"a .{suffix} figure carries no mark" in err and "did not write it" not in err
    assert len(err.splitlines()) == 1 and (tmp_path / f"d.{suffix}").read_bytes() == first


def test_a_pgf_figure_without_latex_is_refused_before_any_product(tmp_path, capsys, monkeypatch):
    # matplotlib writes .pgf through LaTeX: without it the measurement ran, then a traceback (exit 1)
    import shutil

    import catapult

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.setattr(catapult.curvature, "spectral_density", lambda *a, **k: pytest.fail("measured"))
    assert cli.main(["spectrum", str(path), "--plot", str(tmp_path / "d.pgf")]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "LaTeX" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d.pgf").exists()


def test_the_plot_never_replaces_the_trajectories_of_the_run_it_measures(tmp_path, capsys):
    # `--plot run/trajectories.png` replaced the run's own figure (it carries catapult's mark),
    # and `catapult train --overwrite` then refused the run's directory as edited since
    run(CONFIG, out_dir=tmp_path / "run", progress="none")
    figure = tmp_path / "run" / "trajectories.png"
    before = figure.read_bytes()
    assert cli.main(["spectrum", str(tmp_path / "run" / "config.yaml"), "--weights", str(tmp_path / "run" / "model.pt"),
                     "--top-k", "0", "--trace-matvecs", "0", "--density-runs", "1", "--density-steps", "3",
                     "--plot", str(figure)]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "is a file of the `catapult train` run in" in err and "Traceback" not in err
    assert figure.read_bytes() == before


def test_a_top_k_below_the_configs_block_size_takes_a_block_of_top_k():
    # eval.spectrum_block_size is bounded by eval.spectrum_top_k, but --top-k may ask for fewer:
    # the block is then --top-k (a block of k finds k copies), not a ValueError from the solver
    blocked = {**CONFIG, "eval": {**CONFIG["eval"], "spectrum_top_k": 3, "spectrum_block_size": 3}}
    values, _ = _dense(blocked)
    s = measure_spectrum(blocked, top_k=1, trace_matvecs=0, density_runs=0)
    assert s["converged"] and s["eigenvalues"] == pytest.approx(values[:1].tolist(), rel=1e-6)


def test_weights_of_another_model_name_name_only_the_keys_of_the_saved_model(tmp_path, capsys):
    # an mlp's weights measured under a wrn config listed model.widen=4 (the config: 1) and
    # model.channels, keys no mlp has; and under a gpt config model.n_heads: now model.name first,
    # then only the keys the mlp is built from
    from catapult.engine.spectrum_study import run_config_problems

    run(CONFIG, out_dir=tmp_path / "run", progress="none")
    config = tmp_path / "run" / "config.yaml"
    weights = tmp_path / "run" / "model.pt"
    argv = ["spectrum", str(config), "--weights", str(weights), "--top-k", "1", "--trace-matvecs", "0",
            "--density-runs", "0", "model.name=wrn", "model.width=512", "model.depth=10", "model.widen=1", "model.channels=2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert ("was trained with model.name='mlp' (the config: 'wrn'), model.width=3 (the config: 512), "
            "model.depth=2 (the config: 10), by") in err, err
    assert "widen" not in err and "channels" not in err and "Traceback" not in err
    trained = yaml.safe_load(config.read_text())["model"]
    from catapult import config as cfg

    mlp = cfg.validate({**CONFIG, "model": trained})["model"]
    gpt = {**mlp, "name": "gpt", "n_heads": 1, "positions": "rope", "final_norm": False, "init_std": 0.1,
           "activation": "gelu"}
    ((key, why),) = run_config_problems({"model": gpt}, weights)
    assert key == "--weights"
    assert "was trained with model.name='mlp' (the config: 'gpt'), model.activation='relu' (the config: 'gelu'), by" in why


def test_weights_message_says_how_many_differing_keys_it_cut(tmp_path):
    # six model keys differ: the message showed four and said nothing of the other two
    from catapult.engine.spectrum_study import run_config_problems

    run(CONFIG, out_dir=tmp_path / "run", progress="none")
    weights = tmp_path / "run" / "model.pt"
    trained = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (trained["width"], trained["depth"], trained["activation"], trained["bias"]) == (3, 2, "relu", True)
    other = {**trained, "width": 5, "depth": 4, "activation": "gelu", "bias": False, "init": "orthogonal",
             "base_width": 7}
    ((key, why),) = run_config_problems({"model": other}, weights)
    assert key == "--weights"
    assert why.count("(the config: ") == 4, why
    assert ", and 2 more (model.init, model.base_width), by" in why, why
    ((_, four),) = run_config_problems({"model": {**other, "init": trained["init"], "base_width": trained["base_width"]}},
                                       weights)
    assert four.count("(the config: ") == 4 and "more" not in four, four
