"""A sweep's up-front size check counted a cell's weights alone while ``catapult train`` counts
its gradients and the optimizer's state too (:func:`catapult.engine.model_size.training_copies`):
an Adam cell of 7.9 GiB of float32 weights (31.6 GiB trained) passed the sweep's check on a
machine of 23.5 GiB, its store was made, and the cell failed at run time. One rule now
(:func:`~catapult.engine.model_size.training_fit`): the sweep refuses such a cell before its store
is made, naming the cell's key values and the sizes. ``train-ddp`` counts the same per rank (DDP:
every copy on each rank; FSDP: a 1 / world share, and the full weights while it builds). The model
is counted on the meta device and the machine's memory patched (nothing of its size allocated)."""
from __future__ import annotations

import pytest

from catapult import config as cfg
from catapult.engine import model_size
from catapult.engine.model_size import check_model_fits, model_parameters

GIB = 2 ** 30


def _sweep(tmp_path, optimizers):
    from catapult.sweep.spec import load_sweep

    path = tmp_path / "grid.yaml"
    path.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                    "model: {name: mlp, width: 46000, depth: 3}\noptimizer: {name: sgd, lr: 0.001}\n"
                    "train: {steps: 1}\neval: {sharpness_every: 0}\n"
                    f"sweep: {{grid: {{optimizer.name: {optimizers}}}}}\n")
    return load_sweep(path)


def test_a_sweep_refuses_a_cell_whose_optimizer_state_exceeds_memory_before_its_store(monkeypatch, tmp_path):
    from catapult.sweep import run_sweep
    from sweep_fakes import FakeRun

    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: int(23.5 * GIB))
    base, spec = _sweep(tmp_path, "[sgd, adam]")
    weights = 4 * model_parameters(cfg.validate({"data": {"name": "digits"},
                                                 "model": {"name": "mlp", "width": 46_000, "depth": 3}}), 64, 10)
    assert 23.5 * GIB / 2 < 2 * weights < 23.5 * GIB < 4 * weights   # sgd: weights + gradients fit; adam's 4 do not
    fake = FakeRun()
    with pytest.raises(cfg.ConfigError) as refused:
        run_sweep(base, spec, tmp_path / "s.db", run_fn=fake, progress="none")
    assert [key for key, _ in refused.value.problems] == ["cell 1 (optimizer.name=adam) model"]
    message = refused.value.problems[0][1]
    assert f"{4 * weights / GIB:,.1f} GiB with 3 more copies of its weights" in message, message
    assert "adam optimizer's state" in message and "23.5 GiB" in message, message
    assert not (tmp_path / "s.db").exists() and fake.calls == []


def test_the_sweep_and_train_refuse_the_same_cells(monkeypatch, tmp_path):
    # the sweep's refusal is train's own: run() refuses the adam cell with the same words, passes sgd's guard
    from catapult.engine import loop, run
    from catapult.sweep.cell_refusals import refuse_impossible_cells
    from catapult.sweep.spec import expand

    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: int(23.5 * GIB))
    base, spec = _sweep(tmp_path, "[sgd, adam]")
    cells = expand(base, spec)
    with pytest.raises(cfg.ConfigError) as swept:
        refuse_impossible_cells(cells)
    built = []
    monkeypatch.setattr(loop, "build_run", lambda config, trains=False: built.append(trains) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(cells[0].config, progress="none")      # sgd: past the guard (the build is stubbed)
    assert built == [True]
    with pytest.raises(cfg.ConfigError) as trained:
        run(cells[1].config, progress="none")
    assert trained.value.problems[0][1] == swept.value.problems[0][1]


@pytest.mark.parametrize("fsdp, world, copies", [(False, 1, 4), (False, 4, 4), (True, 2, 2), (True, 8, 1)])
def test_each_rank_holds_all_copies_under_ddp_and_its_share_under_fsdp(monkeypatch, fsdp, world, copies):
    from catapult.engine.model_size import training_fit

    # truth: Adam holds weights, gradients, exp_avg, exp_avg_sq (4 copies); DDP keeps them all on each rank,
    # FSDP 4 / world of them, never less than the full weights it builds before sharding; and on every rank the
    # TENSOR_BYTES of each of the 4 copies' 6 tensors (FSDP2 shards each parameter: a tensor each still)
    config = cfg.validate({"data": {"name": "digits"}, "model": {"name": "mlp", "width": 400, "depth": 3},
                           "optimizer": {"name": "adam", "lr": 0.001}, "train": {"fsdp": fsdp}})
    weights = 4 * model_parameters(config, 64, 10)
    fit = training_fit(config, world)
    tensors = model_size.TENSOR_BYTES * 6 * 4
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: copies * weights + tensors)
    check_model_fits(config, "cpu", **fit)              # exactly its need: fits
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: copies * weights + tensors - 1)
    with pytest.raises(cfg.ConfigError, match=r"model\.width=400") as refused:
        check_model_fits(config, "cpu", **fit)
    # the copies as counted: all 4 on a DDP rank, split under FSDP (8 ranks: its built weights alone, no copies)
    said = {1: "(its gradients and the adam optimizer's state), more", 4: "(its gradients and the adam optimizer's "
            "state), more", 2: "(its gradients and the adam optimizer's state; the 4 copies, weights included, split "
            "among 2 processes), more", 8: "GiB, more"}[world]
    message = str(refused.value)
    assert said in message and ("copies" in message) == (world != 8), message
