"""A swept key that ``catapult transfer`` puts on no role (not --x, --series, --panel or --where) is
averaged over like a seed: relu and tanh cells made one point, and the table printed the optimum of
that mix beside the drift and shift with no word of it (the phase plot's title names such keys).
It now warns, naming the key; the seeds alone are pooled without a word, as before."""
from __future__ import annotations

import yaml

from catapult.cli import main

CONFIG = {"name": "mixed", "data": {"name": "digits", "n_train": 32, "n_test": 16},
          "model": {"name": "mlp", "width": 8, "depth": 2}, "optimizer": {"name": "sgd"},
          "train": {"steps": 1}, "eval": {"sharpness_every": 0},
          "sweep": {"grid": {"optimizer.lr": [0.1, 0.2], "model.activation": ["relu", "tanh"]}, "seeds": 2}}


def test_a_key_averaged_over_besides_the_seeds_is_named(tmp_path, capsys):
    config = tmp_path / "mixed.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    store = tmp_path / "mixed.db"
    assert main(["sweep", str(config), "--store", str(store), "--progress", "none", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["transfer", str(store), "--out", str(tmp_path / "all.png")]) == 0
    err = capsys.readouterr().err
    assert "each point is the mean over model.activation (2 values), not over seeds alone" in err
    assert "seed (" not in err
    for fixed in (["--where", "model.activation=relu"], ["--panel", "model.activation"],
                  ["--series", "model.activation"]):
        assert main(["transfer", str(store), *fixed, "--out", str(tmp_path / f"{fixed[0][2:]}.png")]) == 0
        assert "mean over" not in capsys.readouterr().err   # the seeds alone are averaged
