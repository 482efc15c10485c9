"""The commands a finished sweep suggests write beside its store, as `plot` and `report` do: its
`export` hint said `--out results.csv`, which a reader running the README's commands from the
repository's root found there, outside `runs/` (stop 63's new-user pass)."""
from __future__ import annotations

import shlex

import yaml

from catapult import cli

CONFIG = {"name": "nx", "data": {"name": "digits", "n_train": 16, "n_test": 8}, "model": {"width": 4, "depth": 2},
          "train": {"steps": 1}, "eval": {"sharpness_every": 0, "test_every": 0},
          "sweep": {"grid": {"optimizer.lr": [0.1, 0.2]}}}


def test_the_suggested_commands_write_beside_the_store(tmp_path, monkeypatch, capsys):
    config = tmp_path / "nx.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "runs").mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "runs" / "s.db"
    assert cli.main(["sweep", str(config), "--store", str(store), "--threads", "1", "--progress", "none"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("store: "))
    suggested = [shlex.split(part) for part in line.split("next: ", 1)[1].split("  |  ")]
    assert [argv[:2] for argv in suggested] == [["catapult", "plot"], ["catapult", "report"], ["catapult", "export"]]
    for argv in suggested:
        assert cli.main(argv[1:]) == 0, argv
    assert list(elsewhere.iterdir()) == []   # nothing in the working directory
    written = sorted(p.name for p in store.parent.iterdir())
    assert "s_cells.csv" in written and "s.html" in written, written
    assert (store.parent / "s_cells.csv").read_text().startswith("cell_id,optimizer.lr,")


def test_an_interrupted_sweep_names_an_export_beside_the_store(tmp_path, monkeypatch, capsys):
    import catapult.sweep.driver as driver

    config = tmp_path / "nx.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    store = tmp_path / "runs" / "s.db"

    def interrupted(base, spec, path, **kwargs):   # Ctrl-C after the store was made
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_sweep", interrupted)
    assert cli.main(["sweep", str(config), "--store", str(store), "--threads", "1"]) == 130
    err = capsys.readouterr().err
    assert f"(catapult export {store} --out {store.parent / 's_cells.csv'})" in err, err
