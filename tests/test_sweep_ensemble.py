"""The ``ensemble`` executor (cells trained as one batched model) reproduces the local engine
(:func:`catapult.engine.run`) cell by cell: per-step metrics, sharpness (batched Lanczos),
statuses and summaries; a diverging member changes nothing for the others; memory-budget
chunking changes nothing; cells it cannot batch fall back to the local path."""
from __future__ import annotations

import json
import math

import pytest
import torch

from catapult import config as cfg
from catapult import engine as train
from catapult.sweep.ensemble import EnsembleExecutor, group_key, unsupported_reason
from catapult.sweep.executors import Cell

BASE = {
    "data": {"name": "digits", "n_train": 160, "n_test": 80},
    "model": {"width": 24, "depth": 3, "parametrization": "sp"},
    "train": {"steps": 24},
    "eval": {"sharpness_every": 6, "test_every": 8, "sharpness_max_iter": 40},
}
# rel. tolerance of per-step numbers: batched reductions round differently from per-model ones
RTOL = 2e-4


def _cell(i, **over):
    config = {**BASE, "name": f"c{i}", **over}
    for key in ("optimizer", "schedule", "train", "eval", "model"):
        if key in over:
            config[key] = {**BASE.get(key, {}), **over[key]}
    return Cell(i, cfg.validate(config))


def _close(a, b, rtol=RTOL):
    if a is None or b is None:
        return a is None and b is None
    if not math.isfinite(a):
        return not math.isfinite(b)
    return abs(a - b) <= rtol * max(abs(a), 1e-3)


def _assert_same(local, ens, *, matvecs=True, rtol=RTOL):
    assert ens.status == local.status
    assert len(ens.metrics) == len(local.metrics)
    for a, b in zip(local.metrics, ens.metrics):
        for key in train.METRIC_COLUMNS:
            if key == "sharpness_matvecs" and not matvecs:
                assert (a[key] is None) == (b[key] is None)
                continue
            assert _close(a[key], b[key], rtol), (a["step"], key, a[key], b[key])
        # the rows' columns are the local engine's: a sharpness row carries its solve's mark
        assert (a.get("sharpness_converged") is None) == (b.get("sharpness_converged") is None), a["step"]
        assert b.get("sharpness_converged") in (None, 0, 1)
    for key in ("status", "diverged_at", "steps_completed", "sharpness_measurements", "num_params", "sharpness_kind"):
        assert ens.summary[key] == local.summary[key], key
    for key in ("lambda_0", "lr_target", "threshold_target", "final_train_loss", "final_test_accuracy",
                "final_sharpness"):
        assert _close(local.summary[key], ens.summary[key], rtol), key


def _run(cells, **options):
    ex = EnsembleExecutor(**options)
    results = dict(ex.run(cells))
    assert sorted(results) == sorted(c.id for c in cells)
    return ex, results


def _sgd_grid(dtype="float32"):
    cells, i = [], 0
    for lr, T, mom, seed in [(0.05, 1, 0.0, 0), (0.4, 1, 0.9, 1), (0.4, 8, 0.0, 0), (1.5, 4, 0.5, 1),
                             (60.0, 1, 0.0, 0), (0.2, 2, 0.0, 2)]:
        cells.append(_cell(i, seed=seed, dtype=dtype, optimizer={"name": "sgd", "lr": lr, "momentum": mom,
                                                    "weight_decay": 1e-3 if i % 2 else 0.0},
                           schedule={"warmup_steps": T},
                           train={"divergence_factor": 1000.0}))  # the 1000 x L0 rule: lr 60 diverges
        i += 1
    return cells


