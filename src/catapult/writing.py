"""How catapult writes its files: whole or not at all (:func:`write_whole`: under
:data:`PARTIAL_PREFIX` first, then renamed; never through a link, never over a file that
appeared meanwhile), and the text of its CSV tables (:func:`csv_text`). Which existing files are
catapult's to replace is :mod:`catapult.files`'s question.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:   # Windows: no flock (write_whole then works by path names)
    fcntl = None

__all__ = ["PARTIAL_PREFIX", "write_whole", "write_text_whole", "write_errors_named", "csv_cell", "csv_text",
           "link_new", "counted", "printable"]

#: What :func:`write_whole` puts before a file's name while it writes it.
PARTIAL_PREFIX = ".partial-"


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


@contextlib.contextmanager
def write_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file as one naming ``path``: a full disk is OSError 28
    without a file name, which the CLI showed as "No space left on device" alone.

    >>> try:
    ...     with write_errors_named("runs/a/metrics.csv"):
    ...         raise OSError(28, "No space left on device")
    ... except OSError as err:
    ...     print(err)
    [Errno 28] No space left on device: 'runs/a/metrics.csv'
    """
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` as the summaries print a count: singular for 1, else the plural
    (``noun + "s"`` unless given): "1 cell", "0 cells" ("1 cells" was printed).

    >>> counted(1, "cell"), counted(0, "cell"), counted(2, "process", "processes")
    ('1 cell', '0 cells', '2 processes')
    """
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


#: The control characters (Unicode's ``Cc``: C0, DEL and C1) but newline and tab, each to its escape.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\n\t"}


def printable(text: str) -> str:
    r"""``text`` with its control characters but newline and tab written as their escapes (``\x1b``,
    ``\r``, ``\x07``, C1's ``\x9b``): a store's text printed on a terminal or drawn in a figure
    cannot move the cursor, clear the screen or set the window title (an escape sequence in a
    hand-made store's grid value did all three through ``catapult transfer``'s table).

    >>> print(printable("sp\x1b]0;title\x07\rok\ngo"))
    sp\x1b]0;title\x07\rok
    go
    """
    return str(text).translate(_CONTROLS)


def csv_cell(value: Any) -> str:
    """One CSV cell of catapult's tables (exports, ``metrics.csv``, coord-check): empty for
    ``None``; a float as its shortest exact repr, so it reads back bit-for-bit, with ``inf`` and
    ``nan`` as pandas reads them (a NumPy float too, whose own repr is ``np.float64(...)``);
    a list, tuple or mapping (a swept ``optimizer.betas``) as its JSON text, which ``json.loads``
    reads back (Python's ``str`` wrote ``['flip', 'crop']``, ``[True, None]``, ``(0.9, 0.999)``: no
    JSON); anything else as ``str``.

    >>> [csv_cell(v) for v in (None, 0.1, float("inf"), 3, "adam")]
    ['', '0.1', 'inf', '3', 'adam']
    >>> [csv_cell(v) for v in ([0.9, 0.999], ("flip", True, None), {"lr": 0.1})]
    ['[0.9, 0.999]', '["flip", true, null]', '{"lr": 0.1}']
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):   # an item JSON has no form for (not one a store holds)
            return str(value)
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


def link_new(written, path) -> bool:
    """Publish the finished file ``written`` under ``path`` unless something is there already: a
    hard link, which fails rather than replace, so readers see a whole file or none and two
    writers racing to ``path`` leave the first one's. True if this call published it; the caller
    removes ``written`` either way.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for text in ("first", "second"):
    ...     _ = (folder / "tmp").write_text(text)
    ...     print(link_new(folder / "tmp", folder / "cache.npy"), (folder / "cache.npy").read_text())
    ...     (folder / "tmp").unlink()
    True first
    False first
    """
    try:
        os.link(written, path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        return _rename_new(written, path)
    return True


#: What ``os.link`` fails with on a filesystem that makes no hard links (FAT and exFAT, some
#: network and FUSE mounts): :func:`link_new` then renames a copy into place instead.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def _rename_new(written, path) -> bool:
    """:func:`link_new` without hard links: a copy of ``written`` renamed to ``path`` (readers
    still see a whole file or none) while this process holds a lock on the folder, and only if
    nothing is at ``path`` then, so two writers racing leave the first one's here too."""
    path = Path(path)
    copy = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.publish")
    try:
        with open(written, "rb") as source, open(copy, "xb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
        os.chmod(copy, stat.S_IMODE(os.stat(written).st_mode))
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            if fcntl is not None:
                fcntl.flock(folder, fcntl.LOCK_EX)   # released when the folder is closed
            if os.path.lexists(path):
                return False
            os.rename(copy, path)
            return True
        finally:
            os.close(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy)


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
