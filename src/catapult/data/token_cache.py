"""Token arrays cached on disk as memory-mapped ``.npy`` files.

A corpus is tokenised once; every later load maps the saved array (``np.load(mmap_mode="r")``):
no text is read and nothing is copied until a window is sliced, so a WikiText-103-sized corpus
(~100M tokens, 200 MB as uint16) opens in milliseconds (``bench/bench_tokens.py``). Ids are
stored as uint16 when the vocabulary has at most 65,536 ids, else uint32.

Where the files go (:func:`cache_dir`): ``data.cache_dir`` when set; else beside the data (the
``data.root`` directory, or the directory of a ``data.root`` file) when that is writable; else
the user cache ``$CATAPULT_CACHE`` or ``~/.cache/catapult/tokens`` (the embedded Shakespeare
lives inside the installed package, which is not ours to write into; a folder anyone may write,
such as ``/tmp``, is not used either). Files are written once, under names that hold the corpus
key, and never overwritten (:func:`save_array`); a cache file another user owns is refused
(:func:`check_owned`).
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from catapult.writing import link_new

__all__ = ["cache_dir", "user_cache_dir", "save_array", "cached_array", "as_tensor", "token_file_name",
           "npy_problem", "check_owned", "file_stamp", "load_cached_array", "token_cache_key"]


def user_cache_dir() -> Path:
    """``$CATAPULT_CACHE`` if set, else ``~/.cache/catapult/tokens``."""
    env = os.environ.get("CATAPULT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "catapult" / "tokens"


def _writable_dir(path: Path) -> bool:
    # a folder anyone may write (/tmp, a shared drop) is not where a cache that is trusted when
    # read again may go: another user could plant files under the names catapult would read
    return (path.is_dir() and os.access(path, os.W_OK | os.X_OK)
            and not path.stat().st_mode & stat.S_IWOTH)


def check_owned(path: str | os.PathLike) -> None:
    """Raise ValueError unless the cache file at ``path`` belongs to this user: catapult reads
    only the token caches it wrote (its names follow from the source files' sizes and times, so
    anyone who may write the folder could plant a tokenizer or arrays there), and unless it is a plain
    file: a symbolic link there (to a cache of another corpus that is this user's) is refused too. No
    owner check where the platform has no user ids."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):  # followed, it passed as its target's owner's: another corpus' cache, say
        raise ValueError(f"{path}: a token cache file that is a symbolic link (to {os.readlink(path)}); catapult "
                         f"writes its caches as plain files and reads only those. Remove it, or set data.cache_dir "
                         f"to a folder of your own")
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return
    owner = info.st_uid
    if owner != getuid():
        raise ValueError(f"{path}: a token cache file owned by another user (uid {owner}); catapult reads only the "
                         f"caches it wrote. Remove it, or set data.cache_dir to a folder of your own")


def cache_dir(root: str | os.PathLike | None, explicit: str | os.PathLike | None = None) -> Path:
    """Where a corpus' tokenizer and token arrays live (module docstring): ``explicit``, else
    beside the data at ``root`` if writable, else :func:`user_cache_dir`."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if root is not None:
        path = Path(root).expanduser()
        folder = path if path.is_dir() else path.parent
        if _writable_dir(folder):
            return folder
    return user_cache_dir()


def file_stamp(path: Path) -> tuple:
    """What tells a user's file from another without reading it: its absolute path (two folders'
    ``corpus.txt`` of one size and time collided in a shared cache), size, and the modification
    and change times. ``cp -p``, ``rsync -t`` and ``touch -r`` restore the modification time, but
    any write sets the change time, which no user call can set back."""
    info = path.stat()
    return (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def token_file_name(corpus: str, split: str, tokenizer_key: str) -> str:
    """``<corpus>.<split>.<tokenizer_key>.npy``, e.g. ``shakespeare.train.bpe-v4096-<key>.npy``."""
    return f"{corpus}.{split}.{tokenizer_key}.npy"


def token_cache_key(path: str | os.PathLike) -> str | None:
    """The tokenizer key ``bpe-v<V>-<key>`` of one of catapult's own BPE token arrays
    (:func:`token_file_name`, with its tokenizer file ``bpe-v<V>-<key>.json`` beside it: what
    ``catapult train`` leaves beside a text corpus), or None for any other file.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "text.train.bpe-v300-0123abcd.npy").write_bytes(b""), (folder / "shard0.npy").write_bytes(b"")
    >>> token_cache_key(folder / "text.train.bpe-v300-0123abcd.npy") is None   # no tokenizer beside it
    True
    >>> _ = (folder / "bpe-v300-0123abcd.json").write_text("{}")
    >>> token_cache_key(folder / "text.train.bpe-v300-0123abcd.npy"), token_cache_key(folder / "shard0.npy")
    ('bpe-v300-0123abcd', None)
    """
    path = Path(path)
    match = re.fullmatch(r".+\.(bpe-v[0-9]+-[0-9a-f]+)\.npy", path.name)
    return match.group(1) if match is not None and (path.parent / f"{match.group(1)}.json").is_file() else None


def save_array(array: np.ndarray, path: str | os.PathLike) -> bool:
    """Save ``array`` as ``.npy`` at ``path`` unless a file is there; True if this call wrote it.

    Written to a temporary file in the same directory, then hard-linked into place (fails if
    ``path`` exists), so readers never see a partial file and no existing file is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data directory wants readable files
        return link_new(tmp, path)
    finally:
        os.unlink(tmp)


