import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from catapult import cli
from catapult.cli import main
from tiny_run import tiny_config as tiny_text

TINY = """\
name: tiny_cli
data: {name: digits, n_train: 100, n_test: 50}
model: {width: 16, depth: 3, parametrization: mup}
optimizer: {lr: 0.5}
schedule: {warmup_steps: 4}
train: {steps: 8}
eval: {sharpness_every: 4, test_every: 4}
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_help_lists_every_registered_command():
    proc = subprocess.run([sys.executable, "-m", "catapult.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for module in cli.COMMANDS:
        # module catapult.cli.critical_lr provides the command critical-lr
        assert module.__name__.rsplit(".", 1)[-1].replace("_", "-") in proc.stdout
    assert "train" in proc.stdout and "demo" in proc.stdout


def test_train_end_to_end_writes_the_run_directory(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    # overrides may come after options
    code = cli.main(["train", str(tiny_config), "--out", str(out), "--progress", "none", "train.steps=6",
                     "--threads", "1"])
    assert code == 0
    files = {p.name for p in out.iterdir()}
    assert files == {".catapult-run.json", "config.yaml", "metrics.csv", "summary.json", "trajectories.png", "model.pt"}
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert [r["sharpness"] != "" for r in rows] == [True, False, False, False, True, False, True]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6 and summary["name"] == "tiny_cli"
    assert (out / "trajectories.png").read_bytes().startswith(b"\x89PNG")
    assert "tiny_cli: finished" in capsys.readouterr().out


def test_default_run_directory_is_runs_slash_name(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", str(tiny_config), "name=named", "train.steps=2", "--progress", "none"]) == 0
    assert (tmp_path / "runs" / "named" / "metrics.csv").exists()


@pytest.mark.parametrize("override, key, expected", [
    ("optimizer.name=sdg", "optimizer.name", "allowed values: sgd, adam, adamw"),
    ("model.widht=3", "model.widht", "did you mean 'model.width'"),
    ("train.steps=-1", "train.steps", ">= 0"),
    ("optimizer.lr=fast", "optimizer.lr", "lambda0"),
    ("loss=l1", "loss", "mse, cross_entropy"),
])
def test_bad_config_exits_2_names_the_key_and_writes_nothing(tiny_config, tmp_path, capsys, override, key,
                                                            expected):
    out = tmp_path / "never"
    code = cli.main(["train", str(tiny_config), override, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and expected in err
    assert not out.exists()


def test_bad_key_inside_the_file_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY + "optimiser: {lr: 1}\n")
    assert cli.main(["train", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "optimiser" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_data_problems_found_at_setup_also_write_nothing(tiny_config, tmp_path, capsys):
    out = tmp_path / "never"
    code = cli.main(["train", str(tiny_config), "train.batch_size=1000", "--out", str(out)])
    assert code == 2 and "train.batch_size" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_entry_point_is_installed():
    exe = Path(sys.executable).parent / "catapult"
    if not exe.exists():
        pytest.skip("package not installed with its console script")
    proc = subprocess.run([str(exe), "train", "nonexistent.yaml"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_sweep_help_says_which_chunks_the_ensemble_memory_budget_sizes(capsys):
    # the help said the budget sizes every batched chunk; EnsembleExecutor applies memory_mb to the
    # hand-kernel (MLP) chunks only and sizes torch.func chunks from batched_memory.memory_budget
    # (free GPU memory, or DEFAULT_FRACTION of the RAM)
    from catapult.sweep.batched_memory import DEFAULT_FRACTION

    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    option = text[text.index("--ensemble-memory-mb MB ensemble executor"):text.index("--no-kernels ensemble")]
    assert "hand-derived kernels (the MLP cells they cover; default 2048)" in option and "torch.func chunks" in option
    assert DEFAULT_FRACTION == 0.25 and "a quarter of the RAM" in option


def test_a_single_run_of_a_sweep_config_says_its_sweep_is_ignored(tmp_path, capsys):
    # `train` on a config with a sweep: section trained the base run with the default lr 0.125,
    # which appears nowhere in the file, without a word
    config = tmp_path / "tinysweep.yaml"
    config.write_text(tiny_text("tinysweep") + "sweep:\n  grid:\n    optimizer.lr: [0.5, 1]\n  seeds: [0, 1]\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--progress", "none", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep: section is ignored (`catapult sweep` runs it)" in err
    assert "optimizer.lr=0.125, seed=0" in err
    assert main(["critical-lr", str(config)]) == 0 and "sweep: section is ignored" in capsys.readouterr().err
    # coord-check trained its models at the base lr 0.125 without the note
    # (depth 3: an mlp of depth 2 has no hidden layer to mask, refused)
    assert main(["coord-check", str(config), "model.depth=3", "coord_check.densities=[0.5, 1.0]", "coord_check.steps=1",
                 "coord_check.seeds=[0]", "--out", str(tmp_path / "cc"), "--progress", "none", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "catapult coord-check: note: the config's sweep: section is ignored" in err
    assert "optimizer.lr=0.125, seed=0" in err


def test_a_sweep_override_of_a_single_run_points_to_catapult_sweep(tmp_path, capsys):
    # it was refused as `unknown key (did you mean 'seed'?)`
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_text("tiny"))
    assert main(["train", str(config), "sweep.grid.optimizer.lr=[1]", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sweep.grid.optimizer.lr: a key of the sweep: section, which `catapult sweep` reads" in err
    assert "did you mean" not in err and not (tmp_path / "run").exists()


def test_every_option_with_a_default_says_it_in_its_help():
    # `catapult sweep --help` said what local, ensemble and ray do but not that local is what runs
    # when --executor is left out, and --device said nothing of the config's device
    import argparse

    subcommands = cli.build_parser()._subparsers._group_actions[0].choices
    missing = []
    for name, parser in subcommands.items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            says_none = action.default in (None, [], argparse.SUPPRESS)
            if action.dest == "device" or not says_none:
                if "default" not in (action.help or ""):
                    missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


def test_a_coord_check_section_is_said_to_be_ignored_by_the_other_commands(tmp_path, capsys):
    # a config's coord_check: section was set aside by train, critical-lr, spectrum and sweep
    # without a word, where a sweep: section gets a note
    config = tmp_path / "tinycc.yaml"
    config.write_text(tiny_text("tinycc") + "coord_check:\n  widths: [8, 16]\n  steps: 1\n")
    note = "note: the config's coord_check: section is ignored (`catapult coord-check` runs it)"
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--progress", "none", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"catapult train: {note}" in err
    swept = tmp_path / "tinyccsweep.yaml"
    swept.write_text(config.read_text() + "sweep:\n  grid:\n    optimizer.lr: [0.5, 1]\n")
    assert main(["sweep", str(swept), "--store", str(tmp_path / "s.db"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"catapult sweep: {note}" in err
