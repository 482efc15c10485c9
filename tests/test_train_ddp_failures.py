"""How ``catapult train-ddp`` ends when something fails on one rank: every rank says why in one
line, with the CLI's exit codes, and none hangs. Two ranks run as separate processes with
torchrun's environment (WORLD_SIZE, RANK, MASTER_ADDR/PORT) over loopback gloo, exactly as
torchrun starts them; a wrapper makes one rank's I/O fail where a real disk or file would."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from catapult.engine.distributed import ShardBatches, TokenShards
from gloo_ranks import free_port
from torch_features import FSDP2

VOCAB = 257
# injects the failure on rank FAIL_RANK, then runs the real command line
WRAPPER = """
import os, sys
import catapult.engine.distributed as distributed
if int(os.environ["RANK"]) == int(os.environ.get("FAIL_RANK", "-1")):
    batch = distributed.ShardBatches.batch
    token = os.environ.get("FAULT") == "token"
    def failing(self, t):
        if t == 2 and not token:
            raise OSError(5, "Input/output error (this rank's data disk)")
        x, y = batch(self, t)
        if t == 2 and token:  # a token id beyond the vocabulary in this rank's rows
            x = x.clone()
            x[0, 0] = 10 ** 6
        return x, y
    distributed.ShardBatches.batch = failing
    if os.environ.get("FAULT") == "refused":  # a refusal of catapult's own inside an agreed step
        import catapult.curvature.rank_agreement as agreement
        from catapult.curvature.microbatch import MicroBatchRefused
        def refusing(name, batch):
            raise MicroBatchRefused(f"{name}: this rank's shard cannot be split into micro-batches", "chunk_size")
        agreement._check_shard = refusing
        distributed.ShardBatches.batch = batch
    if os.environ.get("FAULT") == "device":  # this node has fewer GPUs than processes
        from catapult.config import ConfigError
        def missing(name):
            raise ConfigError([("device", "cuda:1 requested but this machine has 1 CUDA device(s), cuda:0 to cuda:0")])
        distributed.resolve_device = missing
        distributed.ShardBatches.batch = batch
    if os.environ.get("FAULT") in ("plot", "manifest"):  # rank 0's disk full: trajectories.png after the
        import errno                                       # loop, the run's manifest before it
        import catapult.engine.loop as loop
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        def full_manifest(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / ".catapult-run.json"))
        if os.environ["FAULT"] == "plot":
            loop.plot_run = full
        else:
            loop.start_manifest = full_manifest
        distributed.ShardBatches.batch = batch
