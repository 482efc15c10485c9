"""A run's directory: the check before any work (:func:`check_out_dir`: new, empty, or with
``overwrite`` an earlier run's own files), the claim while a run writes there
(:func:`claim_run_directory`: one run at a time), and the clean-up of a run that failed while
writing (:func:`in_run_directory`). :func:`catapult.engine.loop.train` writes the files."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catapult.arguments import check_flag
from catapult.files import (PARTIAL_PREFIX, PNG_START, file_digest, is_run_record, partial_of_ours, recorded_digests,
                            run_output_of_ours)
from catapult.writing import write_text_whole

__all__ = ["RUN_FILES", "RUN_MARKERS", "DIGESTED_FILES", "MANIFEST", "RunDirectoryError", "ResultsKept", "results_kept",
           "check_out_dir", "make_out_dir", "made_out_dir", "RunClaim", "claim_run_directory", "in_run_directory", "start_manifest", "record_created", "created_files"]

#: The files a run writes into its directory (``--overwrite`` replaces exactly these).
RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "trajectories.png", "model.pt")


class RunDirectoryError(ValueError):
    """The run directory cannot be used: a file is in the way, it holds an earlier run (and
    ``overwrite`` is off), or it cannot be created or written."""


#: The run files whose digests ``summary.json`` records (:data:`catapult.files.WRITTEN`).
DIGESTED_FILES = ("metrics.csv", "model.pt", "trajectories.png")

#: Files only a run writes: a directory holding one of them is an earlier run's.
RUN_MARKERS = ("metrics.csv", "summary.json")


#: The file a run writes first into its directory, before any run file: the run files it has
#: created since, each with the SHA-256 of its bytes where written whole (``null`` for those it
#: appends to or a user may edit: ``metrics.csv``, ``config.yaml``). A run killed before its
#: ``summary.json`` (which records the digests of a finished run) leaves it, so ``--overwrite``
#: replaces only what that run wrote: a ``torch.save`` file put there as ``model.pt`` since is not.
MANIFEST = ".catapult-run.json"
#: The manifest's one key.
_MANIFEST_KEY = "catapult_run_created"


def start_manifest(path: Path) -> None:
    """Write the :data:`MANIFEST` of a run starting in ``path``: nothing created yet.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> start_manifest(folder); created_files(folder)
    {}
    >>> _ = (folder / "model.pt").write_bytes(b"w"); record_created(folder, "model.pt"); sorted(created_files(folder))
    ['model.pt']
    """
    write_text_whole(path / MANIFEST, json.dumps({_MANIFEST_KEY: {}}, indent=1) + "\n")


def record_created(path: Path, name: str, *, digest: bool = True) -> None:
    """Add the run file ``name`` of ``path`` to its :data:`MANIFEST` (with its digest unless
    ``digest=False``), written whole again."""
    created = created_files(path) or {}
    created[name] = file_digest(path / name) if digest else None
    write_text_whole(path / MANIFEST, json.dumps({_MANIFEST_KEY: created}, indent=1) + "\n")


def created_files(path: Path) -> dict[str, str | None] | None:
    """The run files the :data:`MANIFEST` in ``path`` lists (name -> digest or None); None
    without one, or where the file of that name is not a manifest a run wrote (a link, another
    file: then it is not ours to replace either)."""
    manifest = Path(path) / MANIFEST
    try:
        if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > 1 << 16:
            return None
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):   # (nested too deeply: not ours)
        return None
    created = data.get(_MANIFEST_KEY) if isinstance(data, dict) and set(data) == {_MANIFEST_KEY} else None
    if not isinstance(created, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                                for k, v in created.items()):
        return None
    return created


def check_out_dir(out_dir: str | Path, overwrite: bool = False, *,
                  replaces: tuple[str, ...] = RUN_FILES) -> Path:
    """``out_dir`` as a Path once it is known to be usable, before any work: a directory that is
    new, empty, or (with ``overwrite``) an earlier run's; creatable and writable by us.

    ``overwrite`` replaces the files named in ``replaces`` (a run's :data:`RUN_FILES`; callers
    that judge ownership themselves pass ``()``), so a directory that holds anything must be an
    earlier run's (one of :data:`RUN_MARKERS` with a run's contents,
    :func:`catapult.files.is_run_record`), and each of those files there, and each leftover
    ``.partial-`` file of them, must be one a run wrote (:func:`catapult.files.run_output_of_ours`,
    judged by content; never a link): a user's own ``model.pt`` or ``config.yaml`` in a folder
    given as ``--out`` is never replaced, nor are files written beside a user's own folder.
    Where the earlier run's ``summary.json`` records the digests of its files (runs from
    this version on, :data:`catapult.files.WRITTEN`), each must also have those exact bytes: a
    user's own ``model.pt`` saved there since is not the run's, though torch.save wrote it.
    Other files of an earlier run's directory (a user's notes) are left as they are. A run killed
    before its summary is judged by its :data:`MANIFEST`, written before any run file: a file it
    does not list (a ``model.pt`` the run never wrote) or whose bytes differ from those it records
    is refused; a folder of an earlier version's killed run (no manifest, no summary) may not hold
    a ``model.pt`` (a run writes it just before the summary).

    Raises :class:`RunDirectoryError` saying what is in the way.
    """
    overwrite = check_flag("check_out_dir", "overwrite", overwrite)  # "no" replaced an earlier run's files
    path = Path(out_dir)
    if path.is_symlink() and not path.exists():  # "exists and is not a directory" said nothing of a link
        raise RunDirectoryError(f"{path} is a link to {os.readlink(path)}, which does not exist; create that "
                                f"folder, or choose another run directory")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise RunDirectoryError(f"{path} exists and is not a directory; choose another run directory")
        entries = sorted(path.iterdir())
        if not overwrite and entries:
            raise RunDirectoryError(f"{path} already exists and is not empty (an earlier run?); pass --overwrite "
                                    f"(overwrite=True) to replace its run files, or choose another directory")
        if overwrite and entries and replaces:
            _check_earlier_run(path, entries, replaces)
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirectoryError(f"cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"cannot write {path}: {ancestor} is not writable")
    return path


def make_out_dir(path: Path) -> bool:
    """Create ``path`` (and its missing parents) as :func:`check_out_dir` allowed; whether this
    call created it (False: it was there, perhaps made by another process since the check).
    Where the file system still refuses it (``/proc/x``, which looks writable to root), a
    :class:`RunDirectoryError` naming the path rather than the OS error alone."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        if path.is_dir():
            return False
        raise RunDirectoryError(f"cannot create the directory {path}: a file is there now; choose another "
                                f"directory") from None
    except OSError as err:
        raise RunDirectoryError(f"cannot create the directory {path}: {err.strerror or err} (the file system "
                                f"refused it); choose another directory") from None


