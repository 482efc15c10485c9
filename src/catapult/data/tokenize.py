"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``), trained on a corpus' training split.

The warmup paper's Fig. 4 and the SμPar paper train on BPE tokens (vocabulary 4,096). A
:class:`BPEVocab` wraps a byte-level BPE ``tokenizers.Tokenizer``:

* byte-level pre-tokenisation (GPT-2 style: every byte has a symbol), so any text encodes,
  nothing is unknown, and ``decode(encode(s)) == s`` for every string ``s``;
* trained with ``BpeTrainer(vocab_size, initial_alphabet = the 256 byte symbols)`` on the
  *training* text only (validation/test text never shapes the merges);
* saved as one JSON file (the ``tokenizers`` format) and reused: :func:`load_or_train_bpe`
  trains only when the file for this (corpus fingerprint, vocabulary size) does not exist yet.
  The file name holds both (``bpe-v4096-<fingerprint>.json``), so a changed corpus or
  vocabulary size trains a new file; an existing file is never overwritten (it is created with
  an exclusive link, so two processes racing both end up reading the same complete file).

``BPEVocab`` has the interface of :class:`catapult.data.text.CharVocab` the engine uses:
``size``, ``encode(text) -> int64 tensor``, ``decode(ids) -> str``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from catapult.arguments import check_integer
from catapult.config.errors import MissingDependency
from catapult.data import token_cache
from catapult.writing import link_new

__all__ = ["BPEVocab", "train_bpe", "load_or_train_bpe", "load_cached_vocab", "bpe_file_name", "fingerprint", "TOKENIZERS"]

#: ``data.tokenizer`` values.
TOKENIZERS = ("char", "bpe")


def _require_tokenizers():
    try:
        import tokenizers
    except ModuleNotFoundError as exc:  # a declared dependency; say how to get it
        raise MissingDependency("data.tokenizer: bpe needs the Hugging Face 'tokenizers' package: "
                                "pip install tokenizers", name="tokenizers") from exc
    return tokenizers