@pytest.mark.parametrize("dtype, rtol", [("float32", RTOL), ("float64", 1e-9)])
def test_ensemble_equals_local_sgd_with_sharpness_and_divergence(dtype, rtol):
    # float64 shows the agreement is exact up to rounding (float32 catapults amplify rounding)
    cells = _sgd_grid(dtype)
    ex, results = _run(cells)
    assert ex.fallbacks == []
    assert len(ex.chunks) == 1 and len(ex.chunks[0]) == len(cells)  # one batched model
    statuses = []
    for cell in cells:
        local = train.run(cell.config, progress="none")
        _assert_same(local, results[cell.id], rtol=rtol)
        statuses.append(local.status)
    assert "diverged" in statuses and "finished" in statuses
    # sharpness was measured (lambda_0 reused at t=0, then warm-started Lanczos)
    row = results[0].metrics[6]
    assert row["sharpness"] is not None and row["sharpness_matvecs"] > 0


def test_ensemble_equals_local_adam_mup_preconditioned():
    # muP in the table form (base_width) gives per-group lr multipliers (hidden 1/m_d for Adam)
    cells = []
    for i, (name, lr, T, wd) in enumerate([("adam", 3e-3, 1, 0.0), ("adam", 1e-2, 8, 1e-2),
                                           ("adamw", 3e-3, 4, 1e-1), ("adamw", 2e-2, 1, 0.0)]):
        cells.append(_cell(i, seed=i, model={"parametrization": "mup", "base_width": 8},
                           optimizer={"name": name, "lr": lr, "weight_decay": wd, "betas": [0.9, 0.99 if i % 2 else 0.999]},
                           schedule={"warmup_steps": T}))
    ex, results = _run(cells)
    assert ex.fallbacks == []
    assert len(ex.chunks) == 2  # adam and adamw are different groups
    for cell in cells:
        local = train.run(cell.config, progress="none")
        assert local.summary["sharpness_kind"] == "preconditioned"
        _assert_same(local, results[cell.id])


def test_ensemble_equals_local_supar_sparse_mlp():
    # SμPar with static masks: each member (seed) has its own masks; hidden lr / (m_d m_rho)
    cells = [_cell(i, seed=i, model={"parametrization": p, "base_width": 8, "density": 0.5, "alpha_out": 2.0},
                   optimizer={"name": "adamw", "lr": lr, "weight_decay": 1e-2},
                   eval={"sharpness_every": 0})
             for i, (p, lr) in enumerate([("supar", 3e-3), ("supar", 2e-2), ("supar_lr", 1e-2)])]
    ex, results = _run(cells)
    assert ex.fallbacks == []
    for cell in cells:
        _assert_same(train.run(cell.config, progress="none"), results[cell.id])


def test_ensemble_equals_local_supar_sgd_lr_scaled():
    # SμPar with SGD: per-group lrs, so auto measures the lr-scaled sharpness; the hand kernels
    # apply M^1/2 around their Hessian products
    cells = [_cell(i, seed=i, dtype="float64", model={"parametrization": "supar", "base_width": 8},
                   optimizer={"name": "sgd", "lr": lr, "momentum": mom}, schedule={"warmup_steps": T})
             for i, (lr, mom, T) in enumerate([(0.05, 0.0, 1), (0.3, 0.9, 4)])]
    ex, results = _run(cells)
    assert ex.fallbacks == [] and set(ex.engines.values()) == {"kernels"}
    for cell in cells:
        local = train.run(cell.config, progress="none")
        assert local.summary["sharpness_kind"] == "lr_scaled"
        _assert_same(local, results[cell.id], rtol=1e-9)


def test_ensemble_equals_local_with_cold_sharpness_starts():
    # eval.sharpness_start: cold starts every measurement from the member's own start vector, as
    # the local run does; members with warm and cold starts share one batched model, on the hand
    # kernels and on the torch.func engine
    cells = [_cell(i, seed=seed, dtype="float64", optimizer={"name": "adam", "lr": 1e-2, "weight_decay": 1e-3},
                   eval={"sharpness_every": 2, "sharpness_start": start})
             for i, (seed, start) in enumerate([(0, "cold"), (0, "warm"), (1, "cold")])]
    for kernels in (True, False):
        ex, results = _run(cells, kernels=kernels)
        assert ex.fallbacks == [] and len(ex.chunks) == 1
        for cell in cells:
            _assert_same(train.run(cell.config, progress="none"), results[cell.id], rtol=1e-9)
    # the same run measured from both starts: the same sharpness to tol, more products cold
    pairs = [(a, b) for a, b in zip(results[0].metrics[1:], results[1].metrics[1:]) if a["sharpness"] is not None]
    for a, b in pairs:
        assert a["sharpness"] == pytest.approx(b["sharpness"], rel=2e-3)
    assert sum(a["sharpness_matvecs"] for a, _ in pairs) > 1.5 * sum(b["sharpness_matvecs"] for _, b in pairs)


