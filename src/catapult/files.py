"""catapult's output files: the mark they carry, how they are recognised, and how they are
written (whole, under :data:`PARTIAL_PREFIX` first, never through a link).

Commands replace an existing output file only when catapult wrote it (an earlier export, figure
or report), never a user's file that happens to share the name or the suffix. Figures and
reports carry :data:`MARK` in their metadata (PNG ``Software``, PDF/SVG/PS ``Creator``, an HTML
``generator`` meta tag), Parquet exports in their schema metadata; CSV cannot carry one, so an
export is recognised by its header, and a run's ``metrics.csv`` / ``summary.json`` by theirs.
"""
from __future__ import annotations

import codecs
import csv
import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

try:
    import fcntl
except ImportError:   # Windows: no flock (write_whole then works by path names)
    fcntl = None

__all__ = ["MARK", "PARTIAL_PREFIX", "PNG_START", "figure_mark", "figure_path", "save_figure", "written_by_catapult",
           "is_run_record", "run_output_of_ours", "partial_of_ours", "cut_off_mapping", "write_whole", "write_text_whole", "csv_cell",
           "csv_text"]

#: The text catapult's figures, reports and Parquet exports carry in their metadata.
MARK = "written by catapult"
#: The metadata key that holds :data:`MARK`, per figure format (matplotlib's ``savefig``), and
#: for the formats Pillow writes, its keyword.
_FIGURE_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "svgz": "Creator", "ps": "Creator",
                "eps": "Creator"}
_PILLOW_KEYS = {"jpg": ("comment", MARK.encode()), "jpeg": ("comment", MARK.encode()),
                "tif": ("description", MARK), "tiff": ("description", MARK)}
#: What :func:`write_whole` puts before a file's name while it writes it.
PARTIAL_PREFIX = ".partial-"
#: The first bytes of every PNG file (its signature).
PNG_START = b"\x89PNG\r\n\x1a\n"
_LARGEST = 64 << 20  # a figure or report is far smaller; a bigger file is not read to be judged


def figure_mark(path) -> dict:
    """The ``savefig`` keyword arguments that mark a figure at ``path`` (by its suffix; none
    means PNG); none for a format that carries no text (raw, GIF, WebP).

    >>> figure_mark("phase.png"), figure_mark("phase.jpg"), figure_mark("phase.raw")
    ({'metadata': {'Software': 'written by catapult'}}, {'pil_kwargs': {'comment': b'written by catapult'}}, {})
    """
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    if suffix in _FIGURE_KEYS:
        return {"metadata": {_FIGURE_KEYS[suffix]: MARK}}
    if suffix in _PILLOW_KEYS:
        key, value = _PILLOW_KEYS[suffix]
        return {"pil_kwargs": {key: value}}
    return {}


def figure_path(path) -> Path:
    """``path`` as a ``Path``, with ``.png`` added when it has no suffix, as matplotlib does:
    the file :func:`save_figure` writes (so a command can print it).

    >>> figure_path("phase"), figure_path("phase.pdf")
    (PosixPath('phase.png'), PosixPath('phase.pdf'))
    """
    path = Path(path)
    return path if path.suffix else path.with_name(path.name + ".png")


def save_figure(fig, target, *, make_folder: bool = False, **savefig_kwargs) -> None:
    """``fig.savefig`` with catapult's mark, to a path or to an open binary file.

    A path gets the format of its suffix (none: PNG, and ``.png`` added) and is written whole
    (:func:`write_whole`); ``make_folder`` makes its folder first. A file gets ``format`` from
    ``savefig_kwargs`` (default PNG)."""
    if hasattr(target, "write"):
        fmt = savefig_kwargs.pop("format", None) or "png"
        fig.savefig(target, format=fmt, **figure_mark(f"figure.{fmt}"), **savefig_kwargs)
        return
    path = figure_path(target)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    write_whole(path, lambda fh: fig.savefig(fh, format=fmt, **figure_mark(path), **savefig_kwargs))


