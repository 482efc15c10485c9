"""Token shards are read as one stream (``train-ddp``'s batches, and ``catapult train`` / ``spectrum``
/ ``critical-lr`` on shards): ``data.n_train`` (the first N training windows of a text corpus) has no
meaning there, and was dropped without a word, the run drawing its batches from every token of the
shards while its config.yaml said 100 windows. It is refused naming the key, exit code 2 on the
command line, before any work. Real ``.npy`` shards written with ``np.save``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from catapult import config as cfg
from catapult.cli import main
from catapult.engine.shard_run import build_shard_run


def _config(root, **data):
    return dict(name="tiny", seed=0, data=dict(name="text", root=str(root), context=4, **data),
                model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy",
                train=dict(steps=1, batch_size=2), eval=dict(sharpness_every=0))


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    np.save(root / "part0.npy", (np.arange(400) % 7).astype(np.uint16))
    (root / "vocab_size.json").write_text(json.dumps({"vocab_size": 7}))
    return root


def test_n_train_on_shards_is_refused_naming_the_key(shards):
    with pytest.raises(cfg.ConfigError) as err:
        build_shard_run(cfg.validate(_config(shards, n_train=10)), torch.device("cpu"))
    assert err.value.keys == ["data.n_train"]
    # null (the default) is a stream of every token, as before
    run = build_shard_run(cfg.validate(_config(shards)), torch.device("cpu"))
    assert run.config["data"]["n_train"] is None


def test_the_command_exits_2_before_any_work(shards, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(shards)))
    out = tmp_path / "run"
    assert main(["train", str(path), "data.n_train=10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.n_train" in err and "Traceback" not in err and not out.exists()


def test_a_run_folder_recorded_before_the_refusal_reloads_reading_every_token(shards, tmp_path, capsys):
    """A shards run made before the refusal recorded the config's n_train (8192 in the shipped GPT
    configs) and read every token. Reading its own config.yaml drops the key with one note, and
    repeats that run bit for bit; the same config outside a run folder, or n_train given on the
    command line, is refused."""
    from catapult.engine.distributed import train_ddp

    run = tmp_path / "run"
    train_ddp(cfg.validate(_config(shards)), out_dir=run)
    old = tmp_path / "old"
    old.mkdir()
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    recorded["data"]["n_train"] = 8192                      # as an earlier version wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(recorded))
    (old / "summary.json").write_bytes((run / "summary.json").read_bytes())
    again = tmp_path / "again"
    assert main(["train", str(old / "config.yaml"), "--out", str(again), "--progress", "none"]) == 0
    assert "data.n_train (8192) in this run's config.yaml is not applied" in capsys.readouterr().err
    assert (run / "metrics.csv").read_bytes() == (again / "metrics.csv").read_bytes()
    before, after = (torch.load(r / "model.pt", weights_only=True) for r in (run, again))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # given on the command line, it is the user's: refused
    assert main(["train", str(old / "config.yaml"), "data.n_train=10", "--out", str(tmp_path / "x")]) == 2
    assert "data.n_train" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # outside a run folder (no summary.json beside it): refused as any config
    (old / "summary.json").unlink()
    assert main(["train", str(old / "config.yaml"), "--out", str(tmp_path / "y")]) == 2
    assert "data.n_train" in capsys.readouterr().err and not (tmp_path / "y").exists()
