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
from torch_features import FSDP2

# every test here trains, or is refused, with train.fsdp, which torch before 2.6 refuses first
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              FSDP2]

VOCAB = 257


def _shards(root):
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(root / f"part{i}.npy", rng.integers(0, VOCAB, 700).astype(np.uint16))
    np.save(root / "wiki.valid.npy", rng.integers(0, VOCAB, 200).astype(np.uint16))  # 24 windows of 8
    return root


def _config(root, fsdp=True, optimizer="adam", n_test=None, sharpness_every=0, lr=3e-2):
    return dict(seed=3, dtype="float64",
                data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB, context=8, n_test=n_test),
                model=dict(name="gpt", width=16, depth=2, n_heads=2, density=0.5),  # static masks
                loss="cross_entropy", optimizer=dict(name=optimizer, lr=lr),
                schedule=dict(warmup_steps=2), train=dict(steps=4, batch_size=8, fsdp=fsdp),
                eval=dict(sharpness_every=sharpness_every, sharpness_tol=1e-8, test_every=1))


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
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-12, abs=0)
    assert [r["test_loss"] for r in sharded.metrics] == pytest.approx([r["test_loss"] for r in plain.metrics], rel=1e-12, abs=0)
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    want = plain.model.state_dict()
    assert set(weights) == set(want)
    for name, tensor in want.items():   # full tensors, not shards
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_sharded_run_tracks_the_sharpness_lambda0_and_spectrum_the_unsharded_run_tracks(tmp_path, optimizer):
    # adam tracks the pre-conditioned sharpness, sgd the Hessian's; the measurements (central
    # differences of FSDP's gradient) leave training untouched, bit for bit
    root = _shards(tmp_path)
    config = _config(root, optimizer=optimizer, sharpness_every=2)
    # tol 1e-5 puts the eigenvalues within ~1e-10 of each other (measured: <= 2e-8 at 1e-8 and
    # 1e-5 alike, the difference products' own error), a quarter of 1e-8's products; lambda_0 over
    # 2 batches (the second warm-started from the first) where 10 measured 8 more of the same
    config["eval"].update(spectrum_top_k=2, sharpness_tol=1e-5, lambda0_batches=2)
    plain = train_ddp(dict(config, train=dict(config["train"], fsdp=False)), progress="none")
    with single_process_group():
        sharded = train_ddp(config, progress="none")
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-12, abs=0)
    assert sharded.summary["lambda_0"] == pytest.approx(plain.summary["lambda_0"], rel=1e-7)
    for column in ("sharpness", "eig_1", "eig_2"):
        got = [r[column] for r in sharded.metrics if r.get(column) is not None]
        assert len(got) == 3   # steps 0, 2 and the last
        assert got == pytest.approx([r[column] for r in plain.metrics if r.get(column) is not None], rel=1e-7), column


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_sharded_run_takes_the_catapult_warmup_the_unsharded_run_takes(tmp_path, optimizer):
    # the critical-lr search moves the shards in place and puts them back; lr targets above the
    # critical lr (measured: the warmups start at 6.55 and 0.102)
    root = _shards(tmp_path)
    config = _config(root, optimizer=optimizer, lr={"sgd": 30.0, "adam": 1.0}[optimizer])
    config["schedule"] = dict(warmup="catapult", warmup_steps=3)
    plain = train_ddp(dict(config, train=dict(config["train"], fsdp=False)), progress="none")
    with single_process_group():
        sharded = train_ddp(config, progress="none")
    assert [r["lr"] for r in sharded.metrics] == pytest.approx([r["lr"] for r in plain.metrics], rel=1e-12, abs=0)
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-12, abs=0)
    assert len({r["lr"] for r in plain.metrics}) > 2   # the warmup ramps from the critical lr


def _sharded_run(rank, world, root, out):
    config = _config(root, n_test=3, sharpness_every=2)
    # the eigenvalue to ~1e-10: enough for 1e-6, half the products; lambda_0 over 2 batches, not 10
    config["eval"].update(sharpness_tol=1e-5, lambda0_batches=2)
    result = train_ddp(config, out_dir=out, progress="none")
    return {"losses": result.losses, "test": [r["test_loss"] for r in result.metrics],
            "sharpness": [r["sharpness"] for r in result.metrics if r.get("sharpness") is not None],
            "lambda_0": result.summary["lambda_0"],
            "shard_rows": [p.to_local().shape[0] for p in result.model.parameters() if p.dim() == 2]}


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_sharded_ranks_train_what_one_process_trains_on_the_union_batch(tmp_path):
    (tmp_path / "shards").mkdir()
    root = _shards(tmp_path / "shards")
    got = on_ranks(_sharded_run, str(root), str(tmp_path / "run"))
    # 3 validation windows over 2 ranks: each evaluates 1 (the forward is a collective)
    config = _config(root, fsdp=False, n_test=2, sharpness_every=2)
    config["eval"].update(sharpness_tol=1e-5, lambda0_batches=2)
    single = train_ddp(config, progress="none")
    full = {name: p.shape[0] for name, p in single.model.named_parameters() if p.dim() == 2}
    for rank in range(2):
        assert got[rank]["losses"] == pytest.approx(single.losses, rel=1e-9)
        assert got[rank]["test"] == pytest.approx([r["test_loss"] for r in single.metrics], rel=1e-9)
        # the union batch's pre-conditioned sharpness, from the shards' finite differences
        assert got[rank]["sharpness"] == pytest.approx(
            [r["sharpness"] for r in single.metrics if r.get("sharpness") is not None], rel=1e-6)
        assert got[rank]["lambda_0"] == pytest.approx(single.summary["lambda_0"], rel=1e-6)
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
    config["model"]["sparsity"] = dict(method="rigl", update_every=2, end_fraction=1.0)  # masks that move
    config["train"]["compile"] = True
    with single_process_group(), pytest.raises(ConfigError) as refused:
        train_ddp(config, out_dir=tmp_path / "run", progress="none")
    assert [key for key, _ in refused.value.problems] == ["model.sparsity.method", "train.compile"]
    # the sharpness of the shards: finite differences of FSDP's gradient, in the model's dtype,
    # which in float32 cross a ReLU GPT's kinks
    config = _config(root, sharpness_every=2)
    config.update(dtype="float32")
    config["eval"].update(sharpness_hvp="double_backprop", sharpness_dtype="float64", sharpness_chunk_size=2)
    with single_process_group(), pytest.raises(ConfigError) as refused:
        train_ddp(config, out_dir=tmp_path / "run", progress="none")
    assert [key for key, _ in refused.value.problems] == [
        "model.activation", "eval.sharpness_hvp", "eval.sharpness_dtype", "eval.sharpness_chunk_size"]
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


def test_the_command_under_torchrun_with_one_process_shards_over_a_group_of_one(tmp_path, monkeypatch, capsys):
    # the command started a process group only for a world above 1, so `torchrun --nproc_per_node 1`
    # with train.fsdp was told it had not been started by torchrun
    import yaml

    from catapult.cli import main
    from gloo_ranks import free_port

    root = _shards(tmp_path)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(_config(root)))
    for name, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(free_port())), ("GLOO_SOCKET_IFNAME", "lo")):
        monkeypatch.setenv(name, value)   # as torchrun sets them
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert not torch.distributed.is_initialized()   # the command's group is gone again
    assert (tmp_path / "run" / "model.pt").exists()