class ResultsKept(Exception):
    """A step after the work (a figure, a table, the summary) failed, and what the work produced
    is kept in ``path`` rather than removed with the folder (:func:`results_kept`): ``failed`` is
    the file that step was writing, ``kept`` the files left, ``cause`` the step's own error.

    >>> print(ResultsKept(Path("runs/a"), "trajectories.png", ["model.pt", "metrics.csv"], OSError(28, "No space left on device")))
    runs/a/trajectories.png could not be written (No space left on device); the work finished and its runs/a/model.pt, runs/a/metrics.csv are kept (the files after it are not written)
    """

    def __init__(self, path: Path, failed: str, kept: list[str], cause: BaseException) -> None:
        self.path, self.failed, self.kept, self.cause = Path(path), failed, list(kept), cause
        why = (cause.strerror or str(cause)) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{self.path / failed} could not be written ({why}); the work finished and its "
                         f"{', '.join(str(self.path / name) for name in self.kept)} are kept (the files after "
                         f"it are not written)")


@contextmanager
def results_kept(path: Path, failed: str, kept):
    """Run a step that writes ``path / failed`` after the work whose results ``kept`` (names in
    ``path``, or a callable giving them) are already written: an exception there is a
    :class:`ResultsKept` naming the file and what is kept, which :func:`in_run_directory` and
    :func:`made_out_dir` leave in place (hours of training are not removed for a plot). An
    interruption (Ctrl-C) passes as it is, and the folder stays too.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> try:
    ...     with made_out_dir(root / "new"):
    ...         _ = (root / "new" / "model.pt").write_bytes(b"weights")
    ...         with results_kept(root / "new", "figure.png", ["model.pt"]):
    ...             raise ValueError("no figure")
    ... except ResultsKept as err:
    ...     print(err.failed, err.kept, sorted(p.name for p in (root / "new").iterdir()))
    figure.png ['model.pt'] ['model.pt']
    """
    try:
        yield
    except Exception as err:
        if isinstance(err, ResultsKept):
            raise
        names = kept() if callable(kept) else kept
        raise ResultsKept(path, failed, [name for name in names if (Path(path) / name).exists()], err) from err
    except BaseException as err:
        err.catapult_results_kept = True  # Ctrl-C while a figure is drawn: the folder stays
        raise


def _keeps(err: BaseException) -> bool:
    """Whether a failure came after the work, in a :func:`results_kept` step."""
    return isinstance(err, ResultsKept) or getattr(err, "catapult_results_kept", False)


