"""`catapult critical-lr CONFIG`: end to end on a tiny config, checked against independent truth."""
import json
import warnings

import numpy as np
import pytest
import torch
import yaml

from catapult import config as C
from catapult.cli import main
from catapult.data import load_dataset
from catapult.losses import get_loss
from catapult.engine import build_model


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "data": {"name": "digits", "n_train": 100, "n_test": 20},
        "model": {"width": 8, "depth": 2, "parametrization": "sp"},
        "optimizer": {"name": "sgd", "lr": "32/lambda0"},
        "eval": {"sharpness_tol": 1e-6, "sharpness_dtype": "float64"},
    }))
    return path


def _model_and_batch(path, **overrides):
    cfg = C.load_config(path, [f"{k}={v}" for k, v in overrides.items()])
    split = load_dataset("digits", n_train=100, n_test=20)
    model = build_model(cfg, 64, 10)
    return model, (split.x_train.float().flatten(1), split.y_train)


def _flat_loss(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    loss_fn = get_loss("mse")

    def f(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_fn(torch.func.functional_call(model, params, (batch[0].double(),)), batch[1])

    theta = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    return f, theta


def test_critical_lr_command_prints_lr_c_bracket_passes_and_2_over_lambda0(tiny_config, capsys):
    assert main(["critical-lr", str(tiny_config), "--json", "--threads", "1"]) == 0
    e = json.loads(capsys.readouterr().out)

    model, batch = _model_and_batch(tiny_config)
    f, theta = _flat_loss(model.double(), batch)
    H = torch.autograd.functional.hessian(f, theta)
    lam0 = float(torch.linalg.eigvalsh(H)[-1])
    assert e["lambda_0"] == pytest.approx(lam0, rel=1e-6)
    assert e["gd_estimate"] == pytest.approx(2 / lam0, rel=1e-6)
    assert e["lr_target"] == pytest.approx(32 / lam0, rel=1e-6)

    # the bracket, re-checked with plain GD steps in float64: L(lower) <= L0 < L(upper) <= L0 (1 + delta)
    g = torch.func.grad(f)(theta)
    L0 = float(f(theta))
    assert e["loss0"] == pytest.approx(L0, rel=1e-5)
    assert 0 < e["lower"] < e["upper"] == e["lr_critical"]
    assert float(f(theta - e["lower"] * g)) <= L0 * (1 + 1e-5)
    assert L0 < float(f(theta - e["upper"] * g)) <= L0 * (1 + 0.1) * (1 + 1e-5)
    assert e["forward_passes"] > 2 and e["preconditioned_sharpness"] is None


def test_delta_1_the_largest_rise_accepted_brackets_a_loss_up_to_doubled(tiny_config, capsys):
    # schedule.delta lies in (0, 1]: 1 (a doubled loss) is accepted, not refused with those above it
    # (mutation pass 27, CF3: an open bound refused it, exit 2); the bracket, re-checked with plain GD
    # steps in float64: L(lower) <= L0 < L(upper) <= 2 L0
    assert main(["critical-lr", str(tiny_config), "schedule.delta=1", "--json", "--threads", "1"]) == 0
    e = json.loads(capsys.readouterr().out)
    model, batch = _model_and_batch(tiny_config)
    f, theta = _flat_loss(model.double(), batch)
    g = torch.func.grad(f)(theta)
    L0 = float(f(theta))
    assert 0 < e["lower"] < e["upper"] == e["lr_critical"]
    assert float(f(theta - e["lower"] * g)) <= L0 * (1 + 1e-5)
    assert L0 < float(f(theta - e["upper"] * g)) <= L0 * 2 * (1 + 1e-5)


def test_critical_lr_command_human_output_and_adam_estimates(tiny_config, capsys):
    assert main(["critical-lr", str(tiny_config), "optimizer.name=gi-adam", "optimizer.lr=0.01",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "lr_c =" in out and "bracket [" in out and "forward passes" in out and "2/lambda_0 =" in out
    assert "(2+2b1)/((1-b1) lambda_P0)" in out
    assert main(["critical-lr", str(tiny_config), "optimizer.name=gi-adam", "optimizer.lr=0.01",
                 "--json", "--threads", "1"]) == 0
    gi = json.loads(capsys.readouterr().out)
    assert main(["critical-lr", str(tiny_config), "optimizer.name=adam", "optimizer.lr=0.01",
                 "--json", "--threads", "1"]) == 0
    adam = json.loads(capsys.readouterr().out)
    assert gi["threshold_estimate"] == pytest.approx(1.9 * gi["one_step_estimate"])
    assert gi["threshold_estimate"] == pytest.approx(38 / gi["preconditioned_sharpness"])
    # GI-Adam's first preconditioner is 1/sqrt(1 - b2) ~ 31.6 times Adam's (eps aside)
    assert adam["preconditioned_sharpness"] / gi["preconditioned_sharpness"] == pytest.approx(
        1 / np.sqrt(1 - 0.999), rel=0.05)


def test_schedule_rtol_bounds_lr_c_above_the_one_step_critical_lr(tiny_config, capsys):
    # schedule.rtol reaches critical_lr: lr_c within rtol above lr* = sup{lr: L(theta - lr g) <= L0},
    # lr* found here by a float64 scan and bisection of plain GD steps
    rtol = 1e-3
    assert main(["critical-lr", str(tiny_config), "dtype=float64", f"schedule.rtol={rtol}", "--json",
                 "--threads", "1"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["rtol"] == rtol and e["upper"] - e["lower"] <= rtol * e["lower"]
    model, batch = _model_and_batch(tiny_config)
    f, theta = _flat_loss(model.double(), batch)
    g = torch.func.grad(f)(theta)
    L0 = float(f(theta))
    grid = np.linspace(0, 2 * e["upper"], 2001)[1:]
    first = next(lr for lr in grid if float(f(theta - lr * g)) > L0)   # the first rise on the ray
    lo, hi = first - grid[0], first
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(f(theta - mid * g)) <= L0 else (lo, mid)
    assert 0 <= (e["lr_critical"] - lo) / lo <= rtol * (1 + 1e-6)
    assert main(["critical-lr", str(tiny_config), "dtype=float64", "--json", "--threads", "1"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["rtol"] is None and plain["forward_passes"] < e["forward_passes"]
    assert "rtol 0.001" in _human(tiny_config, capsys, f"schedule.rtol={rtol}")


def _human(path, capsys, *overrides):
    assert main(["critical-lr", str(path), *overrides, "--threads", "1"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("override, key", [("optimizer.name=adm", "optimizer.name"),
                                           ("schedule.delta=-1", "schedule.delta"),
                                           # the relative rise accepted at lr_c: above 1 (a doubled loss) the
                                           # bisection stops at the doubling's bracket (fig1_sp: lr_c 0.1024 at
                                           # delta 10 .. 1e300 for 0.0768 at 0.1 and 1); before: exit 0
                                           ("schedule.delta=1e300", "schedule.delta"),
                                           ("schedule.delta=1.5", "schedule.delta"),
                                           ("schedule.rtol=0", "schedule.rtol"),
                                           ("schedule.rtol=1.5", "schedule.rtol"),
                                           ("schedule.rtol=tight", "schedule.rtol"),
                                           ("optimizer.v0=3", "optimizer.v0")])
def test_bad_config_exits_2_and_names_the_key(tiny_config, capsys, override, key):
    assert main(["critical-lr", str(tiny_config), override]) == 2
    err = capsys.readouterr().err
    assert "catapult critical-lr: error" in err and key in err


def test_missing_config_exits_2(tmp_path, capsys):
    assert main(["critical-lr", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_non_finite_initial_loss_exits_2_naming_the_model(capsys):
    # init_std 1e30 overflows the GPT's logits: there is no finite loss to search from
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "supar" / "dynamic_sparsity_small.yaml"
    code = main(["critical-lr", str(config), "data.tokenizer=char", "data.n_train=64", "data.n_test=16",
                 "data.context=8", "model.width=16", "model.n_heads=2", "schedule.decay=constant",
                 "model.sparsity.method=static", "model.sparsity.update_every=100",  # static reads no update_every
                 "model.init_std=1e30", "optimizer.lr=0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "model: critical_lr: the loss at the current parameters is nan" in err
    assert "Traceback" not in err


def test_a_non_finite_first_step_exits_2_naming_the_optimizer(tiny_config, capsys):
    # Adam with eps = 0 divides a zero gradient by zero: every trial read nan as a rise, and the
    # command printed lr_c = lr_start beside a nan with exit 0
    code = main(["critical-lr", str(tiny_config), "optimizer.name=adam", "optimizer.lr=0.01", "optimizer.eps=0",
                 "model.activation=relu", "model.width=64"])
    err = capsys.readouterr().err
    assert code == 2 and "optimizer: critical_lr: the optimizer's step direction has" in err
    assert "Traceback" not in err


def test_a_search_that_never_rose_says_so_as_a_note_not_a_python_warning(tiny_config, capsys):
    # lr_start = 1e-300 moves no float32 weight in 64 doublings: the loss stays L0 and lr_c is bounded
    # below by 1e-300 * 2^64 = 1.845e-281. The search's RuntimeWarning reached stderr as Python prints
    # one, with the line "sys.exit(main())" of the catapult script under it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["critical-lr", str(tiny_config), "schedule.lr_start=1e-300"]) == 0
    captured = capsys.readouterr()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert f"lr_c >= {1e-300 * 2.0 ** 64:.4g}  bracket [{1e-300 * 2.0 ** 64:.4g}, inf]" in captured.out
    assert captured.err.startswith("catapult critical-lr: note: the loss has not risen above L0 by lr = "
                                   f"{1e-300 * 2.0 ** 64:g}, 64 doublings"), captured.err


def test_a_warning_that_is_not_the_searchs_passes_through_as_a_python_warning(tiny_config, capsys, monkeypatch):
    # only catapult.critical_lr's RuntimeWarnings (they begin "critical_lr: ") become notes; any other
    # warning raised during the estimate (here a RuntimeWarning of NumPy's words) reaches Python's
    # warning machinery unchanged, and no note is printed for it
    import catapult.engine.critical_lr_study as study

    measured = study.estimate

    def warns_then_measures(*args, **kwargs):
        warnings.warn("overflow encountered in exp", RuntimeWarning)
        return measured(*args, **kwargs)

    monkeypatch.setattr(study, "estimate", warns_then_measures)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["critical-lr", str(tiny_config)]) == 0
    assert [(w.category, str(w.message)) for w in caught] == [(RuntimeWarning, "overflow encountered in exp")]
    assert "note:" not in capsys.readouterr().err