def test_ensemble_minibatch_cross_entropy_cosine():
    cells = [_cell(i, seed=0, loss="cross_entropy",
                   train={"batch_size": 32, "steps": 20},
                   optimizer={"name": "sgd", "lr": lr, "momentum": 0.9},
                   schedule={"warmup_steps": 4, "decay": "cosine"})
             for i, lr in enumerate([0.01, 0.05, 0.2])]
    ex, results = _run(cells)
    assert ex.fallbacks == [] and len(ex.chunks) == 1
    for cell in cells:
        _assert_same(train.run(cell.config, progress="none"), results[cell.id])


def test_diverging_member_leaves_the_others_unchanged():
    cells = _sgd_grid()
    _, with_all = _run(cells)
    diverging = [c.id for c in cells if with_all[c.id].status == "diverged"]
    assert diverging == [4]
    assert with_all[4].summary["diverged_at"] < BASE["train"]["steps"]
    _, without = _run([c for c in cells if c.id != 4])
    for cell in cells:
        if cell.id == 4:
            continue
        a, b = without[cell.id], with_all[cell.id]
        assert a.status == b.status
        assert [r["train_loss"] for r in a.metrics] == pytest.approx([r["train_loss"] for r in b.metrics],
                                                                     rel=1e-6)
        assert [r["sharpness"] for r in a.metrics if r["sharpness"] is not None] == pytest.approx(
            [r["sharpness"] for r in b.metrics if r["sharpness"] is not None], rel=1e-6)
        assert [r["sharpness_matvecs"] for r in a.metrics] == [r["sharpness_matvecs"] for r in b.metrics]


def test_memory_budget_chunks_give_identical_results():
    cells = _sgd_grid()[:4]
    ex_all, together = _run(cells)
    ex_one, apart = _run(cells, memory_mb=1e-3)  # budget below one member: one member per chunk
    assert [len(c) for c in ex_all.chunks] == [4]
    assert [len(c) for c in ex_one.chunks] == [1, 1, 1, 1]
    ex_two, pairs = _run(cells, max_members=2)
    assert [len(c) for c in ex_two.chunks] == [2, 2]
    for cell in cells:
        for other in (apart, pairs):
            _assert_same(together[cell.id], other[cell.id])


def test_grouping_and_fallback():
    a = _cell(0, seed=0, optimizer={"lr": 0.1}).config
    b = _cell(1, seed=5, optimizer={"lr": 0.3, "momentum": 0.9}, schedule={"warmup_steps": 7}).config
    assert group_key(a) == group_key(b)  # full batch: the seed only changes the init
    c = _cell(2, seed=5, train={"batch_size": 16}).config
    d = _cell(3, seed=0, train={"batch_size": 16}).config
    assert group_key(c) != group_key(d)  # minibatch: different batch order
    assert group_key(a) != group_key(_cell(4, model={"width": 32}).config)
    assert unsupported_reason(a) is None
    odd = _cell(5, eval={"sharpness_dtype": "float64"})
    assert "sharpness_dtype" in unsupported_reason(odd.config)

    calls = []

    def fake_run(config, progress=None):
        calls.append(config["name"])
        return train.run(config, progress="none")

    # what the hand-derived kernels do not reproduce trains on the torch.func engine; only what
    # no batched engine can run (here: a config that does not validate) runs through run_fn
    ex = EnsembleExecutor(run_fn=fake_run)
    results = dict(ex.run([_cell(0, optimizer={"lr": 0.1}), odd, Cell(6, {"model": {"width": -1}})]))
    assert calls == [] and ex.engines == {0: "kernels", 5: "func"}
    assert [cid for cid, _ in ex.fallbacks] == [6] and "model.width" in ex.fallbacks[0][1]
    assert results[5].status == "finished" and results[0].status == "finished" and results[6].status == "failed"


