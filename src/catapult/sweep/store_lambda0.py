"""The store's lambda_0 cache (:class:`Lambda0Cache`, a part of
:class:`catapult.sweep.store.Store`): one value per :func:`~catapult.sweep.lambda0.lambda0_key`,
the first stored wins, with its convergence mark."""
from __future__ import annotations

import math
import time
from typing import Any, Mapping

from catapult.arguments import check_flag
from catapult.sweep.store_errors import StoreError
from catapult.sweep.store_rows import json_text

__all__ = ["Lambda0Cache"]


class Lambda0Cache:
    """The lambda_0 cache methods of :class:`catapult.sweep.store.Store` (which gives them its
    ``conn``, ``path`` and ``transaction``)."""

    def get_lambda0(self, key: str) -> float | None:
        """The cached lambda_0 for a :func:`~catapult.sweep.lambda0.lambda0_key`, or ``None``."""
        row = self.conn.execute("SELECT value FROM lambda0 WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value = row[0]
        # measured values are stored only when positive and finite: anything else was not written here
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise StoreError(f"{self.path} is damaged: its cached lambda_0 for {key} is {value!r}, not a "
                             f"positive finite number")
        return float(value)

    def put_lambda0(self, key: str, value: float, inputs: Mapping[str, Any] | None = None, *,
                    converged: bool | None = None) -> float:
        """Cache one lambda_0 (its own transaction) and return the cached value: the first one
        stored wins, so a driver that measured the same key at once with another (a concurrent
        sweep on this store, whose thread count or CPU may round differently) resolves its cells'
        lr with the value every other cell of the sweep uses. ``converged``: whether every solve
        the value averages converged (``None``: unknown), kept with it (:meth:`lambda0_converged`)."""
        if converged is not None:
            converged = check_flag("Store.put_lambda0", "converged", converged)
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO lambda0(key, value, inputs_json, measured_at, converged) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (key, float(value), json_text(inputs) if inputs is not None else None, time.time(),
                          None if converged is None else int(converged)))
            return float(conn.execute("SELECT value FROM lambda0 WHERE key = ?", (key,)).fetchone()[0])

    def _has_lambda0_mark(self) -> bool:
        """Whether the lambda0 table has the ``converged`` column (a store before it: read as unknown).
        Only a found column is kept (no store loses it): a reader opened on a store before the mark
        looks again at its next read, so it sees the marks once a sweep has upgraded the file
        (it read them as unknown until it was reopened; one PRAGMA a read on such a store)."""
        if not getattr(self, "_lambda0_mark", False):
            self._lambda0_mark = any(r[1] == "converged" for r in self.conn.execute("PRAGMA table_info(lambda0)"))
        return self._lambda0_mark

    def lambda0_converged(self, key: str) -> bool | None:
        """Whether every solve of the cached lambda_0 for ``key`` converged; ``None`` where that is
        unknown: no such value, a store written before the mark, or a ``lambda0_fn`` that gave none."""
        if not self._has_lambda0_mark():
            return None
        row = self.conn.execute("SELECT converged FROM lambda0 WHERE key = ?", (key,)).fetchone()
        mark = None if row is None else row[0]
        if mark is not None and (isinstance(mark, bool) or mark not in (0, 1)):
            raise StoreError(f"{self.path} is damaged: the convergence mark of its cached lambda_0 for {key} "
                             f"is {mark!r:.40}, not 1, 0 or empty")
        return None if mark is None else bool(mark)

    def lambda0_table(self) -> list[dict]:
        """The cached lambda_0 rows: ``key``, ``value``, ``inputs_json``, ``measured_at`` and
        ``converged`` (1 / 0, ``None`` where unknown, as in a store written before the mark)."""
        mark = "converged" if self._has_lambda0_mark() else "NULL AS converged"
        return [dict(r) for r in self.conn.execute(f"SELECT key, value, inputs_json, measured_at, {mark} FROM lambda0")]