def fingerprint(*parts: object) -> str:
    """A short stable key of ``parts``: the first 16 hex digits of sha256 over their ``repr``,
    each part's ``str`` encoded in UTF-8 and separated by NUL (``str`` of a ``bytes`` part is its
    repr; pass text as ``str``)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", errors="surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def bpe_file_name(vocab_size: int, key: str) -> str:
    """``bpe-v<vocab_size>-<key>.json``: the tokenizer file for a corpus key and vocabulary size."""
    return f"bpe-v{int(vocab_size)}-{key}.json"


class BPEVocab:
    """A byte-level BPE vocabulary: ``encode(text) -> int64 ids``, ``decode(ids) -> text``.

    ``size`` is the number of ids (``tokenizer.get_vocab_size()``; at most the requested
    vocabulary size: a small corpus may run out of merges first). ``path`` is the JSON file it
    was loaded from or saved to (``None`` if neither).
    """

    def __init__(self, tokenizer, path: str | os.PathLike | None = None) -> None:
        self.tokenizer = tokenizer
        self.path = None if path is None else Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "BPEVocab":
        """Read a tokenizer JSON file (the ``tokenizers`` library's format). With ``vocab_size``
        (the size it was trained for) a file of fewer than 256 ids (not byte-level) or more than
        ``vocab_size`` is a ValueError naming it: a damaged cache, not the tokenizer asked for."""
        return cls._read(path, vocab_size, "")

    @classmethod
    def _read(cls, path, vocab_size: int | None, hint: str) -> "BPEVocab":
        """:meth:`load`; a file the library cannot read is a ValueError ending in ``hint`` (what the
        cache's reader says to do; a wrong size already says "delete it to retrain")."""
        tokenizers = _require_tokenizers()
        try:
            vocab = cls(tokenizers.Tokenizer.from_file(str(path)), path)
        except Exception as exc:  # the library raises a bare Exception on a malformed file
            raise ValueError(f"{path}: not a tokenizers JSON file ({exc}){hint}") from None
        if vocab_size is not None and not 256 <= vocab.size <= vocab_size:
            raise ValueError(f"{path}: a tokenizer of {vocab.size} ids, not a byte-level BPE of at most "
                             f"{vocab_size}; delete it to retrain")
        return vocab

    @property
    def size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id: uint16 up to 65,536 ids."""
        return np.dtype(np.uint16 if self.size <= 2 ** 16 else np.uint32)

    def encode_array(self, text: str, *, chunk_chars: int = 1 << 20) -> np.ndarray:
        """Ids of ``text`` as a 1-D array of :attr:`dtype`.

        Long texts are cut into pieces of about ``chunk_chars`` characters, encoded as a batch
        (the library's threads). A cut is placed only right after a newline between two
        non-whitespace characters: the byte-level pre-tokenizer splits there anyway and BPE never
        merges across pre-tokens, so the ids equal those of encoding the whole text at once
        (a test checks it)."""
        # 2.5 failed in str.find's words (slice indices) at the first newline past it, True cut every line
        chunk_chars = check_integer("BPEVocab.encode_array", "chunk_chars", chunk_chars)
        if not isinstance(text, str):  # a list of texts was encoded as one pair, ["a b", "c"] as "a bc", silently
            raise TypeError(f"BPEVocab.encode: text must be a str; got {type(text).__name__} (encode each text "
                            f"of a list by itself)")
        pieces = list(_cut(text, chunk_chars))
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets, which are not needed here
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(pieces, add_special_tokens=False)
        out = np.empty(sum(len(e.ids) for e in encodings), dtype=self.dtype)
        at = 0
        for e in encodings:
            out[at: at + len(e.ids)] = e.ids
            at += len(e.ids)
        return out

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text``, a 1-D int64 tensor."""
        return torch.from_numpy(self.encode_array(text).astype(np.int64))

    def decode(self, ids) -> str:
        """The text of a sequence of ids (tensor, array or list); out-of-range ids raise ValueError,
        ids that are not integers (floats, bools, strings) TypeError."""
        raw = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids)
        if raw.size and raw.dtype.kind not in "iu":  # 1.7 was cut to id 1, "1" parsed, True read as 1, silently
            raise TypeError(f"BPEVocab.decode: ids must be integers (a tensor, array or list of ids); got {raw.dtype}")
        ids = raw.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"BPEVocab.decode: ids must lie in [0, {self.size - 1}], got [{ids.min()}, {ids.max()}]")
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"BPEVocab(size={self.size}, path={None if self.path is None else str(self.path)!r})"


def _cut(text: str, chunk_chars: int) -> Iterable[str]:
    """``text`` in consecutive pieces of >= ``chunk_chars`` characters (the last may be shorter),
    each cut right after a ``"\\n"`` whose next character is not whitespace."""
    start, n = 0, len(text)
    while n - start > chunk_chars:
        at = start + chunk_chars
        while True:  # a lone newline between non-spaces: one pre-token whether or not the text ends there
            at = text.find("\n", at)
            if at < 0 or at + 1 >= n or not (text[at + 1].isspace() or text[at - 1].isspace()):
                break
            at += 1
        if at < 0 or at + 1 >= n:
            break
        yield text[start: at + 1]
        start = at + 1
    yield text[start:]


def check_vocab_size(owner: str, vocab_size) -> int:
    """``vocab_size`` as an int once it is an integer >= 257 (the 256 byte symbols plus one merge,
    :func:`~catapult.arguments.check_integer`); a ValueError naming ``owner`` otherwise: 300.5 and
    "300" were cut to 300 by ``int()`` on the way to the cache key and the trainer.

    >>> check_vocab_size("train_bpe", 300.5)
    Traceback (most recent call last):
    ValueError: train_bpe vocab_size must be an integer >= 257; got 300.5
    """
    return check_integer(owner, "vocab_size", vocab_size, low=257)


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> BPEVocab:
    """A byte-level BPE vocabulary of (at most) ``vocab_size`` ids trained on ``texts``.

    ``vocab_size`` must be at least 257 (the 256 byte symbols plus one merge). The trainer
    starts from the full byte alphabet, so every byte has an id even if the text never shows it.
    """
    vocab_size = check_vocab_size("train_bpe", vocab_size)
    if isinstance(texts, (str, bytes)):  # a str iterates as its characters: each one a text, so no merge was
        # learned and a 256-id byte tokenizer came back for vocab_size=4096, silently
        raise TypeError(f"train_bpe texts must be an iterable of texts (e.g. a list of str); got one "
                        f"{type(texts).__name__}: pass [text]")
    tk = _require_tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=int(vocab_size), show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPEVocab(tokenizer)


def _lines(text: str, per: int = 1 << 16) -> Iterable[str]:
    """``text`` in pieces of about ``per`` characters cut at newlines (for the trainer's threads)."""
    yield from _cut(text, per)


def save_new(vocab: BPEVocab, path: str | os.PathLike) -> bool:
    """Write ``vocab`` to ``path`` unless a file is already there; True if this call wrote it.

    The JSON goes to a temporary file in the same directory and is then published with
    :func:`~catapult.writing.link_new` (a hard link, which fails if ``path`` exists, or a locked
    rename where the filesystem makes no hard links), so a reader never sees half a file and an
    existing file is never replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        vocab.tokenizer.save(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data directory wants readable files
        if not link_new(tmp, path):
            return False
        vocab.path = path
        return True
    finally:
        os.unlink(tmp)


def load_or_train_bpe(train_text: str, vocab_size: int, directory: str | os.PathLike, key: str) -> BPEVocab:
    """The BPE vocabulary for corpus ``key`` in ``directory``: loaded from
    ``directory / bpe_file_name(vocab_size, key)`` when that file exists, else trained on
    ``train_text`` and saved there (:func:`save_new`: never overwriting another file)."""
    path = Path(directory) / bpe_file_name(vocab_size, key)
    if path.is_file():
        return load_cached_vocab(path, vocab_size)
    vocab = train_bpe(_lines(train_text), vocab_size)
    if not save_new(vocab, path):  # another process won the race: use its (identical) file
        return load_cached_vocab(path, vocab_size)
    return vocab


def load_cached_vocab(path: str | os.PathLike, vocab_size: int | None = None) -> BPEVocab:
    """The cached tokenizer at ``path`` (:meth:`BPEVocab.load`), once it is known to be this
    user's (:func:`~catapult.data.token_cache.check_owned`): ``BPEVocab.load`` reads any file
    the caller names; a cache is read only when catapult wrote it."""
    token_cache.check_owned(path)
    # a truncated or damaged cache file: say what to do, as the .npy caches' messages do
    return BPEVocab._read(path, vocab_size, "; delete it to re-tokenise")
