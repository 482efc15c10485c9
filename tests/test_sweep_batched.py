"""The torch.func batched engine (:mod:`catapult.sweep.batched`) reproduces the local engine
(:func:`catapult.engine.run`) cell by cell in float64 to 1e-9: every step's loss, accuracy, lr,
threshold, sharpness (and its matvec count), test numbers, status and the summary (lr_c for the
catapult warmup), for MLPs and GPTs (masks, muP/SμPar), full batch and minibatch.

Independent truth: each cell run alone by the local engine, which shares no code path with the
batched one beyond the model builders and the schedules (its update is torch.optim's, its
Hessian products are one model's double backprop, its Lanczos the single-vector one).
"""
from __future__ import annotations

import math

import pytest
import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep.batched import batched_unsupported_reason, run_group
from catapult.sweep.ensemble import run_batched
from catapult.sweep.grouping import group_key
from catapult.sweep.executors import Cell, CellResult

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-9
# the same checks on a GPU where there is one
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]

MLP = {
    "data": {"name": "digits", "n_train": 64, "n_test": 32},
    "model": {"name": "mlp", "width": 16, "depth": 3, "parametrization": "sp"},
    "dtype": "float64",
    "train": {"steps": 8},
    "eval": {"sharpness_every": 3, "test_every": 4, "sharpness_max_iter": 30},
}
GPT = {
    "data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 8},
    "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "activation": "gelu"},
    "loss": "cross_entropy",
    "dtype": "float64",
    "train": {"steps": 6, "batch_size": 8},
    # lambda_0 over 2 minibatches (the second warm-started), not 10: the MLP minibatch cells keep the default
    "eval": {"sharpness_every": 3, "test_every": 2, "sharpness_max_iter": 30, "lambda0_batches": 2},
}


def _cell(base, i, **over):
    config = {**base, "name": f"c{i}", **over}
    for key in ("optimizer", "schedule", "train", "eval", "model", "data"):
        if key in over:
            config[key] = {**base.get(key, {}), **over[key]}
    return Cell(i, cfg.validate(config))


def _close(a, b, rtol=RTOL):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and not math.isfinite(a):
        return not math.isfinite(b)
    return abs(a - b) <= rtol * max(abs(a), 1e-3)


def _assert_same(local, res: CellResult):
    assert res.status == local.status
    assert len(res.metrics) == len(local.metrics)
    for a, b in zip(local.metrics, res.metrics):
        for key in train.METRIC_COLUMNS:
            if key in ("step", "sharpness_matvecs"):
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
            else:
                assert _close(a[key], b[key]), (a["step"], key, a[key], b[key])
        # each sharpness row's mark, as the local engine's (the summaries' counts agree below)
        assert a.get("sharpness_converged") == b.get("sharpness_converged"), a["step"]
    for key in ("status", "diverged_at", "steps_completed", "sharpness_measurements", "sharpness_matvecs",
                "num_params", "sharpness_kind", "warmup", "lr_target_reached_at", "searches",
                "search_forward_passes", "catapult", "sharpness_unconverged", "unconverged_below_budget"):
        assert res.summary[key] == local.summary[key], key
    for key in ("lambda_0", "lr_target", "threshold_target", "final_train_loss", "final_test_loss",
                "final_test_accuracy", "final_sharpness", "peak_sharpness", "lr_critical",
                "lr_critical_lower", "lr_critical_upper"):
        assert _close(local.summary[key], res.summary[key]), key


def _check(cells):
    """Run ``cells`` as one group and compare every cell with its local run."""
    assert len({group_key(c.config) for c in cells}) == 1
    results = dict(run_group(cells))
    assert sorted(results) == sorted(c.id for c in cells)
    locals_ = {}
    for cell in cells:
        locals_[cell.id] = local = train.run(cell.config, progress="none")
        _assert_same(local, results[cell.id])
    return locals_, results