class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [False, True])
def test_sweep_progress_shows_done_diverged_and_eta(tty):
    from catapult.sweep.driver import SweepProgress

    stream = _Stream(tty)
    report = SweepProgress(4, {"finished": 1}, "auto", stream, name="demo")
    assert report.mode == ("bar" if tty else "lines")
    assert report.eta_seconds() is None  # nothing run yet in this session
    report.update(1, "diverged", {"optimizer.lr": "2^5/lambda0"})
    report.update(2, "finished", {"optimizer.lr": "2^1/lambda0"})
    eta = report.eta_seconds()
    assert eta is not None and eta >= 0  # one cell left, at the mean time per cell so far
    report.close()
    text = "".join(stream.text)
    if tty:
        assert "3/4" in text and "diverged 1" in text and "<" in text  # tqdm: elapsed<remaining
    else:
        lines = [line for line in text.splitlines() if line]
        assert len(lines) == 2
        assert "cell 1 diverged" in lines[0] and "done 2/4, diverged 1" in lines[0] and "ETA" in lines[0]
        assert "done 3/4, diverged 1" in lines[1]


@pytest.mark.parametrize("path, at_least", [("configs/smoke/phase_diagram.yaml", 12),
                                            ("configs/sweeps/phase_small.yaml", 100),
                                            ("configs/sweeps/fig3_fcn_cifar10.yaml", 100)])
def test_phase_diagram_configs_expand_to_valid_cells(path, at_least):
    from pathlib import Path

    from catapult.sweep.spec import expand, load_sweep

    root = Path(__file__).resolve().parents[1]
    base, spec = load_sweep(root / path)
    cells = expand(base, spec)
    assert len(cells) >= at_least
    assert "optimizer.lr" in spec.keys and "schedule.warmup_steps" in spec.keys
    assert spec.axis("optimizer.lr").form == "log2_over_lambda0"
    # every cell of these configs is one the ensemble executor batches
    assert all(unsupported_reason(c.config) is None for c in cells)


def _stacked(loss, parametrization, density, activation, n=5, base_width=6):
    """A ``KernelStack`` of ``n`` float64 members (different seeds) on 50 digits, and the data."""
    from catapult.sweep.ensemble_run import KernelStack
    from catapult.sweep.member import Member as _Member

    configs = [cfg.validate({"name": f"m{i}", "seed": i, "dtype": "float64", "loss": loss,
                             "data": {"name": "digits", "n_train": 50, "n_test": 20},
                             "model": {"width": 12, "depth": 3, "parametrization": parametrization,
                                       "base_width": base_width, "density": density, "activation": activation}})
               for i in range(n)]
    data = train.load_data(configs[0], "cpu", torch.float64)
    models = [train.build_model(c, data.in_features, data.num_classes, "cpu", torch.float64) for c in configs]
    members = [_Member(cell=Cell(i, c), config=c, steps=1, sharpness_every=1, test_every=0, divergence_factor=1e3,
                       tol=1e-3, max_iter=10, lr_spec=None, sharpness_seed=0) for i, c in enumerate(configs)]
    return KernelStack(members, models, "hessian", loss), data


@pytest.mark.parametrize("loss, targets", [("mse", "labels"), ("cross_entropy", "labels"), ("cross_entropy", "soft")])
@pytest.mark.parametrize("parametrization, density, activation", [("sp", 1.0, "relu"), ("mup", 1.0, "linear"),
                                                                   ("supar", 0.5, "relu")])
