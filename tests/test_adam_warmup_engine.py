"""Engine + config for issue 3: gi-adam / radam optimizers, catapult and persistent warmups."""
import math

import numpy as np
import pytest
import torch

from catapult import config as C
from catapult.critical_lr import critical_lr
from catapult.losses import get_loss
from catapult.optim import GIAdam
from catapult.engine import build_model, build_optimizer, run


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**sections):
    cfg = {
        "name": "tiny",
        "data": {"name": "digits", "n_train": 120, "n_test": 60},
        "model": {"width": 16, "depth": 3, "parametrization": "sp"},
        "optimizer": {"lr": 0.05},
        # 12 steps are too few for the paper's "final accuracy >= 1.5x chance" rule; these tests
        # are about the mechanics (tests/test_seeds_metrics.py tests the rule)
        "train": {"steps": 12, "accuracy_failure": "off"},
        "eval": {"sharpness_every": 0, "test_every": 0},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def _error(mapping) -> C.ConfigError:
    with pytest.raises(C.ConfigError) as info:
        C.validate(mapping)
    return info.value


# ------------------------------------------------------------------------------------ config
def test_optimizer_names_and_gi_adam_options():
    for name in ("sgd", "adam", "adamw", "radam", "gi-adam"):
        assert C.validate({"optimizer": {"name": name}})["optimizer"]["name"] == name
    for alias in ("giadam", "GI-Adam", "gi_adam"):
        assert C.validate({"optimizer": {"name": alias}})["optimizer"]["name"] == "gi-adam"
    assert C.validate({"optimizer": {"name": "adam", "eps": 1e-6}})["optimizer"]["eps"] == 1e-6
    opt = C.validate({"optimizer": {"name": "gi-adam", "v0": "4", "v_bias_correction": False}})["optimizer"]
    assert opt["v0"] == 4.0 and opt["v_bias_correction"] is False
    assert C.validate({"optimizer": {"name": "gi-adam", "v0": "random"}})["optimizer"]["v0"] == "random"


def test_every_gi_adam_spelling_the_config_takes_is_the_registrys_entry():
    # the config's alias table (sections.py) and the registry's (optim/registry.py) are two lists:
    # registry.get("gi_adam") must be GIAdam's entry as the config's "gi_adam" is gi-adam (mutation pass 22b, RG4)
    from catapult.optim import registry
    for spelling in ("gi-adam", "giadam", "gi_adam"):
        assert C.validate({"optimizer": {"name": spelling}})["optimizer"]["name"] == "gi-adam"
        entry = registry.get(spelling)
        assert entry.name == "gi-adam" and entry.cls is GIAdam


@pytest.mark.parametrize("mapping, key, words", [
    ({"optimizer": {"name": "lion"}}, "optimizer.name", "gi-adam"),
    ({"optimizer": {"name": "gi-adam", "v0": -0.5}}, "optimizer.v0", "a >= 0"),
    ({"optimizer": {"name": "gi-adam", "v0": "zeros"}}, "optimizer.v0", "grad, random"),
    ({"optimizer": {"name": "gi-adam", "v_bias_correction": "yes"}}, "optimizer.v_bias_correction", "true or false"),
    ({"optimizer": {"name": "adam", "v0": 2}}, "optimizer.v0", "gi-adam"),
    ({"optimizer": {"name": "adamw", "v_bias_correction": False}}, "optimizer.v_bias_correction", "gi-adam"),
    ({"optimizer": {"name": "sgd", "eps": 1e-6}}, "optimizer.eps", "remove optimizer.eps"),  # was ignored
    ({"optimizer": {"name": "sgd", "betas": [0.8, 0.9]}}, "optimizer.betas", "remove optimizer.betas"),
    ({"optimizer": {"name": "radam"}, "eval": {"sharpness_kind": "preconditioned"}}, "eval.sharpness_kind",
     "adam, adamw, gi-adam"),
    ({"schedule": {"warmup": "cosine"}}, "schedule.warmup", "persistent"),
    ({"schedule": {"warmup": "catapult", "lr_init": 0.1}}, "schedule.lr_init", "linear"),
    ({"schedule": {"warmup": "persistent", "decay": "cosine"}, "train": {"steps": 10}}, "schedule.decay",
     "constant"),
    ({"schedule": {"warmup": "catapult", "delta": 0}}, "schedule.delta", "> 0"),
    ({"schedule": {"warmup": "catapult", "lr_start": 1.0}, "optimizer": {"lr": 0.1}}, "schedule.lr_start",
     "optimizer.lr"),
])
def test_config_errors_name_the_key_and_what_is_allowed(mapping, key, words):
    err = _error(mapping)
    assert err.keys == [key]
    assert words in str(err)


# ------------------------------------------------------------------------------------ engine
@pytest.mark.parametrize("name, kind", [("sgd", "hessian"), ("adam", "preconditioned"),
                                        ("adamw", "preconditioned"), ("radam", "hessian_then_preconditioned"),
                                        ("gi-adam", "preconditioned")])
def test_engine_runs_each_optimizer_with_its_torch_class(name, kind):
    cfg = C.validate(tiny(optimizer={"name": name, "lr": 0.01}, eval={"sharpness_every": 6}))
    model = build_model(cfg, 64, 10)
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                "radam": torch.optim.RAdam, "gi-adam": GIAdam}[name]
    assert type(build_optimizer(cfg, model, 0.01)) is expected
    result = run(cfg, progress="none")
    assert result.status == "finished" and result.summary["sharpness_kind"] == kind
    assert result.summary["final_train_loss"] < result.summary["initial_train_loss"]
    if kind == "preconditioned":
        assert result.metrics[0]["threshold"] == pytest.approx(38 / 0.01)


