import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml

from catapult import config as C
from catapult.data import load_dataset
from catapult.losses import mse
from catapult.engine import (METRIC_COLUMNS, BatchStream, build_model, read_metrics, run, seeds)


def tiny(**sections):
    """A seconds-long config: digits subset, small MLP, GD."""
    cfg = {
        "name": "tiny",
        "data": {"name": "digits", "n_train": 120, "n_test": 60},
        "model": {"width": 16, "depth": 3, "parametrization": "sp"},
        "optimizer": {"lr": 0.05},
        "train": {"steps": 12},
        "eval": {"sharpness_every": 0, "test_every": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def test_full_batch_gd_matches_a_hand_written_loop_and_the_schedule():
    cfg = tiny(schedule={"warmup_steps": 4, "lr_init": 0.0}, optimizer={"lr": 0.2})
    result = run(cfg, progress="none")
    assert result.status == "finished"
    assert [r["step"] for r in result.metrics] == list(range(13))  # steps + 1 rows

    # Independent re-derivation: same init, plain theta <- theta - lr_t * grad, lr_t by formula.
    full = C.validate(cfg)
    split = load_dataset("digits", n_train=120, n_test=60)
    model = build_model(full, 64, 10)
    losses, lrs = [], []
    for t in range(13):
        lr_t = 0.2 * min(1.0, (t + 1) / 4)
        loss = mse(model(split.x_train), split.y_train)
        losses.append(loss.item())
        lrs.append(lr_t)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr_t * p.grad
    np.testing.assert_allclose([r["train_loss"] for r in result.metrics], losses, rtol=1e-5)
    np.testing.assert_allclose([r["lr"] for r in result.metrics], lrs, rtol=1e-12)
    np.testing.assert_allclose([r["threshold"] for r in result.metrics], [2 / lr for lr in lrs], rtol=1e-12)


def test_test_metrics_every_m_steps_and_at_the_end():
    result = run(tiny(), progress="none")
    tested = [r["step"] for r in result.metrics if r["test_loss"] is not None]
    assert tested == [0, 5, 10, 12]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in result.metrics if r["test_loss"] is not None)
    assert result.summary["final_test_loss"] == result.metrics[-1]["test_loss"]


def test_sharpness_at_the_right_steps_and_lambda0_is_the_exact_top_hessian_eigenvalue():
    cfg = tiny(model={"width": 8, "depth": 2}, data={"n_train": 40},
               eval={"sharpness_every": 5, "sharpness_tol": 1e-6, "sharpness_max_iter": 300},
               dtype="float64", train={"steps": 12})
    result = run(cfg, progress="none")
    measured = [r["step"] for r in result.metrics if r["sharpness"] is not None]
    assert measured == [0, 5, 10, 12]
    assert all(r["sharpness_matvecs"] is None for r in result.metrics if r["sharpness"] is None)

    full = C.validate(cfg)
    split = load_dataset("digits", n_train=40, n_test=60)
    model = build_model(full, 64, 10, dtype=torch.float64)
    x, y = split.x_train.double(), split.y_train
    params = tuple(p.detach() for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat)), (x,))
        return mse(out, y)

    blocks = torch.autograd.functional.hessian(loss_of, params)
    sizes = [p.numel() for p in params]
    dense = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                       for i in range(len(params))], 0)
    exact = torch.linalg.eigvalsh(dense)[-1].item()
    assert result.summary["lambda_0"] == pytest.approx(exact, rel=1e-6)
    assert result.metrics[0]["sharpness"] == result.summary["lambda_0"]


def test_memory_lean_solver_settings_give_the_same_sharpness_trajectory():
    """eval.sharpness_chunk_size / sharpness_max_basis change memory, not the measured values."""
    base = dict(model={"width": 8, "depth": 2}, data={"n_train": 40}, dtype="float64",
                train={"steps": 10})
    ev = {"sharpness_every": 5, "sharpness_tol": 1e-8, "sharpness_max_iter": 300}
    plain = run(tiny(eval=ev, **base), progress="none")
    lean = run(tiny(eval={**ev, "sharpness_chunk_size": 7, "sharpness_max_basis": 4}, **base),
               progress="none")
    a = [r["sharpness"] for r in plain.metrics if r["sharpness"] is not None]
    b = [r["sharpness"] for r in lean.metrics if r["sharpness"] is not None]
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(b, a, rtol=1e-7)
    assert [r["train_loss"] for r in lean.metrics] == pytest.approx(
        [r["train_loss"] for r in plain.metrics], rel=1e-12, abs=0)


def test_lr_relative_to_lambda0_is_resolved_from_the_measurement():
    result = run(tiny(optimizer={"lr": "2^3/lambda0"}), progress="none")
    s = result.summary
    assert s["lambda_0"] > 0 and s["lr_target"] == pytest.approx(8.0 / s["lambda_0"], rel=1e-12)
    assert s["lr_target_times_lambda_0"] == pytest.approx(8.0)
    # sharpness_every = 0 still measures lambda_0 (needed for the lr) but logs no sharpness
    assert all(r["sharpness"] is None for r in result.metrics)