def test_hand_gradient_and_hvp_equal_autograd(loss, targets, parametrization, density, activation):
    batch, data = _stacked(loss, parametrization, density, activation)
    assert batch.hand
    batch.group_bytes = 2 * 50 * 12 * 8  # sub-batches of 2 members (5 = 2 + 2 + 1)
    assert batch.group_size(50) == 2
    x, y = data.x_train, data.y_train
    if targets == "soft":
        y = torch.softmax(torch.randn(50, data.num_classes, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(0)), dim=1) * 0.9
    params = [p.detach().requires_grad_(True) for p in batch.params]
    with torch.enable_grad():
        losses = batch.losses(batch.forward(params, batch.masks, x), y)
        grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
    hand_losses, accs, hand_grads = batch.loss_grads(x, y, True)
    assert torch.allclose(hand_losses, losses.detach(), rtol=1e-12, atol=0)
    assert accs == batch.accuracies(batch.forward(batch.params, batch.masks, x), y)
    for a, b in zip(grads, hand_grads):
        assert torch.allclose(a.detach(), b, rtol=1e-10, atol=1e-14)
    V = torch.randn(5, batch.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = batch.flat(torch.autograd.grad(grads, params, grad_outputs=batch.split(V), allow_unused=True,
                                        materialize_grads=True))
    state = batch.hvp_state(list(range(5)), x, y)
    assert torch.allclose(batch.hvp(state, V), hv, rtol=1e-10, atol=1e-12)
    for where in ([3, 0], [1, 2, 3], [4]):  # the members still iterating, in Lanczos order
        assert torch.allclose(batch.hvp(state, V[where], where), hv[where], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="3 vectors for 2 members"):
        batch.hvp(state, V[:3], [0, 1])
    assert _stacked(loss, "sp", 1.0, "tanh", n=2)[0].hand is False  # tanh keeps autograd


def test_sub_batch_size_changes_nothing(monkeypatch):
    # sub-batches of 1 member vs all members in one: same results to float64 rounding, with
    # sharpness (HVP state cut down as members converge) and a diverging member
    from catapult.sweep import ensemble_kernels

    cells = _sgd_grid("float64")
    runs = []
    for group_bytes in (1, 2**40):
        monkeypatch.setattr(ensemble_kernels, "_GROUP_BYTES", group_bytes)
        runs.append(_run(cells)[1])
    for cell in cells:
        _assert_same(runs[0][cell.id], runs[1][cell.id], rtol=1e-9)



def test_solver_memory_settings_are_batched_and_equal_local():
    # a small Krylov basis (thick restarts in every Lanczos run) and the local engine's
    # micro-batched HVPs: still one batched model, and the same numbers as local
    cells = [_cell(c.id, **{**c.config, "eval": {**c.config["eval"], "sharpness_max_basis": 4,
                                                  "sharpness_chunk_size": 50}})
             for c in _sgd_grid("float64")]
    ex, results = _run(cells)
    assert ex.fallbacks == [] and len(ex.chunks) == 1
    restarted = False
    for cell in cells:
        local = train.run(cell.config, progress="none")
        _assert_same(local, results[cell.id], rtol=1e-9)
        restarted |= any((row["sharpness_matvecs"] or 0) > 4 for row in local.metrics)
    assert restarted  # some run needed more products than the basis holds

def test_tanh_mlp_uses_autograd_and_equals_local():
    """The autograd path (gradient, Hessian and pre-conditioned Adam operator) still equals local."""
    cells = [_cell(i, seed=i, model={"activation": "tanh"}, optimizer={"name": name, "lr": lr})
             for i, (name, lr) in enumerate([("sgd", 0.1), ("sgd", 0.5), ("adam", 3e-3), ("adam", 1e-2)])]
    ex, results = _run(cells)
    assert ex.fallbacks == []
    for cell in cells:
        _assert_same(train.run(cell.config, progress="none"), results[cell.id])


@pytest.mark.parametrize("members, group", [(5, 2), (32, 5), (3, 10), (1, 1), (7, 7), (0, 2), (10, 4)])
def test_sub_batches_cover_all_members_in_cache_sized_even_ranges(members, group):
    batch, _ = _stacked("mse", "sp", 1.0, "relu", n=2)
    batch.threads = 1  # no rounding to the thread count (tested below)
    batch.group_bytes = group * 50 * 12 * 8  # ``group`` members' largest activation (50 samples, float64)
    ranges = batch.sub_batches(members, 50)
    # contiguous and complete, none larger than the group, none empty, as few as the group allows
    assert [r for s, e in ranges for r in range(s, e)] == list(range(members))
    assert all(0 < e - s <= group for s, e in ranges)
    assert len(ranges) == -(-members // group)
    if ranges:  # even: 10 members in groups of 4 are 4 + 3 + 3, not 4 + 4 + 2
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n, size, multiple", [(10, 4, 2), (9, 4, 2), (32, 3, 2), (5, 2, 2), (3, 2, 2), (1, 4, 2),
                                               (7, 1, 2), (31, 8, 4), (13, 6, 3), (8, 8, 8), (0, 2, 2)])
