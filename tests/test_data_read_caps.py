"""A shard folder's ``vocab_size.json`` was read whole (``read_text``), and a jsonl shard's lines
were read whole (iterating the file), before any check: a hostile file of a gigabyte with no
newline was held in memory (and decoded, a second copy) before being refused as no JSON. Now the
vocabulary file is read up to ``MAX_VOCAB_FILE_BYTES`` (64 KiB; the real file is ~20 bytes) and a
jsonl line up to ``MAX_JSONL_LINE_BYTES`` (256 MiB, one document), and past either the file is
refused naming it (exit 2 on the command line). The big files are sparse (``truncate``): nothing
big is written."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import yaml

from catapult import cli
from catapult.config import ConfigError
from catapult.data import text_shards
from catapult.data.text_shards import VOCAB_FILE, iter_texts, stated_vocab_size

from tiny_run import gpt_shards_config

GIB = 1 << 30


def _sparse(path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)   # the rest is a hole: zero bytes, none written


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    np.save(root / "part0.npy", np.arange(300, dtype=np.uint16) % 65)
    return root


def _peak(call) -> int:
    """The most bytes Python held at once while ``call()`` ran (``tracemalloc``; bytes objects included)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_vocab_file_of_a_gigabyte_is_refused_before_it_is_read(shards):
    _sparse(shards / VOCAB_FILE, GIB, b'{"vocab_size": 65')
    errors = []

    def call():
        try:
            stated_vocab_size(shards)
        except ConfigError as err:
            errors.append(err)
    assert _peak(call) < 1 << 20   # the old read_text held the gigabyte (and its decoded copy)
    assert len(errors) == 1 and errors[0].keys == ["data.root"]
    assert str(shards / VOCAB_FILE) in str(errors[0]) and "more than 65,536 bytes" in str(errors[0])


def test_the_command_line_refuses_it_with_exit_2_naming_the_file(shards, tmp_path, capsys):
    _sparse(shards / VOCAB_FILE, GIB, b'{"vocab_size": 65')
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(gpt_shards_config(shards)))
    code = cli.main(["train", str(config), "--out", str(tmp_path / "run"), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert VOCAB_FILE in err and "more than 65,536 bytes" in err
    assert not (tmp_path / "run").exists()


def test_a_vocab_file_at_the_bound_is_read(shards):
    text = json.dumps({"vocab_size": 65})
    (shards / VOCAB_FILE).write_text(text + " " * (text_shards.MAX_VOCAB_FILE_BYTES - len(text)))
    assert stated_vocab_size(shards) == 65
    with open(shards / VOCAB_FILE, "a") as f:
        f.write(" ")   # one byte past it
    with pytest.raises(ConfigError, match="more than 65,536 bytes"):
        stated_vocab_size(shards)


def test_a_jsonl_line_past_the_bound_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    head = b'{"text": "first"}\n{"text": "'
    _sparse(path, GIB, head)   # line 2: a gigabyte with no newline
    texts = iter_texts(path)
    assert next(texts) == "first"
    errors = []

    def call():
        try:
            next(texts)
        except ConfigError as err:
            errors.append(err)
    # 256 MiB and one byte read (readline joins its chunks: two copies at most), not the gigabyte
    # and its decoded copy (2 GiB)
    assert _peak(call) < 2 * text_shards.MAX_JSONL_LINE_BYTES + (16 << 20)
    assert len(errors) == 1 and errors[0].keys == ["data.root"]
    assert f"{path}:2" in str(errors[0]) and "a line longer than 268,435,456 bytes" in str(errors[0])


def test_a_jsonl_line_at_the_bound_is_read_and_one_byte_past_it_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(text_shards, "MAX_JSONL_LINE_BYTES", 64, raising=False)
    doc = "x" * (64 - len('{"text": ""}'))
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": doc}, separators=(", ", ": ")) + "\n")
    assert len(path.read_bytes()) == 65   # 64 bytes and the newline
    assert list(iter_texts(path)) == [doc]
    path.write_text(json.dumps({"text": doc + "y"}, separators=(", ", ": ")))   # 65 bytes, no newline
    with pytest.raises(ConfigError, match=r"a\.jsonl:1: a line longer than 64 bytes"):
        list(iter_texts(path))
