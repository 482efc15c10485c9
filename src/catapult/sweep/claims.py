"""Cell claims: any number of sweep drivers share one store, and no cell runs twice.

Two tables (created with the store, added to an older store when it is opened for writing)::

    drivers(id TEXT PRIMARY KEY, host TEXT, pid INTEGER, started_at REAL, heartbeat REAL)
    claims(cell_id INTEGER PRIMARY KEY, driver TEXT, claimed_at REAL)

A driver registers itself, refreshes its ``heartbeat`` every :data:`HEARTBEAT_S` seconds from
a background thread (:class:`Heartbeat`), and takes a cell with
:meth:`catapult.sweep.store.Store.claim` (one ``BEGIN IMMEDIATE`` transaction: SQLite lets
one writer in at a time, so of two drivers claiming the same cell exactly one succeeds).
A result is recorded only while its driver still holds the claim, so each cell finishes once.

A driver is *alive* when its heartbeat is younger than :data:`LEASE_S` and, on this host, its
process still exists (a ``kill -9``'d driver on this machine is noticed at once; one on
another machine when its lease runs out). "This host" is :func:`host_id`: the hostname and
the PID namespace, since a pid means nothing in another one (a container sharing the host's
name, e.g. ``docker --network host`` or a Kubernetes ``hostNetwork`` pod). The claims of a dead driver may be taken over.
A cell that is ``running`` with no live claim was *interrupted* (Ctrl-C, kill -9).

Drivers on other machines must reach the store through a filesystem whose locks SQLite can
trust: the store runs in WAL mode, which needs shared memory between its users and does not
work over a network filesystem (NFS, SMB; https://www.sqlite.org/wal.html), where two drivers
could corrupt the file. Across machines, run one driver with ``--ray-address`` instead: the
cells go to the cluster and only the driver writes the store.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Mapping

from catapult.arguments import check_real

__all__ = ["CLAIMS_DDL", "LEASE_S", "HEARTBEAT_S", "new_driver_id", "host_id", "pid_alive", "driver_alive",
           "Heartbeat"]

#: A driver whose heartbeat is older than this (seconds) is dead; its claims can be taken.
LEASE_S = 60.0
#: How often a driver refreshes its heartbeat (seconds).
HEARTBEAT_S = 5.0

CLAIMS_DDL = """
CREATE TABLE IF NOT EXISTS drivers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    cell_id INTEGER PRIMARY KEY REFERENCES cells(id), driver TEXT NOT NULL, claimed_at REAL NOT NULL
);
"""


def new_driver_id() -> str:
    """``host:pid:random`` -- unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def host_id() -> str:
    """Where this process's pids mean something: ``"hostname"``, with `` pid:[inode]`` (its PID
    namespace) where ``/proc`` shows it. Two drivers compare pids only when this is equal."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} {namespace}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (a killed process its
    parent has not reaped yet is dead for our purpose)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def driver_alive(row: Mapping | None, now: float | None = None, lease_s: float | None = None) -> bool:
    """Whether a ``drivers`` row belongs to a live driver (see the module docstring)."""
    if row is None:
        return False
    now = time.time() if now is None else now
    if now - float(row["heartbeat"]) > (LEASE_S if lease_s is None else lease_s):
        return False
    if row["host"] == host_id():
        return pid_alive(int(row["pid"]))
    return True


class Heartbeat:
    """A daemon thread that sets ``drivers.heartbeat = now`` for ``driver_id`` every
    ``interval`` seconds on its own connection, until :meth:`stop`."""

    def __init__(self, path: str | Path, driver_id: str, interval: float = HEARTBEAT_S):
        # checked here, not in the thread: "5" or nan killed the thread at its first wait (the driver's lease
        # then ran out and its claims went to others), and an interval beyond half the lease let it lapse
        # between beats
        interval = check_real("Heartbeat", "interval", interval, low=0.0, high=LEASE_S / 2, low_open=True)
        self.path, self.driver_id, self.interval = Path(path), driver_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="catapult-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("UPDATE drivers SET heartbeat = ? WHERE id = ?", (time.time(), self.driver_id))
                except sqlite3.OperationalError:  # busy for 30 s: try again next beat
                    pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
