"""Data: the embedded default (scikit-learn digits) and readers for files a user already has.

Image/vector classification data come as a `Split` (float32 inputs in their natural shape,
int64 labels; see `catapult.data.split`):

* ``load_digits()``: scikit-learn's 1,797 real 8x8 digits, fixed 1,497 / 300 split, inputs
  ``(N, 1, 8, 8)``; installs with the package, the default for small-scale runs;
* ``load_cifar10(root)``, ``load_cifar100(root, labels="fine"|"coarse")``: the official
  "python version" batches (directory or ``.tar.gz``), inputs ``(N, 3, 32, 32)``;
* ``load_dataset(name, root=..., n_train=..., n_test=...)``: the same by name.

All loaders standardise each sample to zero mean and unit std by default and take the first
``n_train`` / ``n_test`` samples. `Augment` (`catapult.data.augment`) flips, pad-crops and mixes
up training batches per sample on their device (``data.augment`` in a run config). Text corpora for language models live in
`catapult.data.text` (`load_shakespeare`, `load_text`, `load_corpus`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from catapult.data.augment import Augment
from catapult.data.cifar import CorruptDataError, cifar_files, find_cifar, load_cifar10, load_cifar100
from catapult.data.digits import load_digits
from catapult.data.safe_pickle import CorruptPickleError, UnsafePickleError
from catapult.data.split import Split, first_n, one_hot, standardize_per_sample
from catapult.data import text, token_cache
from catapult.data.tokenize import check_vocab_size

__all__ = ["Split", "Augment", "load_digits", "load_cifar10", "load_cifar100", "find_cifar", "load_dataset", "data_files",
           "DATASETS",
           "IMAGE_DATASETS", "TEXT_DATASETS",
           "standardize_per_sample", "first_n", "one_hot", "UnsafePickleError", "CorruptPickleError",
           "CorruptDataError", "text"]

#: Classification datasets (a `Split`) and text corpora (a `text.WindowSplit` of token windows).
IMAGE_DATASETS = ("digits", "cifar10", "cifar100")
TEXT_DATASETS = text.CORPORA
DATASETS = IMAGE_DATASETS + TEXT_DATASETS


def load_dataset(name: str, *, root: str | os.PathLike | None = None, n_train: int | None = None,
                 n_test: int | None = None, context: int = 64, val_fraction: float = 0.1,
                 tokenizer: str = "char", vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None,
                 **kwargs) -> "Split | text.WindowSplit":
    """Load a dataset by name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` (a `Split`), or the
    text corpora ``"shakespeare"`` (embedded) and ``"text"`` (``root`` = a file or WikiText-style
    directory), which come as a `text.WindowSplit` of non-overlapping ``context``-token windows
    (``n_train`` / ``n_test`` count windows; the test part is the validation text, the last
    ``val_fraction`` of the characters unless the source has its own split), tokenised by
    ``tokenizer`` (``"char"``, or ``"bpe"``: byte-level BPE with ``vocab_size`` ids, trained once
    and cached with the token arrays in ``cache_dir``; see `text.load_bpe_corpus`).

    ``root`` locates CIFAR files (see `load_cifar10`); digits are embedded and take no root.
    ``n_train`` / ``n_test`` keep the first N samples. Extra keywords go to the loader
    (``standardize=``; ``labels="coarse"`` for cifar100). Unknown names raise ValueError
    listing the allowed names. The text options (``context``, ``val_fraction``, ``tokenizer``,
    ``vocab_size``, ``cache_dir``) away from their defaults for an image dataset, and extra keywords
    for a text corpus, are refused (a TypeError naming them): they were dropped silently, a
    misspelt ``standardise=False`` too.
    """
    if name in TEXT_DATASETS and kwargs:
        raise TypeError(f"load_dataset: {name!r} is a text corpus and takes no {', '.join(map(repr, kwargs))} "
                        f"(extra keywords go to the image loaders)")
    if name in IMAGE_DATASETS:
        given = [key for key, value, default in (("context", context, 64), ("val_fraction", val_fraction, 0.1),
                                                 ("tokenizer", tokenizer, "char"), ("vocab_size", vocab_size, 4096),
                                                 ("cache_dir", cache_dir, None)) if value != default]
        if given:
            raise TypeError(f"load_dataset: {', '.join(given)} {'is a text option' if len(given) == 1 else 'are text options'}"
                            f" and {name!r} is an image dataset; leave {'it' if len(given) == 1 else 'them'} out")
    if name == "digits":
        if root is not None:
            raise ValueError(f"dataset 'digits' ships with scikit-learn and takes no root "
                             f"(got root={str(root)!r}); set root to null")
        return load_digits(n_train, n_test, **kwargs)
    if name == "cifar10":
        return load_cifar10(root, n_train, n_test, **kwargs)
    if name == "cifar100":
        return load_cifar100(root, n_train, n_test, **kwargs)
    if name in TEXT_DATASETS:
        given = [key for key, value, default in (("vocab_size", vocab_size, 4096), ("cache_dir", cache_dir, None))
                 if value != default]
        if tokenizer == "char" and given:  # vocab_size=300 with the char tokenizer was dropped silently
            raise TypeError(f"load_dataset: {', '.join(given)} {'is a BPE option' if len(given) == 1 else 'are BPE options'}"
                            f" and tokenizer is 'char'; set tokenizer='bpe' or leave {'it' if len(given) == 1 else 'them'} out")
        if tokenizer == "bpe":  # int(vocab_size) below made 300.5 and "300" a vocabulary of 300
            vocab_size = check_vocab_size("load_dataset", vocab_size)
        return _corpus(name, root, val_fraction, tokenizer, vocab_size, cache_dir).windows(context, n_train, n_test)
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def data_files(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files of yours that `load_dataset` reads for ``name`` at ``root``, found as it finds
    them but opening none: the CIFAR archive or batch files (`cifar.cifar_files`; its
    FileNotFoundError where they are not there), a text corpus' files (`text.source_files`); none
    for the embedded digits and Shakespeare.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("text"), (folder / "notes.md").write_text("not read")
    >>> [f.name for f in data_files("text", folder)], data_files("digits")
    (['a.txt'], [])
    """
    if name in ("cifar10", "cifar100"):
        return cifar_files(name, root)
    if name == "text" and root is not None:
        return text.source_files(root)
    return []


def _corpus(name: str, root, val_fraction: float, tokenizer: str = "char", vocab_size: int = 4096,
            cache_dir=None) -> "text.TextCorpus":
    """`text.load_corpus`, cached in this process (a sweep's cells share one tokenised corpus;
    the key holds the files' `token_cache.file_stamp`, so an edited or copied-over file is read
    again: with the modification time alone, ``cp -p`` of another file kept the old corpus)."""
    stamp = None
    if root is not None:
        path = Path(os.path.expanduser(str(root)))
        if path.is_dir():
            stamp = tuple(sorted(token_cache.file_stamp(Path(e.path)) for e in os.scandir(path) if e.is_file()))
        elif path.exists():
            stamp = token_cache.file_stamp(path)
    return _load_corpus_cached(name, None if root is None else str(root), float(val_fraction), stamp, tokenizer,
                               int(vocab_size), None if cache_dir is None else str(cache_dir))


@functools.lru_cache(maxsize=4)
def _load_corpus_cached(name, root, val_fraction, _stamp, tokenizer="char", vocab_size=4096,
                        cache_dir=None) -> "text.TextCorpus":
    return text.load_corpus(name, root=root, val_fraction=val_fraction, tokenizer=tokenizer,
                            vocab_size=vocab_size, cache_dir=cache_dir)
