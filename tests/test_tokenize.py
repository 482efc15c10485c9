"""BPE tokens: byte-level round trips, training on the training split only, the JSON file saved
beside the data and reused (never overwritten), uint16 memory-mapped token arrays, config keys."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from catapult.config import ConfigError, validate
from catapult.data import load_dataset, text
from catapult.data.token_cache import cache_dir, save_array
from catapult.data.tokenize import BPEVocab, bpe_file_name, load_or_train_bpe, train_bpe

TRAIN = ("the cat sat on the mat. the dog sat on the log.\n" * 30 +
         "thematic mathematics: the theory of the thing.\n" * 30)
VALID = "the cat and the dog. Zürich ✓ naïve — 日本\n" * 3   # characters training never shows
TEST = "the mat and the log\n" * 5


def _wikitext(tmp_path):
    for name, body in (("wiki.train.raw", TRAIN), ("wiki.valid.raw", VALID), ("wiki.test.raw", TEST)):
        (tmp_path / name).write_text(body, encoding="utf-8")
    return tmp_path


def test_byte_level_bpe_round_trips_any_text_and_learns_merges():
    vocab = train_bpe([TRAIN], vocab_size=300)
    assert 256 < vocab.size <= 300
    for s in (TRAIN, VALID, "", "\x00\x7f\ufffd 🙂\n\n  x"):
        ids = vocab.encode(s)
        assert ids.dtype == torch.int64 and vocab.decode(ids) == s
    assert len(vocab.encode("the the the")) < len("the the the".encode())  # merges compress
    assert vocab.encode_array("abc").dtype == np.uint16


def test_chunked_encoding_equals_whole_text_encoding():
    body = TRAIN + "  \n\n   indented\n \nx\nthem?\n\nCLOWN.\nI have\n\n\n" * 200
    vocab = train_bpe([body], vocab_size=300)
    assert len(vocab.encode("\n\n")) == 1  # merges whitespace runs: where a cut falls matters
    whole = np.array(vocab.tokenizer.encode(body, add_special_tokens=False).ids)
    for chunk in range(5, 80, 3):  # cut points land everywhere in the repeated pattern
        assert np.array_equal(vocab.encode_array(body, chunk_chars=chunk).astype(np.int64), whole), chunk


def test_bpe_corpus_is_trained_on_train_only_saved_beside_the_data_and_reused(tmp_path):
    root = _wikitext(tmp_path)
    corpus = text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=300)
    [tok_file] = root.glob("bpe-v300-*.json")
    arrays = sorted(p.name.split(".")[1] for p in root.glob("text.*.npy"))
    assert arrays == ["test", "train", "val"]
    # torch.uint16 (torch 2.3+), else int32 (catapult.data.token_cache reads the ids into int32 there)
    assert corpus.train.dtype == getattr(torch, "uint16", torch.int32) and corpus.vocab.size <= 300
    # the merges come from the training text: a tokenizer trained on it alone gives the same ids
    alone = train_bpe([TRAIN], vocab_size=300)
    assert torch.equal(corpus.val.long(), alone.encode(VALID)) and corpus.vocab.decode(corpus.test) == TEST
    saved = np.load(root / f"text.train.{tok_file.stem}.npy")
    assert saved.dtype == np.uint16 and np.array_equal(saved, alone.encode_array(TRAIN))
    # reused: a second load reads the files (a changed tokenizer file would show)
    before = {p: p.stat().st_mtime_ns for p in root.iterdir()}
    again = text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=300)
    assert {p: p.stat().st_mtime_ns for p in root.iterdir()} == before
    assert torch.equal(again.train, corpus.train) and again.vocab.path == tok_file
    # a cache whose test-split array went missing is not a hit: the test split is re-tokenised
    # (it was silently dropped: corpus.test None)
    next(root.glob("text.test.*.npy")).unlink()
    healed = text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=300)
    assert healed.test is not None and healed.vocab.decode(healed.test) == TEST
    assert torch.equal(healed.train, corpus.train)
    before = {p: p.stat().st_mtime_ns for p in root.iterdir()}
    # another vocabulary size is another file; the first is left alone
    text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=280)
    assert len(list(root.glob("bpe-v*.json"))) == 2 and tok_file.stat().st_mtime_ns == before[tok_file]


def test_a_single_files_tokenizer_is_trained_on_its_head_alone(tmp_path):
    # one file: its tail is validation, and a word repeated only there would win merges of its own
    source = tmp_path / "book.txt"
    source.write_text(TRAIN + "zyzzyva quokka xylophone\n" * 40, encoding="utf-8")
    _, train, val, _ = text.text_splits(source, val_fraction=0.3)
    assert "zyzzyva" in val and "zyzzyva" not in train
    corpus = text.load_corpus("text", root=source, tokenizer="bpe", vocab_size=300, val_fraction=0.3,
                              cache_dir=tmp_path / "cache")
    alone = train_bpe([train], vocab_size=300)
    assert torch.equal(corpus.val.long(), alone.encode(val)) and torch.equal(corpus.train.long(), alone.encode(train))


def test_an_existing_file_is_never_overwritten(tmp_path):
    target = tmp_path / bpe_file_name(300, "k")
    target.write_text(json.dumps({"not": "ours"}))
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        load_or_train_bpe(TRAIN, 300, tmp_path, "k")
    assert json.loads(target.read_text()) == {"not": "ours"}
    array_file = tmp_path / "a.npy"
    array_file.write_bytes(b"mine")
    assert save_array(np.arange(3, dtype=np.uint16), array_file) is False and array_file.read_bytes() == b"mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_dir_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("CATAPULT_CACHE", str(tmp_path / "user"))
    assert cache_dir(tmp_path) == tmp_path
    (tmp_path / "f.txt").write_text("x")
    assert cache_dir(tmp_path / "f.txt") == tmp_path
    assert cache_dir(None) == tmp_path / "user" and cache_dir(tmp_path, tmp_path / "c") == tmp_path / "c"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert cache_dir(ro) == tmp_path / "user"


def test_config_keys_and_windows(tmp_path):
    root = _wikitext(tmp_path)
    split = load_dataset("text", root=root, context=8, n_train=4, tokenizer="bpe", vocab_size=300)
    assert split.num_classes <= 300 and split.x_train.dtype == torch.int64 and split.x_train.shape == (4, 8)
    assert torch.equal(split.x_train[:, 1:], split.y_train[:, :-1])
    cfg = validate(dict(data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=300),
                        model=dict(name="gpt", width=16, n_heads=2), loss="cross_entropy"))
    assert cfg["data"]["tokenizer"] == "bpe" and cfg["data"]["vocab_size"] == 300
    for bad, key in ((dict(tokenizer="wordpiece"), "data.tokenizer"), (dict(tokenizer="bpe", vocab_size=100),
                                                                      "data.vocab_size"),
                     (dict(vocab_size=300), "data.vocab_size")):
        with pytest.raises(ConfigError, match=key):
            validate(dict(data=dict(name="text", root=str(root), **bad), model=dict(name="gpt", width=16, n_heads=2),
                          loss="cross_entropy"))
    with pytest.raises(ConfigError, match="data.tokenizer"):
        validate(dict(data=dict(name="digits", tokenizer="bpe")))


def test_vocab_file_loads_back_as_the_same_tokenizer(tmp_path):
    vocab = load_or_train_bpe(TRAIN, 300, tmp_path, "key")
    loaded = BPEVocab.load(tmp_path / bpe_file_name(300, "key"))
    assert loaded.size == vocab.size and torch.equal(loaded.encode(VALID), vocab.encode(VALID))


@pytest.mark.parametrize("damage, words", [
    ("ids", r"text\.train\.bpe-v300-\w+\.npy: token id 299 is beyond the tokenizer's \d+ ids"),
    ("empty tokenizer", r"bpe-v300-\w+\.json: a tokenizer of 0 ids, not a byte-level BPE of at most 300"),
    # a cut-off tokenizer file lacked the hint the .npy caches' messages give
    ("truncated tokenizer", r"bpe-v300-\w+\.json: not a tokenizers JSON file \(.*\); delete it to re-tokenise$"),
])
def test_a_damaged_token_cache_is_a_config_error_before_training(tmp_path, damage, words):
    # both were a traceback: an embedding IndexError mid-run, a GPT with vocab_size 0
    from catapult.engine.build import load_data

    root = _wikitext(tmp_path)
    first = text.load_corpus("text", root=root, tokenizer="bpe", vocab_size=300)
    assert first.vocab.size < 300
    if damage == "ids":
        [train] = root.glob("text.train.*.npy")
        ids = np.load(train).copy()
        ids[7] = 299  # < 300 = data.vocab_size, but no id of this tokenizer
        train.unlink()
        np.save(train, ids)
    elif damage == "truncated tokenizer":
        [tok_file] = root.glob("bpe-v300-*.json")
        whole = tok_file.read_bytes()
        tok_file.write_bytes(whole[:len(whole) // 2])
    else:
        [tok_file] = root.glob("bpe-v300-*.json")
        tok_file.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    config = validate({"data": {"name": "text", "root": str(root), "tokenizer": "bpe", "vocab_size": 300,
                                "context": 8}, "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 1},
                       "loss": "cross_entropy"})
    with pytest.raises(ConfigError, match=words):
        load_data(config)


def test_another_val_fraction_on_the_same_cache_splits_the_text_anew(tmp_path):
    # the token arrays' key holds val_fraction: without it a second load with 0.3 read the arrays
    # cached for 0.1, a tenth of the text held out where 30% was asked for
    source = tmp_path / "book.txt"
    body = TRAIN + "zyzzyva quokka xylophone\n" * 40
    source.write_text(body, encoding="utf-8")
    for fraction in (0.1, 0.3, 0.1):
        corpus = text.load_corpus("text", root=source, tokenizer="bpe", vocab_size=300, val_fraction=fraction,
                                  cache_dir=tmp_path / "cache")
        n_val = int(len(body) * fraction)  # the last val_fraction of the characters (load_text's rule)
        assert corpus.vocab.decode(corpus.val) == body[-n_val:]
        assert corpus.vocab.decode(corpus.train) == body[:-n_val]


def test_bpe_decode_refuses_ids_that_are_not_integers():
    """decode(np.array([104.7])) cut 104.7 to id 104, decode(["104"]) parsed the text and decode([True]) read id 1,
    silently (CharVocab.decode refuses them)."""
    vocab = train_bpe([TRAIN], vocab_size=300)
    ids = vocab.encode("the cat")
    assert vocab.decode(ids) == "the cat" and vocab.decode(ids.numpy().astype(np.uint16)) == "the cat"
    assert vocab.decode([]) == ""
    for bad in (ids.double() + 0.7, ids.numpy().astype(str).tolist(), [True, False]):
        with pytest.raises(TypeError, match="BPEVocab.decode: ids must be integers"):
            vocab.decode(bad)


def test_train_bpe_refuses_one_str_for_its_texts():
    """train_bpe("text", 300) trained on the text's characters one by one (a str iterates as them): no merge,
    a tokenizer of the 256 byte ids for a vocabulary of 300, silently."""
    assert train_bpe([TRAIN], vocab_size=300).size > 256      # the same text in a list: merges learned
    for texts in (TRAIN, TRAIN.encode()):
        with pytest.raises(TypeError, match=r"train_bpe texts must be an iterable of texts .*pass \[text\]"):
            train_bpe(texts, vocab_size=300)


def test_encode_refuses_text_that_is_not_a_str():
    """BPEVocab.encode(["the cat", "sat"]) encoded the list as one pair of sequences, the ids of "the catsat" (no
    separator), silently; CharVocab.encode of a list or bytes failed in an AttributeError."""
    bpe = train_bpe([TRAIN], vocab_size=300)
    char = text.CharVocab.from_text(TRAIN)
    for vocab, who in ((bpe, "BPEVocab"), (char, "CharVocab")):
        assert vocab.decode(vocab.encode("the cat sat")) == "the cat sat"
        for bad in (["the cat", "sat"], b"the cat", 3):
            with pytest.raises(TypeError, match=rf"{who}.encode: text must be a str; got {type(bad).__name__}"):
                vocab.encode(bad)


def test_char_vocab_from_text_refuses_text_that_is_not_a_str():
    """CharVocab.from_text(["ab", "c"]) failed in Python's words (AttributeError: 'list' object has no attribute
    'encode'), bytes too; now a TypeError naming the method and the type, as encode's."""
    assert text.CharVocab.from_text("".join(["ab", "ca"])).chars == ("a", "b", "c")   # the remedy it names
    for bad in (["ab", "c"], b"abc", 3):
        with pytest.raises(TypeError, match=rf"^CharVocab\.from_text: text must be a str; got {type(bad).__name__} "
                                            rf"\(for several texts, join them first"):
            text.CharVocab.from_text(bad)
