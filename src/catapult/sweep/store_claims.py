"""The store's drivers and claims (:class:`DriverClaims`, a part of
:class:`catapult.sweep.store.Store`): which live driver holds which ``running`` cell, and the
atomic claim that hands a cell to one driver only (see :mod:`catapult.sweep.claims`)."""
from __future__ import annotations

import os
import sqlite3
import time

from catapult.sweep.claims import LEASE_S, driver_alive, host_id, new_driver_id
from catapult.sweep.store_schema import DONE_STATUSES

__all__ = ["DriverClaims"]


class DriverClaims:
    """The drivers-and-claims methods of :class:`catapult.sweep.store.Store` (which gives them its
    ``conn``, ``path``, ``transaction`` and ``_has_claims``: whether the store has the claims tables)."""

    def _drivers(self) -> dict[str, sqlite3.Row]:
        if not self._has_claims:
            return {}
        return {r["id"]: r for r in self.conn.execute("SELECT * FROM drivers")}

    def _claims(self) -> dict[int, str]:
        if not self._has_claims:
            return {}
        return {r[0]: r[1] for r in self.conn.execute("SELECT cell_id, driver FROM claims")}

    def interrupted_ids(self) -> set[int]:
        """``running`` cells that no live driver holds: their driver was stopped (Ctrl-C,
        kill -9, a crash). A resumed or concurrent driver claims them again."""
        drivers, claims = self._drivers(), self._claims()
        now = time.time()
        return {r[0] for r in self.conn.execute("SELECT id FROM cells WHERE status = 'running'")
                if not driver_alive(drivers.get(claims.get(r[0])), now)}

    def register_driver(self) -> str:
        """Enter a new driver (this process) and return its id; see :mod:`catapult.sweep.claims`."""
        driver_id = new_driver_id()
        now = time.time()
        with self.transaction() as conn:
            # forget drivers long dead (kill -9) that hold nothing: the table stays small
            conn.execute("DELETE FROM drivers WHERE heartbeat < ? AND id NOT IN (SELECT driver FROM claims)",
                         (now - 10 * LEASE_S,))
            conn.execute("INSERT INTO drivers(id, host, pid, started_at, heartbeat) VALUES (?, ?, ?, ?, ?)",
                         (driver_id, host_id(), os.getpid(), now, now))
        return driver_id

    def release_driver(self, driver_id: str) -> None:
        """Drop a driver and its claims (its ``running`` cells become ``interrupted``)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM claims WHERE driver = ?", (driver_id,))
            conn.execute("DELETE FROM drivers WHERE id = ?", (driver_id,))

    def claim(self, cell_id: int, driver_id: str, *, retry_failed_before: float = 0.0,
              worker: str | None = None) -> bool:
        """Atomically take one cell for ``driver_id``; True if taken (then ``running``,
        ``attempts += 1``). A cell can be taken when it is ``pending``; ``running`` with no
        live holder (interrupted); or ``failed`` with ``finished_at < retry_failed_before``
        (a failure from before this driver started: a failure in this session is final)."""
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute("SELECT status, finished_at FROM cells WHERE id = ?", (cell_id,)).fetchone()
            if row is None:
                raise KeyError(f"no cell {cell_id} in {self.path}")
            status, finished_at = row[0], row[1]
            holder = conn.execute("SELECT driver FROM claims WHERE cell_id = ?", (cell_id,)).fetchone()
            if holder is not None and holder[0] != driver_id:
                drow = conn.execute("SELECT * FROM drivers WHERE id = ?", (holder[0],)).fetchone()
                if driver_alive(drow, now):
                    return False
            if status in DONE_STATUSES:
                return False
            if status == "failed" and not (finished_at is None or finished_at < retry_failed_before):
                return False
            conn.execute("INSERT OR REPLACE INTO claims(cell_id, driver, claimed_at) VALUES (?, ?, ?)",
                         (cell_id, driver_id, now))
            conn.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, started_at = ?, "
                         "worker = ? WHERE id = ?", (now, worker, cell_id))
        return True
