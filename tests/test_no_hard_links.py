"""On a filesystem that makes no hard links (FAT, some network and FUSE mounts: ``os.link`` fails
with EPERM), catapult's caches are still published whole and never over an existing file: the
BPE tokenizer (tokenize.save_new), the token arrays (token_cache.save_array) and link_new itself."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from catapult import writing
from catapult.data.token_cache import save_array
from catapult.data.tokenize import BPEVocab, bpe_file_name, load_or_train_bpe

TRAIN = "the cat sat on the mat. the dog sat on the log.\n" * 30


@pytest.fixture(params=[PermissionError(errno.EPERM, "Operation not permitted"),
                        OSError(errno.EOPNOTSUPP, "Operation not supported")], ids=["EPERM", "EOPNOTSUPP"])
def no_links(request, monkeypatch):
    def link(*args, **kwargs):
        raise request.param
    monkeypatch.setattr(os, "link", link)


def test_bpe_tokenizer_is_saved_and_reused_without_hard_links(tmp_path, no_links):
    vocab = load_or_train_bpe(TRAIN, 300, tmp_path, "k")
    path = tmp_path / bpe_file_name(300, "k")
    assert vocab.path == path
    assert BPEVocab.load(path).encode("the cat sat").tolist() == vocab.encode("the cat sat").tolist()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no temporary file left


def test_link_new_without_hard_links_keeps_the_first_file(tmp_path, no_links, monkeypatch):
    for text, published in (("first", True), ("second", False)):
        (tmp_path / "tmp").write_text(text)
        assert writing.link_new(tmp_path / "tmp", tmp_path / "cache.npy") is published
        (tmp_path / "tmp").unlink()
        assert (tmp_path / "cache.npy").read_text() == "first"
    assert save_array(np.arange(5, dtype=np.uint16), tmp_path / "a.npy") is True
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    assert save_array(np.zeros(2, dtype=np.uint16), tmp_path / "a.npy") is False
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "cache.npy"]

    def full(*args, **kwargs):   # another error from os.link is not taken for "no hard links"
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", full)
    (tmp_path / "tmp").write_text("x")
    with pytest.raises(OSError, match="No space left"):
        writing.link_new(tmp_path / "tmp", tmp_path / "other.npy")
    assert not (tmp_path / "other.npy").exists()


@pytest.mark.parametrize("links", [True, False], ids=["hard_links", "no_hard_links"])
def test_save_new_over_an_existing_tokenizer_writes_nothing_and_says_so(tmp_path, monkeypatch, links):
    # the second save finds the first's file: False, the file and the vocabulary's path left alone
    # (mutation pass 27, TK1: save_new ignored link_new's answer and said True)
    from catapult.data.tokenize import save_new, train_bpe

    if not links:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    first, second = train_bpe([TRAIN], 300), train_bpe([TRAIN.upper()], 300)
    path = tmp_path / "bpe.json"
    assert save_new(first, path) is True and first.path == path
    kept = path.read_bytes()
    before = getattr(second, "path", None)
    assert save_new(second, path) is False
    assert path.read_bytes() == kept and getattr(second, "path", None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.json"]


def test_a_published_copy_has_the_written_files_mode_under_any_umask(tmp_path, no_links):
    # a hard link is the written file itself (save_array makes it 0644); the copy renamed into place
    # without hard links takes that mode too, not the umask's (mutation pass 27, WR3: 0600 under 077)
    old = os.umask(0o077)
    try:
        assert save_array(np.arange(3, dtype=np.uint16), tmp_path / "a.npy") is True
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.npy").stat().st_mode & 0o777) == oct(0o644)
