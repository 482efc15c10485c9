"""Which files catapult wrote: the mark its outputs carry, and how to recognise them.

Commands replace an existing output file only when catapult wrote it (an earlier export, figure
or report), never a user's file that happens to share the name or the suffix. Figures and
reports carry :data:`MARK` in their metadata (PNG ``Software``, PDF/SVG/PS ``Creator``, an HTML
``generator`` meta tag), Parquet exports in their schema metadata; CSV cannot carry one, so an
export is recognised by its header, and a run's ``metrics.csv`` / ``summary.json`` by theirs.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

__all__ = ["MARK", "figure_mark", "written_by_catapult", "is_run_record", "write_whole"]

#: The text catapult's figures, reports and Parquet exports carry in their metadata.
MARK = "written by catapult"
#: The metadata key that holds :data:`MARK`, per figure format (matplotlib's ``savefig``), and
#: for the formats Pillow writes, its keyword.
_FIGURE_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "svgz": "Creator", "ps": "Creator",
                "eps": "Creator"}
_PILLOW_KEYS = {"jpg": ("comment", MARK.encode()), "jpeg": ("comment", MARK.encode()),
                "tif": ("description", MARK), "tiff": ("description", MARK)}
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
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file():
            return False
        if path.name == "metrics.csv":
            header = _csv_header(path)
            return header[:1] == ["step"] and "train_loss" in header
        if path.name == "summary.json":
            if path.stat().st_size > _LARGEST:
                return False
            summary = json.loads(path.read_text())
            return isinstance(summary, dict) and {"status", "steps_completed"} <= summary.keys()
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader([fh.readline(1 << 20)]), [])


def write_whole(path, write) -> None:
    """``write(partial)`` to ``.partial-NAME`` beside ``path`` (the same suffix, which savefig
    reads the format from), then renamed over ``path``: a command stopped mid-write (Ctrl-C,
    kill, a full disk) never leaves a truncated file under the real name. What already sits at
    the partial name (a stopped write's leftover, a link, a FIFO) is removed first, a folder
    there is an error. An OSError about the partial file names ``path``.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> write_whole(os.path.join(folder, "a.txt"), lambda p: p.write_text("whole"))
    >>> sorted(os.listdir(folder))
    ['a.txt']
    """
    path = Path(path)
    partial = path.with_name(f".partial-{path.name}")
    try:
        if _removable(partial):
            # an earlier write's leftover, or a link or FIFO planted there: written through, a
            # link replaced the file it points to, and a FIFO blocked the write forever
            partial.unlink()
        write(partial)
        os.replace(partial, path)
    except BaseException as exc:
        if _removable(partial):
            try:
                partial.unlink()
            except OSError:
                pass  # the error that stopped the write is the one to report
        if isinstance(exc, OSError) and exc.filename == str(partial):  # name the file the user knows
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _removable(partial: Path) -> bool:
    """Whether something not a folder sits at ``partial`` (a file, a link, a FIFO)."""
    return partial.is_symlink() or (partial.exists() and not partial.is_dir())