def test_mlp_sgd_full_batch_with_momentum_and_a_divergent_member():
    # full batch: members may differ in seed (their own init, masks, start vectors)
    # members differ in run length and eval cadence too (per-member keys)
    cells = [_cell(MLP, i, seed=i, optimizer={"name": "sgd", "lr": lr, "momentum": mom, "weight_decay": wd},
                   schedule={"warmup_steps": T}, train={"divergence_factor": 2.0, "steps": steps},
                   eval={"sharpness_every": every, "test_every": 4 - i % 2})
             for i, (lr, mom, wd, T, steps, every) in enumerate([
                 (0.1, 0.0, 0.0, 1, 8, 3), (0.5, 0.9, 1e-3, 3, 5, 2),
                 (400.0, 0.0, 0.0, 1, 8, 3), ("2/lambda0", 0.5, 0.0, 2, 9, 4)])]
    local, _ = _check(cells)
    statuses = [local[c.id].status for c in cells]
    assert statuses.count("diverged") == 1 and local[2].status == "diverged"
    assert local[0].metrics[3]["sharpness"] is not None


def test_float32_run_with_float64_sharpness():
    # eval.sharpness_dtype: the Hessian of the float32 weights cast up; lambda_0 agrees to 1e-9,
    # later steps to float32 rounding
    cells = [_cell(MLP, i, seed=i, dtype="float32", optimizer={"name": "sgd", "lr": lr},
                   eval={"sharpness_dtype": "float64", "sharpness_every": 2}, train={"steps": 4})
             for i, lr in enumerate([0.1, 0.3])]
    results = dict(run_group(cells))
    for cell in cells:
        local, res = train.run(cell.config, progress="none"), results[cell.id]
        assert _close(local.summary["lambda_0"], res.summary["lambda_0"])
        assert _close(local.metrics[0]["sharpness"], res.metrics[0]["sharpness"])
        for a, b in zip(local.metrics, res.metrics):
            assert _close(a["sharpness"], b["sharpness"], 1e-4) and _close(a["train_loss"], b["train_loss"], 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_mlp_adam_adamw_mup_minibatch_preconditioned(device):
    # muP with a base width: per-group lr multipliers, in the update and the pre-conditioner
    for name in ("adam", "adamw"):
        cells = [_cell(MLP, i, seed=7, device=device, model={"parametrization": "mup", "base_width": 8},
                       train={"batch_size": 16}, optimizer={"name": name, "lr": lr, "weight_decay": wd,
                                                            "betas": [0.9, b2], "eps": 1e-4},
                       schedule={"warmup_steps": T, "decay": "cosine"})
                 for i, (lr, wd, b2, T) in enumerate([(3e-3, 0.0, 0.999, 1), (1e-2, 1e-2, 0.99, 4)])]
        local, _ = _check(cells)
        assert local[0].summary["sharpness_kind"] == "preconditioned"


@pytest.mark.parametrize("device", DEVICES)
def test_gpt_sparse_supar_adamw_and_catapult_warmup(device):
    # SμPar with density 0.5: per-member masks (buffers) and lr multipliers; the catapult warmup's
    # step-0 search gives each member its own lr_c
    cells = [_cell(GPT, i, device=device, model={"parametrization": "supar", "base_width": 8, "density": 0.5},
                   optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.01, "eps": 1e-4},
                   schedule={"warmup": warmup, "warmup_steps": T})
             for i, (lr, warmup, T) in enumerate([(1e-2, "linear", 3), (1e-1, "catapult", 4), (3e-1, "catapult", 2)])]
    local, results = _check(cells)
    assert local[1].summary["lr_critical"] is not None
    assert results[2].summary["lr_critical"] == pytest.approx(local[2].summary["lr_critical"], rel=1e-12, abs=0)


def test_gpt_mup_sgd_lr_scaled_sharpness_and_divergence():
    # muP with a base width: SGD's groups have different lrs, so auto is the lr-scaled kind
    cells = [_cell(GPT, i, model={"parametrization": "mup", "base_width": 8, "tie_embeddings": True,
                                  "positions": "sinusoidal"},
                   optimizer={"name": "sgd", "lr": lr, "momentum": 0.9},
                   train={"divergence_factor": 1.5})
             for i, lr in enumerate([0.05, 0.2, 1e4])]
    local, _ = _check(cells)
    assert local[2].status == "diverged" and local[0].status == "finished"
    assert local[0].summary["sharpness_kind"] == "lr_scaled"


def test_mlp_supar_sgd_lr_scaled_sharpness():
    # SμPar with SGD: the groups' lrs differ, so auto measures lambda_max(M^1/2 H M^1/2) in the
    # batched engine too (M = each member's lr_mult / its first group's)
    cells = [_cell(MLP, i, seed=i, model={"parametrization": "supar", "base_width": 8, "density": 0.5},
                   optimizer={"name": "sgd", "lr": lr, "momentum": mom}, schedule={"warmup_steps": T})
             for i, (lr, mom, T) in enumerate([(0.05, 0.0, 1), (0.2, 0.9, 3)])]
    assert all(batched_unsupported_reason(c.config) is None for c in cells)
    local, results = _check(cells)
    assert local[0].summary["sharpness_kind"] == results[0].summary["sharpness_kind"] == "lr_scaled"