@contextmanager
def made_out_dir(path: Path):
    """Create ``path`` as :func:`make_out_dir` does and yield whether this call made it; when the
    body fails (a full disk, bad input, Ctrl-C) before its results are written, a folder it made
    goes, with what is in it, as a failed run's does; a folder that was there before stays, with
    what was in it. A failure after them, in a :func:`results_kept` step (a figure, a table), keeps
    the folder and what it holds.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> try:
    ...     with made_out_dir(root / "new") as created:
    ...         raise OSError("No space left on device")
    ... except OSError:
    ...     pass
    >>> created, (root / "new").exists(), root.is_dir()
    (True, False, True)
    """
    created = make_out_dir(path)
    try:
        yield created
    except BaseException as err:
        if created and not _keeps(err):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise


class RunClaim:
    """A run directory held by this process while a run writes into it (:func:`claim_run_directory`):
    ``created`` says whether this process made the folder; :meth:`release` lets it go.

    >>> claim = RunClaim(Path("runs/x"), created=False, fd=None)   # a claim that locks nothing
    >>> claim.release(); claim.release()   # releasing twice is harmless
    """

    def __init__(self, path: Path, created: bool, fd: int | None) -> None:
        self.path, self.created, self._fd = path, created, fd

    def release(self) -> None:
        """Unlock the folder (closing its descriptor); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the lock releases it
            self._fd = None


def claim_run_directory(path: Path, overwrite: bool | None = None) -> RunClaim:
    """Create ``path`` if needed (:func:`make_out_dir`) and lock it (``flock`` on the folder) for one
    run's writes. Two runs given one ``--out`` at once both passed :func:`check_out_dir`, then wrote
    into each other's files (one's ``metrics.csv`` beside the other's summary and weights, both
    exit 0): the second is now a :class:`RunDirectoryError` before it removes or writes anything.
    With ``overwrite`` not None, :func:`check_out_dir` is asked again under the lock (an earlier
    run may have finished there since the first check). Systems without ``flock`` lock nothing.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "run"
    >>> claim = claim_run_directory(folder)
    >>> claim.created, folder.is_dir()
    (True, True)
    >>> try:
    ...     claim_run_directory(folder)
    ... except RunDirectoryError as err:
    ...     print(str(err).split(" into ")[0])
    another process is writing a run
    >>> claim.release(); again = claim_run_directory(folder); again.created
    False
    >>> again.release()
    """
    created = make_out_dir(path)
    try:
        import fcntl
    except ImportError:  # Windows
        return RunClaim(path, created, None)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:  # a folder we may write but not read (mode 0o300): no lock to take
        return RunClaim(path, created, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirectoryError(f"another process is writing a run into {path} (the folder is locked); "
                                f"wait for it to end, or choose another directory") from None
    except OSError:  # a file system without flock (ENOLCK, EOPNOTSUPP: some network mounts): unlocked
        os.close(fd)
        fd = None
    claim = RunClaim(path, created, fd)
    if overwrite is not None and not created:
        try:
            check_out_dir(path, overwrite)
        except BaseException:
            claim.release()
            raise
    return claim


#: How the run files that :func:`~catapult.writing.write_whole` writes begin: a ``.partial-``
#: file a stopped write left is the run's when it is a cut-off part of this (the next write
#: removes it, so a user's file of that name must not be there).
_PARTIAL_STARTS = {"model.pt": b"PK\x03\x04", "trajectories.png": PNG_START, "summary.json": b'{\n  "',
                   MANIFEST: b'{\n "' + _MANIFEST_KEY.encode() + b'": {'}


def _ours_whole(entry: Path, name: str) -> bool:
    """:func:`catapult.files.run_output_of_ours`, and for the :data:`MANIFEST`'s name a manifest a
    run wrote (:func:`created_files` of a folder holding it under that name)."""
    if name != MANIFEST:
        return run_output_of_ours(entry, name)
    try:
        data = json.loads(entry.read_text(encoding="utf-8")) if entry.stat().st_size <= 1 << 16 else None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and set(data) == {_MANIFEST_KEY} and isinstance(data[_MANIFEST_KEY], dict)


def _check_earlier_run(path: Path, entries: list[Path], replaces: tuple[str, ...]) -> None:
    """:func:`check_out_dir` with ``overwrite`` of a non-empty ``path``: refuse it unless it is
    an earlier run's directory whose files under the names of ``replaces`` are all the run's."""
    present = [path / name for name in replaces if (path / name).exists() or (path / name).is_symlink()]
    links = [p.name for p in present if p.is_symlink() or not p.is_file()]
    refuse = "--overwrite replaces only a run's own files: choose a new or empty directory"
    if links:
        raise RunDirectoryError(f"{path} is not an earlier run's directory (it holds {', '.join(links)} "
                                f"(not a plain file)); {refuse}")
    created = created_files(path)
    if created is None and ((path / MANIFEST).exists() or (path / MANIFEST).is_symlink()):
        # a file of the manifest's name that no run wrote: the next run would replace it
        raise RunDirectoryError(f"{path / MANIFEST} is not the manifest a catapult run writes; {refuse}")
    if created is None and not any(is_run_record(path / name) for name in RUN_MARKERS if name in replaces):
        # a user's folder (its metrics.csv beside a config, or only notes): the run's files
        # would be written into it, over or beside the user's own
        shown = [p.name for p in present] or [e.name for e in entries[:3]]
        more = f" and {len(entries) - 3} more" if not present and len(entries) > 3 else ""
        raise RunDirectoryError(f"{path} is not an earlier run's directory (it holds {', '.join(shown)}{more}, "
                                f"but not a run's {' or '.join(RUN_MARKERS)}); {refuse}")
    # (the manifest's too: the run's first write removes a leftover there, a user's file of that name)
    partials = {PARTIAL_PREFIX + name for name in replaces + (MANIFEST,) if name in _PARTIAL_STARTS}
    foreign = [p.name for p in present if not run_output_of_ours(p)]
    foreign += [e.name for e in entries if e.name in partials
                and not partial_of_ours(e, _ours_whole, _PARTIAL_STARTS.get)]
    finished = is_run_record(path / "summary.json")   # its digests judge the files, below
    if not finished and created is not None:  # killed before its summary: what its manifest lists, no more
        foreign += [p.name for p in present if p.name not in created and p.name not in foreign]
    elif not finished:  # a run of an earlier version: model.pt is written just before the summary, not before
        foreign += [p.name for p in present if p.name == "model.pt" and p.name not in foreign]
    if foreign:
        names = ", ".join(str(path / name) for name in foreign)
        what = "is not a file" if len(foreign) == 1 else "are not files"
        raise RunDirectoryError(f"{names} {what} a catapult run wrote (judged by contents, not by name); "
                                f"--overwrite replaces only a run's own files: move {'it' if len(foreign) == 1 else 'them'} "
                                f"away, or choose a new or empty directory")
    recorded = recorded_digests(path / "summary.json") if finished else {k: v for k, v in (created or {}).items() if v}
    changed = [p.name for p in present if p.name in recorded and file_digest(p) != recorded[p.name]]
    if changed:
        names = ", ".join(str(path / name) for name in changed)
        one = len(changed) == 1
        raise RunDirectoryError(f"{names} {'is not the file' if one else 'are not the files'} the earlier run wrote "
                                f"(its summary.json records other bytes: replaced or edited since); --overwrite "
                                f"replaces only a run's own files: move {'it' if one else 'them'} away, or choose "
                                f"a new or empty directory")


def _discard(path: Path, created: bool) -> None:
    """Remove what a failed run wrote: the directory if this run created it, else its run files.
    Best effort: the failure being reported matters more than a file that will not go."""
    import shutil

    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in RUN_FILES + (MANIFEST,):
        try:
            (path / name).unlink()
        except OSError:
            pass


def in_run_directory(out_dir: str | Path | None, overwrite: bool, body) -> Any:
    """``body(out_path, writing)`` once ``out_dir`` is known to be usable (:func:`check_out_dir`;
    ``out_path`` None without one). ``body`` appends its :class:`RunClaim` to the list ``writing``
    before it writes its first file (:func:`train` does); if it then fails with an exception (a
    full disk included), what it wrote goes: the directory if the run created it, else its
    :data:`RUN_FILES`; but a failure after training, once ``model.pt`` is written (a figure, the
    summary: a :class:`ResultsKept`), leaves what it wrote. The claim is released at the end."""
    out_path = None if out_dir is None else check_out_dir(out_dir, overwrite)
    if out_path is None:
        return body(None, [])
    existed = out_path.exists()
    writing: list = []  # the claim, once the run starts writing: a failure before leaves all as it was
    try:
        return body(out_path, writing)
    except Exception as err:
        if writing and not _keeps(err):  # still holding the folder: no other run writes there meanwhile
            claim = writing[0]  # (a body that claims nothing appends True)
            _discard(out_path, claim.created if isinstance(claim, RunClaim) else not existed)
        raise
    finally:
        for claim in writing:
            if isinstance(claim, RunClaim):
                claim.release()
