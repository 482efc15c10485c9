"""CIFAR-10 and CIFAR-100 readers for the official "python version" files a user already has.

The official archives (https://www.cs.toronto.edu/~kriz/cifar.html) hold pickled dicts:

* ``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``,
  each batch ``{b'data': uint8 (10000, 3072), b'labels': [int], ...}``;
* ``cifar-100-python.tar.gz`` -> ``cifar-100-python/{train, test, meta}``, with
  ``b'fine_labels'`` (100 classes) and ``b'coarse_labels'`` (20 superclasses).

A row of ``b'data'`` is one 32x32 image, channel-major (1024 red, 1024 green, 1024 blue values,
each row-major), so ``data.reshape(N, 3, 32, 32)`` is the natural ``(N, C, H, W)`` layout.

``root`` may be the extracted directory, its parent, the ``.tar.gz`` itself (read in place,
nothing is extracted to disk) or a directory holding the ``.tar.gz``. With ``root=None`` the
directory in ``$CATAPULT_DATA`` (if set) and then ``./data`` are searched. The pickles are read
with `catapult.data.safe_pickle.RestrictedUnpickler`, which refuses any global the format
does not contain, so a tampered file cannot run code.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catapult.arguments import check_flag
from catapult.data.reading import read_errors_named
from catapult.data.safe_pickle import safe_loads
from catapult.data.split import Split, check_count, standardize_per_sample

__all__ = ["load_cifar10", "load_cifar100", "find_cifar", "cifar_files", "CIFAR10_URL", "CIFAR100_URL", "DATA_ENV", "CorruptDataError"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
DATA_ENV = "CATAPULT_DATA"  # environment variable naming a default data directory
_PIXELS = 3 * 32 * 32
#: Bytes a batch pickle may take beyond its pixels (labels, file names, batch label) and the
#: most a meta file may take: a file larger than its format allows is refused before it is read.
_OVERHEAD_PER_ROW = 256
_MAX_META_BYTES = 1_000_000
_DECOMPRESS_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


class CorruptDataError(ValueError):
    """A data file or archive that is corrupt, truncated or larger than its format allows."""


#: The most bytes a member's extended header (pax, GNU long name) may claim; the official archives have none.
_MAX_EXTENDED_HEADER = 1 << 20
#: The most members an archive may list: each is a Python object, and a few KB of .tar.gz can hold
#: millions of empty headers (the official archives have 9 members).
_MAX_MEMBERS = 10_000
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


class OversizedTarHeader(ValueError):
    """An archive member's extended header larger than `_MAX_EXTENDED_HEADER`, or more than `_MAX_MEMBERS`
    members (then a CorruptDataError)."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extended header is refused unread when it claims more than
    `_MAX_EXTENDED_HEADER` bytes: tarfile reads it whole into memory, so a 204 KB ``.tar.gz``
    claiming a 200 MB pax header of zeros took 200 MB (a 10 MB file: 10 GB)."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED and self.size > _MAX_EXTENDED_HEADER:
            raise OversizedTarHeader(f"a member's extended header at offset {self.offset:,} claims {self.size:,} bytes "
                                   f"(at most {_MAX_EXTENDED_HEADER:,})")
        return super()._proc_member(tarfile_)


@dataclass(frozen=True)
class _Format:
    """Where a CIFAR variant keeps what, and how its labels are named."""

    title: str
    dirname: str
    archive: str
    url: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    rows: dict[str, int]  # file -> the most images it holds (the official count)

    def max_bytes(self, name: str) -> int:
        """The largest a file of this format may be: its rows' pixels plus a per-row allowance."""
        if name not in self.rows:
            return _MAX_META_BYTES
        return self.rows[name] * (_PIXELS + _OVERHEAD_PER_ROW) + _MAX_META_BYTES


_CIFAR10 = _Format("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz", CIFAR10_URL,
                   tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                   {**{f"data_batch_{i}": 10_000 for i in range(1, 6)}, "test_batch": 10_000})
_CIFAR100 = _Format("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", CIFAR100_URL,
                    ("train",), ("test",), "meta", {"train": 50_000, "test": 10_000})