def load_array(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """The ``.npy`` file at ``path``, memory-mapped read-only; a bad file, or with ``vocab_size`` an
    id at or beyond it (one pass over the map, in chunks), raises ValueError naming it."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy token array ({npy_problem(exc)}); delete it to re-tokenise") from None
    if array.ndim != 1 or array.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"{path}: expected a 1-D uint16/uint32 token array, got {array.dtype} {array.shape}")
    if vocab_size is not None:  # a damaged cache: an id the model has no embedding for failed mid-run
        for at in range(0, array.size, 1 << 24):
            high = int(array[at:at + (1 << 24)].max())
            if high >= vocab_size:
                raise ValueError(f"{path}: token id {high} is beyond the tokenizer's {vocab_size} ids; "
                                 f"delete it to re-tokenise")
    return array


def npy_problem(exc: BaseException) -> str:
    """Why ``np.load(..., allow_pickle=False)`` refused a file, in short. NumPy's own text for a file
    of pickled objects advises loading it with ``allow_pickle=True``, which would run its code: not
    passed on."""
    if "allow_pickle" in str(exc):
        return "not a .npy file: NumPy would read it as a pickle, refused unread"
    return str(exc)[:200]


def cached_array(path: str | os.PathLike, make: Callable[[], np.ndarray],
                 vocab_size: int | None = None) -> np.ndarray:
    """The memory-mapped array at ``path``; if there is none, ``make()`` it and save it first
    (:func:`load_array`'s check with ``vocab_size``)."""
    path = Path(path)
    if not path.is_file():
        save_array(make(), path)
    return load_cached_array(path, vocab_size)


def load_cached_array(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """:func:`load_array` of a cache file, once it is known to be this user's (:func:`check_owned`)."""
    check_owned(path)
    return load_array(path, vocab_size)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A 1-D integer tensor sharing memory with ``array`` (a read-only memory map stays mapped:
    nothing is read until it is indexed). The tensor must not be written to (nothing in catapult
    writes token ids in place); uint16 maps to ``torch.uint16``, uint32 to ``torch.uint32``. Torch
    before 2.3 has neither (``from_numpy`` raised TypeError): there the ids are read into int32
    (uint16) or int64 (uint32), the same values, no longer mapped."""
    wide = {np.dtype(np.uint16): ("uint16", np.int32), np.dtype(np.uint32): ("uint32", np.int64)}.get(array.dtype)
    if wide is not None and not hasattr(torch, wide[0]):
        return torch.from_numpy(np.asarray(array, dtype=wide[1]))
    with warnings.catch_warnings():  # torch warns that the mapped buffer is read-only
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
