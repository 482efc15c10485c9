"""``train.fsdp``: catapult train-ddp with the GPT's parameters, gradients and optimizer state
sharded over the processes (FSDP2). Two gloo ranks train the run one process trains on the union
batch (float64, losses and weights); ``model.pt`` holds the full weights; what a sharded run
cannot do is a ConfigError naming its key before any work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.config import ConfigError
from catapult.curvature.distributed import single_process_group
from catapult.engine.distributed import train_ddp
from gloo_ranks import on_ranks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

VOCAB = 257


def _shards(root):
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(root / f"part{i}.npy", rng.integers(0, VOCAB, 700).astype(np.uint16))
    np.save(root / "wiki.valid.npy", rng.integers(0, VOCAB, 200).astype(np.uint16))  # 24 windows of 8
    return root


def _config(root, fsdp=True, optimizer="adam", n_test=None):
    return dict(seed=3, dtype="float64",
                data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB, context=8, n_test=n_test),
                model=dict(name="gpt", width=16, depth=2, n_heads=2, density=0.5),  # static masks
                loss="cross_entropy", optimizer=dict(name=optimizer, lr=3e-2),
                schedule=dict(warmup_steps=2), train=dict(steps=4, batch_size=8, fsdp=fsdp),
                eval=dict(sharpness_every=0, test_every=1))


@pytest.mark.parametrize("optimizer", ["adam", "gi-adam"])
def test_one_sharded_process_trains_what_the_unsharded_run_trains(tmp_path, optimizer):
    # test_every=1 evaluates between the backward and the step: FSDP kept the root's gathered
    # weights after that no-grad forward, and the next step's forward read them stale (the
    # losses parted at step 1 by ~1e-2) until the evaluation resharded them
    root = _shards(tmp_path)
    plain = train_ddp(_config(root, fsdp=False, optimizer=optimizer), progress="none")
    with single_process_group():
        sharded = train_ddp(_config(root, optimizer=optimizer), out_dir=tmp_path / "run", progress="none")
        kinds = {type(p).__name__ for p in sharded.model.parameters()}
    assert kinds == {"DTensor"}
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-12)
    assert [r["test_loss"] for r in sharded.metrics] == pytest.approx([r["test_loss"] for r in plain.metrics], rel=1e-12)
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    want = plain.model.state_dict()
    assert set(weights) == set(want)
    for name, tensor in want.items():   # full tensors, not shards
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-12)


def _sharded_run(rank, world, root, out):
    result = train_ddp(_config(root, n_test=3), out_dir=out, progress="none")
    return {"losses": result.losses, "test": [r["test_loss"] for r in result.metrics],
            "shard_rows": [p.to_local().shape[0] for p in result.model.parameters() if p.dim() == 2]}


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_sharded_ranks_train_what_one_process_trains_on_the_union_batch(tmp_path):
    (tmp_path / "shards").mkdir()
    root = _shards(tmp_path / "shards")
    got = on_ranks(_sharded_run, str(root), str(tmp_path / "run"))
    # 3 validation windows over 2 ranks: each evaluates 1 (the forward is a collective)
    single = train_ddp(_config(root, fsdp=False, n_test=2), progress="none")
    full = {name: p.shape[0] for name, p in single.model.named_parameters() if p.dim() == 2}
    for rank in range(2):
        assert got[rank]["losses"] == pytest.approx(single.losses, rel=1e-9)
        assert got[rank]["test"] == pytest.approx([r["test_loss"] for r in single.metrics], rel=1e-9)
        # each rank holds half the rows of every matrix
        assert got[rank]["shard_rows"] == [(n + 1) // 2 if rank == 0 else n // 2 for n in full.values()]
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-9)


def test_what_a_sharded_run_cannot_do_is_refused_before_any_work(tmp_path):
    root = _shards(tmp_path)
    config = _config(root)
    config.update(eval=dict(sharpness_every=5), schedule=dict(warmup="catapult", warmup_steps=2))
    config["optimizer"]["lr"] = "2^3/lambda0"
    config["model"]["sparsity"] = dict(method="rigl")
    config["train"]["compile"] = True
    with single_process_group(), pytest.raises(ConfigError) as refused:
        train_ddp(config, out_dir=tmp_path / "run", progress="none")
    assert [key for key, _ in refused.value.problems] == [
        "eval.sharpness_every", "optimizer.lr", "schedule.warmup", "model.sparsity.method", "train.compile"]
    assert not (tmp_path / "run").exists()


def test_fsdp_outside_a_process_group_or_in_catapult_train_or_a_sweep_is_refused(tmp_path):
    from catapult.engine import run
    from catapult.sweep import run_sweep
    from catapult.sweep.spec import parse_sweep

    root = _shards(tmp_path)
    with pytest.raises(ConfigError, match=r"^train\.fsdp: .*this run has none"):
        train_ddp(_config(root), out_dir=tmp_path / "run", progress="none")
    with pytest.raises(ConfigError, match=r"^train\.fsdp: "):
        run({"data": {"name": "digits", "n_train": 32, "n_test": 16}, "train": {"steps": 1, "fsdp": True},
             "eval": {"sharpness_every": 0}}, progress="none")
    with pytest.raises(ConfigError, match=r"cell 1 \(train\.fsdp=True\) train\.fsdp: .*a sweep trains each cell"):
        run_sweep({"data": {"name": "digits", "n_train": 32, "n_test": 16}, "train": {"steps": 1},
                   "eval": {"sharpness_every": 0}}, parse_sweep({"grid": {"train.fsdp": [False, True]}}),
                  tmp_path / "s.db", progress="none")
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.db").exists()
