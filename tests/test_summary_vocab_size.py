"""A run's summary.json records the vocabulary its model was built with. A byte-level BPE of a
small corpus runs out of merges below the requested data.vocab_size (400 here): config.yaml keeps
the request (the tokenizer cache's key), the model has the tokenizer's size. Independent truth:
the cached tokenizer file read with the tokenizers library, and the embedding rows in model.pt."""
from __future__ import annotations

import json

import pytest
import torch

from catapult import config as C
from catapult.engine import run
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import Cell

tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40 + "a dog ran far. " * 30)
    return C.validate({
        "name": "v", "data": {"name": "text", "root": str(corpus), "tokenizer": "bpe", "vocab_size": 400,
                              "context": 8, "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2}, "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 0.001}, "train": {"steps": 1, "batch_size": 4},
        "eval": {"sharpness_every": 0, "test_every": 0}})


def _tokenizer_size(tmp_path) -> int:
    (path,) = (tmp_path / "cache").glob("bpe-v400-*.json")
    return tokenizers.Tokenizer.from_file(str(path)).get_vocab_size()


def test_a_bpe_runs_summary_records_the_built_vocabulary_and_config_yaml_the_request(tmp_path):
    run(_config(tmp_path), out_dir=tmp_path / "run", progress="none")
    built = _tokenizer_size(tmp_path)
    assert built < 400  # the corpus ran out of merges
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["vocab_size"] == built
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert weights["wte.weight"].shape[0] == built  # the token embedding's rows
    saved = C.read_mapping(tmp_path / "run" / "config.yaml")
    assert saved["data"]["vocab_size"] == 400


def test_a_batched_sweeps_gpt_cell_records_the_same(tmp_path):
    ((_, result),) = EnsembleExecutor(kernels=False, threads=1).run([Cell(0, _config(tmp_path))])
    assert result.summary["vocab_size"] == _tokenizer_size(tmp_path)



def test_a_vocab_size_attribute_that_is_no_integer_is_not_recorded():
    # Mutation pass 23b (RC1): any non-None vocab_size was recorded (True, a float, a string of a model of yours)
    from catapult.engine.records import vocabulary_record

    for value in (True, 278.0, "278", None):
        assert vocabulary_record(type("M", (), {"vocab_size": value})()) == {}, value
    assert vocabulary_record(type("M", (), {"vocab_size": 278})()) == {"vocab_size": 278}