def written_by_catapult(path) -> bool:
    """Whether the existing file ``path`` is one catapult wrote: a marked figure, report or
    Parquet export, an export CSV (its header: ``cell_id`` first, or the aggregate's ``n_seeds``,
    with ``status``), or a run record (:func:`is_run_record`). Links and unreadable files are not.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> mine = os.path.join(folder, "mine.csv")
    >>> _ = open(mine, "w").write("a,b\\n1,2\\n")
    >>> written_by_catapult(mine)
    False
    >>> _ = open(mine, "w").write("cell_id,optimizer.lr,status\\n0,0.1,finished\\n")
    >>> written_by_catapult(mine)
    True
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            header = _csv_header(path)
            return is_run_record(path) or ("status" in header and (
                header[:1] == ["cell_id"] or "n_seeds" in header))
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            metadata = pq.read_schema(str(path)).metadata or {}
            return metadata.get(b"catapult") == MARK.encode()
        if path.stat().st_size > _LARGEST:
            return False
        data = path.read_bytes()
        if suffix == ".svgz":
            import gzip

            data = gzip.decompress(data)
        return MARK.encode() in data
    except Exception:  # unreadable, not UTF-8, or not Parquet (pyarrow's own errors): not ours
        return False


def is_run_record(path) -> bool:
    """Whether ``path`` is a run's ``metrics.csv`` (header ``step, ...`` with ``train_loss``) or
    ``summary.json`` (an object with ``status`` and ``steps_completed``), as ``catapult train``
    writes them."""
    return _run_record_as(Path(path), Path(path).name)


def _run_record_as(path: Path, name: str) -> bool:
    """Whether the file ``path`` holds a run's record ``name`` (metrics.csv, summary.json)."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        if name == "metrics.csv":
            header = _csv_header(path)
            return header[:1] == ["step"] and "train_loss" in header
        if name == "summary.json":
            if path.stat().st_size > _LARGEST:
                return False
            summary = json.loads(path.read_text())
            return isinstance(summary, dict) and {"status", "steps_completed"} <= summary.keys()
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


#: The top-level keys of every ``config.yaml`` a run has written (the resolved config, defaults
#: filled in, since the first version); a user's own config rarely spells out all of them.
_RUN_CONFIG_KEYS = frozenset({"name", "data", "model", "optimizer", "schedule", "train", "eval"})
#: How a zip archive (torch.save's format) starts: a local file header.
_ZIP_START = b"PK\x03\x04"
#: The text matplotlib puts in a PNG by default: the trajectories.png of a run written before
#: figures carried :data:`MARK` has it instead.
_MATPLOTLIB_PNG = b"Software\x00Matplotlib version"


def run_output_of_ours(path, name: str | None = None) -> bool:
    """Whether the file ``path`` holds what ``catapult train`` writes under ``name`` (default:
    its own name), judged by content so that ``--overwrite`` never replaces a user's file that
    only shares the name: a run record (:func:`is_run_record`), a resolved ``config.yaml`` (a
    mapping with every section), a ``model.pt`` that torch.save wrote (a zip whose first entry
    is ``<archive>/data.pkl``; a write cut off later is still one), a ``trajectories.png`` with
    catapult's mark or, as earlier versions wrote it, matplotlib's. Links are not.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "model.pt"), "w").write("USER MODEL")
    >>> run_output_of_ours(os.path.join(folder, "model.pt"))
    False
    """
    path = Path(path)
    name = path.name if name is None else name
    try:
        if path.is_symlink() or not path.is_file():
            return False
        if name in ("metrics.csv", "summary.json"):
            return _run_record_as(path, name)
        if name == "model.pt":
            with open(path, "rb") as fh:
                head = fh.read(30 + 1024)
            size = int.from_bytes(head[26:28], "little") if len(head) >= 28 else 0
            return head.startswith(_ZIP_START) and head[30:30 + size].endswith(b"/data.pkl")
        if path.stat().st_size > _LARGEST:
            return False
        if name == "trajectories.png":   # marked, or as earlier versions wrote it: matplotlib's tag
            if written_by_catapult(path):
                return True
            data = path.read_bytes()
            return data.startswith(PNG_START) and _MATPLOTLIB_PNG in data
        if name == "config.yaml":
            import yaml

            from catapult.config import RunConfig

            data = path.read_bytes()
            if cut_off_mapping(data, RunConfig.model_fields, skips=False):
                return True
            config = yaml.safe_load(data.decode("utf-8"))
            return isinstance(config, dict) and _RUN_CONFIG_KEYS <= config.keys()
    except Exception:  # unreadable, not UTF-8, not YAML: not ours
        return False
    return False


