"""catapult's output files: the mark they carry and how they are recognised, so that a command
replaces only its own (how they are written, whole, is :mod:`catapult.writing`).

Commands replace an existing output file only when catapult wrote it (an earlier export, figure
or report), never a user's file that happens to share the name or the suffix. Figures and
reports carry :data:`MARK` in their metadata (PNG ``Software``, PDF/SVG/PS ``Creator``, an HTML
``generator`` meta tag), Parquet exports in their schema metadata; CSV cannot carry one, so an
export is recognised by its header, and a run's ``metrics.csv`` / ``summary.json`` by theirs.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import re
from pathlib import Path

from catapult.writing import PARTIAL_PREFIX, write_whole

__all__ = ["MARK", "REPORT_MARK", "PARTIAL_PREFIX", "PNG_START", "UNMARKED_FIGURES", "figure_mark", "figure_path", "save_figure", "fit_huge_limits",
           "written_by_catapult", "is_run_record", "run_output_of_ours", "partial_of_ours", "cut_off_mapping",
           "WRITTEN", "file_digest", "recorded_digests", "missing_file_problem"]

#: The text catapult's figures, reports and Parquet exports carry in their metadata.
MARK = "written by catapult"
#: How a report's head carries :data:`MARK`: as its generator.
REPORT_MARK = f"<meta name='generator' content='{MARK}'>"
#: ... which a page is judged by (either quotes, any case), in its first kilobyte and before its body
_REPORT_META = re.compile(rb"""<meta\s+name=["']generator["']\s+content=["']""" + re.escape(MARK.encode()) + rb"""["']""", re.I)
_CREATOR_SVG = re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>" + re.escape(MARK.encode()) + rb"</dc:title>")
_CREATOR_PS = re.compile(rb"^%%Creator: " + re.escape(MARK.encode()) + rb"\r?$", re.M)
#: Where a text figure carries :data:`MARK`: its metadata's creator, which matplotlib writes; the mark
#: in a user's own text (an SVG diagram captioned "written by catapult") is not it
_TEXT_FIGURE_MARKS = {".svg": _CREATOR_SVG, ".svgz": _CREATOR_SVG, ".ps": _CREATOR_PS, ".eps": _CREATOR_PS,
                      ".pdf": re.compile(rb"/Creator \(" + re.escape(MARK.encode()) + rb"\)")}
#: The metadata key that holds :data:`MARK`, per figure format (matplotlib's ``savefig``), and
#: for the formats Pillow writes, its keyword.
_FIGURE_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "svgz": "Creator", "ps": "Creator",
                "eps": "Creator"}
_XMP = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{MARK}"/></rdf:RDF>'
        f'</x:xmpmeta>').encode()
_PILLOW_KEYS = {"jpg": ("comment", MARK.encode()), "jpeg": ("comment", MARK.encode()),
                "tif": ("description", MARK), "tiff": ("description", MARK), "gif": ("comment", MARK.encode()),
                "webp": ("xmp", _XMP), "avif": ("xmp", _XMP)}
#: Figure formats that carry no mark (headerless pixels; PGF, which matplotlib writes without
#: metadata): catapult cannot tell its own such file from a user's, so it replaces none.
UNMARKED_FIGURES = ("raw", "rgba", "pgf")
#: The first bytes of every PNG file (its signature).
PNG_START = b"\x89PNG\r\n\x1a\n"
_LARGEST = 64 << 20  # a figure or report is far smaller; a bigger file is not read to be judged


def missing_file_problem(path) -> str | None:
    """Why ``path``, an input file a command reads (``spectrum --weights``), is not there to read, or
    None: checked before any work, and without torch.

    >>> missing_file_problem(__file__) is None
    True
    >>> missing_file_problem("/no/such/model.pt")
    '/no/such/model.pt: no such file'
    >>> missing_file_problem("/")
    '/ is not a file'
    """
    path = Path(path)
    if path.is_file():
        return None
    return f"{path}: no such file" if not path.exists() else f"{path} is not a file"