# -- where the files are ------------------------------------------------------------------------
class _DirSource:
    """Batch files in an extracted directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self, name: str) -> str:
        return str(self.directory / name)

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def size(self, name: str) -> int:
        return (self.directory / name).stat().st_size

    def read(self, name: str) -> bytes:
        with read_errors_named(self.directory / name):
            return (self.directory / name).read_bytes()

    def check_complete(self) -> None:
        pass

    def what_it_holds(self) -> str:
        return ""  # a folder is a source only when it holds a file of the layout

    def close(self) -> None:
        pass


class _TarSource:
    """Batch files inside the official archive, read in memory without extracting to disk."""

    def __init__(self, archive: Path, dirname: str, fmt: "_Format | None" = None) -> None:
        self.archive = archive
        self.dirname = dirname
        self._format = fmt  # the files read ahead (none past its size limit); None: none
        self._fetched: dict[str, bytes] | None = None
        try:
            self._tar = tarfile.open(archive, mode="r:*", tarinfo=_BoundedTarInfo)
        except OversizedTarHeader as exc:
            raise self._corrupt(exc) from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            # tarfile's "r:*" lists each compression it tried on its own line: one line here
            why = ("not a gzip, bzip2, xz or plain tar file" if isinstance(exc, tarfile.ReadError)
                   else " ".join(str(exc).split()))
            raise ValueError(f"{archive}: cannot be read as a tar archive ({why}); expected the "
                             f"official '{dirname}' archive") from exc
        # Map a batch file name to its member; accept "<dirname>/<file>" (official layout),
        # "./<dirname>/<file>" and a bare "<file>".
        self._members: dict[str, tarfile.TarInfo] = {}
        self._folders: set[str] = set()  # top folders of files outside the layout, to say what it is
        try:
            members = []
            for member in self._tar:  # (not getmembers(): a stream of empty headers was listed whole)
                members.append(member)
                if len(members) > _MAX_MEMBERS:
                    raise OversizedTarHeader(f"more than {_MAX_MEMBERS:,} members (the official archive has 9)")
            # listing the members decompressed the whole stream but stopped short of its end, where
            # gzip checks its CRC: a damaged byte in a batch (stored, i.e. incompressible, blocks)
            # was read as other pixels, without a word. Reading the rest checks it.
            self.check_complete()
        except (*_DECOMPRESS_ERRORS, OversizedTarHeader) as exc:
            self._tar.close()
            raise self._corrupt(exc) from None
        except CorruptDataError:
            self._tar.close()
            raise
        for member in members:
            if not member.isfile():
                continue
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if len(parts) == 2 and parts[0] == dirname or len(parts) == 1:
                # the last copy, as `tar -x` leaves it: `tar -r` appends a file again, and the first was read
                self._members[parts[-1]] = member
            else:
                self._folders.add(parts[0])

    def describe(self, name: str) -> str:
        return f"{self.archive}::{self.dirname}/{name}"

    def _corrupt(self, exc: BaseException) -> CorruptDataError:
        return CorruptDataError(f"{self.archive}: the archive is corrupt or truncated ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); download it again")

    def has(self, name: str) -> bool:
        return name in self._members

    def what_it_holds(self) -> str:
        """When no file of the layout is in the archive, what is instead (the other CIFAR's
        archive was read as "incomplete, fetch it again"); else nothing."""
        if self._members:
            return ""
        for fmt in (_CIFAR10, _CIFAR100):
            if fmt.dirname != self.dirname and fmt.dirname in self._folders:
                return f" It is the {fmt.title} archive (it holds {fmt.dirname}/): load it as {fmt.title}."
        return (f" It holds no {self.dirname}/ folder (its folders: "
                f"{', '.join(sorted(self._folders)[:5]) or 'none'}).")

    def size(self, name: str) -> int:
        return self._members[name].size

    def read(self, name: str) -> bytes:
        if self._fetched is None and self._format is not None and isinstance(
                self._tar.fileobj, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)):
            self._fetch_all()
        if self._fetched is not None and name in self._fetched:
            return self._fetched.pop(name)
        return self._read_member(name)

    def _fetch_all(self) -> None:
        """Read every file of the layout (within its size limit) in one pass in archive order: a
        compressed stream is read only forwards, and a member behind the last one read made it
        decompress again from the start (the official archive holds data_batch_1 last: reading
        the batches in name order decompressed its 163 MB about five times over)."""
        fmt = self._format
        wanted = {*fmt.train_files, *fmt.test_files, fmt.meta_file}  # (not any other file: 10,000 of 1 MB)
        self._fetched = {}
        for name, member in sorted(self._members.items(), key=lambda item: item[1].offset_data):
            if name in wanted and member.size <= fmt.max_bytes(name):
                self._fetched[name] = self._read_member(name)

    def _read_member(self, name: str) -> bytes:
        try:
            fileobj = self._tar.extractfile(self._members[name])
            assert fileobj is not None  # regular files always have a file object
            with fileobj:
                data = fileobj.read()
        except _DECOMPRESS_ERRORS as exc:
            raise self._corrupt(exc) from None
        if len(data) != self._members[name].size:
            raise self._corrupt(EOFError(f"{name} ends after {len(data):,} of {self._members[name].size:,} bytes"))
        return data

    def check_complete(self) -> None:
        """Raise if the member list ended early: tarfile stops without a word at a damaged header
        after the first member, so a corrupt archive would read as one with files missing. A
        complete archive ends in zero blocks; read what follows the last header to its end (which
        also checks the gzip CRC)."""
        fileobj = self._tar.fileobj
        try:
            fileobj.seek(self._tar.offset)
            while chunk := fileobj.read(1 << 20):
                if chunk.count(0) != len(chunk):
                    raise tarfile.ReadError(f"a damaged header at offset {self._tar.offset:,}")
        except _DECOMPRESS_ERRORS as exc:
            raise self._corrupt(exc) from None

    def close(self) -> None:
        self._tar.close()


def _candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(Path("data"))
    return roots


def _not_found(fmt: _Format, looked: list[str]) -> FileNotFoundError:
    lines = "\n".join(f"  - {p}" for p in looked)
    return FileNotFoundError(
        f"{fmt.title} not found. Looked at:\n{lines}\n"
        f"Download the 'python version' archive {fmt.url} and pass root=<path to "
        f"{fmt.archive}> (read in place, no need to extract), or extract it so that "
        f"<root>/{fmt.dirname}/{fmt.test_files[0]} exists and pass that root "
        f"(or set ${DATA_ENV}, or put it under ./data)."
    )


def _locate(fmt: _Format, root: str | os.PathLike | None) -> tuple[bool, Path]:
    """Where the dataset under `root` is, opening nothing: ``(True, archive)`` or ``(False, the
    extracted directory)``; its parent, the archive or a directory holding it are found too."""
    looked: list[str] = []
    for base in _candidate_roots(root):
        if base.is_file():
            return True, base
        if not base.is_dir():
            looked.append(f"{base} (does not exist)")
            continue
        for directory in (base, base / fmt.dirname):
            if any((directory / f).is_file() for f in (*fmt.train_files, *fmt.test_files)):
                return False, directory
            looked.append(f"{directory / fmt.test_files[0]} (missing)")
        archive = base / fmt.archive
        if archive.is_file():
            return True, archive
        looked.append(f"{archive} (missing)")
    raise _not_found(fmt, looked)


def _open_source(fmt: _Format, root: str | os.PathLike | None) -> _DirSource | _TarSource:
    """Find the dataset under `root` (:func:`_locate`) and open it."""
    archive, path = _locate(fmt, root)
    return _TarSource(path, fmt.dirname, fmt) if archive else _DirSource(path)


# -- what is in them ------------------------------------------------------------------------
def _get(d: dict, key: str) -> Any:
    """Look up a key written by Python 2 (bytes under encoding='bytes') or Python 3 (str)."""
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


def _load_batch(source, fmt: _Format, name: str, label_key: str, num_classes: int):
    """Read and validate one batch file: (uint8 array (N, 3072), int64 array (N,))."""
    where = source.describe(name)
    if not source.has(name):
        source.check_complete()
        hint = source.what_it_holds()
        if hint:
            raise FileNotFoundError(f"{where} is missing.{hint}")
        raise FileNotFoundError(
            f"{where} is missing: the {fmt.title} files are incomplete. Fetch {fmt.url} again "
            f"and pass the archive, or extract all of it under {fmt.dirname}/."
        )
    obj = safe_loads(_read_checked(source, fmt, name), source=where)
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict (a {fmt.title} batch), got {type(obj).__name__}")
    try:
        data, labels = _get(obj, "data"), _get(obj, label_key)
    except KeyError as exc:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in obj)
        raise ValueError(f"{where}: a {fmt.title} batch needs the keys 'data' and '{label_key}', "
                         f"found {keys}") from exc
    rows = fmt.rows[name]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS and data.shape[0] <= rows):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{where}: 'data' must be a uint8 array of shape (N, {_PIXELS}) with N <= {rows:,} "
                         f"(the {fmt.title} format), got {desc}")
    # checked before numpy sees it: a few KB of pickle can share one nested list many times and
    # ask np.asarray for gigabytes
    n = data.shape[0]
    if isinstance(labels, np.ndarray):
        desc = None if labels.ndim == 1 and labels.shape[0] == n else f"{labels.dtype} array of shape {labels.shape}"
    elif not isinstance(labels, (list, tuple)):
        desc = f"a {type(labels).__name__}"
    elif len(labels) != n:
        desc = f"a {type(labels).__name__} of {len(labels)} items"
    else:
        bad = [v for v in labels if not isinstance(v, (int, np.integer)) or isinstance(v, bool)][:1]
        desc = f"an item {type(bad[0]).__name__} {str(bad[0])[:40]}" if bad else None
    if desc is not None:
        raise ValueError(f"{where}: '{label_key}' must hold {n} integer labels, got {desc}")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{where}: '{label_key}' is not a list of class indices") from exc
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: '{label_key}' must hold {data.shape[0]} integer labels, got "
                         f"{labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: '{label_key}' values must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    return data, labels.astype(np.int64)


def _read_checked(source, fmt: _Format, name: str) -> bytes:
    """The bytes of file ``name``, refused unread if it is larger than its format allows (a
    decompression bomb, or a batch claiming billions of rows)."""
    size, limit = source.size(name), fmt.max_bytes(name)
    if size > limit:
        raise CorruptDataError(f"{source.describe(name)}: {size:,} bytes, more than a {fmt.title} "
                               f"'{name}' file can be ({limit:,}); it is not an official file")
    return source.read(name)


def _load_names(source, fmt: _Format, key: str, num_classes: int) -> tuple[str, ...] | None:
    """Class names from the meta file, or None when it is absent or not as expected."""
    if not source.has(fmt.meta_file):
        return None
    meta = safe_loads(_read_checked(source, fmt, fmt.meta_file), source=source.describe(fmt.meta_file))
    try:
        names = _get(meta, key)
        if len(names) != num_classes:
            return None
        names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):  # ValueError: a name not UTF-8
        return None
    return names if len(names) == num_classes else None


def _read_part(source, fmt: _Format, files: tuple[str, ...], n: int | None, label_key: str,
               num_classes: int, what: str, dataset: str):
    """Concatenate batch files in order until `n` samples are read (all when `n` is None)."""
    xs, ys, have = [], [], 0
    for name in files:
        if n is not None and have >= n:
            break
        data, labels = _load_batch(source, fmt, name, label_key, num_classes)
        xs.append(data)
        ys.append(labels)
        have += data.shape[0]
    if not xs:  # n == 0
        return np.zeros((0, _PIXELS), np.uint8), np.zeros(0, np.int64)
    x, y = np.concatenate(xs), np.concatenate(ys)
    check_count(n, x.shape[0], what, dataset)
    return x[:n], y[:n]


def _to_inputs(data: np.ndarray, standardize: bool) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    if standardize:
        return standardize_per_sample(images)
    return images.to(torch.float32) / 255.0


def _load(fmt: _Format, name: str, root, n_train, n_test, standardize: bool, label_key: str,
          names_key: str, num_classes: int) -> Split:
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        check_count(n, 10**9, what, name)  # type/sign check before touching any file
    standardize = check_flag(f"load_{name.split('-')[0]}", "standardize", standardize)  # "no" standardized
    source = _open_source(fmt, root)
    try:
        x_tr, y_tr = _read_part(source, fmt, fmt.train_files, n_train, label_key, num_classes,
                                "n_train", f"{name} (train)")
        x_te, y_te = _read_part(source, fmt, fmt.test_files, n_test, label_key, num_classes,
                                "n_test", f"{name} (test)")
        classes = _load_names(source, fmt, names_key, num_classes)
    finally:
        source.close()
    return Split(
        x_train=_to_inputs(x_tr, standardize), y_train=torch.from_numpy(y_tr),
        x_test=_to_inputs(x_te, standardize), y_test=torch.from_numpy(y_te),
        num_classes=num_classes, name=name, classes=classes,
    )


def find_cifar(name: str, root: str | os.PathLike | None = None) -> None:
    """Check that the files of ``name`` (``"cifar10"`` or ``"cifar100"``) are found at ``root``
    as `load_cifar10` / `load_cifar100` look for them, without reading them: raises the
    FileNotFoundError those raise (every path looked at and the download URL)."""
    _open_source(_format_named("find_cifar", name), root).close()


def _format_named(owner: str, name: str) -> _Format:
    formats = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}
    if name not in formats:
        raise ValueError(f"{owner}: name must be one of {', '.join(formats)}, got {name!r}")
    return formats[name]


def cifar_files(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files `load_cifar10` / `load_cifar100` would read for ``name`` (``"cifar10"`` or
    ``"cifar100"``) at ``root``, found as they find them but opening none: the archive, or the
    batch and meta files of the extracted directory that are there. Raises the FileNotFoundError
    of `find_cifar`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "cifar-10-batches-py").mkdir()
    >>> _ = (folder / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    >>> [f.name for f in cifar_files("cifar10", folder)]
    ['test_batch']
    """
    fmt = _format_named("cifar_files", name)
    archive, path = _locate(fmt, root)
    if archive:
        return [path]
    return [path / f for f in (*fmt.train_files, *fmt.test_files, fmt.meta_file) if (path / f).is_file()]