def test_sub_batch_ranges_hold_whole_multiples_of_the_thread_count(n, size, multiple):
    from catapult.sweep.ensemble_kernels import even_ranges as _even_ranges

    ranges = _even_ranges(n, size, multiple)
    assert [r for s, e in ranges for r in range(s, e)] == list(range(n))
    rounded = size - size % multiple if size >= multiple else size
    sizes = [e - s for s, e in ranges]
    assert all(0 < k <= rounded for k in sizes)
    assert len(ranges) == -(-n // rounded)
    if size >= multiple:  # a batched GEMM splits its batch over the threads: keep it balanced
        assert all(k % multiple == 0 for k in sizes[:-1])


def test_batch_with_two_threads_uses_even_sub_batches():
    batch, _ = _stacked("mse", "sp", 1.0, "relu", n=2)
    batch.threads = 2
    batch.group_bytes = 3 * 50 * 12 * 8  # three members fit; two are taken
    assert [e - s for s, e in batch.sub_batches(9, 50)] == [2, 2, 2, 2, 1]
    assert [e - s for s, e in batch.sub_batches(6, 50)] == [2, 2, 2]


def test_l2_cache_size_read_from_sysfs_layout(tmp_path):
    from catapult.sweep.ensemble_kernels import _l2_cache_bytes

    for name, level, kind, size in [("index0", 1, "Data", "48K"), ("index1", 1, "Instruction", "32K"),
                                    ("index2", 2, "Unified", "1024K"), ("index3", 3, "Unified", "32768K")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(f"{level}\n")
        (tmp_path / name / "type").write_text(f"{kind}\n")
        (tmp_path / name / "size").write_text(f"{size}\n")
    assert _l2_cache_bytes(root=tmp_path) == 2**20
    (tmp_path / "index2" / "size").write_text("2M\n")
    assert _l2_cache_bytes(root=tmp_path) == 2 * 2**20
    assert _l2_cache_bytes(default=12345, root=tmp_path / "missing") == 12345
    # a split L2 (its data half listed as 'Data'): that size (mutation pass 21, EK9: read past it to the default)
    (tmp_path / "index2" / "type").write_text("Data\n")
    (tmp_path / "index2" / "size").write_text("512K\n")
    assert _l2_cache_bytes(default=12345, root=tmp_path) == 512 * 2**10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh runs it)")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ensemble_equals_local_on_cuda(optimizer):
    # on an accelerator all members form one sub-batch; float64 so the check
    # is about the arithmetic, not TF32 or reduction order
    if optimizer == "sgd":
        cells = [_cell(c.id, **{**c.config, "device": "cuda", "dtype": "float64"}) for c in _sgd_grid()]
    else:
        cells = [_cell(i, seed=i, device="cuda", dtype="float64", optimizer={"name": "adam", "lr": lr})
                 for i, lr in enumerate([3e-3, 1e-2, 3e-2])]
    ex, results = _run(cells)
    assert ex.fallbacks == []
    for cell in cells:
        local = train.run(cell.config, progress="none")
        assert local.summary["device"].startswith("cuda")
        _assert_same(local, results[cell.id], rtol=1e-9)


def test_member_bytes_counts_the_configured_krylov_basis():
    from catapult.sweep.ensemble import member_bytes

    # width 24, depth 3, with biases, on 64 inputs and 10 classes: P by hand
    n_params = (64 * 24 + 24) + (24 * 24 + 24) + (24 * 10 + 10)
    sizes = {b: member_bytes(_cell(0, eval={"sharpness_max_basis": b}).config, 64, 10, 160, 80) for b in (8, 20)}
    assert sizes[20] - sizes[8] == 12 * n_params * 4  # float32 vectors
    no_sharpness = _cell(0, eval={"sharpness_every": 0, "sharpness_max_basis": 20}).config
    assert member_bytes(no_sharpness, 64, 10, 160, 80) < sizes[8]


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.4, "momentum": 0.9, "weight_decay": 1e-3},
                                       {"name": "adam", "lr": 3e-3, "weight_decay": 1e-2},
                                       {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-1}])