def test_engine_gi_adam_matches_a_hand_written_gi_adam_loop():
    cfg = tiny(optimizer={"name": "gi-adam", "lr": 0.01, "v0": 2, "v_bias_correction": False})
    result = run(cfg, progress="none")
    cfg = C.validate(cfg)
    from catapult.data import load_dataset

    split = load_dataset("digits", n_train=120, n_test=60)
    x, y = split.x_train.float(), split.y_train
    model = build_model(cfg, int(np.prod(x.shape[1:])), split.num_classes)
    loss_fn = get_loss("mse")
    # NumPy re-derivation of GI-Adam (v_0 = 2 g^2, no v bias correction) on each tensor
    state = {}
    losses = []
    for t in range(1, 13):
        model.zero_grad()
        loss = loss_fn(model(x), y)
        losses.append(float(loss.detach()))
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                g = p.grad.double().numpy()
                m, v = state.get(p, (np.zeros_like(g), 2.0 * g * g))
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                state[p] = (m, v)
                step = 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v) + 1e-8)
                p.sub_(torch.from_numpy(step).to(p.dtype))
    assert [r["train_loss"] for r in result.metrics[:12]] == pytest.approx(losses, rel=1e-4)


def test_catapult_warmup_in_the_engine_starts_at_the_critical_lr_and_reaches_the_target():
    cfg = tiny(optimizer={"lr": "32/lambda0"}, schedule={"warmup": "catapult", "warmup_steps": 10},
               data={"n_train": 256}, model={"width": 64})
    result = run(cfg, progress="none")
    s = result.summary
    lr_trgt = s["lr_target"]
    # the same search, done independently on the engine's initial model and batch 0
    vcfg = C.validate(cfg)
    from catapult.data import load_dataset

    split = load_dataset("digits", n_train=256, n_test=60)
    model = build_model(vcfg, 64, 10)
    res = critical_lr(model, get_loss("mse"), (split.x_train.float(), split.y_train),
                      torch.optim.SGD(model.parameters(), lr=lr_trgt), lr_start=1e-4, lr_max=lr_trgt,
                      delta=0.1)
    assert s["lr_critical"] == res.lr < lr_trgt
    assert s["search_forward_passes"] == res.forward_passes and s["searches"] == 1
    lrs = [r["lr"] for r in result.metrics]
    assert lrs[0] == pytest.approx(res.lr)
    expected = [min(lr_trgt, res.lr + lr_trgt * t / 10) for t in range(13)]
    assert lrs == pytest.approx(expected)
    reached = next(t for t, lr in enumerate(expected) if lr >= lr_trgt)
    assert s["lr_target_reached_at"] == reached == math.ceil(10 * (1 - res.lr / lr_trgt))
    assert max(lrs) == pytest.approx(lr_trgt)


def _unstable(warmup, **schedule):
    # SP digits MLP under full-batch GD at lr_trgt = 32/lambda_0 (~8x the critical lr at init)
    return run({"name": f"unstable_{warmup}", "data": {"name": "digits", "n_train": 256, "n_test": 64},
                "model": {"width": 64, "depth": 3, "parametrization": "sp"},
                "optimizer": {"name": "sgd", "lr": "32/lambda0"},
                "schedule": {"warmup": warmup, **schedule},
                "train": {"steps": 100}, "eval": {"sharpness_every": 0, "test_every": 0}}, progress="none")


def test_persistent_warmup_trains_where_the_constant_target_lr_diverges():
    constant = _unstable("linear")
    assert constant.status == "diverged" and constant.summary["diverged_at"] < 10
    persistent = _unstable("persistent")
    s = persistent.summary
    assert persistent.status == "finished"
    lr_trgt = s["lr_target"]
    lrs = [r["lr"] for r in persistent.metrics]
    assert lrs[0] == s["lr_critical"] < lr_trgt / 2        # starts at the critical lr
    assert max(lrs) == lr_trgt and lrs[-1] == lr_trgt      # never above the target, reaches it
    assert s["lr_target_reached_at"] == lrs.index(lr_trgt) < 50
    assert s["searches"] >= 2 and s["search_forward_passes"] > s["searches"]
    assert s["final_train_loss"] < 0.1 * s["initial_train_loss"]
    # rows log the lr the update used, and its threshold 2/lr
    assert all(r["threshold"] == pytest.approx(2 / r["lr"]) for r in persistent.metrics[:-1])


