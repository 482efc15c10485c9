"""Edges of the BPE files: the id dtype at exactly 2^16 ids, the size bounds a cached tokenizer
must meet, the corpus key's separator, and a token id equal to the vocabulary size."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from catapult.data.token_cache import load_array
from catapult.data.tokenize import BPEVocab, fingerprint, train_bpe

TRAIN = "the cat sat on the mat. the dog sat on the log.\n" * 40


class _Sized:
    """A stand-in tokenizer that only reports its number of ids."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_vocab_size(self) -> int:
        return self.n


@pytest.mark.parametrize("size, dtype", [(2 ** 16 - 1, np.uint16), (2 ** 16, np.uint16), (2 ** 16 + 1, np.uint32)])
def test_uint16_holds_ids_up_to_65535_so_65536_ids_fit(size, dtype):
    # ids 0 .. size-1: the largest id of a 65,536-id vocabulary is 65,535 = uint16's maximum
    assert BPEVocab(_Sized(size)).dtype == np.dtype(dtype)
    assert size - 1 <= np.iinfo(BPEVocab(_Sized(size)).dtype).max


def test_a_cached_tokenizer_larger_than_asked_for_is_refused(tmp_path):
    vocab = train_bpe([TRAIN], vocab_size=290)
    path = tmp_path / "tok.json"
    vocab.tokenizer.save(str(path))
    assert BPEVocab.load(path, vocab.size).size == vocab.size           # exactly the size: fine
    with pytest.raises(ValueError, match=f"a tokenizer of {vocab.size} ids, not a byte-level BPE of at most 270"):
        BPEVocab.load(path, 270)                                           # more ids than the model's embedding
    assert BPEVocab.load(path).size == vocab.size                          # no size asked: read as it is


def test_fingerprint_is_sha256_of_the_parts_each_ended_by_nul():
    assert fingerprint("ab", "c") == hashlib.sha256(b"ab\0c\0").hexdigest()[:16]
    assert fingerprint("ab", "c") != fingerprint("a", "bc")   # the separator keeps parts apart
    assert fingerprint("shakespeare", 0.1) == hashlib.sha256(b"shakespeare\x000.1\0").hexdigest()[:16]


def test_a_token_id_equal_to_the_vocabulary_size_is_refused(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.array([0, 5, 299], dtype=np.uint16))
    assert load_array(path, 300).tolist() == [0, 5, 299]            # ids 0 .. 299 of 300
    np.save(path, np.array([0, 5, 300], dtype=np.uint16))  # the last id too is checked
    with pytest.raises(ValueError, match="token id 300 is beyond the tokenizer's 300 ids"):
        load_array(path, 300)