def test_mlp_radam_full_batch_sharpness_switches_at_rectification():
    # RAdam's auto sharpness is the Hessian's while its next update is un-rectified (rho_t <= 5:
    # torch steps 1-5 at b2 = 0.999, rows 0-4), the pre-conditioned one after (rows >= 5)
    # (b2 = 0.6 is never rectified: rho_inf = 4; the loop measures each kind's members apart)
    cells = [_cell(MLP, i, seed=i, optimizer={"name": "radam", "lr": lr, "weight_decay": wd, "betas": [0.9, b2]},
                   schedule={"warmup_steps": T}, train={"steps": 10})
             for i, (lr, wd, T, b2) in enumerate([(1e-2, 0.0, 1, 0.999), (3e-2, 1e-2, 3, 0.9), (1e-2, 0.0, 2, 0.6)])]
    local, results = _check(cells)
    assert local[0].summary["sharpness_kind"] == "hessian_then_preconditioned"
    for cell in cells:
        kinds = {r["step"]: r.get("sharpness_kind") for r in local[cell.id].metrics if r["sharpness"] is not None}
        late = "hessian" if cell.id == 2 else "preconditioned"
        assert kinds == {0: "hessian", 3: "hessian", 6: late, 9: late, 10: late}
        assert kinds == {r["step"]: r.get("sharpness_kind") for r in results[cell.id].metrics
                         if r["sharpness"] is not None}


def test_mlp_supar_radam_is_lr_scaled_until_rectified():
    # SμPar RAdam: its un-rectified updates are EMA-momentum SGD at each group's lr, bounded by
    # M^1/2 (H + W) M^1/2 (the coupled decay's difference m_i wd - wd in W), not lambda_max(H), which
    # both engines recorded; the batched one left the decay rows out of RAdam's lr-scaled operator
    cells = [_cell(MLP, i, seed=i, model={"parametrization": "supar", "base_width": 4, "density": 0.5},
                   optimizer={"name": "radam", "lr": lr, "weight_decay": wd}, train={"steps": 7})
             for i, (lr, wd) in enumerate([(1e-2, 0.0), (3e-2, 0.05)])]
    local, results = _check(cells)
    assert local[1].summary["sharpness_kind"] == "lr_scaled_then_preconditioned"
    for cell in cells:
        kinds = {r["step"]: r.get("sharpness_kind") for r in results[cell.id].metrics if r["sharpness"] is not None}
        assert kinds == {0: "lr_scaled", 3: "lr_scaled", 6: "preconditioned", 7: "preconditioned"}


@pytest.mark.parametrize("v0, bias_correction", [("grad", True), (2.0, False), ("random", True)])
def test_mlp_gi_adam_v0_options_preconditioned(v0, bias_correction):
    # full batch, so members differ in seed: v0="random" draws each member's own v_0
    cells = [_cell(MLP, i, seed=i, optimizer={"name": "gi-adam", "lr": lr, "weight_decay": wd, "eps": 1e-4,
                                              "v0": v0, "v_bias_correction": bias_correction,
                                              "betas": [0.9, b2]},
                   schedule={"warmup_steps": T}, eval={"sharpness_every": 2})
             for i, (lr, wd, b2, T) in enumerate([(1e-2, 0.0, 0.999, 1), (3e-2, 1e-2, 0.99, 2)])]
    local, _ = _check(cells)
    assert local[0].summary["sharpness_kind"] == "preconditioned"


def test_persistent_warmup_mlp_sgd_and_gpt_adam():
    # Alg. 3: each member's searches run on its own module loaded with its stacked state
    mlp = [_cell(MLP, i, seed=i, optimizer={"name": "sgd", "lr": lr, "momentum": mom},
                 schedule={"warmup": "persistent"}, train={"steps": 10})
           for i, (lr, mom) in enumerate([(2.0, 0.0), (8.0, 0.5)])]
    local, _ = _check(mlp)
    assert all(local[c.id].summary["searches"] >= 1 for c in mlp)
    gpt = [_cell(GPT, i, optimizer={"name": "adam", "lr": lr, "eps": 1e-4}, schedule={"warmup": "persistent"},
                 eval={"sharpness_every": 0})
           for i, lr in enumerate([1e-1, 3e-1])]
    _check(gpt)


