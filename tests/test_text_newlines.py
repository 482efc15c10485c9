"""One line-break rule for every text corpus: a ``.txt`` file (load_text / text_splits, Python's
universal newlines) and a text shard's documents (``.jsonl``, ``.parquet``) read ``\\r\\n`` and a
lone ``\\r`` as ``\\n`` alike (data.text_shards.one_newline), so the tokenizer sees the same text
from both forms of one corpus. Before, a JSON string kept its ``\\r``: the same corpus as .jsonl
trained on ``\\r`` characters its .txt never showed. Files are written as bytes, in both forms;
the truth is the corpus written with ``\\n`` alone."""
from __future__ import annotations

import json

import numpy as np
import pytest

from catapult.data.text import text_splits
from catapult.data.text_shards import DOCUMENT_SEPARATOR, iter_texts, tokenize_text_shards

#: Documents as written on Windows (CRLF) and old Mac OS (a lone CR), and the same with LF only.
WRITTEN = ["To be, or not to be:\r\nthat is the question.\r\n", "Whether 'tis nobler\rin the mind\r\rto suffer",
           "plain line\nand\r\nmixed\r"]
TRUTH = [d.replace("\r\n", "\n").replace("\r", "\n") for d in WRITTEN]


def _jsonl(path, docs):
    path.write_bytes("".join(json.dumps({"text": d}) + "\n" for d in docs).encode("utf-8"))


def _parquet(path, docs):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), path)


@pytest.mark.parametrize("suffix, write", [(".jsonl", _jsonl), (".parquet", _parquet)])
def test_a_shards_documents_read_line_breaks_as_a_txt_file_does(tmp_path, suffix, write):
    shard = tmp_path / f"corpus{suffix}"
    write(shard, WRITTEN)
    if suffix == ".jsonl":   # the file holds the JSON escapes of each CR
        assert shard.read_bytes().count(b"\\r") == sum(d.count("\r") for d in WRITTEN)
    txt = tmp_path / "corpus.txt"
    txt.write_bytes(DOCUMENT_SEPARATOR.join(WRITTEN).encode("utf-8"))   # CR and CRLF kept on disk
    assert txt.read_bytes().count(b"\r") == sum(d.count("\r") for d in WRITTEN)
    docs = list(iter_texts(shard))
    assert docs == TRUTH
    _, train, val, test = text_splits(txt, val_fraction=0.1)
    assert test is None and train + val == DOCUMENT_SEPARATOR.join(TRUTH)   # the same text from both forms
    assert train + val == DOCUMENT_SEPARATOR.join(docs)


def test_the_tokenizer_sees_the_same_corpus_from_crlf_and_lf_shards(tmp_path):
    crlf, lf = tmp_path / "crlf", tmp_path / "lf"
    for folder, docs in ((crlf, WRITTEN), (lf, TRUTH)):
        folder.mkdir()
        _jsonl(folder / "train.jsonl", docs * 40)
    got = {}
    for folder in (crlf, lf):
        vocab, arrays = tokenize_text_shards(folder, vocab_size=300, cache_dir=tmp_path / f"cache-{folder.name}")
        got[folder.name] = [np.load(a) for a in arrays]
        # no id of the vocabulary decodes to a carriage return: none was trained on
        assert "\r" not in vocab.tokenizer.decode(got[folder.name][0].tolist())
    assert len(got["crlf"]) == len(got["lf"]) == 1 and np.array_equal(got["crlf"][0], got["lf"][0])


def test_a_cache_tokenised_under_the_old_line_break_rule_is_not_reused(tmp_path, monkeypatch):
    # the shards' cache key holds the rule (NEWLINES): a cache written when a JSON string kept its \r
    # (here: the old rule put back, under its own name) is not mapped by a run of the one rule. Truth:
    # the LF corpus tokenised into a cache of its own
    import catapult.data.text_shards as shards

    crlf, lf = tmp_path / "crlf", tmp_path / "lf"
    for folder, docs in ((crlf, WRITTEN), (lf, TRUTH)):
        folder.mkdir()
        _jsonl(folder / "train.jsonl", docs * 40)
    with monkeypatch.context() as old:
        old.setattr(shards, "NEWLINES", "kept")
        old.setattr(shards, "one_newline", lambda text: text)
        vocab, arrays = tokenize_text_shards(crlf, vocab_size=300, cache_dir=tmp_path / "cache")
        assert "\r" in vocab.tokenizer.decode(np.load(arrays[0]).tolist())   # the old rule's cache
    vocab, arrays = tokenize_text_shards(crlf, vocab_size=300, cache_dir=tmp_path / "cache")
    _, truth = tokenize_text_shards(lf, vocab_size=300, cache_dir=tmp_path / "cache-lf")
    assert len(arrays) == len(truth) == 1 and np.array_equal(np.load(arrays[0]), np.load(truth[0]))
