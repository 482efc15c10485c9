"""catapult sweep refuses, before its store is written and in its --dry-run alike, what would fail
every cell of a grid that catapult train refuses at once: a text root with nothing to train on,
more images than the dataset has, train.fsdp (exit 2, the key named once where the base config
sets it)."""
from __future__ import annotations

import pytest

from catapult import cli


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_text_sweep_whose_data_root_holds_no_text_is_refused_before_the_store(tmp_path, capsys, dry_run):
    # `catapult sweep configs/sweeps/fig4_gpt_paper.yaml data.root=/path/to/wikitext-2-raw` (the
    # README's command with a typo'd root) wrote its store, ran all 600 cells to a stored traceback
    # each (15 s) and exited 1; --dry-run said "all valid"; catapult train on the same config exits 2
    config = tmp_path / "text_sweep.yaml"
    config.write_text("name: text_sweep\ndata: {name: text, context: 8, n_train: 4, n_test: 2}\n"
                      "model: {name: gpt, width: 8, depth: 1, n_heads: 2}\nloss: cross_entropy\n"
                      "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 2, batch_size: 2}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {schedule.warmup_steps: [1, 2]}}\n")
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1",
            *(["--dry-run"] if dry_run else [])]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("no text here\n")
    for root, words in [(tmp_path / "nowhere", "nowhere does not exist"),
                        (tmp_path / "notes", "holds neither wiki.train.raw nor any *.txt file")]:
        assert cli.main([*argv, f"data.root={root}"]) == 2
        err = capsys.readouterr().err
        assert words in err and "data.root" in err and "Traceback" not in err, err
        assert not store.exists()
    (tmp_path / "notes" / "a.txt").write_text("to be or not to be, that is the question. " * 20)
    assert cli.main([*argv, f"data.root={tmp_path / 'notes'}"]) == 0
    assert ("all valid" if dry_run else "2 cells: 2 finished") in capsys.readouterr().out


def test_a_sweep_asking_more_images_than_its_dataset_has_is_refused_before_the_store(tmp_path, capsys):
    # `catapult sweep CONFIG data.n_train=100000` (digits: 1,797 images, 300 held out) wrote its
    # store, failed every cell at lambda_0 and exited 1; catapult train on it exits 2
    from sklearn.datasets import load_digits

    total = len(load_digits().target)
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\nmodel: {width: 8, depth: 2}\noptimizer: {lr: 0.1}\ntrain: {steps: 2}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {schedule.warmup_steps: [1, 2]}}\n")
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]
    assert cli.main([*argv, f"data.n_train={total - 300 + 1}"]) == 2
    err = capsys.readouterr().err
    assert f"data: n_train={total - 300 + 1} exceeds the {total - 300} samples available in digits (train)" in err
    assert err.count("exceeds the") == 1, err   # the base config's: said once for its 2 cells (mutation pass 21, CR5)
    assert "cell " not in err, err   # and not as a cell's (mutation pass 21, CR6)
    assert "Traceback" not in err and not store.exists()
    assert cli.main([*argv, "sweep.grid.data.n_test=[300, 301]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cell 1 (schedule.warmup_steps=1, data.n_test=301) data: n_test=301 exceeds the 300" in err, err
    assert "data.n_test=300)" not in err and not store.exists()
    assert cli.main([*argv, f"data.n_train={total - 300}", "data.n_test=300"]) == 0


def test_a_sweep_with_train_fsdp_is_refused_by_its_dry_run_and_said_once(tmp_path, capsys):
    # `catapult sweep CONFIG train.fsdp=true --dry-run` said "all valid" (the sweep itself refuses
    # it), and the sweep named the base config's key once per cell
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\nmodel: {width: 8, depth: 2}\noptimizer: {lr: 0.1}\ntrain: {steps: 2}\n"
                      "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {schedule.warmup_steps: [1, 2, 3]}}\n")
    store = tmp_path / "s.db"
    argv = ["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]
    for extra in (["--dry-run"], []):
        assert cli.main([*argv, "train.fsdp=true", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("train.fsdp: shards one model over the processes of catapult train-ddp") == 1, err
        assert "cell 0" not in err and "Traceback" not in err and not store.exists()
    assert cli.main([*argv, "sweep.grid.train.fsdp=[false, true]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("train.fsdp=True) train.fsdp: shards") == 3 and "train.fsdp=False" not in err, err


@pytest.mark.parametrize("where", ["default", "option"])
def test_a_file_where_the_stores_folder_goes_is_refused_by_the_dry_run_too(tmp_path, capsys, monkeypatch, where):
    # runs/<name> a file (a user's notes, named like the sweep): the run exits 2 ("runs/tiny is a
    # file where a directory is needed", or for runs/tiny/deeper/s.db "runs/tiny/deeper: Not a
    # directory"), and --dry-run said "all valid; a new store would be written at ..." and exited 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").write_text("notes\n")
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndata: {name: digits, n_train: 16, n_test: 8}\nmodel: {width: 4, depth: 2}\n"
                      "train: {steps: 1}\neval: {sharpness_every: 0, test_every: 0}\n"
                      "sweep: {grid: {schedule.warmup_steps: [1, 2]}}\n")
    store = ["--store", "runs/tiny/deeper/s.db"] if where == "option" else []
    assert cli.main(["sweep", str(config), *store, "--progress", "none", "--threads", "1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catapult sweep: error: runs/tiny is a file where a directory is needed (the folder of "
                          f"the store runs/tiny/{'deeper/s.db' if store else 'sweep.db'})"), err
    assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "runs" / "tiny").read_text() == "notes\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "runs", "tiny.yaml"]


def test_a_base_configs_missing_cuda_device_is_said_once_for_all_its_cells(tmp_path, capsys):
    # mutation pass 21 (CR2): the base config's device refusal was repeated once per cell (3 here)
    config = tmp_path / "grid.yaml"
    config.write_text("name: grid\nmodel: {width: 8, depth: 2}\noptimizer: {lr: 0.1}\ntrain: {steps: 2}\n"
                      "device: 'cuda:63'\neval: {sharpness_every: 0, test_every: 0}\n"
                      "sweep: {grid: {schedule.warmup_steps: [1, 2, 3]}}\n")
    store = tmp_path / "s.db"
    assert cli.main(["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1",
                     "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("cuda:63") == 1 and "cell " not in err and "Traceback" not in err and not store.exists(), err
