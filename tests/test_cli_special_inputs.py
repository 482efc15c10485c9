"""Inputs an outside fuzzer of the command line found mishandled: a FIFO where a file goes
(the command waited forever in ``open()``), YAML's boolean reading of ``on``/``off``, and two
figures given one file name. Each is refused (exit 2, one line) or taken, before any work."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from catapult.cli import main

CONFIG = dict(name="tiny", seed=0, data=dict(name="digits", n_train=64, n_test=32),
              model=dict(name="mlp", width=8, depth=2), optimizer=dict(name="sgd", lr=0.1),
              train=dict(steps=2), eval=dict(sharpness_every=0, test_every=0))


def _catapult(*args, cwd):
    """Exit code and stderr of ``catapult ARGS`` in its own process (a hang would stop the suite)."""
    try:
        done = subprocess.run([sys.executable, "-m", "catapult", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"catapult {' '.join(args)} was still running after 120 s")
    return done.returncode, done.stderr


@pytest.fixture
def store(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(dict(CONFIG, sweep=dict(grid={"optimizer.lr": [0.1, 0.2]}))))
    assert main(["sweep", str(config), "--store", str(tmp_path / "s.db"), "--threads", "1"]) == 0
    return tmp_path / "s.db"


@pytest.mark.parametrize("command", [
    ["export", "fifo", "--out", "x.csv"],                    # a store read
    ["sweep", "sweep.yaml", "--store", "fifo"],              # a store written
    ["export", "s.db", "--out", "fifo"],                     # output files
    ["report", "s.db", "--out", "fifo"],
    ["plot", "s.db", "--out", "fifo"],
])
def test_a_fifo_where_a_file_goes_is_refused_at_once(tmp_path, store, command, monkeypatch, capsys):
    # in-process (a subprocess per case cost a torch import, ~4 s); a daemon thread with a time
    # limit stands in for the subprocess's: a command blocked in open() fails the test, not the suite
    import threading

    os.mkfifo(tmp_path / "fifo")
    monkeypatch.chdir(tmp_path)
    codes = []
    command_thread = threading.Thread(target=lambda: codes.append(main(command)), daemon=True)
    command_thread.start()
    command_thread.join(timeout=60)
    if command_thread.is_alive():   # release the blocked open() so the thread ends
        fd = os.open(tmp_path / "fifo", os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail(f"catapult {' '.join(command)} waited on the FIFO")
    err = capsys.readouterr().err
    assert codes == [2] and "Traceback" not in err and "fifo" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.csv").exists()


def test_a_config_fifo_without_a_writer_is_refused_by_train_after_the_wait(tmp_path, monkeypatch, capsys):
    # the config is the one FIFO that waits (for a writer to come, FIFO_WAIT_S), then exits 2;
    # in-process so the wait can be shortened (a subprocess would sit out the full 10 s)
    from catapult.config import io

    monkeypatch.setattr(io, "FIFO_WAIT_S", 0.3)
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    assert main(["train", "fifo", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "fifo" in err and "0.3 s" in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_read_from_a_pipe_still_trains(tmp_path, monkeypatch, capsys):
    # the FIFO check must not refuse a pipe that has a writer (`catapult train /dev/stdin`, `<(...)`).
    # In-process (a subprocess cost a torch import, ~7 s of CPU): the config comes through a pipe's
    # /dev/fd path, as /dev/stdin and <(...) give it, its writer open from the start and writing
    # only once the command has opened the pipe (the first byte of a slow writer is waited for)
    import threading

    from catapult.config import io

    read_end, write_end = os.pipe()
    text = yaml.safe_dump(CONFIG).encode()
    opened = threading.Event()
    pipe_start = io._pipe_start

    def pipe_start_seen(*args):
        opened.set()
        return pipe_start(*args)

    def writer():
        opened.wait(timeout=60)
        time.sleep(0.1)
        os.write(write_end, text)
        os.close(write_end)

    monkeypatch.setattr(io, "_pipe_start", pipe_start_seen)
    monkeypatch.chdir(tmp_path)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        code = main(["train", f"/dev/fd/{read_end}", "--out", "run", "--progress", "none"])
    finally:
        thread.join(timeout=10)
        os.close(read_end)
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("written, stored", [("off", "off"), ("on", "on"), ("'off'", "off"), ("auto", "auto")])
def test_accuracy_failure_takes_its_documented_values_unquoted(tmp_path, written, stored):
    # YAML reads on/off as booleans: "train.accuracy_failure=off", which the README advises for
    # old stores, was refused as "False is not allowed"
    from catapult.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG).replace("  steps: 2\n", f"  steps: 2\n  accuracy_failure: {written}\n"))
    assert f"accuracy_failure: {written}" in config.read_text()
    assert load_config(config)["train"]["accuracy_failure"] == stored
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(CONFIG))
    assert load_config(plain, [f"train.accuracy_failure={written}"])["train"]["accuracy_failure"] == stored


def test_plot_refuses_one_file_for_both_figures(tmp_path, store, capsys):
    # the trajectories figure replaced the heatmap, exit 0, "wrote same.png" twice
    for out, trajectories in (("same.png", "same.png"), ("same", "same.png")):
        assert main(["plot", str(store), "--out", str(tmp_path / out),
                     "--trajectories-out", str(tmp_path / trajectories)]) == 2
        assert "is also the heatmap's file (--out)" in capsys.readouterr().err
        assert not (tmp_path / "same.png").exists()


@pytest.mark.parametrize("extra, named", [
    (["model.width=8", "model.width=9"], "model.width: given twice on the command line"),
    (["device=cpu", "--device", "cpu"], "device: given twice on the command line ('device=cpu' and '--device cpu')"),
    (["--device", ""], "device:"),                                  # it was ignored
    (["optimizer.lr=1e-320"], "which is 0 in float32"),             # every step would have been 0
])
def test_ambiguous_or_vacuous_command_lines_are_refused_before_any_work(tmp_path, capsys, extra, named):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), *extra]) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, key", [({"widths": [8, 8]}, "coord_check.widths"),
                                          ({"widths": [8], "seeds": [0, 0]}, "coord_check.seeds"),
                                          ({"widths": [8], "parametrizations": ["sp", "sp"]},
                                           "coord_check.parametrizations"),
                                          ({"widths": [8], "parametrizations": [["sp"], ["sp"]]},  # unhashable
                                           "coord_check.parametrizations")])
def test_coord_check_refuses_a_repeated_value_as_a_sweep_grid_does(section, key):
    from catapult.config import ConfigError
    from catapult.engine.coord_check_study import parse_coord_check

    with pytest.raises(ConfigError, match=key):
        parse_coord_check(section)


def test_a_relative_lr_of_a_model_non_finite_at_init_says_why_it_has_no_value(tmp_path, capsys):
    # alpha_out 1e30: the float32 loss at theta_0 is inf, lambda_0 nan; the message said only
    # "needs a positive finite lambda_0, got nan" under "invalid config"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(dict(CONFIG, model=dict(name="mlp", width=8, depth=2, parametrization="mup",
                                                             base_width=8, alpha_out=1e30))))
    assert main(["train", str(config), "optimizer.lr=2/lambda0", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "lambda_0 is nan: the loss or its curvature at initialisation is not finite" in err
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--progress", "none"]) == 0
    assert '"diverged_at": 0' in (tmp_path / "run" / "summary.json").read_text()


def test_a_config_pipe_whose_writer_starts_late_is_read(tmp_path):
    # the pipe was opened without waiting: a writer starting a moment later found it read as
    # "empty" (exit 2) and then blocked forever in its own open()
    import threading
    import time

    from catapult.config.io import read_yaml

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write_late():
        time.sleep(0.5)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # ENXIO if the reader had gone
        with os.fdopen(fd, "w") as f:
            f.write("name: late\nseed: 3\n")
    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        mapping, _ = read_yaml(fifo)
    finally:
        writer.join(timeout=30)
    assert mapping == {"name": "late", "seed": 3}


def test_a_folder_given_as_the_config_leaks_no_file_descriptor(tmp_path):
    from catapult.config import ConfigError
    from catapult.config.io import read_yaml

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(ConfigError, match=str(tmp_path)):
            read_yaml(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_config_pipe_whose_writer_is_there_but_slow_is_waited_for(tmp_path, monkeypatch):
    # the 10 s limit is for a writer to come: one already connected (`<(slow generator)`,
    # `generator | catapult train /dev/stdin`) was refused when its first byte took longer
    import threading
    import time

    from catapult.config import io

    monkeypatch.setattr(io, "FIFO_WAIT_S", 0.5)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write_slowly():
        with open(fifo, "w") as f:      # blocks until the reader has opened it
            time.sleep(1.5)
            f.write("name: slow\n")
    writer = threading.Thread(target=write_slowly, daemon=True)
    writer.start()
    time.sleep(0.3)   # the writer waits in open(), as a generator started before catapult does
    mapping, _ = io.read_yaml(fifo)
    writer.join(timeout=30)
    assert mapping == {"name": "slow"}


def test_a_config_fifo_nobody_opens_is_refused_after_the_wait(tmp_path, monkeypatch):
    from catapult.config import ConfigError, io

    monkeypatch.setattr(io, "FIFO_WAIT_S", 0.3)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="no writer wrote to within 0.3 s"):
        io.read_yaml(tmp_path / "fifo")


@pytest.mark.parametrize("argv, option", [
    (["plot", "s.db", "--out"], "--out"), (["plot", "s.db", "--trajectories-out"], "--trajectories-out"),
    (["transfer", "s.db", "--x", "optimizer.lr", "--out"], "--out"),
    (["export", "s.db", "--out"], "--out"), (["report", "s.db", "--out"], "--out"),
])
def test_an_empty_output_path_of_a_store_reader_is_refused(tmp_path, store, monkeypatch, capsys, argv, option):
    # `catapult plot s.db --out ''` (and --trajectories-out '', transfer --out '') wrote the default
    # figures beside the store, exit 0; export and report said "--out: . is a directory"
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main([*argv, ""])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: an empty path" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written


@pytest.mark.parametrize("argv, option", [
    (["train", "tiny.yaml", "--progress", "none", "--out"], "--out"),
    (["train-ddp", "tiny.yaml", "--progress", "none", "--out"], "--out"),
    (["demo", "--workers", "1", "--out"], "--out"), (["demo", "--workers", "1", "--write-configs"], "--write-configs"),
    (["coord-check", "tiny.yaml", "--progress", "none", "--out"], "--out"),
    (["spectrum", "tiny.yaml", "--progress", "none", "--plot"], "--plot"),
    (["spectrum", "tiny.yaml", "--progress", "none", "--weights"], "--weights"),
])
def test_an_empty_path_option_is_refused_not_taken_as_left_out(tmp_path, monkeypatch, capsys, argv, option):
    # `--out ''` trained into runs/tiny/, `demo --write-configs ''` started the whole demo
    from catapult import demo

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    with pytest.raises(SystemExit) as exit_:
        main([*argv, ""])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: an empty path" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]   # nothing written