from catapult.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _config(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "part0.npy", rng.integers(0, VOCAB, 700).astype(np.uint16))
    config = dict(seed=3, dtype="float64",
                  data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB, context=8),
                  model=dict(name="gpt", width=16, depth=1, n_heads=2), loss="cross_entropy",
                  optimizer=dict(name="adam", lr=3e-3), train=dict(steps=4, batch_size=8))
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _two_ranks(tmp_path, *args, fail_rank=None, fault=""):
    """Each rank's ``(exit code, stderr)``, the ranks started as torchrun starts them."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   FAIL_RANK=str(-1 if fail_rank is None else fail_rank), FAULT=fault)
        procs.append(subprocess.Popen([sys.executable, str(wrapper), "train-ddp", *args, "--progress", "none",
                                       "--backend", "gloo"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:  # a hang is the defect these tests are about
            for p in procs:
                p.kill()
            pytest.fail("a rank was still running after 180 s")
        results.append((proc.returncode, err))
    return results


def test_an_out_directory_in_use_stops_every_rank_with_the_message(tmp_path):
    # it was checked on rank 0 alone, before the process group existed: rank 0 exited 2 and
    # rank 1 waited in the rendezvous until torchrun killed it, without a word
    config = _config(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file\n")
    for code, err in _two_ranks(tmp_path, str(config), "--out", str(mine)):
        assert code == 2, err
        assert "already exists and is not empty" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_one_rank_failing_mid_run_ends_every_rank_with_a_message(tmp_path):
    # the other rank died in its next all-reduce with gloo's RuntimeError traceback (exit 1)
    config = _config(tmp_path)
    out = tmp_path / "run"
    (code0, err0), (code1, err1) = _two_ranks(tmp_path, str(config), "--out", str(out), fail_rank=1)
    assert (code1, err1.strip()) == (2, "catapult train-ddp: error: Input/output error (this rank's data disk)")
    assert code0 == 1 and "Traceback" not in err0, err0
    assert err0.startswith("catapult train-ddp: error: rank 0: another process of this run stopped; "
                           "its own message says why (gloo: ")
    assert not out.exists()                 # the partial run directory goes, as in one process


@pytest.mark.parametrize("fault, name", [("plot", "trajectories.png"), ("manifest", ".catapult-run.json")])
def test_rank_0_failing_to_write_the_run_files_ends_every_rank_with_its_error(tmp_path, fault, name):
    """Rank 0's disk fills as it writes trajectories.png after the loop, or the run's manifest
    before it: every rank exits with the file and the problem in one line. Rank 1 waited for a
    rank that had gone, in the closing barrier or the first step's all-reduce (gloo: "another
    process of this run stopped", exit 1; NCCL: the watchdog's timeout, then SIGABRT). The
    manifest's failure (before training) removes the run folder, exit 2, as in one process; the
    figure's (after model.pt) keeps model.pt, metrics.csv and config.yaml, exit 1 (ResultsKept)."""
    config = _config(tmp_path)
    out = tmp_path / "run"
    results = _two_ranks(tmp_path, str(config), "--out", str(out), fail_rank=0, fault=fault)
    for code, err in results:
        assert code == (1 if fault == "plot" else 2) and "Traceback" not in err and "another process" not in err, err
    # rank 0's line on every rank (its errno and file carried: rank_errors.error_verdict)
    if fault == "plot":
        kept = ", ".join(str(out / n) for n in ("config.yaml", "metrics.csv", "model.pt"))
        line = (f"catapult train-ddp: error: {out / name} could not be written (No space left on device); the work "
                f"finished and its {kept} are kept (the files after it are not written)\n")
        assert [err for _, err in results] == [line] * 2
        assert {"config.yaml", "metrics.csv", "model.pt"} <= {p.name for p in out.iterdir()}
        assert not (out / "summary.json").exists()
    else:
        assert [err for _, err in results] == [f"catapult train-ddp: error: {out / name}: No space left on device\n"] * 2
        assert not out.exists()                 # what rank 0 wrote goes, as in one process


def test_a_refusal_of_catapults_own_on_one_rank_exits_2_on_every_rank_with_its_line(tmp_path):
    """Rank 1 refuses its shard inside the sharpness's agreed check (a MicroBatchRefused, exit 2 with
    one line). The other rank raised a ValueError naming rank 1, which the command line reports as a
    defect: its traceback, exit 1. Now every rank raises rank 1's error, the same type and message.
    Each rank runs under a 180 s limit, and the group's collectives stop a hang."""
    results = _two_ranks(tmp_path, str(_config(tmp_path)), "eval.sharpness_every=2", "--out",
                         str(tmp_path / "run"), fail_rank=1, fault="refused")
    line = ("catapult train-ddp: error: sharpness: this rank's shard cannot be split into micro-batches "
            "(in a config: eval.sharpness_chunk_size: null)")
    for code, err in results:
        assert (code, err.strip()) == (2, line), err
    assert not (tmp_path / "run").exists()


def test_a_device_missing_on_one_rank_exits_2_on_every_rank(tmp_path):
    """Rank 1's device is missing (its node has fewer GPUs than processes): its ConfigError was raised
    before the set-up group, on that rank alone, and rank 0 waited in the group's creation for the
    group's timeout (30 minutes with gloo; here the harness's 180 s limit fails the test). Now every
    rank exits 2 with rank 1's line."""
    results = _two_ranks(tmp_path, str(_config(tmp_path)), "--out", str(tmp_path / "run"), fail_rank=1,
                         fault="device")
    line = ("catapult train-ddp: error: invalid config: device: cuda:1 requested but this machine has 1 CUDA "
            "device(s), cuda:0 to cuda:0")
    for code, err in results:
        assert (code, err.strip()) == (2, line), err
    assert not (tmp_path / "run").exists()


