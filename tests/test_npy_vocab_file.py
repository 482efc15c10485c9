"""Pre-tokenised ``*.npy`` shards of a small vocabulary (fewer than BPE's 257 ids) state their true
size in ``vocab_size.json`` beside them (``data.vocab_size`` is a BPE option, >= 257): the model
gets that many embedding rows and logits, and an id at or beyond it is refused naming the shard and
the file (exit 2 on the command line), before any work. Real ``.npy`` files written with
``np.save``; the truth is the model's own shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from catapult.config import ConfigError
from catapult.data.text_shards import VOCAB_FILE
from catapult.engine.distributed import TokenShards, train_ddp

from tiny_run import gpt_shards_config

VOCAB = 65   # a character-level corpus' size


_config = gpt_shards_config


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        ids = rng.integers(0, VOCAB, 300).astype(np.uint16)
        ids[5] = VOCAB - 1
        np.save(root / f"part{i}.npy", ids)
    (root / VOCAB_FILE).write_text(json.dumps({"vocab_size": VOCAB}))
    return root


def _sizes(model: torch.nn.Module) -> set[int]:
    """The vocabulary sizes the model's embeddings and final layer have."""
    sizes = {m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings != 8}
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    return sizes | {last.out_features}


def test_the_stated_size_is_the_model_s_vocabulary(shards):
    # the position embedding has data.context = 8 rows, left out
    result = train_ddp(_config(shards))
    assert result.summary["steps_completed"] == 1
    assert _sizes(result.model) == {VOCAB}      # was 4096: data.vocab_size's default
    assert TokenShards(shards, 4096, vocab_size_set=False).vocab_size == VOCAB


def test_an_id_at_the_stated_size_is_refused_naming_the_shard_and_the_file(shards, tmp_path):
    bad = np.load(shards / "part1.npy")
    bad[17] = VOCAB
    np.save(shards / "part1.npy", bad)
    with pytest.raises(ConfigError) as err:
        train_ddp(_config(shards), out_dir=tmp_path / "run")
    assert err.value.keys == ["data.root"]
    assert "part1.npy" in str(err.value) and f"token id {VOCAB} at index 17" in str(err.value)
    assert f"{VOCAB_FILE} - 1 = {VOCAB - 1}" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_command_exits_2_on_an_id_beyond_the_stated_size(shards, tmp_path, capsys):
    from catapult.cli import main

    bad = np.load(shards / "part0.npy")
    bad[3] = 200
    np.save(shards / "part0.npy", bad)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(shards)))
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "part0.npy" in err and "token id 200" in err and "Traceback" not in err


def test_a_bpe_vocab_size_that_disagrees_with_the_file_is_refused_naming_the_key(shards):
    with pytest.raises(ConfigError) as err:
        train_ddp(_config(shards, tokenizer="bpe", vocab_size=300))
    assert err.value.keys == ["data.vocab_size"] and f"states {VOCAB}" in str(err.value)


@pytest.mark.parametrize("text", ['{"vocab_size": 0}', '{"vocab": 65}', '{"vocab_size": 65.5}',
                                  '{"vocab_size": true}', "[65]", "65,", "\xff", "[" * 60000])
def test_a_bad_vocab_file_is_refused_naming_it(shards, text):
    (shards / VOCAB_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        TokenShards(shards, 4096, vocab_size_set=False)
    assert err.value.keys == ["data.root"] and VOCAB_FILE in str(err.value)


def test_a_vocab_file_beside_text_shards_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / VOCAB_FILE).write_text('{"vocab_size": 65}')
    with pytest.raises(ConfigError) as err:
        TokenShards(tmp_path, 300, cache_dir=tmp_path / "cache")
    assert err.value.keys == ["data.root"] and "text shards" in str(err.value)


def test_without_the_file_nothing_changes(shards):
    (shards / VOCAB_FILE).unlink()
    assert TokenShards(shards, 4096, vocab_size_set=False).vocab_size == 4096


@pytest.mark.parametrize("text", ['{"vocab_size": true}', '{"vocab_size": 0}', '{"vocab_size": 4294967297}'])
def test_the_stated_size_is_an_integer_from_1_to_2_to_the_32(shards, text):
    """Mutation pass 17 (VS1-VS3): stated_vocab_size itself refuses a bool, 0 and 2**32 + 1 (the
    shards' ids refused some of them later, by another message)."""
    from catapult.data.text_shards import stated_vocab_size

    (shards / VOCAB_FILE).write_text(text)
    with pytest.raises(ConfigError) as err:
        stated_vocab_size(shards)
    assert err.value.keys == ["data.root"] and VOCAB_FILE in str(err.value)
    (shards / VOCAB_FILE).write_text('{"vocab_size": 4294967296}')
    assert stated_vocab_size(shards) == 2 ** 32


def test_the_file_beside_one_shard_file_is_read(shards):
    """Mutation pass 17 (VS4): data.root naming one .npy shard reads the vocab file beside it."""
    from catapult.data.text_shards import stated_vocab_size

    (shards / VOCAB_FILE).write_text('{"vocab_size": 65}')
    one = sorted(shards.glob("*.npy"))[0]
    assert stated_vocab_size(one) == 65 and stated_vocab_size(shards) == 65


@pytest.mark.parametrize("kind", ["folder", "broken link", "fifo"])
def test_a_vocab_file_that_is_not_a_regular_file_is_refused_naming_it(shards, tmp_path, capsys, kind):
    """A vocab_size.json that is a folder, a link to nothing or a FIFO beside the ``.npy`` shards was
    skipped as if absent (the model silently got data.vocab_size's 4096 ids): refused on data.root
    naming the file, and the command exits 2 before any run folder is made."""
    import os

    from catapult.cli import main

    path = shards / VOCAB_FILE
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "broken link":
        path.symlink_to(tmp_path / "missing.json")
    else:
        os.mkfifo(path)
    with pytest.raises(ConfigError) as err:
        TokenShards(shards, 4096, vocab_size_set=False)
    assert err.value.keys == ["data.root"] and str(path) in str(err.value)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(shards)))
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and VOCAB_FILE in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_link_to_a_vocab_file_is_read(shards, tmp_path):
    real = tmp_path / "sizes.json"
    real.write_text('{"vocab_size": 65}')
    (shards / VOCAB_FILE).unlink()
    (shards / VOCAB_FILE).symlink_to(real)
    assert TokenShards(shards, 4096, vocab_size_set=False).vocab_size == VOCAB


@pytest.mark.parametrize("vocab_size", [4096, VOCAB])
def test_a_root_that_is_the_vocab_file_itself_is_refused_naming_the_folder(shards, vocab_size):
    # data.root=shards/vocab_size.json was refused as 'data.vocab_size: 4096, and .../vocab_size.json
    # states 65 ids' (the advice, data.vocab_size=65, then gave 'is not a token shard')
    with pytest.raises(ConfigError) as err:
        TokenShards(shards / VOCAB_FILE, vocab_size)
    assert err.value.keys == ["data.root"] and f"data.root={shards}" in str(err.value)