def figure_mark(path) -> dict:
    """The ``savefig`` keyword arguments that mark a figure at ``path`` (by its suffix; none
    means PNG); none for a format that carries no text (:data:`UNMARKED_FIGURES`).

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


#: Beyond this magnitude a linear axis's margins (and its tick locator's span) overflow float64.
_HUGE = 2.0**1020


def fit_huge_limits(fig) -> None:
    """Give each linear axis of ``fig`` whose data reach near float64's largest value (a
    loss of 1e308 logged before it overflowed, or ±1e308 together) a symlog scale and explicit
    limits: matplotlib's own margins and ticks overflowed there ("arange: cannot compute
    length", "Axis limits cannot be NaN or Inf"). A log axis whose top passes 2^1020 (its ticks
    reached 10^309 = inf) gets a symlog scale linear only below its bottom. The values are drawn,
    not dropped; other axes and colorbars are left as they are.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([0, 1], [-1e308, 1e308])
    >>> fit_huge_limits(fig)
    >>> ax.get_yscale(), tuple(float(v) for v in ax.get_ylim())
    ('symlog', (-1e+308, 1e+308))
    >>> plt.close(fig)
    """
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        for name, interval in (("y", ax.dataLim.intervaly), ("x", ax.dataLim.intervalx)):
            lo, hi = (float(v) for v in interval)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:  # no data on this axis
                continue
            scale = getattr(ax, f"get_{name}scale")()
            if scale == "log":  # its ticks reached 10^309 = inf ("cannot convert float infinity")
                low, high = getattr(ax, f"get_{name}lim")()
                if math.isfinite(low) and low > 0 and _HUGE <= high < math.inf:
                    getattr(ax, f"set_{name}scale")("symlog", linthresh=float(low))
                    getattr(ax, f"set_{name}lim")(low, high)
                continue
            if scale != "linear" or max(abs(lo), abs(hi)) < _HUGE:
                continue
            if lo == hi:
                lo, hi = min(lo, 0.0), max(hi, 0.0)
            getattr(ax, f"set_{name}scale")("symlog")
            getattr(ax, f"set_{name}lim")(lo, hi)


def save_figure(fig, target, *, make_folder: bool = False, **savefig_kwargs) -> None:
    """``fig.savefig`` with catapult's mark, to a path or to an open binary file.

    A path gets the format of its suffix (none: PNG, and ``.png`` added) and is written whole
    (:func:`write_whole`); ``make_folder`` makes its folder first. A file gets ``format`` from
    ``savefig_kwargs`` (default PNG)."""
    if not isinstance(make_folder, bool):  # make_folder="no" made the folder
        raise TypeError(f"save_figure: make_folder must be True or False, got {make_folder!r}")
    fit_huge_limits(fig)
    if hasattr(target, "write"):
        fmt = savefig_kwargs.pop("format", None) or "png"
        fig.savefig(target, format=fmt, **figure_mark(f"figure.{fmt}"), **savefig_kwargs)
        return
    path = figure_path(target)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    write_whole(path, lambda fh: fig.savefig(fh, format=fmt, **figure_mark(path), **savefig_kwargs))


def written_by_catapult(path, *, as_suffix: str | None = None) -> bool:
    """Whether the existing file ``path`` is one catapult wrote: a marked figure, report or
    Parquet export, an export CSV (its header: ``cell_id`` first, or the aggregate's ``n_seeds``,
    with ``status``), or a run record (:func:`is_run_record`). Links and unreadable files are not.
    A file is judged by ``as_suffix`` where given (``".csv"``: the format a command writes
    there, whatever the name says: ``export --format csv --out results.txt``), else by its suffix.

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
    suffix = (as_suffix or path.suffix or "").lower()
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
        if suffix in (".html", ".htm"):  # a report; a marked figure judged as one is not
            # its head's generator tag: a page of yours that says "written by catapult" anywhere (a
            # notebook's "the figures below were written by catapult") was replaced by the report
            head = data.lstrip()[:1024].lower().split(b"<body")[0]
            return head[:15] == b"<!doctype html>" and _REPORT_META.search(head) is not None
        if suffix == ".svgz":
            import gzip

            data = gzip.decompress(data)
        if suffix in _TEXT_FIGURE_MARKS:
            return _TEXT_FIGURE_MARKS[suffix].search(data) is not None
        return MARK.encode() in data   # a binary figure's metadata: PNG, JPEG, TIFF, GIF, WebP, AVIF
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
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):   # (JSON nested too deeply)
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
            from catapult.config import RunConfig
            from catapult.config.io import safe_yaml

            data = path.read_bytes()
            if cut_off_mapping(data, RunConfig.model_fields, skips=False):
                return True
            config = safe_yaml(data.decode("utf-8"))   # bounded, as every reader of a user's YAML
            return isinstance(config, dict) and _RUN_CONFIG_KEYS <= config.keys()
    except Exception:  # unreadable, not UTF-8, not YAML: not ours
        return False
    return False


#: The key of a run's ``summary.json`` that records, for each file the run wrote before it, the
#: SHA-256 of its bytes (:func:`file_digest`). A file a content check would take for a run's
#: (any ``torch.save`` zip as ``model.pt``, any matplotlib PNG) is then the run's only when its
#: bytes are the ones recorded: ``--overwrite`` never replaces a user's file put there since.
WRITTEN = "written"


def file_digest(path) -> str:
    """``"sha256:<hex>"`` of the bytes of the file ``path``, read in 1 MiB blocks.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "f")
    >>> _ = open(path, "wb").write(b"abc")
    >>> file_digest(path)
    'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def recorded_digests(summary_path) -> dict[str, str]:
    """The digests a run's ``summary.json`` records under :data:`WRITTEN` (file name -> digest);
    empty for a summary without them (a run written before they were recorded), or a file that
    is not a run's summary."""
    path = Path(summary_path)
    if not _run_record_as(path, "summary.json"):
        return {}
    try:
        written = json.loads(path.read_text()).get(WRITTEN)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(written, dict):
        return {}
    return {name: value for name, value in written.items() if isinstance(value, str)}


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