def cut_off_mapping(data: bytes, keys, *, skips: bool = True) -> bool:
    r"""Whether ``data`` is the start of a YAML mapping written with its top-level ``keys`` in that
    order, cut off mid-write (a kill during an in-place write leaves one): its top-level keys are
    the first of ``keys``, then later ones in order (``skips=False``: each one, none left out), and
    a last line cut inside a key is the start of one allowed next. A cut inside a character is
    kept back, like a cut anywhere else. Used for a run's and coord-check's ``config.yaml``.

    >>> cut_off_mapping(b"name: a\ndata:\n  x: 1\nmod", ["name", "data", "model"])
    True
    >>> cut_off_mapping(b"name: a\nmodel: {}\n", ["name", "data", "model"], skips=False)
    False
    """
    try:
        lines = codecs.getincrementaldecoder("utf-8")().decode(data).split("\n")
    except UnicodeDecodeError:
        return False
    keys, places = list(keys), []
    for number, line in enumerate(lines):
        if not line or line[0].isspace() or line.startswith("- "):
            continue   # nested values and list items
        key, colon, _ = line.partition(":")
        after = places[-1] + 1 if places else 0
        allowed = keys[after:] if skips and places else keys[after:after + 1]
        if not colon and number == len(lines) - 1:   # cut off inside a key
            return any(name.startswith(key) for name in allowed)
        if not colon or key not in allowed:
            return False
        places.append(keys.index(key))
    return True


def partial_of_ours(entry: Path, whole, start) -> bool:
    """Whether ``entry``, a ``.partial-NAME`` file that a stopped :func:`write_whole` left, is a
    command's own, judged by content: ``whole(entry, NAME)`` (written whole, not yet renamed) or
    all of it a cut-off part of ``start(NAME)``, the bytes such a file begins with (``None``: not
    a name the command writes). The next write of NAME replaces it."""
    entry = Path(entry)
    if entry.is_symlink() or not entry.is_file() or not entry.name.startswith(PARTIAL_PREFIX):
        return False
    name = entry.name[len(PARTIAL_PREFIX):]
    if whole(entry, name):
        return True
    start = start(name)
    if start is None:
        return False
    try:
        with open(entry, "rb") as fh:
            return start.startswith(fh.read(len(start) + 1))
    except OSError:
        return False


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader([fh.readline(1 << 20)]), [])