def test_update_fused_into_the_gradient_pass_is_bitwise_the_separate_update(optimizer, monkeypatch):
    """Steps where no member measures anything apply each sub-batch's update right after its
    gradient; steps that measure (test every step here) take the gradient of all members, then
    update. Both must give the same training trajectory bit for bit, and the fused path must
    really have run."""
    from catapult.sweep import ensemble_kernels, ensemble_run

    fused_calls = []
    original = ensemble_run.KernelStack.loss_grads

    def spy(self, x, y, need_grads, lrs=None):
        fused_calls.append(lrs is not None)
        return original(self, x, y, need_grads, lrs)

    monkeypatch.setattr(ensemble_run.KernelStack, "loss_grads", spy)
    monkeypatch.setattr(ensemble_kernels, "_GROUP_BYTES", 2 * 160 * 24 * 4)  # sub-batches of 2 members (of 160 x 24)
    runs = {}
    for test_every in (0, 1):
        cells = [_cell(i, seed=i, optimizer={**optimizer, "lr": optimizer["lr"] * (1 + i)},
                       schedule={"warmup_steps": 1 + 3 * i}, train={"steps": 12},
                       eval={"sharpness_every": 0, "test_every": test_every}) for i in range(5)]
        fused_calls.clear()
        ex = EnsembleExecutor(max_members=5)
        ex_results = dict(ex.run(cells))
        runs[test_every] = ({i: [row["train_loss"] for row in r.metrics] for i, r in ex_results.items()},
                            list(fused_calls))
    (fused_losses, fused_flags), (plain_losses, plain_flags) = runs[0], runs[1]
    assert any(fused_flags) and not any(plain_flags)
    assert fused_losses == plain_losses  # exact