def load_cifar10(root: str | os.PathLike | None = None, n_train: int | None = None,
                 n_test: int | None = None, *, standardize: bool = True) -> Split:
    """CIFAR-10 from the official python-version files: 50,000 train / 10,000 test, 10 classes.

    Args:
        root: the ``cifar-10-batches-py`` directory, its parent, ``cifar-10-python.tar.gz``
            (read in place) or a directory holding it; None searches ``$CATAPULT_DATA``, ``./data``.
        n_train, n_test: keep the first N images in file order (``data_batch_1`` first); only
            the batch files needed are read. None keeps all.
        standardize: per-sample standardisation ``x <- (x - mean(x)) / std(x)`` over each
            image's 3072 values (the warmup paper's preprocessing); False gives ``x / 255``.

    Returns a `Split` with inputs float32 ``(N, 3, 32, 32)`` and int64 labels.
    Raises FileNotFoundError listing every path looked at and the download URL.
    """
    return _load(_CIFAR10, "cifar10", root, n_train, n_test, standardize, "labels",
                 "label_names", 10)


def load_cifar100(root: str | os.PathLike | None = None, n_train: int | None = None,
                  n_test: int | None = None, *, standardize: bool = True,
                  labels: str = "fine") -> Split:
    """CIFAR-100 from the official python-version files: 50,000 train / 10,000 test.

    ``labels="fine"`` gives the 100 classes, ``"coarse"`` the 20 superclasses (``name`` is then
    ``"cifar100-coarse"``). ``root``, ``n_train``, ``n_test`` and ``standardize`` are as in
    `load_cifar10`, with ``cifar-100-python`` / ``cifar-100-python.tar.gz``.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: labels must be 'fine' or 'coarse', got {labels!r}")
    fine = labels == "fine"
    return _load(_CIFAR100, "cifar100" if fine else "cifar100-coarse", root, n_train, n_test,
                 standardize, f"{labels}_labels", f"{labels}_label_names", 100 if fine else 20)