def write_whole(path, write: Callable[[BinaryIO], object]) -> None:
    """``write(fh)`` into a new file ``.partial-NAME`` beside ``path``, then renamed over ``path``:
    a command stopped mid-write (Ctrl-C, kill, a full disk) never leaves a truncated file under
    the real name. ``fh`` is a binary file that write_whole opened and closes.

    The partial file is created fresh (``O_CREAT | O_EXCL | O_NOFOLLOW``, relative to the folder
    opened once), so nothing planted at the partial name or in the folder's place is ever written
    through: a stopped write's leftover, a link or a FIFO found there is removed first, one that
    reappears each time it is removed is an error, and so is a folder there. The partial file is
    locked (``flock``) while it is written: a second process writing the same ``path`` meanwhile
    gets an error instead of removing it, and a partial file replaced mid-write is not renamed
    over ``path``. An OSError about the partial file names ``path``.

    Where the system has no ``flock`` or no folder-relative calls (Windows), the same steps run by
    path names (:func:`_write_whole_by_path`): the file still appears whole or not at all and a
    link at the partial name is still removed, not written through, but a second writer of the
    same ``path`` is not detected.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> write_whole(os.path.join(folder, "a.txt"), lambda fh: fh.write(b"whole"))
    >>> sorted(os.listdir(folder)), open(os.path.join(folder, "a.txt")).read()
    (['a.txt'], 'whole')
    """
    path = Path(path)
    if not _BY_FOLDER:
        return _write_whole_by_path(path, write)
    partial = PARTIAL_PREFIX + path.name
    ours = {None, partial, str(path.with_name(partial))}   # None: an error while writing into fh
    # O_PATH (Linux) needs no read permission on the folder: a write-only folder works as before
    folder = os.open(path.parent, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC)
    fd, mine = -1, None
    try:
        fd = _create_fresh(partial, folder)
        mine = os.fstat(fd)
        with open(fd, "wb", closefd=False) as fh:   # fd stays open, and locked, until the rename
            write(fh)
        if not _same_file(partial, folder, mine):
            raise FileExistsError(errno.EEXIST, f"{partial}, its partial file, was replaced while it was written",
                                  partial)
        os.replace(partial, path.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException as exc:
        if mine is not None and _same_file(partial, folder, mine):
            try:
                os.unlink(partial, dir_fd=folder)
            except OSError:
                pass  # the error that stopped the write is the one to report
        if isinstance(exc, OSError) and exc.filename in ours:  # name the file the user knows
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(folder)


#: Whether :func:`write_whole` can work relative to the folder and lock the partial file (Linux,
#: macOS); else it works by path names.
_BY_FOLDER = (fcntl is not None and hasattr(os, "O_NOFOLLOW")
              and {os.open, os.stat, os.unlink, os.rename} <= os.supports_dir_fd)   # os.replace is rename's twin


def _write_whole_by_path(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """:func:`write_whole` by path names, without a lock, where the system lacks ``flock`` or
    folder-relative calls."""
    partial = path.with_name(PARTIAL_PREFIX + path.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_CREATE_TRIES):
        try:
            fd = os.open(partial, flags, 0o666)
            break
        except FileExistsError:
            if partial.is_dir() and not partial.is_symlink():
                raise IsADirectoryError(errno.EISDIR, f"a folder {partial.name} stands where its partial file goes",
                                        str(path)) from None
            partial.unlink(missing_ok=True)   # a leftover, or a link: removed, never written through
    else:
        raise FileExistsError(errno.EEXIST, f"something reappeared at {partial.name}, its partial file, each "
                                            f"time it was removed", str(path))
    try:
        with open(fd, "wb") as fh:
            write(fh)
        os.replace(partial, path)
    except BaseException as exc:
        try:
            os.unlink(partial)
        except OSError:
            pass   # the error that stopped the write is the one to report
        if isinstance(exc, OSError) and exc.filename in (None, str(partial)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def csv_cell(value: Any) -> str:
    """One CSV cell of catapult's tables (exports, ``metrics.csv``, coord-check): empty for
    ``None``; a float as its shortest exact repr, so it reads back bit-for-bit, with ``inf`` and
    ``nan`` as pandas reads them (a NumPy float too, whose own repr is ``np.float64(...)``);
    anything else as ``str``.

    >>> [csv_cell(v) for v in (None, 0.1, float("inf"), 3, "adam")]
    ['', '0.1', 'inf', '3', 'adam']
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return float.__repr__(value)
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A whole CSV table as text: the header ``columns``, then each row's cells (:func:`csv_cell`).

    >>> csv_text(["lr", "loss"], [[0.1, None]]).splitlines()
    ['lr,loss', '0.1,']
    """
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows([csv_cell(value) for value in row] for row in rows)
    return text.getvalue()


def write_text_whole(path, text: str) -> None:
    """:func:`write_whole` of ``text`` in UTF-8."""
    write_whole(path, lambda fh: fh.write(text.encode("utf-8")))


#: How often a thing found at the partial name is removed before write_whole gives up: only
#: someone planting it again and again makes a second try fail.
_CREATE_TRIES = 3
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _create_fresh(name: str, folder: int) -> int:
    """A new, empty regular file ``name`` in the folder ``folder`` (a descriptor), open for
    writing and locked; what sits there first is removed, unless it is a folder or a partial
    file another process is writing (locked)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
    for _ in range(_CREATE_TRIES):
        try:
            fd = os.open(name, flags, 0o666, dir_fd=folder)
        except FileExistsError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)   # new and unshared: taken at once
            return fd
        # an earlier write's leftover, or a link or FIFO planted there: written through, a link
        # replaced the file it points to, and a FIFO blocked the write forever
        try:
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, f"a folder {name} stands where its partial file goes", name)
            if stat.S_ISREG(mode) and _locked(name, folder):
                raise OSError(errno.EBUSY, f"another process is writing it ({name} is locked)", name)
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            pass
    raise FileExistsError(errno.EEXIST, f"something reappeared at {name}, its partial file, each time it "
                                        f"was removed", name)


def _locked(name: str, folder: int) -> bool:
    """Whether the regular file ``name`` is locked by a writer (:func:`write_whole` in another
    process); a leftover of a stopped write is not."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=folder)
    except OSError:
        return False   # gone, or replaced by a link: removed as a leftover
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _same_file(name: str, folder: int, stat_result: os.stat_result) -> bool:
    """Whether ``name`` in ``folder`` is still the file ``stat_result`` describes."""
    try:
        now = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (stat_result.st_dev, stat_result.st_ino)