def test_a_resumed_ensemble_sweep_stores_the_bits_of_an_uninterrupted_one(tmp_path):
    # a resume reruns the unfinished cells in a smaller chunk; their measured sharpness and
    # lambda_0 moved by ~1e-7 in float32 (the store was "bit for bit" for the local executor only)
    import shutil
    import sqlite3

    from catapult import cli

    config = tmp_path / "sweep.yaml"
    config.write_text("data: {name: digits, n_train: 64, n_test: 32}\n"
                      "model: {name: mlp, width: 16, depth: 2}\nloss: mse\noptimizer: {name: sgd}\n"
                      "train: {steps: 30}\neval: {sharpness_every: 10, test_every: 10, sharpness_max_iter: 30}\n"
                      "sweep: {grid: {optimizer.lr: {log2_over_lambda0: [0, 4, 2]}}, seeds: 2}\n")
    argv = ["sweep", str(config), "--executor", "ensemble", "--threads", "1", "--progress", "none"]
    assert cli.main([*argv, "--store", str(tmp_path / "whole.db")]) == 0
    shutil.copy(tmp_path / "whole.db", tmp_path / "resumed.db")
    with sqlite3.connect(tmp_path / "resumed.db") as conn:   # what an interrupted driver leaves
        conn.execute("DELETE FROM metrics WHERE cell_id = 3")
        conn.execute("UPDATE cells SET status = 'pending', summary_json = NULL, sharpness = NULL WHERE id = 3")
    assert cli.main([*argv, "--store", str(tmp_path / "resumed.db")]) == 0

    def rows(name):
        with sqlite3.connect(tmp_path / name) as conn:
            return (conn.execute("SELECT * FROM metrics ORDER BY cell_id, step").fetchall(),
                    conn.execute("SELECT id, status, lambda_0, sharpness, summary_json FROM cells ORDER BY id").fetchall())

    whole, resumed = rows("whole.db"), rows("resumed.db")
    assert whole[0] == resumed[0]
    assert [r[:4] for r in whole[1]] == [r[:4] for r in resumed[1]]
    for a, b in zip(whole[1], resumed[1]):
        keep = lambda s: {k: v for k, v in json.loads(s).items() if "time" not in k and "per_second" not in k}
        assert keep(a[4]) == keep(b[4])


def test_paper_mup_biases_carry_their_multipliers_in_the_hand_derived_passes():
    # mutation pass 21 (EK4, EK5): the warmup paper's muP (no base_width) multiplies each bias by its layer's
    # multiplier (readout: 1 / sqrt(12)); the mutants dropped it in the narrow readout's forward (EK4) and in the
    # bias gradients (EK5), and every stacked test was of the table form (bias multiplier 1). Truth: each member's
    # own module's outputs, and autograd's gradients of the stacked forward
    batch, data = _stacked("mse", "mup", 1.0, "relu", n=2, base_width=None)
    assert batch.has_bias and batch.mults[-1][1] != 1.0
    x, y = data.x_train, data.y_train
    models = [train.build_model(cfg.validate({"name": f"m{i}", "seed": i, "dtype": "float64",
                                              "data": {"name": "digits", "n_train": 50, "n_test": 20},
                                              "model": {"width": 12, "depth": 3, "parametrization": "mup"}}),
                                data.in_features, data.num_classes, "cpu", torch.float64) for i in range(2)]
    for i, model in enumerate(models):
        with torch.no_grad():
            torch.nn.init.normal_(model.layers[-1].bias)   # a bias that is not 0, in the stack too
        batch.params[-1][i] = model.layers[-1].bias.detach()
    out = batch.forward(batch.params, batch.masks, x)
    for i, model in enumerate(models):
        assert torch.allclose(out[i], model(x).detach(), rtol=1e-12, atol=1e-14)
    params = [p.detach().requires_grad_(True) for p in batch.params]
    with torch.enable_grad():
        grads = torch.autograd.grad(batch.losses(batch.forward(params, batch.masks, x), y).sum(), params)
    for a, b in zip(grads, batch.loss_grads(x, y, True)[2]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_evaluation_in_several_chunks_sums_every_chunk(monkeypatch):
    # (mutation pass 23) KernelStack.evaluate sums loss and accuracy over chunks of the test set
    # (8192 rows each; the 80 test rows here fit in one): in chunks of 7 the summary is the local engine's
    import inspect

    from catapult.sweep.ensemble_run import KernelStack

    monkeypatch.setattr(inspect.unwrap(KernelStack.evaluate), "__defaults__", (7,))
    cells = [_cell(i, dtype="float64", optimizer={"name": "sgd", "lr": lr}) for i, lr in enumerate((0.05, 0.2))]
    _, results = _run(cells)
    for cell in cells:
        _assert_same(train.run(cell.config, progress="none"), results[cell.id], rtol=1e-9)
