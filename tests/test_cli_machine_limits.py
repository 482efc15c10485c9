"""What this machine cannot give is refused before any work, exit 2, naming the flag: a CUDA
device it lacks, more threads or worker processes than its CPUs can use, a run directory its
file system will not create."""
from __future__ import annotations

from pathlib import Path

import pytest

from catapult import cli
from test_cli_errors import GRID, TINY, _train, tiny  # noqa: F401  (tiny is a fixture)


@pytest.mark.parametrize("executor", ["local", "ensemble"])
def test_a_sweep_on_a_cuda_this_machine_lacks_is_refused_before_the_store(tmp_path, capsys, monkeypatch, executor):
    # each cell failed on its own (exit 0, a store of 'failed' cells) where train refuses with exit 2
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--executor", executor]
    assert cli.main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device: 'cuda' requested but CUDA is not available" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and not store.exists()
    assert cli.main([*argv, "sweep.grid.device=[cpu, 'cuda:1']"]) == 2  # a swept device names its cells
    err = capsys.readouterr().err
    assert "cell 1 (seed=0, device=cuda:1) device: 'cuda:1' requested" in err and "cell 0 " not in err
    assert not store.exists()
    assert cli.main([*argv, "--device", "cuda", "--dry-run"]) == 2  # it said "all valid"
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "spectrum", "critical-lr", "sweep"])
def test_a_cuda_index_past_the_visible_gpus_exits_2_before_any_work(tmp_path, capsys, monkeypatch, command):
    # on a 1-GPU machine --device cuda:1 passed the device check and failed at the first
    # allocation (torch's "invalid device ordinal", a traceback); checked like a missing CUDA now
    from catapult.engine import resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)   # as on a machine with one GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert str(resolve_device("cuda:0")) == "cuda:0" and str(resolve_device("cuda")) == "cuda"
    config = tmp_path / "c.yaml"
    config.write_text(GRID if command == "sweep" else TINY)
    where = ["--store", str(tmp_path / "s.db")] if command == "sweep" else \
        ["--out", str(tmp_path / "run")] if command == "train" else []
    assert cli.main([command, str(config), *where, "--progress", "none", "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "device: 'cuda:1' requested but this machine has 1 CUDA device(s), cuda:0 to cuda:0" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "critical-lr", "sweep"])
def test_more_threads_than_the_machine_can_start_is_refused(tiny, tmp_path, capsys, command):
    # torch.set_num_threads(100000): libgomp failed to create the threads (exit 1) or segfaulted
    from catapult.cli.common import max_threads

    argv = [command, str(tiny), "--threads", str(max_threads() + 1), "--progress", "none"]
    store = tmp_path / "s.db"
    argv += {"train": ["--out", str(tmp_path / "run")], "critical-lr": [], "sweep": ["--store", str(store)]}[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--threads {max_threads() + 1} is more than" in err.replace("--threads: ", "--threads ")
    assert "Traceback" not in err and not (tmp_path / "run").exists() and not store.exists()


@pytest.mark.parametrize("command", ["sweep", "demo"])
def test_more_workers_than_the_machine_can_use_is_refused(tiny, tmp_path, capsys, command):
    # --workers 1000 on 2 cores was taken: a spawned process (torch imported) per chunk of cells
    from catapult.cli.common import max_workers

    many = max_workers() + 1
    store, out = tmp_path / "s.db", tmp_path / "demo"
    argv = {"sweep": ["sweep", str(tiny), "--store", str(store), "--executor", "ensemble", "--progress", "none"],
            "demo": ["demo", "--out", str(out)]}[command]
    assert cli.main([*argv, "--workers", str(many)]) == 2
    err = capsys.readouterr().err.replace("--workers: ", "--workers ")
    assert f"--workers {many} is more than this machine's" in err and f"(at most {max_workers()})" in err
    assert "Traceback" not in err and not store.exists() and not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc file system here")
def test_a_run_directory_the_file_system_refuses_is_named(tiny, capsys):
    # /proc looks writable to root, and mkdir then failed: "[Errno 2] No such file or directory:
    # '/proc/...'", the OS's words without saying what was being made
    code, err = _train(capsys, tiny, "--out", "/proc/catapult-run")
    assert code == 2 and "Errno" not in err
    assert err.startswith("catapult train: error: ") and "/proc/catapult-run" in err
    assert "cannot create the directory /proc/catapult-run" in err or "not writable" in err
