"""The token cache is keyed and trusted safely: an edited corpus whose modification time was put
back, or another folder's corpus of the same name, size and time, gets new tokens (both reused
a stale cache); a folder anyone may write is not used for the cache, and a cache file another
user owns is refused (a planted tokenizer and arrays were trained on). Also: a folder's own
train/valid/test files are its splits, not one text; and the data keys a run cannot use are
named before any work."""
from __future__ import annotations

import os

import pytest

from catapult import cli
from catapult.config import ConfigError, validate
from catapult.data import text
from catapult.data.token_cache import cache_dir, check_owned
from catapult.engine.build import load_data

TRAIN = "the cat sat on the mat. the dog sat on the log.\n" * 40


def _decoded(corpus) -> str:
    return corpus.vocab.decode(corpus.train.tolist())


def _bpe(root, cache):
    return text.load_bpe_corpus("text", root=root, vocab_size=300, cache_dir=cache)


def test_an_edit_with_its_modification_time_put_back_gets_new_tokens(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN)
    first = _bpe(corpus, tmp_path / "cache")
    stat = corpus.stat()
    corpus.write_text(TRAIN.replace("cat", "rat"))   # the same size
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p, rsync -t, touch -r do
    assert corpus.stat().st_size == stat.st_size and corpus.stat().st_mtime_ns == stat.st_mtime_ns
    again = _bpe(corpus, tmp_path / "cache")
    assert "rat" in _decoded(again) and "cat" not in _decoded(again) and "cat" in _decoded(first)


def test_two_folders_corpora_of_one_name_size_and_time_do_not_share_a_cache(tmp_path):
    decoded = []
    for folder, word in (("x", "cat"), ("y", "rat")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "corpus.txt"
        path.write_text(TRAIN.replace("cat", word))
        os.utime(path, ns=(0, 1_700_000_000_000_000_000))
        decoded.append(_decoded(_bpe(path, tmp_path / "shared")))
    assert "cat" in decoded[0] and "rat" in decoded[1] and "cat" not in decoded[1]


def test_a_folder_anyone_may_write_is_not_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CATAPULT_CACHE", str(tmp_path / "user"))
    shared = tmp_path / "drop"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "corpus.txt").write_text(TRAIN)
    assert cache_dir(shared / "corpus.txt") == tmp_path / "user"
    shared.chmod(0o755)
    assert cache_dir(shared / "corpus.txt") == shared


def test_a_cache_file_another_user_owns_is_refused(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN)
    _bpe(corpus, tmp_path / "cache")
    (planted,) = (tmp_path / "cache").glob("bpe-v300-*.json")
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)   # the files are now another user's
    with pytest.raises(ValueError, match=r"a token cache file owned by another user \(uid \d+\); catapult reads "
                                         r"only the caches it wrote"):
        _bpe(corpus, tmp_path / "cache")
    with pytest.raises(ValueError, match="owned by another user"):
        check_owned(planted)
    monkeypatch.setattr(os, "getuid", lambda: me)
    check_owned(planted)


def test_a_cache_file_that_is_a_link_to_another_corpus_cache_is_refused(tmp_path):
    # the owner check followed the link: links under corpus y's cache names to this user's cache of
    # corpus x passed, and y was trained on x's tokens without a word
    for folder, word in (("x", "cat"), ("y", "rat")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "corpus.txt").write_text(TRAIN.replace("cat", word))
    assert "cat" in _decoded(_bpe(tmp_path / "x" / "corpus.txt", tmp_path / "cache_x"))
    assert "rat" in _decoded(_bpe(tmp_path / "y" / "corpus.txt", tmp_path / "probe"))   # y's cache names
    x_files, y_names = sorted((tmp_path / "cache_x").iterdir()), sorted(f.name for f in (tmp_path / "probe").iterdir())
    (tmp_path / "cache_y").mkdir()
    for y_name, x_file in zip(y_names, x_files):   # the tokenizer, then the train and val arrays
        assert y_name.split("bpe-v300-")[0] == x_file.name.split("bpe-v300-")[0] and y_name != x_file.name
        (tmp_path / "cache_y" / y_name).symlink_to(x_file)
    with pytest.raises(ValueError, match=r"a token cache file that is a symbolic link \(to .*cache_x"):
        _bpe(tmp_path / "y" / "corpus.txt", tmp_path / "cache_y")
    with pytest.raises(ValueError, match="symbolic link"):
        check_owned(tmp_path / "cache_y" / y_names[1])
    check_owned(x_files[1])