def test_run_batched_groups_cells_and_reports_bad_configs_through_run_fn():
    # two groups (minibatch cells with different data seeds) and one cell whose config is invalid
    cells = [_cell(MLP, i, seed=i // 2, train={"batch_size": 16}, optimizer={"name": "sgd", "lr": lr},
                   eval={"sharpness_every": 0})
             for i, lr in enumerate([0.05, 0.1, 0.05, 0.1])]
    bad = Cell(9, {"model": {"width": -1}})
    assert all(batched_unsupported_reason(c.config) is None for c in cells)
    calls = []

    def run_fn(config, progress=None):
        calls.append(config)
        return train.run(config, progress="none")

    results = dict(run_batched(cells + [bad], run_fn=run_fn, threads=1, max_members=1))
    assert len(calls) == 1 and results[9].status == "failed"  # only the bad cell went through run_fn
    for cell in cells:
        _assert_same(train.run(cell.config, progress="none"), results[cell.id])


def test_a_chunk_that_raises_runs_through_run_fn(monkeypatch):
    import catapult.sweep.batched as batched
    from catapult.sweep.ensemble import EnsembleExecutor

    cells = [_cell(MLP, i, optimizer={"name": "sgd", "lr": 0.1}, eval={"sharpness_every": 0},
                   train={"steps": 2}) for i in range(2)]

    def broken(chunk, data=None, pad_lone=True):
        yield chunk[0].id, CellResult("finished", [], {})
        raise RuntimeError("boom")

    monkeypatch.setattr(batched, "run_group", broken)
    calls = []
    executor = EnsembleExecutor(lambda config, progress=None: calls.append(config["name"])
                                or train.run(config, progress="none"), kernels=False)
    results = dict(executor.run(cells))
    assert calls == ["c1"] and results[1].status == "finished" and len(results[1].metrics) == 3
    assert executor.fallbacks == [(1, "ensemble engine raised RuntimeError: boom")]
    assert executor.engines == {0: "func"}


def test_the_executor_sends_what_the_kernels_cannot_reproduce_to_torch_func():
    from catapult.sweep.ensemble import EnsembleExecutor

    mlp_sgd = [_cell(MLP, i, optimizer={"name": "sgd", "lr": 0.1}, eval={"sharpness_every": 0},
                     train={"steps": 2}) for i in range(2)]
    mlp_radam = [_cell(MLP, i, optimizer={"name": "radam", "lr": 1e-3}, eval={"sharpness_every": 0},
                       train={"steps": 2}) for i in range(2, 4)]
    executor = EnsembleExecutor(kernels=True)
    results = dict(executor.run(mlp_sgd + mlp_radam))
    assert executor.engines == {0: "kernels", 1: "kernels", 2: "func", 3: "func"}
    assert executor.fallbacks == [] and sorted(results) == [0, 1, 2, 3]
    off = EnsembleExecutor(kernels=False)
    list(off.run(mlp_sgd))
    assert off.engines == {0: "func", 1: "func"}


def test_cells_logging_the_spectrum_run_locally_with_their_columns():
    # the torch.func engine computes the top eigenvalue only: it used to drop eval.spectrum_top_k
    # and eval.trace_matvecs without a word, and the cells' eig_i / hessian_trace columns with them
    from catapult.sweep.ensemble import EnsembleExecutor

    cells = [_cell(MLP, i, optimizer={"name": "sgd", "lr": 0.1}, train={"steps": 2},
                   eval={"sharpness_every": 1, "spectrum_top_k": 2, "trace_matvecs": 3})
             for i in range(2)]
    assert "eval.spectrum_top_k=2" in batched_unsupported_reason(cells[0].config)
    executor = EnsembleExecutor(lambda config, progress=None: train.run(config, progress="none"),
                                kernels=True)
    results = dict(executor.run(cells))
    assert executor.engines == {} and sorted(results) == [0, 1]
    assert [(i, reason.split(" ")[0]) for i, reason in executor.fallbacks] == [
        (0, "eval.spectrum_top_k=2"), (1, "eval.spectrum_top_k=2")]
    for res in results.values():
        assert res.status == "finished"
        assert all(math.isfinite(row["eig_2"]) and math.isfinite(row["hessian_trace"])
                   and row["eig_converged"] in (0, 1) for row in res.metrics)