def test_divergence_is_a_result_not_an_exception():
    # the paper's rule (the default): only a non-finite loss ends the run
    paper = run(tiny(optimizer={"lr": 1e4}, train={"steps": 50}), progress="none")
    assert paper.status == "diverged" and paper.summary["failure"] == "non_finite_loss"
    assert not math.isfinite(paper.metrics[-1]["train_loss"])
    assert all(math.isfinite(r["train_loss"]) for r in paper.metrics[:-1])
    # the 1000 x L0 rule, a documented option
    result = run(tiny(optimizer={"lr": 1e4}, train={"steps": 50, "divergence_factor": 1000}), progress="none")
    assert result.status == "diverged"
    assert result.summary["diverged_at"] <= paper.summary["diverged_at"]
    s = result.summary
    last = result.metrics[-1]
    assert s["diverged_at"] == last["step"] < 50 and s["steps_completed"] == s["diverged_at"]
    assert not math.isfinite(last["train_loss"]) or last["train_loss"] > 1000 * result.metrics[0]["train_loss"]
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] <= 1000 * result.metrics[0]["train_loss"]
               for r in result.metrics[:-1])
    # a tighter factor stops earlier
    early = run(tiny(optimizer={"lr": 1e4}, train={"steps": 50, "divergence_factor": 2}), progress="none")
    assert early.status == "diverged" and early.summary["diverged_at"] <= s["diverged_at"]


def test_cpu_runs_are_bit_for_bit_reproducible_and_sharpness_does_not_perturb_training():
    cfg = tiny(train={"steps": 15, "batch_size": 32}, optimizer={"lr": 0.1, "momentum": 0.9},
               eval={"sharpness_every": 3, "test_every": 4})
    a = run(cfg, progress="none")
    b = run(cfg, progress="none")
    assert a.metrics == b.metrics  # exact equality, NaN-free
    no_sharpness = run({**cfg, "eval": {"sharpness_every": 0, "test_every": 4}}, progress="none")
    assert [r["train_loss"] for r in a.metrics] == [r["train_loss"] for r in no_sharpness.metrics]
    other_seed = run({**cfg, "seed": 1}, progress="none")
    assert [r["train_loss"] for r in a.metrics] != [r["train_loss"] for r in other_seed.metrics]


def test_minibatch_order_is_the_documented_permutation_stream():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    stream = BatchStream(x, y, batch_size=4, seed=123)
    gen = torch.Generator().manual_seed(123)
    perms = [torch.randperm(10, generator=gen) for _ in range(3)]
    expected = [perms[0][:4], perms[0][4:8], perms[1][:4], perms[1][4:8], perms[2][:4]]
    for t, idx in enumerate(expected):
        _, yb = stream.batch(t)
        assert torch.equal(yb, idx)
    with pytest.raises(C.ConfigError, match="train.batch_size"):
        BatchStream(x, y, batch_size=11, seed=0)


def test_seeds_are_independent_streams():
    assert len(set(seeds(0))) == 3 and seeds(0) == seeds(0) and seeds(0) != seeds(1)


def test_run_directory_files(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(eval={"sharpness_every": 4, "test_every": 5})
    result = run(cfg, out_dir=out, progress="none")
    assert sorted(p.name for p in out.iterdir()) == [".catapult-run.json", "config.yaml", "metrics.csv", "model.pt",
                                                     "summary.json", "trajectories.png"]
    saved, final = torch.load(out / "model.pt", weights_only=True), result.model.state_dict()
    assert list(saved) == list(final) and all(torch.equal(saved[k], final[k]) for k in final)
    assert C.validate(yaml.safe_load((out / "config.yaml").read_text())) == result.config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["lambda_0"] == pytest.approx(result.summary["lambda_0"])
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    # the sharpness solves' marks last (after the columns every run has)
    assert tuple(rows[0]) == (*METRIC_COLUMNS, "sharpness_converged") and len(rows) == 13 + 1
    mark_col = len(METRIC_COLUMNS)
    assert [r[mark_col] for r in rows[1:]] == ["1" if t % 4 == 0 or t == 12 else "" for t in range(13)]
    sharp_col = METRIC_COLUMNS.index("sharpness")
    assert [r[sharp_col] != "" for r in rows[1:]] == [t % 4 == 0 or t == 12 for t in range(13)]
    back = read_metrics(out / "metrics.csv")
    # floats round-trip exactly, empty cells -> None (a mark only sharpness rows carry in memory too)
    assert back == [{**dict.fromkeys(rows[0]), **row} for row in result.metrics]
    assert (out / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a CPU run repeats byte for byte, weights and figure included: the digests it records agree
    run(cfg, out_dir=tmp_path / "again", progress="none")
    again = {name: (tmp_path / "again" / name).read_bytes() for name in summary["written"]}
    assert again == {name: (out / name).read_bytes() for name in summary["written"]}
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["written"] == summary["written"]


def test_adam_runs_with_preconditioned_sharpness_and_its_threshold():
    result = run(tiny(optimizer={"name": "adam", "lr": 1e-3}, eval={"sharpness_every": 6},
                      train={"accuracy_failure": "off"}), progress="none")  # 12 steps: not yet 1.5x chance
    assert result.status == "finished" and result.summary["sharpness_kind"] == "preconditioned"
    assert result.metrics[0]["threshold"] == pytest.approx(38 / result.metrics[0]["lr"])
    # pre-conditioned sharpness of Adam at init is far above the Hessian's (~1/sqrt(v))
    assert result.metrics[0]["sharpness"] > 10 * result.summary["lambda_0"]


def test_bad_setup_writes_nothing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(C.ConfigError, match="train.batch_size"):
        run(tiny(train={"batch_size": 500}), out_dir=out, progress="none")
    with pytest.raises(C.ConfigError, match="model.width"):
        run(tiny(model={"width": 0}), out_dir=out, progress="none")
    assert not out.exists()
