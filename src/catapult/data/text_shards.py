"""Text shards in local files -- jsonl and parquet -- tokenised once into memory-mapped arrays.

``catapult train-ddp`` reads a corpus from a directory of shards (:class:`TokenShards` in
:mod:`catapult.engine.distributed`). Besides pre-tokenised ``*.npy`` arrays, a shard may be text:

* ``*.jsonl``: one JSON object per line with a string field ``data.text_key`` (default
  ``"text"``; other fields are ignored, blank lines skipped), UTF-8;
* ``*.parquet``: a string column ``data.text_key`` (read with ``pyarrow``: ``pip install
  'catapult[parquet]'``).

A document's line breaks are read as a ``.txt`` file's are (:func:`one_newline`: Python's
universal newlines, ``\\r\\n`` and a lone ``\\r`` as ``\\n``), so the tokenizer sees the same text
from a ``.txt`` and a ``.jsonl`` of one corpus.

A directory that holds any text shard is read as text (its ``*.npy`` files are then not shards:
they may be this module's own cache). Files whose name has the word ``valid``, ``validation``,
``val``, ``dev`` or ``test`` (words split at anything but letters and digits: ``wiki.valid.npy``,
``c4-validation.00000-of-00008.json``, ``test-00000.parquet``; not ``interval.npy`` or
``contest.jsonl``) are held out (:func:`is_held_out`); the others, in sorted name order, are the
training stream.

Tokenising (:func:`tokenize_text_shards`): a byte-level BPE vocabulary of ``data.vocab_size``
ids (:mod:`catapult.data.tokenize`) is trained on the training shards' documents, each followed
by the separator as it is encoded, then every shard is encoded document by document, each
document followed by the ids of a blank line
(``"\\n\\n"``, the separator between documents; there is no special end-of-text id), into one
uint16/uint32 array per shard. Tokenizer and arrays go to the token cache
(:func:`catapult.data.token_cache.cache_dir`: ``data.cache_dir``, else beside the data if
writable, else the user cache) under names holding a key of the shards' paths, sizes and
times (:func:`~catapult.data.token_cache.file_stamp`), the text key, the line-break rule (:data:`NEWLINES`) and the vocabulary size: a
later run only maps them.

A bad file raises :class:`~catapult.config.ConfigError` on ``data.root`` naming the file and the
line (jsonl) or the column and row (parquet); the CLI turns it into exit code 2.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from catapult.config import ConfigError
from catapult.data import token_cache
from catapult.data.tokenize import BPEVocab, bpe_file_name, check_vocab_size, fingerprint, load_cached_vocab, save_new, train_bpe

__all__ = ["one_newline", "NEWLINES", "TEXT_SUFFIXES", "VALIDATION", "HELD_OUT", "name_words", "is_held_out", "is_validation", "irregular_file", "text_shard_files",
           "iter_texts",
           "tokenize_text_shards", "DOCUMENT_SEPARATOR", "VOCAB_FILE", "stated_vocab_size", "MAX_VOCAB_FILE_BYTES",
           "MAX_JSONL_LINE_BYTES"]

#: File endings read as text shards.
TEXT_SUFFIXES = (".jsonl", ".parquet")
#: A shard whose file name has one of these words is a validation shard (a run's validation stream).
VALIDATION = ("valid", "validation", "val", "dev")
#: A shard whose file name has one of these words holds out text (validation / test).
HELD_OUT = VALIDATION + ("test",)
#: Text appended to every document before it is encoded.
DOCUMENT_SEPARATOR = "\n\n"
_BATCH_DOCS = 1024
#: The file beside pre-tokenised ``*.npy`` shards that states their vocabulary: ``{"vocab_size": N}``.
VOCAB_FILE = "vocab_size.json"
#: The largest vocabulary a stated size may have (uint32 ids).
_MAX_VOCAB = 1 << 32
#: The most bytes a :data:`VOCAB_FILE` may hold: ``{"vocab_size": 4294967296}`` is 27, so 64 KiB leaves room
#: for any spacing or extra fields, and a hostile file of gigabytes is refused before it is read.
MAX_VOCAB_FILE_BYTES = 1 << 16
#: The longest jsonl line (one document, its newline aside) read: 256 MiB. The longest documents of
#: real corpora (whole books, long source files) are a few to tens of MB; a line past this (a file
#: of gigabytes with no newline) is refused when this much is read, not read whole into memory.
MAX_JSONL_LINE_BYTES = 1 << 28


def name_words(path: str | os.PathLike) -> set[str]:
    """The lower-case words of a file's name, split at anything but letters and digits.

    >>> sorted(name_words("/data/C4-validation.00000-of-00008.json"))
    ['00000', '00008', 'c4', 'json', 'of', 'validation']
    """
    return set(re.split(r"[^a-z0-9]+", Path(path).name.lower())) - {""}


def is_held_out(path: str | os.PathLike) -> bool:
    """Whether a shard file holds out text: its name has a word of :data:`HELD_OUT`. A word, not
    a substring, so that ``interval.npy`` or ``contest.jsonl`` is trained on.

    >>> [is_held_out(f) for f in ("wiki.valid.npy", "test-00000.parquet", "interval.npy", "contest.jsonl")]
    [True, True, False, False]
    """
    return bool(name_words(path) & set(HELD_OUT))


def is_validation(path: str | os.PathLike) -> bool:
    """Whether a held-out shard is a validation one (a word of :data:`VALIDATION`), not a test one.

    >>> is_validation("wiki.val.npy"), is_validation("wiki.test.npy"), is_validation("invalid.npy")
    (True, False, False)
    """
    return bool(name_words(path) & set(VALIDATION))


def irregular_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is where a regular file is read (a broken link naming where it points, a folder,
    or a special file such as a pipe), None where it is a regular file or a link to one: the words
    :func:`text_shard_files` and :func:`catapult.data.text.folder_splits` refuse such a name with.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "valid.txt").symlink_to("moved/valid.txt")
    >>> irregular_file(folder / "valid.txt"), irregular_file(folder)
    ('a broken link (it points to moved/valid.txt, which does not exist)', 'a folder')
    >>> _ = (folder / "a.txt").write_text("text")
    >>> irregular_file(folder / "a.txt") is None
    True
    """
    path = Path(path)
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"a broken link (it points to {os.readlink(path)}, which does not exist)"
    return "a folder" if path.is_dir() else "not a regular file"