def test_a_folder_with_train_valid_test_files_uses_them_as_its_splits(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN)
    (tmp_path / "valid.txt").write_text("validation words only here\n" * 5)
    (tmp_path / "test.txt").write_text("testing words only here\n" * 5)
    name, train, val, test = text.text_splits(tmp_path)
    assert train == TRAIN and val.startswith("validation") and test.startswith("testing")
    corpus = _bpe(tmp_path, tmp_path / "cache")
    assert "testing" not in _decoded(corpus) and "validation" not in _decoded(corpus)
    assert "testing" in corpus.vocab.decode(corpus.test.tolist())


def test_held_out_files_among_other_txt_files_are_held_out(tmp_path):
    # concatenated in name order and tail-split, test.txt was trained on; every other *.txt
    # file is training text (a first fix dropped all but train.txt), and a folder of held-out
    # files only is trained on, as for shards
    (tmp_path / "a.txt").write_text(TRAIN)
    (tmp_path / "train.txt").write_text("more training words\n" * 5)
    (tmp_path / "test.txt").write_text("testing words only here\n" * 5)
    (tmp_path / "dev.txt").write_text("validation words only here\n" * 5)
    _, train, val, test = text.text_splits(tmp_path)
    assert train == TRAIN + "more training words\n" * 5
    assert val.startswith("validation") and test.startswith("testing")
    only = tmp_path / "only"
    only.mkdir()
    (only / "test.txt").write_text(TRAIN)
    _, train, val, test = text.text_splits(only)
    assert (train + val) == TRAIN and test is None


def _config(tmp_path, **data):
    (tmp_path / "corpus.txt").write_text(TRAIN)
    return validate({"data": {"name": "text", "root": str(tmp_path / "corpus.txt"), "context": 8,
                              "n_train": 4, "n_test": 2, "tokenizer": "bpe", "vocab_size": 300, **data},
                     "model": {"name": "gpt", "width": 8, "depth": 1}})


def test_data_keys_a_run_cannot_use_are_named_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for data, key, words in (({"cache_dir": str(blocker)}, "data.cache_dir", "is a file, not a folder"),
                             ({"cache_dir": str(blocker / "sub")}, "data.cache_dir", "cannot be created"),
                             ({"text_key": "body"}, "data.text_key", "catapult train-ddp")):
        with pytest.raises(ConfigError) as info:
            load_data(_config(tmp_path, **data))
        assert info.value.keys == [key] and words in str(info.value)
    assert blocker.read_text() == "mine" and not list(tmp_path.glob("bpe-*"))
    with pytest.raises(ConfigError, match="data.vocab_size"):  # a 2^31 vocabulary aborted in the trainer
        validate({"data": {"name": "text", "root": str(tmp_path), "tokenizer": "bpe", "vocab_size": 2 ** 31}})


def test_a_missing_tokenizers_package_is_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    (tmp_path / "corpus.txt").write_text(TRAIN)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{name: text, root: {tmp_path / 'corpus.txt'}, tokenizer: bpe, vocab_size: 300, "
                      f"context: 8, cache_dir: {tmp_path / 'cache'}}}\nmodel: {{name: gpt, width: 8, depth: 1}}\n"
                      "train: {steps: 1}\n")
    code = cli.main(["train", str(config), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs the Hugging Face 'tokenizers' package: pip install tokenizers" in err and "Traceback" not in err


def test_a_cache_dir_under_a_folder_the_run_cannot_write_is_named_before_any_work(tmp_path, monkeypatch):
    # Mutation pass 22c (RD3): the folder exists but is not writable (os.access says so; root's own
    # mode bits would not bind, so the answer is given here); BPE training must not start
    from pathlib import Path

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    with pytest.raises(ConfigError) as info:
        load_data(_config(tmp_path, cache_dir=str(locked / "cache")))
    assert info.value.keys == ["data.cache_dir"] and f"{locked} is not writable" in str(info.value)
    assert not (locked / "cache").exists() and not list(tmp_path.glob("bpe-*"))
