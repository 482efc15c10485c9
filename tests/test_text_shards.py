"""Text shards (jsonl, parquet) for train-ddp: tokenised once into the token cache, then read
like *.npy shards; bad files stop the command with exit 2 naming the file and line / column."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import yaml

from catapult.config import ConfigError
from catapult.data import text_shards
from catapult.engine.distributed import TokenShards

VOCAB = 300
DOCS_A = ["First shard, first document.", "Second document: with ünïcode and\nnewlines.", ""]
DOCS_B = ["Parquet document one.", "Parquet document two, a little longer than one."]
DOCS_VALID = ["held-out text that never enters the stream"]


def _jsonl(path, docs, key="text"):
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")


def _parquet(path, docs, key="text"):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({key: docs, "n": list(range(len(docs)))}), path, row_group_size=1)


def _corpus(root, key="text"):
    root.mkdir(exist_ok=True)
    _jsonl(root / "a.jsonl", DOCS_A, key)
    _parquet(root / "b.parquet", DOCS_B, key)
    _jsonl(root / "wiki.valid.jsonl", DOCS_VALID, key)
    return root


def test_text_shards_are_the_documents_encoded_in_order(tmp_path):
    root = _corpus(tmp_path / "data")
    cache = tmp_path / "cache"
    shards = TokenShards(root, VOCAB, cache_dir=cache)
    assert [f.name for f in shards.sources] == ["a.jsonl", "b.parquet"]           # held-out file left out
    stream = shards.window(0, len(shards))
    # independent truth: the saved tokenizer JSON, loaded by the tokenizers library itself
    import tokenizers
    (tok_file,) = cache.glob("bpe-v300-*.json")
    tok = tokenizers.Tokenizer.from_file(str(tok_file))
    expected = [i for d in DOCS_A + DOCS_B for i in tok.encode(d + "\n\n", add_special_tokens=False).ids]
    assert stream.tolist() == expected
    # byte-level BPE decodes back to the text: the documents, each followed by a blank line
    assert tok.decode(stream.tolist()) == "".join(d + "\n\n" for d in DOCS_A + DOCS_B)
    assert stream.max() < VOCAB and all(a.dtype == np.uint16 for a in shards.arrays)
    # a window across the shard border equals the stream's slice
    n_a = len(shards.arrays[0])
    assert shards.window(n_a - 3, 6).tolist() == expected[n_a - 3: n_a + 3]


def test_second_open_maps_the_cache_without_reading_text(tmp_path, monkeypatch):
    root = _corpus(tmp_path / "data")
    first = TokenShards(root, VOCAB, cache_dir=tmp_path / "cache").window(0, 20)

    def no_text(*args, **kwargs):
        raise AssertionError("text read again")

    monkeypatch.setattr(text_shards, "iter_texts", no_text)
    monkeypatch.setattr(text_shards, "train_bpe", no_text)
    again = TokenShards(root, VOCAB, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.window(0, 20), first)


def test_text_key_names_the_field_and_the_column(tmp_path):
    root = _corpus(tmp_path / "data", key="body")
    shards = TokenShards(root, VOCAB, text_key="body", cache_dir=tmp_path / "cache")
    assert len(shards) > 20
    with pytest.raises(ConfigError, match=r"a\.jsonl:1: no 'text' field"):
        TokenShards(root, VOCAB, cache_dir=tmp_path / "cache2")


@pytest.mark.parametrize("content, where", [
    ('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n', r"bad\.jsonl:3: not a JSON object"),
    ('{"text": "fine"}\n["a", "list"]\n', r"bad\.jsonl:2: a JSON list"),
    ('{"text": "fine"}\n\n{"txt": "typo"}\n', r"bad\.jsonl:3: no 'text' field"),
    ('{"text": 12}\n', r"bad\.jsonl:1: field 'text' holds int"),
    ('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", r"bad\.jsonl:2: not a JSON object \(nested too deeply"),
    ('{"text": "x", "n": ' + "1" * 5000 + "}\n", r"bad\.jsonl:1: not a JSON object \(Exceeds the limit"),
    ('{"text": "fine"}\n{"text": "a\\ud800b"}\n', r"bad\.jsonl:2: field 'text' holds a lone surrogate \('\\ud800'\)"),
])
def test_bad_jsonl_names_the_file_and_line(tmp_path, content, where):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(ConfigError, match=where):
        TokenShards(tmp_path, VOCAB, cache_dir=tmp_path / "cache")


def test_a_jsonl_shard_opening_with_a_byte_order_mark_reads_as_without(tmp_path):
    # Windows editors save UTF-8 with a BOM: line 1 was "not a JSON object (Unexpected UTF-8 BOM ...)",
    # while a text corpus drops the mark
    docs = ["one document", "another"]
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    for root in (plain, marked):
        root.mkdir()
        _jsonl(root / "a.jsonl", docs)
    (marked / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + (plain / "a.jsonl").read_bytes())
    assert list(text_shards.iter_texts(marked / "a.jsonl")) == docs
    with_mark = TokenShards(marked, VOCAB, cache_dir=tmp_path / "c1")
    without = TokenShards(plain, VOCAB, cache_dir=tmp_path / "c2")
    assert with_mark.window(0, len(without)).tolist() == without.window(0, len(without)).tolist()


def test_bad_parquet_names_the_file_and_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cases = {
        "nocol": (pa.table({"body": ["x"]}), r"nocol\.parquet: no column 'text'"),
        "ints": (pa.table({"text": [1, 2]}), r"ints\.parquet, column 'text': type int64"),
        "nulls": (pa.table({"text": ["a", None, "c"]}), r"nulls\.parquet, column 'text', row 1: null"),
        # two columns of the name: pyarrow's KeyError ("Column text does not exist in schema"), a traceback
        "twice": (pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]),
                  r"twice\.parquet: 2 columns are named 'text' \(data\.text_key\)"),
    }
    for name, (table, where) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        pq.write_table(table, folder / f"{name}.parquet")
        with pytest.raises(ConfigError, match=where):
            TokenShards(folder, VOCAB, cache_dir=tmp_path / "cache")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match=r"junk\.parquet: not a readable parquet file"):
        TokenShards(tmp_path / "junk", VOCAB, cache_dir=tmp_path / "cache")


def _ddp_config(root, cache, steps=2):
    return dict(seed=1, data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB, context=4,
                                  cache_dir=str(cache)),
                model=dict(name="gpt", width=16, depth=1, n_heads=2), loss="cross_entropy",
                optimizer=dict(name="adam", lr=1e-3), schedule=dict(warmup_steps=1),
                train=dict(steps=steps, batch_size=4))


def test_train_ddp_command_trains_from_text_shards_and_exits_2_on_a_bad_one(tmp_path, capsys):
    from catapult.cli import main

    root = _corpus(tmp_path / "data")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_ddp_config(root, tmp_path / "cache")))
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    assert len(list((tmp_path / "cache").glob("*.tokens.bpe-v300-*.npy"))) == 3   # held-out file tokenised too
    (root / "c.jsonl").write_text('{"text": "ok"}\n{"text": "broken\n')
    capsys.readouterr()
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl:2" in err and "Traceback" not in err and not (tmp_path / "run2" / "model.pt").exists()


@pytest.mark.parametrize("damage, words", [
    ("tokenizer", r"data\.root: .*bpe-v300-\w+\.json: not a tokenizers JSON file"),
    ("ids", r"data\.root: .*a\.jsonl\.tokens\.bpe-v300-\w+\.npy: token id 65000 is beyond the tokenizer's \d+ ids"),
    ("array", r"data\.root: .*a\.jsonl\.tokens\.bpe-v300-\w+\.npy: not a readable \.npy token array"),
])
def test_a_damaged_token_cache_is_a_config_error(tmp_path, damage, words):
    # each was a ValueError traceback out of train-ddp (the ids one mid-run, at the first batch)
    root = _corpus(tmp_path / "data")
    cache = tmp_path / "cache"
    shards = TokenShards(root, VOCAB, cache_dir=cache)
    assert shards.arrays[0].max() < VOCAB
    if damage == "tokenizer":
        [tok_file] = cache.glob("bpe-v300-*.json")
        tok_file.write_text("garbage")
    else:
        [array] = cache.glob("a.jsonl.tokens.*.npy")
        ids = np.load(array).copy()
        ids[3] = 65000  # no embedding row: this failed at the first batch that drew it
        array.unlink()
        if damage == "ids":
            np.save(array, ids)
        else:
            array.write_bytes(b"x")
    with pytest.raises(ConfigError, match=words):
        TokenShards(root, VOCAB, cache_dir=cache)


@pytest.mark.parametrize("name", ["a.npy", "a.jsonl"])
def test_a_file_that_is_not_npy_is_refused_without_advice_to_unpickle_it(tmp_path, name):
    # NumPy's message says to load such a file with allow_pickle=True, which would run its code
    root = tmp_path / "data"
    root.mkdir()
    cache = tmp_path / "cache"
    if name == "a.jsonl":  # the token cache's array of a text shard, damaged
        _jsonl(root / name, DOCS_A)
        TokenShards(root, VOCAB, cache_dir=cache)
        [array] = cache.glob("a.jsonl.tokens.*.npy")
        array.write_bytes(pickle.dumps([1, 2, 3]))
    else:  # a pre-tokenised shard of the user's
        (root / name).write_bytes(pickle.dumps(np.arange(10)))
    with pytest.raises(ConfigError, match="NumPy would read it as a pickle, refused unread") as info:
        TokenShards(root, VOCAB, cache_dir=cache)
    assert "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("compression", ["none", "snappy"])
def test_a_parquet_file_damaged_inside_a_page_names_the_file(tmp_path, compression):
    # the footer reads fine; the damage shows when the page is read: a bare OSError (snappy) naming
    # no file, or a UnicodeDecodeError traceback out of train-ddp (invalid UTF-8 in a string)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bad.parquet"
    docs = [f"document number {i:04d} " * 20 for i in range(300)]
    pq.write_table(pa.table({"text": docs}), path, compression=compression)
    data = bytearray(path.read_bytes())
    at = data.find(b"document number 0150") if compression == "none" else len(data) // 2
    assert at > 0
    data[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"bad\.parquet, column 'text', rows from 0: corrupt"):
        list(text_shards.iter_texts(path))


@pytest.mark.parametrize("name, held_out, validation", [
    ("wiki.valid.npy", True, True), ("wiki.val.npy", True, True), ("c4-validation.00000-of-00008.json", True, True),
    ("wiki.test.npy", True, False), ("test-00000-of-00001.parquet", True, False), ("Part_TEST.jsonl", True, False),
    # substrings of other words: training shards (they were held out by a substring rule)
    ("interval.npy", False, False), ("contest_data.npy", False, False), ("invalid_ids_removed.npy", False, False),
    ("attestations.jsonl", False, False), ("crawl-latest-00001.npy", False, False), ("train-00000.parquet", False, False),
])
def test_held_out_shards_are_named_by_a_word_not_a_substring(name, held_out, validation):
    from catapult.data.text_shards import is_held_out, is_validation

    assert is_held_out(name) is held_out and is_validation(name) is validation


def test_the_model_is_sized_by_the_tokenizer_a_small_corpus_trains(tmp_path):
    # train-ddp built its embedding and logits from data.vocab_size (100,000 rows for a tokenizer
    # of a few hundred ids); catapult train used the tokenizer's own size
    root = _corpus(tmp_path / "data")
    shards = TokenShards(root, 100_000, cache_dir=tmp_path / "cache")
    (tok_file,) = (tmp_path / "cache").glob("bpe-v100000-*.json")
    import tokenizers
    assert shards.vocab_size == tokenizers.Tokenizer.from_file(str(tok_file)).get_vocab_size() < 1000


def test_the_tokenizer_learns_the_document_separator_it_is_encoded_with(tmp_path):
    # trained on the bare documents, the separator "\n\n" cost two ids at every document border
    root = tmp_path / "data"
    root.mkdir()
    _jsonl(root / "a.jsonl", [f"document number {i} of the shard." for i in range(200)])
    TokenShards(root, 300, cache_dir=tmp_path / "cache")
    import tokenizers
    (tok_file,) = (tmp_path / "cache").glob("bpe-v300-*.json")
    tok = tokenizers.Tokenizer.from_file(str(tok_file))
    assert len(tok.encode(text_shards.DOCUMENT_SEPARATOR, add_special_tokens=False).ids) == 1


def test_the_tokenizer_is_trained_on_the_training_shards_alone(tmp_path):
    # the held-out shard's words, repeated, would win merges of their own if it were trained on
    root = tmp_path / "data"
    root.mkdir()
    _jsonl(root / "a.jsonl", DOCS_A * 20)
    _jsonl(root / "wiki.valid.jsonl", ["zyzzyva quokka xylophone"] * 60)
    TokenShards(root, VOCAB, cache_dir=tmp_path / "cache")
    import tokenizers
    from catapult.data.tokenize import train_bpe
    (tok_file,) = (tmp_path / "cache").glob("bpe-v300-*.json")
    trained = tokenizers.Tokenizer.from_file(str(tok_file))
    alone = train_bpe([d + text_shards.DOCUMENT_SEPARATOR for d in DOCS_A * 20], VOCAB)
    held_out = "zyzzyva quokka xylophone"
    assert trained.encode(held_out, add_special_tokens=False).ids == alone.encode(held_out).tolist()
    assert trained.get_vocab() == alone.tokenizer.get_vocab()


def test_token_caches_of_several_tokenizations_are_not_read_as_one_stream(tmp_path):
    # catapult train leaves one token cache per vocabulary (and corpus version) beside a text
    # corpus; train-ddp on that folder read them all as shards, concatenating ids of different
    # tokenizers into one training stream, silently
    from catapult.data.text import load_bpe_corpus

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    load_bpe_corpus("text", root=str(text), vocab_size=300)
    one = TokenShards(tmp_path, vocab_size=300)   # one tokenization's caches are shards (documented)
    assert [f.name.split(".")[1] for f in one.files] == ["train"] and len(one) > 0
    load_bpe_corpus("text", root=str(text), vocab_size=320)
    with pytest.raises(ConfigError, match=r"data\.root: its \*\.npy files are catapult's token caches of 2 "
                                          r"tokenization\(s\) \(bpe-v300-[0-9a-f]+, bpe-v320-[0-9a-f]+\)"):
        TokenShards(tmp_path, vocab_size=320)
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in one.files:
        (alone / f.name).write_bytes(f.read_bytes())
    np.save(alone / "mine.npy", np.arange(50, dtype=np.uint16))
    (alone / f"{one.files[0].name.split('.')[2]}.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"1 tokenization\(s\) \(bpe-v300-[0-9a-f]+ and 1 other array\(s\) \(mine\.npy"):
        TokenShards(alone, vocab_size=300)


@pytest.mark.parametrize("name", ["corpus.txt", "wiki.train.raw"])
def test_a_plain_text_file_is_named_as_no_token_shard(tmp_path, capsys, name):
    # `catapult train`'s own data.root (data.name: text) given to train-ddp: it was "not a readable
    # .npy token array (not a .npy file: NumPy would read it as a pickle, refused unread)"
    from catapult.cli import main

    text = tmp_path / name
    text.write_text("the cat sat on the mat\n" * 50)
    with pytest.raises(ConfigError, match=rf"{name} is not a token shard: train-ddp reads \*\.npy token arrays, "
                                          r"or \*\.jsonl / \*\.parquet text"):
        TokenShards(text, VOCAB, cache_dir=tmp_path / "cache")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_ddp_config(text, tmp_path / "cache")))
    capsys.readouterr()
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is not a token shard" in err and "pickle" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and text.read_text() == "the cat sat on the mat\n" * 50


def test_token_arrays_beside_text_shards_are_refused_not_left_out(tmp_path):
    # a folder of *.npy shards with a *.jsonl beside them (an index, a dataset card) trained on the
    # jsonl alone: text shards took the folder and every array was left out of the stream silently
    root = tmp_path / "data"
    root.mkdir()
    _jsonl(root / "a.jsonl", DOCS_A)
    first = TokenShards(root, VOCAB)   # its own caches, beside the text, are no foreign arrays
    again = TokenShards(root, VOCAB)
    assert len(again) == len(first) > 0 and all(f.parent == root for f in again.files)
    np.save(root / "shard_000.npy", np.arange(50, dtype=np.uint16))
    np.save(root / "shard_001.npy", np.arange(50, dtype=np.uint16))
    with pytest.raises(ConfigError, match=r"data\.root: .*data holds text shards \(a\.jsonl, \.\.\.\) and token "
                                          r"arrays \(shard_000\.npy and 1 more\)"):
        TokenShards(root, VOCAB)


def test_a_broken_link_named_as_a_text_shard_is_refused_not_skipped(tmp_path):
    # a dangling wiki.valid.jsonl was skipped: the run validated on nothing (an empty held-out stream)
    root = tmp_path / "data"
    root.mkdir()
    _jsonl(root / "a.jsonl", DOCS_A)
    (root / "wiki.valid.jsonl").symlink_to(tmp_path / "elsewhere" / "wiki.valid.jsonl")
    # named with where it points, as folder_splits names a broken wiki.valid.raw (one wording, irregular_file)
    with pytest.raises(ConfigError, match=r"wiki\.valid\.jsonl: a broken link \(it points to \S*elsewhere/wiki\.valid\.jsonl, "
                                          r"which does not exist\) where a text shard is read; fix or remove it"):
        TokenShards(root, VOCAB, cache_dir=tmp_path / "cache", held_out=True)
    (root / "wiki.valid.jsonl").unlink()
    os.mkfifo(root / "wiki.valid.jsonl")
    with pytest.raises(ConfigError, match=r"wiki\.valid\.jsonl: not a regular file"):
        TokenShards(root, VOCAB, cache_dir=tmp_path / "cache", held_out=True)
    (root / "wiki.valid.jsonl").unlink()
    _jsonl(root / "wiki.valid.jsonl", DOCS_VALID)
    held = TokenShards(root, VOCAB, cache_dir=tmp_path / "cache", held_out=True)
    assert [f.name for f in held.sources] == ["wiki.valid.jsonl"] and len(held) > 0