def text_shard_files(root: str | os.PathLike) -> list[Path]:
    """The ``*.jsonl`` / ``*.parquet`` files at ``root`` (a directory: sorted by name; a file: itself); in a
    directory, such a name that is neither a folder nor a regular file (a broken link, a pipe) is a ConfigError on
    ``data.root``."""
    root = Path(root).expanduser()
    if root.is_dir():
        found = sorted(f for f in root.iterdir() if f.suffix in TEXT_SUFFIXES and not f.is_dir())
        # a broken link (or a pipe) named valid.jsonl was skipped: no validation stream, or a
        # training shard left out, without a word
        odd = [(f, irregular_file(f)) for f in found if not f.is_file()]
        if odd:
            raise _bad(odd[0][0], "", f"{odd[0][1]} where a text shard is read; fix or remove it")
        return found
    return [root] if root.suffix in TEXT_SUFFIXES and root.is_file() else []


def _bad(path: Path, where: str, what: str) -> ConfigError:
    return ConfigError([("data.root", f"{path}{where}: {what}")])


def _jsonl_texts(path: Path, key: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_JSONL_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_JSONL_LINE_BYTES and not raw.endswith(b"\n"):   # (iterating f read a line whole)
                raise _bad(path, f":{number}", f"a line longer than {MAX_JSONL_LINE_BYTES:,} bytes "
                                               f"(text_shards.MAX_JSONL_LINE_BYTES); a jsonl line is one document")
            try:  # a UTF-8 byte-order mark opening the file is no text (json refused line 1 for it)
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _bad(path, f":{number}", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(path, f":{number}", f"not a JSON object ({exc.msg}, column {exc.colno})") from None
            except ValueError as exc:  # json's own limits: an integer of more than 4,300 digits
                raise _bad(path, f":{number}", f"not a JSON object ({str(exc).split(':')[0][:80]})") from None
            except RecursionError:
                raise _bad(path, f":{number}", "not a JSON object (nested too deeply)") from None
            if not isinstance(record, dict):
                raise _bad(path, f":{number}", f"a JSON {type(record).__name__}, expected an object "
                                               f"with a {key!r} field")
            if key not in record:
                raise _bad(path, f":{number}", f"no {key!r} field (data.text_key; the line has "
                                               f"{', '.join(map(repr, list(record)[:5])) or 'no fields'})")
            text = record[key]
            if not isinstance(text, str):
                raise _bad(path, f":{number}", f"field {key!r} holds {type(text).__name__}, expected a string")
            try:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer can encode
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _bad(path, f":{number}", f"field {key!r} holds a lone surrogate "
                                               f"({ascii(text[exc.start])}), not Unicode text") from None
            yield text


def _parquet_texts(path: Path, key: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise _bad(path, "", "reading parquet shards needs pyarrow: pip install 'catapult[parquet]'") from None
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _bad(path, "", f"not a readable parquet file ({exc})") from None
    names = table.schema_arrow.names
    if key not in names:
        raise _bad(path, "", f"no column {key!r} (data.text_key; columns: {', '.join(map(repr, names[:10]))})")
    if names.count(key) > 1:  # pyarrow's field() and iter_batches() raised a KeyError: a traceback
        raise _bad(path, "", f"{names.count(key)} columns are named {key!r} (data.text_key); which is the text is "
                             f"not known: rename the others")
    kind = table.schema_arrow.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _bad(path, f", column {key!r}", f"type {kind}, expected a string column")
    row, batches = 0, table.iter_batches(columns=[key], batch_size=_BATCH_DOCS)
    while True:
        try:  # a damaged page shows only when read: a decompression OSError, invalid UTF-8 in a string
            batch = next(batches, None)
            values = [] if batch is None else batch.column(0).to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise _bad(path, f", column {key!r}, rows from {row}", f"corrupt ({str(exc)[:120]})") from None
        if batch is None:
            break
        for i, text in enumerate(values):
            if text is None:
                raise _bad(path, f", column {key!r}, row {row + i}", "null, expected a string")
        yield from values
        row += len(values)


#: The line-break rule of every text the corpora read (:func:`one_newline`), part of the text
#: shards' cache key: a cache tokenised under another rule (jsonl's ``\r`` kept) is not reused.
NEWLINES = "universal"


def one_newline(text: str) -> str:
    """``text`` with each ``\\r\\n`` and each lone ``\\r`` as ``\\n``: Python's universal newlines, as
    ``open()`` reads a text file. The one rule of a ``.txt`` corpus (:func:`catapult.data.text.load_text`)
    and of a text shard's documents (a JSON string keeps ``\\r``, which ``open()`` turned into ``\\n``
    in the same corpus saved as ``.txt``).

    >>> one_newline("a\\r\\nb\\rc\\n\\r\\n")
    'a\\nb\\nc\\n\\n'
    """
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def iter_texts(path: str | os.PathLike, key: str = "text") -> Iterator[str]:
    """The documents of one text shard, in file order (jsonl lines / parquet rows), line breaks
    read as :func:`one_newline` reads them."""
    path = Path(path)
    return map(one_newline, _parquet_texts(path, key) if path.suffix == ".parquet" else _jsonl_texts(path, key))


def _encode_shard(vocab: BPEVocab, path: Path, key: str) -> np.ndarray:
    encode = getattr(vocab.tokenizer, "encode_batch_fast", vocab.tokenizer.encode_batch)
    parts: list[np.ndarray] = []
    batch: list[str] = []

    def flush() -> None:
        for e in encode(batch, add_special_tokens=False):
            parts.append(np.asarray(e.ids, dtype=vocab.dtype))
        batch.clear()

    for text in iter_texts(path, key):
        batch.append(text + DOCUMENT_SEPARATOR)
        if len(batch) >= _BATCH_DOCS:
            flush()
    flush()
    return np.concatenate(parts) if parts else np.empty(0, dtype=vocab.dtype)


def tokenize_text_shards(root: str | os.PathLike, *, vocab_size: int, text_key: str = "text",
                         cache_dir: str | os.PathLike | None = None) -> tuple[BPEVocab, list[Path]]:
    """Tokenise the text shards at ``root`` once (module docstring); return the vocabulary and
    the ``.npy`` file of every shard, in :func:`text_shard_files` order (held-out ones included).

    Files already in the cache are not rewritten (:func:`catapult.data.token_cache.save_array`),
    so processes may race: each ends up mapping the same complete files."""
    vocab_size = check_vocab_size("tokenize_text_shards", vocab_size)
    files = text_shard_files(root)
    if not files:
        raise ConfigError([("data.root", f"{root}: no {' / '.join('*' + s for s in TEXT_SUFFIXES)} text shards")])
    training = [f for f in files if not is_held_out(f)] or files
    key = fingerprint("text-shards", text_key, *(token_cache.file_stamp(f) for f in files), f"newlines-{NEWLINES}")
    directory = token_cache.cache_dir(root, cache_dir)
    tokenizer_file = directory / bpe_file_name(vocab_size, key)
    if tokenizer_file.is_file():
        vocab = _from_cache(lambda: load_cached_vocab(tokenizer_file, vocab_size))
    else:
        problems: list[ConfigError] = []

        def documents() -> Iterator[str]:  # an error raised inside the trainer's iteration is kept, then re-raised
            try:
                for f in training:  # as they are encoded: the separator's merges are learned too
                    yield from (text + DOCUMENT_SEPARATOR for text in iter_texts(f, text_key))
            except ConfigError as exc:
                problems.append(exc)

        vocab = train_bpe(documents(), vocab_size)
        if problems:
            raise problems[0]
        if not save_new(vocab, tokenizer_file):
            vocab = _from_cache(lambda: load_cached_vocab(tokenizer_file, vocab_size))
    tokenizer_key = f"bpe-v{vocab_size}-{key}"
    arrays = []
    for f in files:
        out = directory / token_cache.token_file_name(f.name, "tokens", tokenizer_key)
        _from_cache(lambda: token_cache.cached_array(out, lambda f=f: _encode_shard(vocab, f, text_key), vocab.size))
        arrays.append(out)
    return vocab, arrays


def _from_cache(read):
    """``read()``; a damaged cache file (its ValueError names it) as a ConfigError on ``data.root``."""
    try:
        return read()
    except ConfigError:  # a bad shard, found while tokenising
        raise
    except ValueError as exc:
        raise ConfigError([("data.root", str(exc))]) from None


def stated_vocab_size(root: str | os.PathLike) -> int | None:
    """The vocabulary size that :data:`VOCAB_FILE` (``{"vocab_size": N}``) in the shard folder
    ``root`` (or beside the one shard file ``root``) states for its pre-tokenised ``*.npy`` shards;
    None without one. A token set of fewer ids than BPE's 257 (characters, a toy vocabulary) says
    its true size here, as ``data.vocab_size`` (>= 257, a BPE option) cannot: the model gets ``N``
    embedding rows and logits, and an id ``>= N`` in a shard is refused naming the shard. A file
    that is not such a JSON object with an integer ``1 <= N <= 2^32``, or a :data:`VOCAB_FILE`
    that is not a regular file (a folder, a broken link, a FIFO), is a ConfigError on ``data.root``
    naming it, as is a ``root`` that is that file itself (not a shard: the folder is named).

    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> stated_vocab_size(folder) is None
    True
    >>> _ = (folder / VOCAB_FILE).write_text(json.dumps({"vocab_size": 65}))
    >>> stated_vocab_size(folder)
    65
    """
    root = Path(root).expanduser()
    if root.name == VOCAB_FILE and root.is_file():   # (was told apart from the shards by its size alone)
        raise ConfigError([("data.root", f"{root} is the shards' {VOCAB_FILE}, not a shard: give their folder, "
                                         f"data.root={root.parent}")])
    path = (root if root.is_dir() else root.parent) / VOCAB_FILE
    if not path.is_file():
        if path.is_symlink() or path.exists():  # a folder, a dangling link, a FIFO: refused, not skipped
            raise ConfigError([("data.root", f"{path}: not a regular file (a folder, a broken link or a "
                                             f"special file); {VOCAB_FILE} must be a JSON file {{\"vocab_size\": N}}")])
        return None
    try:
        with open(path, "rb") as f:   # bounded: a file of gigabytes was read whole before any check
            text = f.read(MAX_VOCAB_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([("data.root", f"{path}: not a JSON object {{\"vocab_size\": N}} ({exc})")]) from None
    if len(text) > MAX_VOCAB_FILE_BYTES:
        raise ConfigError([("data.root", f"{path}: more than {MAX_VOCAB_FILE_BYTES:,} bytes "
                                         f"(text_shards.MAX_VOCAB_FILE_BYTES); {VOCAB_FILE} is a JSON "
                                         f"file {{\"vocab_size\": N}} of a few bytes")])
    try:
        stated = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:   # (RecursionError: nested too deeply)
        raise ConfigError([("data.root", f"{path}: not a JSON object {{\"vocab_size\": N}} "
                                         f"({'nested too deeply' if isinstance(exc, RecursionError) else exc})")]) from None
    size = stated.get("vocab_size") if isinstance(stated, dict) else None
    if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= _MAX_VOCAB):
        raise ConfigError([("data.root", f"{path}: expected {{\"vocab_size\": N}} with an integer 1 <= N <= 2^32 "
                                         f"(the shards' vocabulary size), got {json.dumps(stated)[:200]}")])
    return size
