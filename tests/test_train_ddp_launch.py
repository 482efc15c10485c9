"""``catapult train-ddp``'s reading of torchrun's launch (mutation pass 24): the environment
variables it refuses before any work, the backend ``--backend`` names on this machine's torch, and
a command run on ranks whose process group is already started (rank 0 alone prints the summary)."""
from __future__ import annotations

import pytest
import torch
import yaml

from catapult.cli import main
from test_distributed_train import _config, _shards


@pytest.fixture
def config(tmp_path):
    (tmp_path / "shards").mkdir()
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config(_shards(tmp_path / "shards"), steps=1)))
    return path


@pytest.mark.parametrize("environment, words", [
    (dict(WORLD_SIZE="0"), "WORLD_SIZE: '0' is not a process count"),                      # TD8
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="x"), "LOCAL_RANK: 'x' is not a rank"),      # TD10
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="-1"), "LOCAL_RANK: '-1' is not a rank"),
    (dict(WORLD_SIZE="2", RANK="1", MASTER_ADDR="", MASTER_PORT="29500"), "MASTER_ADDR"),   # TD13: set but empty
])
def test_a_launch_environment_torchrun_never_sets_is_refused_naming_the_variable(config, tmp_path, capsys,
                                                                                 monkeypatch, environment, words):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out), "--backend", "gloo"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("missing, backend, words", [
    ("is_available", "gloo", "built without torch.distributed"),     # TD17
    ("is_gloo_available", "gloo", "built without gloo"),             # TD16
    ("cuda", "nccl", "no CUDA GPU is visible"),                      # TD15: NCCL built in, no GPU
])
def test_a_backend_this_torch_cannot_run_is_refused_in_one_process_too(config, tmp_path, capsys, monkeypatch,
                                                                       missing, backend, words):
    import torch.distributed as dist

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    if missing == "cuda":
        monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setattr(dist, missing, lambda: False)
    out = tmp_path / "run"
    assert main(["train-ddp", str(config), "--out", str(out), "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert "--backend" in err and words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("cuda, nccl, want", [(True, True, "nccl"), (False, True, "gloo"), (False, False, "gloo")])
def test_auto_is_nccl_with_cuda_gpus_else_gloo(monkeypatch, cuda, nccl, want):
    # TD14: auto was gloo on CUDA machines too (every collective through the CPU)
    import torch.distributed as dist

    from catapult.cli import train_ddp

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)
    assert train_ddp._backend("auto") == want


def _command_on_a_started_group(rank, world, config, out):
    import contextlib
    import io
    import os

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))   # as torchrun sets them
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train-ddp", str(config), "--out", str(out), "--progress", "none"])
    return code, stdout.getvalue(), torch.distributed.is_initialized()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_the_command_on_ranks_whose_group_is_started_trains_on_it_and_rank_0_alone_prints(config, tmp_path):
    # TD2: the command started a second default group (init_process_group twice: an error on every
    # rank); TD7: every rank printed the summary. The group is left to whoever started it
    from gloo_ranks import on_ranks

    out = tmp_path / "run"
    (code0, printed0, group0), (code1, printed1, group1) = on_ranks(_command_on_a_started_group, config, out)
    assert (code0, code1) == (0, 0)
    assert "train-ddp: 2 process(es)" in printed0 and printed1 == ""
    assert group0 and group1
    assert (out / "summary.json").exists() and (out / "model.pt").exists()


def test_without_out_the_run_goes_to_runs_slash_its_name(tmp_path, monkeypatch, capsys):
    # TD20: without --out the run's files went into runs/ itself, beside any other run's folder
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "shards").mkdir()
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump({**_config(_shards(tmp_path / "shards"), steps=1), "name": "ddp_named"}))
    monkeypatch.chdir(tmp_path)
    assert main(["train-ddp", str(path), "--progress", "none", "--threads", "1"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp_named"]
    assert (tmp_path / "runs" / "ddp_named" / "summary.json").exists()
    assert "wrote runs/ddp_named/" in capsys.readouterr().out


def test_a_config_distributed_training_refuses_is_named_before_the_launch_is_read(tmp_path, capsys, monkeypatch):
    # TD22: without the command's own check, an mlp config under WORLD_SIZE=2 without a rendezvous
    # address was refused for MASTER_ADDR; the config's problem (model.name) comes first, before torch
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    path = tmp_path / "mlp.yaml"
    path.write_text("model: {name: mlp, width: 8, depth: 2}\n")
    out = tmp_path / "run"
    assert main(["train-ddp", str(path), "--out", str(out), "--backend", "gloo"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "MASTER_ADDR" not in err and "Traceback" not in err
    assert not out.exists()
