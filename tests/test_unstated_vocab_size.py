"""``data.tokenizer: none`` without ``data.vocab_size``: the shards' ``vocab_size.json`` states the
size (the model gets that many embedding rows and logits). Before, the key's default 4096 counted
as given and the run was refused as if the user had written 4096. A size that is given (4096
included) is still checked against the file. Truth: real ``.npy`` shards and the model's shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from catapult import config as cfg
from catapult.config.sections import MAX_TOKEN_IDS
from catapult.data.text_shards import VOCAB_FILE
from catapult.engine.distributed import train_ddp
from catapult.engine.run_data import data_shape_bounds

from tiny_run import gpt_shards_config

VOCAB = 65


_config = gpt_shards_config


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    ids = np.random.default_rng(0).integers(0, VOCAB, 300).astype(np.uint16)
    ids[5] = VOCAB - 1
    np.save(root / "part0.npy", ids)
    (root / VOCAB_FILE).write_text(json.dumps({"vocab_size": VOCAB}))
    return root


def _rows(model: torch.nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


@pytest.mark.parametrize("given", [{}, {"vocab_size": None}])
def test_none_without_a_size_takes_the_file_s(shards, given):
    result = train_ddp(_config(shards, tokenizer="none", **given))
    assert _rows(result.model) == VOCAB
    assert result.model.wte.num_embeddings == VOCAB


@pytest.mark.parametrize("size", [4096, 100])
def test_a_given_size_is_checked_against_the_file(shards, size):
    with pytest.raises(cfg.ConfigError) as err:
        train_ddp(_config(shards, tokenizer="none", vocab_size=size))
    assert err.value.keys == ["data.vocab_size"] and f"states {VOCAB}" in str(err.value)


def test_the_command_line_without_the_size_trains_and_records_the_file_s(shards, tmp_path):
    from catapult.cli import main

    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config(shards)))
    assert main(["train-ddp", str(path), "data.tokenizer=none", "--out", str(tmp_path / "run")]) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert (recorded["tokenizer"], recorded["vocab_size"]) == ("none", VOCAB)


def test_without_the_file_the_default_size(shards):
    from catapult.engine.shard_run import UNSTATED_VOCAB_SIZE

    (shards / VOCAB_FILE).unlink()
    result = train_ddp(_config(shards, tokenizer="none"))
    assert _rows(result.model) == UNSTATED_VOCAB_SIZE == cfg.defaults()["data"]["vocab_size"]


def test_null_is_for_none_only():
    for tokenizer in ("bpe", "char"):
        with pytest.raises(cfg.ConfigError) as err:
            cfg.validate({"data": {"name": "text", "root": "r", "tokenizer": tokenizer, "vocab_size": None},
                          "model": {"name": "gpt"}})
        assert err.value.keys == ["data.vocab_size"] and "null" in str(err.value)
        # bpe needs a size (it was told "remove it"); char reads none (it was told a size to set)
        wanted = ("give the vocabulary's size, 257 to 1048576 (the key left out: 4096; on the command line: "
                  "data.vocab_size=4096)" if tokenizer == "bpe" else "reads no size: leave the key out")
        assert wanted in str(err.value) and "remove it" not in str(err.value)
    assert cfg.validate({"data": {"name": "text", "root": "r", "tokenizer": "bpe"},
                         "model": {"name": "gpt"}})["data"]["vocab_size"] == 4096


def test_the_shape_bound_of_an_unstated_size_is_the_largest_a_file_may_state():
    d = cfg.validate({"data": {"name": "text", "root": "r", "tokenizer": "none"}, "model": {"name": "gpt"}})["data"]
    assert data_shape_bounds(d)[1] == (64, MAX_TOKEN_IDS)


def test_image_data_with_tokenizer_none_and_a_null_size_is_one_problem():
    """Mutation pass 20 (UV6): digits with data.tokenizer none and data.vocab_size null is one problem, the
    tokenizer, a text-data option (UV6 also named the null size, which is the key unstated with none)."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"data": {"name": "digits", "tokenizer": "none", "vocab_size": None}})
    assert err.value.problems == [("data.tokenizer", "is a text-data option (data.name is 'digits'); remove it "
                                                     "(on the command line: data.tokenizer=char)")]