def test_catapult_warmup_trains_where_the_constant_target_lr_diverges():
    result = _unstable("catapult", warmup_steps=50)
    s = result.summary
    assert result.status == "finished"
    assert s["lr_target_reached_at"] == math.ceil(50 * (1 - s["lr_critical"] / s["lr_target"]))
    assert s["lr_target_reached_at"] < 50


def test_adam_run_figure_plots_preconditioned_sharpness_against_38_over_lr(tmp_path):
    from catapult.plots import plot_run
    from catapult.engine import threshold_label

    cfg = tiny(optimizer={"name": "gi-adam", "lr": 0.01}, schedule={"warmup_steps": 6},
               eval={"sharpness_every": 3})
    result = run(cfg, out_dir=tmp_path / "run", progress="none")
    assert (tmp_path / "run" / "trajectories.png").stat().st_size > 0
    label = threshold_label(result.config, "preconditioned")
    assert "38/lr_t" in label
    fig = plot_run(result.metrics, preconditioned=True, threshold_label=label)
    ax = fig.axes[1]
    assert "P^{-1}H" in ax.get_ylabel() and "38/lr_t" in ax.get_title()
    sharp, thresh = ax.get_lines()[:2]
    measured = [r for r in result.metrics if r["sharpness"] is not None]
    assert list(sharp.get_ydata()) == [r["sharpness"] for r in measured]
    # the dashed curve is (2 + 2 b1) / ((1 - b1) lr_t) at every step of the warmup
    assert list(thresh.get_ydata()) == pytest.approx([38 / r["lr"] for r in result.metrics])
    assert [r["lr"] for r in result.metrics[:6]] == pytest.approx([0.01 * (t + 1) / 6 for t in range(6)])


def test_engine_gi_adam_random_v0_is_drawn_from_the_run_seed():
    from catapult.engine import seeds

    def first_v(seed):
        cfg = C.validate(tiny(seed=seed, optimizer={"name": "gi-adam", "lr": 0.01, "v0": "random"}))
        model = build_model(cfg, 64, 10)
        opt = build_optimizer(cfg, model, 0.01)
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
        get_loss("mse")(model(x), torch.arange(8)).backward()
        order = [p for group in opt.param_groups for p in group["params"]]   # GIAdam's index i
        grads = [p.grad.clone() for p in order]
        opt.step()
        return [opt.state[p]["exp_avg_sq"] for p in order], grads

    v, grads = first_v(3)
    base = seeds(3)[0] % 2 ** 31
    for i, (vi, g) in enumerate(zip(v, grads)):
        r = torch.rand(g.shape, generator=torch.Generator().manual_seed(base + i), dtype=torch.float64).float()
        v0 = r * (g * g).norm() / r.norm()
        assert torch.allclose(vi, 0.999 * v0 + 0.001 * g * g, rtol=1e-5, atol=0)
    v_other, _ = first_v(4)
    assert not torch.allclose(v[0], v_other[0])


@pytest.mark.parametrize("warmup", ["catapult", "persistent"])
def test_schedule_rtol_reaches_the_warmups_critical_lr_search(warmup):
    # the step-0 search (catapult) and every search (persistent) bisect until the bracket is
    # within schedule.rtol of its lower end; without rtol the paper's delta stop is looser here
    def config(**schedule):
        return tiny(optimizer={"lr": "128/lambda0"}, schedule={"warmup": warmup, **schedule}, train={"steps": 4})

    tight, plain = run(config(rtol=1e-4), progress="none"), run(config(), progress="none")
    lower, upper = tight.summary["lr_critical_lower"], tight.summary["lr_critical_upper"]
    assert 0 < lower <= upper <= lower * (1 + 1e-4) and upper < tight.summary["lr_target"]
    assert plain.summary["lr_critical_upper"] - plain.summary["lr_critical_lower"] > 1e-4 * plain.summary["lr_critical_lower"]
    assert tight.summary["search_forward_passes"] > plain.summary["search_forward_passes"]


@pytest.mark.parametrize("warmup", ["linear", "catapult", "persistent"])
def test_a_non_finite_initial_loss_is_diverged_at_step_0_under_every_warmup(warmup):
    # A GPT whose init overflows float32 has L(theta_0) = nan: the run diverges at step 0, a
    # result. The catapult warmup's step-0 critical-lr search raised ValueError instead (a crash
    # in `catapult train`, a "failed" cell that a sweep reruns on every resume).
    config = C.validate({
        "name": "nan_init", "data": {"name": "shakespeare", "tokenizer": "char", "context": 8,
                                     "n_train": 32, "n_test": 16},
        "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "init_std": 1e30},
        "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"warmup": warmup, "warmup_steps": 2}, "train": {"steps": 3, "batch_size": 8},
        "eval": {"sharpness_every": 0, "test_every": 0}})
    result = run(config, progress="none")
    assert result.status == "diverged" and result.summary["failure"] == "non_finite_loss"
    assert result.summary["diverged_at"] == 0 and len(result.metrics) == 1
    assert not math.isfinite(result.metrics[0]["train_loss"])