@pytest.mark.parametrize("dtype, evaluation, below", [
    # float32 at tol 1e-7, below its rounding: every solve stops short of the tol well below its budget of 30
    # products (the run's advice is then float64 or a looser tol, not more products)
    ("float32", {"sharpness_tol": 1e-7}, 2),
    # mutation pass 21 (BL6): float64 at tol 1e-12 with a budget of 3 products: every solve stops unconverged AT its
    # budget, so none is "below budget" (the mutant counted every unconverged solve)
    ("float64", {"sharpness_tol": 1e-12, "sharpness_max_iter": 3}, 0),
])
def test_batched_summaries_count_solves_stopped_below_their_budget_as_local_does(dtype, evaluation, below):
    from catapult.sweep.ensemble import EnsembleExecutor

    def local(config, progress=None):
        return train.run(config, progress="none")

    cells = [_cell(MLP, i, dtype=dtype, train={"steps": 1}, optimizer={"name": "sgd", "lr": 0.05 * (i + 1)},
                   eval={"sharpness_every": 1, "test_every": 0, **evaluation}) for i in range(2)]
    executor = EnsembleExecutor(local, kernels=True)
    batched = dict(executor.run(cells))
    assert executor.fallbacks == []
    for cell in cells:
        want = local(cell.config).summary
        got = batched[cell.id].summary
        assert want["sharpness_unconverged"] == 2 and want["unconverged_below_budget"] == below   # rows 0 and 1
        assert got["sharpness_unconverged"] == 2 and got["unconverged_below_budget"] == below


@pytest.mark.parametrize("evaluation, reason", [
    ({"sharpness_memory": "lean"}, "eval.sharpness_memory='lean'"),
    ({"sharpness_hvp": "finite_difference"}, "eval.sharpness_hvp='finite_difference'"),
])
def test_lean_and_difference_sharpness_cells_run_locally(evaluation, reason):
    # the batched engines ran exact products with a kept Krylov basis for these: lean's capped
    # solves stored other values (10%) and half the matvecs, difference products exact ones
    from catapult.sweep.ensemble import EnsembleExecutor

    cells = [_cell(MLP, i, optimizer={"name": "sgd", "lr": 0.1 * (i + 1)}, train={"steps": 4},
                   eval={"sharpness_every": 2, "sharpness_max_iter": 6, **evaluation}) for i in range(2)]
    assert batched_unsupported_reason(cells[0].config).startswith(reason)
    executor = EnsembleExecutor(lambda config, progress=None: train.run(config, progress="none"))
    results = dict(executor.run(cells))
    assert executor.engines == {} and [i for i, _ in executor.fallbacks] == [0, 1]
    for cell in cells:
        local = train.run(cell.config, progress="none")
        assert [(r["sharpness"], r["sharpness_matvecs"]) for r in results[cell.id].metrics] == [
            (r["sharpness"], r["sharpness_matvecs"]) for r in local.metrics]


def test_stacked_evaluate_in_member_groups_equals_each_model_alone(monkeypatch):
    from catapult.losses import get_loss
    from catapult.sweep.batched_model import StackedModel

    configs = [_cell(GPT, i, seed=i, model={"density": 0.5}).config for i in range(3)]
    data = train.load_data(configs[0], "cpu", torch.float64)
    models = [train.build_model(c, data.in_features, data.num_classes, "cpu", torch.float64) for c in configs]
    stacked = StackedModel(models, get_loss("cross_entropy"))
    monkeypatch.setattr(stacked, "members_per_pass", lambda x: 2)  # groups of 2 and 1

    def check(got):  # each member's loss and accuracy as the model alone gives them
        for (loss, acc), i in zip(got, [2, 0, 1]):
            want = train.evaluate(models[i], get_loss("cross_entropy"), data.x_test, data.y_test, chunk=5)
            assert _close(loss, want[0]) and acc == want[1]

    check(stacked.evaluate([2, 0, 1], data.x_test, data.y_test, chunk=5))
    # no chunk given: rows bounded by the output budget (here 3 rows of the GPT's logits), same answer
    from catapult.engine import loop

    per_row = stacked.widest_activation(data.x_test[:1])
    monkeypatch.setattr(loop, "EVAL_CHUNK_ELEMENTS", 3 * per_row)
    seen = []
    forward = stacked._member_loss
    monkeypatch.setattr(stacked, "_member_loss", lambda p, b, x, y: (seen.append(x.shape[0]), forward(p, b, x, y))[1])
    check(stacked.evaluate([2, 0, 1], data.x_test, data.y_test))
    assert max(seen) == 3 and data.x_test.shape[0] > 3


