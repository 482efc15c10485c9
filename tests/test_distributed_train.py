"""Data-parallel training: 2 CPU processes on gloo over loopback end with the parameters one
process reaches on the union batch (float64), from *.npy token shards."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from catapult.config import ConfigError
from catapult.engine.distributed import TokenShards, global_batch_rows, train_ddp, validation_windows
from gloo_ranks import on_ranks

VOCAB = 257


def _config(root, steps=4):
    # rigl moves masks at multiples of update_every below T_end = steps: a run of 1 step has no such
    # step (and is refused), so its masks are static
    sparsity = (dict(method="rigl", update_every=2 if steps >= 3 else 1, end_fraction=1.0) if steps >= 2
                else dict(method="static"))  # static masks read no schedule key (and refuse one set)
    return dict(seed=3, dtype="float64",
                data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB, context=8),
                model=dict(name="gpt", width=16, depth=1, n_heads=2, density=0.5,
                           sparsity=sparsity),
                loss="cross_entropy", optimizer=dict(name="adam", lr=3e-3),
                schedule=dict(warmup_steps=2), train=dict(steps=steps, batch_size=8),
                eval=dict(lambda0_batches=2))   # not 10: the rows are the same; lambda_0 has 8 solves fewer


def _catapult_config(root):
    """The config with a catapult warmup whose search moves the lr (lr_c ~ 0.44 < 1.0, measured)
    and sharpness tracked every 2 steps, with the top eigenvalue and trace columns: all run on the
    union batch across ranks."""
    config = _config(root)
    config.update(schedule=dict(warmup="catapult", warmup_steps=2),
                  eval=dict(sharpness_every=2, spectrum_top_k=1, trace_matvecs=3, lambda0_batches=2))
    config["optimizer"]["lr"] = 1.0
    return config


def _shards(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(tmp_path / f"part{i}.npy", rng.integers(0, VOCAB, 700).astype(np.uint16))
    # held out: the validation stream (24 windows of 8 tokens), never trained on
    np.save(tmp_path / "wiki.valid.npy", rng.integers(0, VOCAB, 200).astype(np.uint16))
    return tmp_path


def _trained(rank, world, root):
    result = train_ddp(_config(root))
    catapult = train_ddp(_catapult_config(root))
    return {"params": [p.detach() for p in result.model.parameters()], "losses": result.losses,
            "catapult": (catapult.metrics, catapult.summary)}


def test_shards_are_one_stream_and_rows_split_the_global_batch(tmp_path):
    root = _shards(tmp_path)
    shards = TokenShards(root, VOCAB)
    assert len(shards) == 1400 and [f.name for f in shards.files] == ["part0.npy", "part1.npy"]
    stream = np.concatenate([np.load(root / "part0.npy"), np.load(root / "part1.npy")]).astype(np.int64)
    assert np.array_equal(shards.window(695, 10), stream[695:705])  # across the shard border
    assert np.array_equal(np.concatenate([global_batch_rows(8, r, 2) for r in range(2)]), np.arange(8))
    with pytest.raises(ValueError, match="vocab_size"):
        TokenShards(root, 10).window(0, 50)
    held_out = TokenShards(root, VOCAB, held_out=True)
    assert [f.name for f in held_out.files] == ["wiki.valid.npy"]
    x, y = validation_windows(held_out, 8, None, rank=1, world=2)  # 24 windows: rank 1 has 12..23
    valid = np.load(root / "wiki.valid.npy").astype(np.int64)
    assert x.shape == (12, 8) and np.array_equal(x[0].numpy(), valid[96:104])
    assert np.array_equal(y[-1].numpy(), valid[185:193])
    with pytest.raises(ConfigError, match="data.n_test"):
        validation_windows(held_out, 8, 25, rank=0, world=1)
    alone = root / "alone"  # only a held-out file: it is the training stream, nothing is validated on
    alone.mkdir()
    np.save(alone / "wiki.valid.npy", valid.astype(np.uint16))
    assert len(TokenShards(alone, VOCAB)) == 200 and len(TokenShards(alone, VOCAB, held_out=True)) == 0
    assert validation_windows(TokenShards(alone, VOCAB, held_out=True), 8, None, rank=0, world=1) is None
    np.save(root / "wiki.valid.npy", np.full(50, VOCAB + 5, dtype=np.uint16))  # an id out of range
    with pytest.raises(ConfigError, match="wiki.valid.npy"):
        TokenShards(root, VOCAB, held_out=True)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_processes_match_one_process_on_the_union_batch(tmp_path):
    (tmp_path / "shards").mkdir()
    root = _shards(tmp_path / "shards")
    single = train_ddp(_config(root))
    catapult = train_ddp(_catapult_config(root))
    for got in on_ranks(_trained, str(root)):
        assert got["losses"] == pytest.approx(single.losses, rel=1e-9, abs=1e-9)
        for a, b in zip(got["params"], single.model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
        # the same loop as `catapult train`: the catapult search and the sharpness are the union
        # batch's, so every rank logs the lrs and sharpness one process logs
        metrics, summary = got["catapult"]
        assert summary["lr_critical"] == pytest.approx(catapult.summary["lr_critical"], rel=1e-9)
        assert summary["lambda_0"] == pytest.approx(catapult.summary["lambda_0"], rel=1e-6)
        assert [r["lr"] for r in metrics] == pytest.approx([r["lr"] for r in catapult.metrics], rel=1e-9)
        measured = [(r["step"], r["sharpness"]) for r in metrics if r["sharpness"] is not None]
        assert [t for t, _ in measured] == [0, 2, 4]
        assert [v for _, v in measured] == pytest.approx(
            [r["sharpness"] for r in catapult.metrics if r["sharpness"] is not None], rel=1e-6)
        for column in ("eig_1", "hessian_trace"):   # the spectrum columns: the union batch's too
            assert [r[column] for r in metrics if r["step"] in (0, 2, 4)] == pytest.approx(
                [r[column] for r in catapult.metrics if r["step"] in (0, 2, 4)], rel=1e-6)
        # and whether each top-k solve converged, counted and marked per row as one process does
        assert summary["spectrum_unconverged"] == catapult.summary["spectrum_unconverged"]
        assert [r.get("eig_converged") for r in metrics] == [r.get("eig_converged") for r in catapult.metrics]
        assert {r.get("eig_converged") for r in metrics if r["step"] in (0, 2, 4)} <= {0, 1}
        # and each sharpness solve's mark: the ranks' solve is one solve, marked as one process marks it
        assert [r.get("sharpness_converged") for r in metrics] == [r.get("sharpness_converged") for r in catapult.metrics]
        assert [r.get("sharpness_converged") is not None for r in metrics] == [r["sharpness"] is not None for r in metrics]
        # the validation loss: each rank evaluates half the held-out windows, all-reduced
        assert metrics[-1]["test_loss"] == pytest.approx(catapult.metrics[-1]["test_loss"], rel=1e-9)
        assert metrics[-1]["test_accuracy"] == pytest.approx(catapult.metrics[-1]["test_accuracy"], rel=1e-9)
    assert catapult.summary["lr_critical"] < 0.5 < catapult.metrics[-1]["lr"]  # the search moved the lr
    # the final test loss is the held-out windows' (one process: all 24, computed here again)
    model = catapult.model.eval()
    x, y = validation_windows(TokenShards(root, VOCAB, held_out=True), 8, None, rank=0, world=1)
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
    assert catapult.metrics[-1]["test_loss"] == pytest.approx(float(want), rel=1e-12)
    # and the step did something: parameters moved from the init
    assert single.losses[0] != single.losses[-1]


def test_train_ddp_command_writes_a_new_directory_and_refuses_one_in_use(tmp_path, capsys):
    import yaml

    from catapult.cli import main

    (tmp_path / "shards").mkdir()
    root = _shards(tmp_path / "shards")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(root, steps=2)))
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out)]) == 0   # one process, no torchrun
    assert (out / "metrics.csv").exists() and (out / "model.pt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("a user's file\n")
    capsys.readouterr()
    assert main(["train-ddp", str(config), "--out", str(mine)]) == 2       # before any work
    assert "--overwrite" in capsys.readouterr().err
    assert (mine / "metrics.csv").read_text() == "a user's file\n" and not (mine / "model.pt").exists()
    # --overwrite replaces a run's records, judged by their contents, not a file of that name
    assert main(["train-ddp", str(config), "--out", str(mine), "--overwrite"]) == 2
    assert "not an earlier run's directory" in capsys.readouterr().err
    assert (mine / "metrics.csv").read_text() == "a user's file\n" and not (mine / "model.pt").exists()
    assert main(["train-ddp", str(config), "--out", str(out), "--overwrite"]) == 0


def test_train_ddp_overwrite_refuses_links_and_never_writes_through_them(tmp_path, capsys):
    # with --overwrite, metrics.csv / model.pt links to files outside the run were written
    # through; a link is not a file the run wrote, so the directory is refused before any work
    import yaml

    from catapult.cli import main

    (tmp_path / "shards").mkdir()
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(_shards(tmp_path / "shards"), steps=2)))
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.csv", "model.pt"):
        (tmp_path / f"user_{name}").write_text("a user's file\n")
        (out / name).symlink_to(tmp_path / f"user_{name}")
    assert main(["train-ddp", str(config), "--out", str(out), "--overwrite"]) == 2
    assert "not a plain file" in capsys.readouterr().err
    for name in ("metrics.csv", "model.pt"):
        assert (tmp_path / f"user_{name}").read_text() == "a user's file\n"
        assert (out / name).is_symlink()
    # an earlier run's own files are replaced
    for name in ("metrics.csv", "model.pt"):
        (out / name).unlink()
    (out / "metrics.csv").write_text("step,lr,train_loss\n0,0.1,2.3\n")  # an earlier run's records
    (out / "model.pt").write_text("a user's model\n")   # not torch.save's: refused, as by `train`
    assert main(["train-ddp", str(config), "--out", str(out), "--overwrite"]) == 2
    assert "model.pt is not a file a catapult run wrote" in capsys.readouterr().err
    assert (out / "model.pt").read_text() == "a user's model\n"
    torch.save({"stale": torch.zeros(1)}, out / "model.pt")   # torch.save's, but no run recorded writing it
    assert main(["train-ddp", str(config), "--out", str(out), "--overwrite"]) == 2
    assert "model.pt is not a file a catapult run wrote" in capsys.readouterr().err
    from catapult.engine.run_dir import record_created, start_manifest

    start_manifest(out)    # as the run that wrote these files recorded them before it was killed
    record_created(out, "metrics.csv", digest=False)
    record_created(out, "model.pt")
    assert main(["train-ddp", str(config), "--out", str(out), "--overwrite"]) == 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "lr"] and "train_loss" in header  # `catapult train`'s columns
    assert set(torch.load(out / "model.pt", weights_only=True))  # a state_dict
    assert json.loads((out / "summary.json").read_text())["steps_completed"] == 2


def _text_config(root, cache):
    config = _config(root, steps=3)
    config["data"].update(cache_dir=str(cache), vocab_size=300)
    config["model"].pop("sparsity")
    return config


def _text_trained(rank, world, root, bad_root, cache):
    try:  # rank 0 reads the bad shard; every rank raises its error
        train_ddp(_text_config(bad_root, cache))
        error = None
    except ConfigError as exc:
        error = str(exc)
    result = train_ddp(_text_config(root, cache))
    return {"params": [p.detach() for p in result.model.parameters()], "losses": result.losses, "error": error}


@pytest.mark.slow  # ~40 s on a loaded 2-core host: two spawned interpreters importing torch
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_processes_train_from_jsonl_text_shards(tmp_path):
    import json

    root, bad = tmp_path / "text", tmp_path / "bad"
    root.mkdir()
    bad.mkdir()
    rng = np.random.default_rng(1)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    for i in range(2):
        docs = [" ".join(rng.choice(words, 30)) for _ in range(12)]
        (root / f"part{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (bad / "part0.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    single = train_ddp(_text_config(root, tmp_path / "cache1"))   # its own cache: the spawned run tokenises anew
    for got in on_ranks(_text_trained, str(root), str(bad), str(tmp_path / "cache2")):
        assert "part0.jsonl:2" in got["error"]
        assert got["losses"] == pytest.approx(single.losses, rel=1e-9, abs=1e-9)
        for a, b in zip(got["params"], single.model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad, words", [(VOCAB, f"token id {VOCAB} at index 650"), (-1, "token id -1 at index 650")])
def test_a_token_id_out_of_range_is_refused_before_any_step(tmp_path, capsys, bad, words):
    # the id was found only when a batch window hit it: a ValueError / IndexError traceback mid-run
    import yaml

    from catapult.cli import main

    ids = np.random.default_rng(0).integers(0, VOCAB, 700).astype(np.int32)
    ids[650] = bad
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "part0.npy", ids)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "shards", steps=2)))
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "part0.npy" in err and words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available() and torch.distributed.is_nccl_available(),
                    reason="this machine can run nccl")
@pytest.mark.parametrize("world", [None, "2"])
def test_train_ddp_backend_nccl_without_cuda_exits_2_before_any_work(tmp_path, capsys, monkeypatch, world):
    # under torchrun every rank raised "Distributed package doesn't have NCCL built in" (or no
    # GPU) from init_process_group: a traceback per rank, exit 1; in one process (no torchrun)
    # the flag was never looked at and the run trained, exit 0
    import yaml

    from catapult.cli import main

    (tmp_path / "shards").mkdir()
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(_shards(tmp_path / "shards"), steps=2)))
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)   # as torchrun sets it (no group is started: refused first)
        monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out), "--backend", "nccl"]) == 2
    err = capsys.readouterr().err
    assert "--backend" in err and "nccl" in err and "gloo" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_train_ddp_device_cuda_without_cuda_exits_2_before_any_work(tmp_path, capsys, monkeypatch, device):
    # train-ddp --device cuda on a machine without CUDA trained on the CPU and exited 0 (train,
    # spectrum, sweep, ... refuse it); a missing GPU is a config error, before the output exists
    import yaml

    from catapult.cli import main
    from catapult.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # any machine: no GPU visible
    (tmp_path / "shards").mkdir()
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(_shards(tmp_path / "shards"), steps=2)))
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out), "--device", device]) == 2
    err = capsys.readouterr().err
    assert "device" in err and "CUDA is not available" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_ddp(dict(_config(tmp_path / "shards", steps=2), device=device), out_dir=out)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_ddp(_config(tmp_path / "shards", steps=2), out_dir=out, device=device)
    assert not out.exists()


def test_train_ddp_applies_the_engines_divergence_rule(tmp_path):
    # it was a second training loop that stopped only on a non-finite loss; it is now the
    # engine's loop, so train.divergence_factor ends a run whose loss rises past it
    root = _shards(tmp_path)
    config = _config(root, steps=6)
    config["optimizer"]["lr"] = 3.0
    config["schedule"] = dict(warmup_steps=1)
    free = train_ddp(config, progress="none")
    assert free.status == "finished"
    worst = max(r["train_loss"] for r in free.metrics) / free.metrics[0]["train_loss"]
    assert worst > 1.05  # this lr makes the loss rise (measured: 18x at step 1)
    config["train"]["divergence_factor"] = 1.05
    stopped = train_ddp(config, progress="none")
    assert stopped.status == "diverged" and stopped.summary["diverged_at"] == next(
        r["step"] for r in free.metrics if r["train_loss"] > 1.05 * free.metrics[0]["train_loss"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("change, key", [
    (dict(schedule=dict(warmup="persistent")), "schedule.warmup"),
    (dict(optimizer=dict(name="sgd", lr=0.1), model=dict(name="gpt", width=16, depth=1, n_heads=2,
                                                       parametrization="mup"),
          eval=dict(sharpness_every=1, sharpness_kind="lr_scaled")), "eval.sharpness_kind"),
])
def test_what_is_not_run_across_processes_is_a_config_error_before_any_step(tmp_path, change, key):
    from catapult.curvature.distributed import single_process_group

    root = _shards(tmp_path)
    config = dict(_config(root), **change)
    with single_process_group(), pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_ddp(config, out_dir=tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


def test_tokens_per_second_counts_the_training_not_the_shards_set_up(tmp_path, monkeypatch):
    # it divided by the time since train_ddp began, so a first run that tokenised a corpus for
    # minutes reported a fraction of its training throughput; a fake clock makes the times exact
    from types import SimpleNamespace

    import catapult.engine.distributed as distributed

    now = [0.0]
    monkeypatch.setattr(distributed, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    opened, trained = distributed.TokenShards.__init__, distributed.train

    def slow_open(self, *args, **kwargs):
        now[0] += 1000.0  # tokenising text shards
        opened(self, *args, **kwargs)

    def timed_train(*args, **kwargs):
        now[0] += 10.0
        return trained(*args, **kwargs)

    monkeypatch.setattr(distributed.TokenShards, "__init__", slow_open)
    monkeypatch.setattr(distributed, "train", timed_train)
    result = train_ddp(_config(_shards(tmp_path), steps=3), progress="none")
    assert result.summary["steps_completed"] == 3
    assert result.tokens_per_second == pytest.approx(8 * 8 * 3 / 10.0)  # batch x context x updates / 10 s


def test_the_loop_refuses_a_run_and_processes_that_disagree_on_distribution():
    # a Run built for one process with data-parallel processes (or the reverse) would measure a
    # shard as the whole batch, or wait for ranks that never come: refused before any step
    from catapult.engine import Processes, build_run, train
    from catapult.engine.distributed import DataParallel

    setup = build_run(dict(name="tiny", data=dict(name="digits", n_train=32, n_test=8),
                           model=dict(name="mlp", width=4, depth=2), optimizer=dict(name="sgd", lr=0.1),
                           train=dict(steps=1), eval=dict(sharpness_every=0)))
    with pytest.raises(ValueError, match="distributed=False"):
        train(setup, processes=DataParallel(rank=0, world=2))
    setup.distributed = True
    with pytest.raises(ValueError, match="distributed=True"):
        train(setup, processes=Processes())


def _odd_validation_config(root):
    config = _config(root, steps=1)
    config["data"]["n_test"] = 3
    config["model"].pop("sparsity")
    return config


def _one_rank_fails(rank, world, root, text_root, blocked):
    errors = []
    text = _text_config(text_root, blocked / "cache")  # rank 0 tokenises: only it meets the file
    # a node-local data.root missing on rank 1 only
    missing = _config(root if rank == 0 else root / "not-on-this-node", steps=1)
    for config in (text, missing):
        try:
            train_ddp(config, progress="none")
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
            errors.append((type(exc).__name__, str(exc)))
    odd = train_ddp(_odd_validation_config(root), progress="none")  # 3 windows over 2 ranks: 1 + 2
    return {"errors": errors, "test": [r[k] for r in odd.metrics for k in ("test_loss", "test_accuracy")]}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_an_error_on_one_rank_is_raised_on_every_rank(tmp_path):
    # only a ConfigError / FileNotFoundError on rank 0 was shared: rank 0's OSError (a cache
    # folder under a file) and rank 1's own errors (a data.root missing on its node) left the
    # other rank in a collective: a gloo "connection closed" traceback, or a hang
    root, text_root = tmp_path / "shards", tmp_path / "text"
    root.mkdir()
    text_root.mkdir()
    _shards(root)
    (text_root / "part0.jsonl").write_text('{"text": "to be or not to be"}\n' * 20)
    (tmp_path / "blocked").write_text("a file where the cache folder would go\n")
    # a short timeout: a rank left waiting in a collective fails the test instead of hanging it
    got = on_ranks(_one_rank_fails, root, text_root, tmp_path / "blocked", timeout_s=60)
    # data.n_test: 3 over 2 ranks was evaluated on 2 windows (rounded down to a multiple of the
    # ranks), and 1 on none: each rank's means are now weighted by its windows, so the test
    # columns are one process's on all 3
    single = train_ddp(_odd_validation_config(root), progress="none")
    for rank in range(2):
        assert got[rank]["test"] == pytest.approx(
            [r[k] for r in single.metrics for k in ("test_loss", "test_accuracy")], rel=1e-9)
    got = [g["errors"] for g in got]
    assert got[0] == got[1]
    (cache_kind, cache_message), (root_kind, root_message) = got[0]
    assert cache_kind == "NotADirectoryError" and "blocked" in cache_message
    assert root_kind == "FileNotFoundError" and "not-on-this-node" in root_message


def test_validation_windows_split_every_window_over_the_ranks_and_refuse_a_short_held_out_shard(tmp_path, capsys):
    # n_test was rounded down to a multiple of the ranks (3 over 2 ranks: 2 windows evaluated)
    # and fewer windows than ranks, or a held-out shard shorter than one window, gave no test
    # columns at all, silently
    import yaml

    from catapult.cli import main

    root = _shards(tmp_path)
    held_out = TokenShards(root, VOCAB, held_out=True)
    valid = torch.from_numpy(np.load(root / "wiki.valid.npy").astype(np.int64))
    for n, world in [(3, 2), (1, 2), (5, 3), (24, 2)]:
        shares = [validation_windows(held_out, 8, n, rank=r, world=world) for r in range(world)]
        assert sum(x.shape[0] for x, _ in shares) == n
        assert max(x.shape[0] for x, _ in shares) - min(x.shape[0] for x, _ in shares) <= 1
        x, y = (torch.cat(part) for part in zip(*shares))
        assert torch.equal(x, valid[:8 * n].reshape(n, 8)) and torch.equal(y, valid[1:8 * n + 1].reshape(n, 8))
    short = tmp_path / "short"
    short.mkdir()
    np.save(short / "part0.npy", np.load(root / "part0.npy"))
    np.save(short / "wiki.valid.npy", np.zeros(8, dtype=np.uint16))  # 8 tokens: no window of 8 + 1
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(short, steps=1)))
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "wiki.valid.npy" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("environment, words", [
    (dict(WORLD_SIZE="two"), "WORLD_SIZE: 'two' is not a process count"),
    (dict(WORLD_SIZE="2", RANK="x"), "RANK: 'x' is not a rank"),
    (dict(WORLD_SIZE="2", RANK="2"), "RANK: 2 is not below WORLD_SIZE 2"),
    (dict(WORLD_SIZE="2", RANK="1", MASTER_PORT="29500"), "MASTER_ADDR"),
])
def test_train_ddp_command_refuses_a_broken_launch_environment(tmp_path, capsys, monkeypatch, environment, words):
    # WORLD_SIZE / RANK that int() cannot read, or a world of 2 without torchrun's rendezvous
    # address, were ValueError tracebacks (exit 1) from int() or init_process_group
    import yaml

    from catapult.cli import main

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "shards").mkdir()
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(_shards(tmp_path / "shards"), steps=1)))
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out), "--backend", "gloo"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists()
