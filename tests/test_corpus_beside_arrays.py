"""A folder that holds a text corpus (``*.txt`` or ``wiki.train.raw``) and ``*.npy`` token arrays that
are not catapult's caches of it (a shard folder with its README.txt or LICENSE.txt) is ambiguous:
``catapult train`` read the text alone and trained a character model on the README, the shards and
their ``vocab_size.json`` left out without a word (S). It is refused with exit code 2 naming
``data.root`` and both files, before any work; a corpus beside its own BPE caches is still a corpus.
So does a corpus beside ``*.jsonl`` / ``*.parquet`` text shards (the
README read, the documents left out). Real files: ``np.save`` arrays, JSON lines and plain text; the truth is the run folder's absence and the message."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from catapult.cli import main


def _write_config(tmp_path, root):
    config = dict(name="tiny", seed=0, data=dict(name="text", root=str(root), context=8),
                  model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy",
                  train=dict(steps=1, batch_size=2), eval=dict(sharpness_every=0))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("corpus", ["README.txt", "wiki.train.raw"])
@pytest.mark.parametrize("command, shard", [("train", "part0.npy"), ("spectrum", "part0.npy"), ("train", "part0.jsonl")])
def test_a_corpus_beside_foreign_token_arrays_is_refused(tmp_path, capsys, corpus, command, shard):
    root = tmp_path / "shards"
    root.mkdir()
    if shard.endswith(".npy"):
        np.save(root / shard, (np.arange(500) % 11).astype(np.uint16))
        (root / "vocab_size.json").write_text(json.dumps({"vocab_size": 11}))
    else:   # text shards: one JSON document a line
        (root / shard).write_text("".join(json.dumps({"text": f"document {i} of the shard."}) + "\n" for i in range(200)))
    (root / corpus).write_text("These are the token shards of a tiny corpus, made by tokenize.py. " * 3)
    out = tmp_path / "run"
    args = [command, str(_write_config(tmp_path, root))] + (["--out", str(out)] if command == "train" else [])
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "data.root" in err and corpus in err and shard in err
    assert "Traceback" not in err and not out.exists()


def test_a_corpus_beside_its_own_bpe_caches_is_still_a_corpus(tmp_path):
    from catapult.config import ConfigError, validate
    from catapult.data import text
    from catapult.engine.run_data import load_data

    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=300)   # leaves its caches beside the text
    assert list(root.glob("*.npy"))
    config = validate(dict(data=dict(name="text", root=str(root), context=8, tokenizer="bpe", vocab_size=300),
                           model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy"))
    assert load_data(config).x_train.shape[1] == 8
    np.save(root / "other.npy", np.zeros(10, dtype=np.uint16))   # an array that is not its cache
    with pytest.raises(ConfigError, match="other.npy"):
        load_data(config)