def test_sweep_command_with_no_kernels_trains_on_torch_func(tmp_path, capsys):
    from catapult.cli import main

    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\ndata: {name: digits, n_train: 64, n_test: 32}\n"
                      "model: {name: mlp, width: 16, depth: 3}\noptimizer: {name: sgd}\ntrain: {steps: 3}\n"
                      "sweep: {grid: {optimizer.lr: [0.05, 0.1]}}\n")
    store = tmp_path / "s.db"
    assert main(["sweep", str(config), "--store", str(store), "--executor", "ensemble", "--no-kernels",
                 "--progress", "none", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 cells: 2 finished" in out and "local engine" not in out
    assert main(["sweep", str(config), "--store", str(tmp_path / "t.db"), "--no-kernels"]) == 2
    assert "--no-kernels needs --executor ensemble" in capsys.readouterr().err


def test_sweep_command_says_which_cells_ran_on_the_local_engine_and_why(tmp_path, capsys):
    # the summary used to be silent: a user asking for --executor ensemble could not tell that
    # the spectrum cells had run one at a time (the reason was only in EnsembleExecutor.fallbacks)
    from catapult.cli import main

    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\ndata: {name: digits, n_train: 64, n_test: 32}\n"
                      "model: {name: mlp, width: 16, depth: 3}\noptimizer: {name: sgd}\ntrain: {steps: 2}\n"
                      "eval: {sharpness_every: 1, spectrum_top_k: 2}\n"
                      "sweep: {grid: {optimizer.lr: [0.05, 0.1, 0.2]}}\n")
    assert main(["sweep", str(config), "--store", str(tmp_path / "s.db"), "--executor", "ensemble",
                 "--progress", "none", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 cells: 3 finished" in out
    line = next(x for x in out.splitlines() if "local engine" in x)
    assert line.startswith("3 cells ran on the local engine, not batched (cells 0, 1, 2): ")
    assert "eval.spectrum_top_k=2" in line


@pytest.mark.parametrize("hvp, chunk_size", [("forward_over_reverse", None), ("double_backprop", 24),
                                             ("forward_over_reverse", 24), ("compiled", None)])
def test_hvp_mode_and_micro_batches_are_honoured_and_equal_local(hvp, chunk_size, monkeypatch):
    # eval.sharpness_hvp / sharpness_chunk_size: the local engine's product mode and micro-batches
    # (64 samples in chunks of 24: 24 + 24 + 16, weights |B_k| / |B|); Adam's pre-conditioner
    # uses the chunked gradient. "compiled" runs forward-over-reverse here, equal to the local
    # engine's compiled products up to rounding
    from catapult.sweep.batched_model import StackedHessian

    built = []
    original = StackedHessian.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append((self.mode, [x.shape[0] for x, _, _ in self.chunks]))

    monkeypatch.setattr(StackedHessian, "__init__", spy)
    cells = [_cell(MLP, i, seed=i, optimizer={"name": name, "lr": lr}, train={"steps": 2},
                   eval={"sharpness_every": 2, "sharpness_hvp": hvp, "sharpness_chunk_size": chunk_size,
                         "sharpness_max_iter": 15})
             for i, (name, lr) in enumerate([("adam", 1e-2), ("adam", 3e-2)])]
    _check(cells)
    assert built and all(mode == hvp for mode, _ in built)
    assert all(sizes == ([64] if chunk_size is None else [24, 24, 16]) for _, sizes in built)


def test_persistent_warmup_still_searching_at_the_last_step_equals_local():
    # mutation pass 21 (BL3): a run ending while its persistent warmup still climbs searches at no row past its
    # last update (the mutant ran the warmup's step at the final row too: its lr and searches were not local's)
    mlp = [_cell(MLP, i, seed=i, optimizer={"name": "sgd", "lr": lr}, schedule={"warmup": "persistent"},
                 train={"steps": 2}) for i, lr in enumerate([8.0, 32.0])]
    local, _ = _check(mlp)
    assert all(local[c.id].summary["searches"] >= 1 for c in mlp)
