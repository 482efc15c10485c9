"""Where a run's data are: a run folder that names its data by a relative ``data.root``
reloads from any working directory.

``config.yaml`` keeps ``data.root`` as the user gave it (a config, not a record: it may be
edited), and a run's ``summary.json`` records beside it where that root was when the run read
it (:data:`DATA_ROOT`: ``{"given": ..., "read": <absolute path>}``, :func:`data_root_record`).
A command that reads a run folder's ``config.yaml`` (``catapult train``, ``spectrum``,
``critical-lr``, ``train-ddp``) then reads a relative root as the run did
(:func:`relocated_root`): from the run's place where the data still are, else as given from
here; where neither holds it the data moved, and the command stops naming ``data.root`` and
both paths. The path is only where the data are: the run and its files are the same from any
directory, a rerun's ``model.pt`` and ``metrics.csv`` byte-equal.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from catapult.files import is_run_record

__all__ = ["DATA_ROOT", "data_root_record", "recorded_root", "relocated_root"]

#: The key of a run's ``summary.json`` that records its ``data.root``: as given and where it was
#: read (absolute). Absent where the run had no root (the built-in data sets), and in run
#: folders written before it was recorded (they read their root as given, as they did).
DATA_ROOT = "data_root"


def data_root_record(root: Any) -> dict[str, dict[str, str]]:
    """The :data:`DATA_ROOT` entry of a run's ``summary.json`` for its ``data.root`` (empty
    where it has none): the root as given and the absolute path it named from this directory
    (``~`` expanded; no link resolved, so the path names what the run opened).

    >>> data_root_record(None)
    {}
    >>> data_root_record("/data/tiny")
    {'data_root': {'given': '/data/tiny', 'read': '/data/tiny'}}
    >>> data_root_record("tiny")["data_root"]["read"] == os.path.join(os.getcwd(), "tiny")
    True
    """
    if root is None:
        return {}
    return {DATA_ROOT: {"given": str(root), "read": str(Path.cwd() / Path(str(root)).expanduser())}}


def recorded_root(folder: str | Path) -> dict[str, str] | None:
    """The :data:`DATA_ROOT` record of the run in ``folder`` (``{"given", "read"}``), or None:
    no run's ``summary.json`` there, or one without the record (an older run, or none of a
    root), or not the record's shape.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> recorded_root(folder) is None
    True
    >>> summary = {"status": "finished", "steps_completed": 1, **data_root_record("/d")}
    >>> _ = (folder / "summary.json").write_text(json.dumps(summary)); recorded_root(folder)
    {'given': '/d', 'read': '/d'}
    """
    path = Path(folder) / "summary.json"
    if not is_run_record(path):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get(DATA_ROOT)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("given", "read"))):
        return None
    return {"given": record["given"], "read": record["read"]}


def relocated_root(config_path: str | Path, config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(root, problem)``: the ``data.root`` a command reading the config file ``config_path``
    (``config`` its resolved content) should read, and what stops it (one of the two is None
    where the answer is the root as it stands: ``(None, None)``).

    Only a run folder's ``config.yaml`` with a relative root as its ``summary.json`` records it
    moves: to the path the run read where that is not the one the root names from here and it
    exists; where it is gone the root as given is kept if it names data from here, else the
    problem names both paths (``data.root`` moved). An absolute root, another root (the
    config edited, or a ``data.root=`` override) or no record: the root as it stands.

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> relocated_root(run / "config.yaml", {"data": {"root": "tiny"}})
    (None, None)
    >>> summary = {"status": "finished", "steps_completed": 1, "data_root": {"given": "tiny", "read": str(run)}}
    >>> _ = (run / "summary.json").write_text(json.dumps(summary))
    >>> relocated_root(run / "config.yaml", {"data": {"root": "tiny"}}) == (str(run), None)
    True
    """
    root = (config.get("data") or {}).get("root")
    if not isinstance(root, str) or Path(root).expanduser().is_absolute():
        return None, None
    record = recorded_root(Path(config_path).parent)
    if record is None or record["given"] != root:
        return None, None
    read, here = Path(record["read"]), Path.cwd() / Path(root).expanduser()
    if read == here:  # the run's own directory: the root names what it read
        return None, None
    if os.path.exists(read):
        return str(read), None
    if os.path.exists(here):  # the data went with the folders (a copied project): as given, as before
        return None, None
    return None, (f"{root!r} (relative, as the run's config.yaml gives it) is neither where the run read it, "
                  f"{str(read)!r} (its summary.json records), nor at {str(here)!r} (from this directory): the "
                  f"data moved; give their place with data.root=PATH")