@FSDP2
def test_a_forward_failing_on_one_rank_of_a_sharded_model_ends_every_rank(tmp_path):
    # the lambda_0 sharpness on batch 2: the failed rank's forward raised inside union_weight's
    # agreement, whose all-reduce met the other rank's FSDP all-gather, and both waited there until
    # the process group's timeout (30 minutes with gloo), neither with the IndexError
    results = _two_ranks(tmp_path, str(_config(tmp_path)), "train.fsdp=true", "eval.sharpness_every=2",
                         "--out", str(tmp_path / "run"), fail_rank=0, fault="token")
    (code0, err0), (code1, err1) = results
    assert code0 != 0 and "GPT token ids must lie in [0, 257)" in err0
    assert code1 == 1 and "Traceback" not in err1 and len(err1.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_full_disk_writing_the_weights_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    # torch's zip writer says "unexpected pos" in a RuntimeError on a full disk (measured on a
    # 40 kB tmpfs); the command printed a traceback and exited 1
    from catapult.cli import main

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, "write"):   # model.pt, into the open partial file write_whole hands over
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2688 vs 2582")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(dict(data=dict(name="digits", n_train=32, n_test=16),
                                          model=dict(name="mlp", width=8, depth=2), train=dict(steps=2))))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'model.pt'}: could not be written" in err and "is the disk full?" in err
    assert not out.exists()


def test_every_window_of_the_training_stream_is_drawn(tmp_path):
    # starts were drawn from 0 .. N - T - 2: the last window, and the last token as a target, never
    np.save(tmp_path / "part0.npy", np.arange(12, dtype=np.uint16))
    shards = TokenShards(tmp_path, VOCAB)
    batches = ShardBatches(shards, 8, 4, 0, 1, data_seed=0, device=torch.device("cpu"))
    starts = {int(x[r, 0]) for t in range(50) for x, _ in [batches.batch(t)] for r in range(4)}
    assert starts == {0, 1, 2, 3}
    last = {int(y[r, -1]) for t in range(50) for _, y in [batches.batch(t)] for r in range(4)}
    assert 11 in last


DYING = """
import datetime, os, sys, time
import torch.distributed as dist
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=120))
from catapult.engine.every_rank import on_every_rank
def work():
    if rank == 1:   # killed while the other waits for it (out of memory while tokenising)
        time.sleep(1)
        os._exit(3)
started = time.perf_counter()
try:
    on_every_rank(work, True)
except Exception as exc:
    print(f"waited {time.perf_counter() - started:.1f} s: {exc}", flush=True)
    os._exit(4)
"""


def test_a_rank_that_dies_in_a_set_up_step_stops_the_one_waiting_for_it_at_once(tmp_path):
    # the set-up steps wait on a group with a 24-hour timeout (rank 0 may tokenise for hours):
    # a rank that dies there must still end the others at once, by gloo's closed connection
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    port = str(free_port())
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    try:
        out, _ = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == 4 and "Connection closed by peer" in out, out
    assert float(out.split()[1]) < 30


def test_a_local_rank_past_the_nodes_gpus_is_a_config_error_naming_it(tmp_path, monkeypatch):
    """torchrun started more processes on a node than it has GPUs: LOCAL_RANK 1 of a 1-GPU node was
    made ``cuda:1`` and handed to ``torch.cuda.set_device`` (torch's 'invalid device ordinal', a defect's
    traceback). Now a ConfigError naming the device key, LOCAL_RANK and the node's count, before any
    work. CUDA is stood in for (this machine's count: 1)."""
    from catapult.config import ConfigError
    from catapult.engine.distributed import train_ddp

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail(f"set_device({d})"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    config = yaml.safe_load(_config(tmp_path).read_text())
    with pytest.raises(ConfigError) as info:
        train_ddp({**config, "device": "cuda"}, out_dir=tmp_path / "run")
    assert info.value.problems[0][0] == "device"
    assert "LOCAL_RANK is 1, and this node has 1 CUDA device(s)" in str(info.value)
    assert not (tmp_path / "run").exists()
