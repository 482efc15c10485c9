"""The sweep's progress display (:class:`SweepProgress`): one bar or one line per finished cell,
with counts and an ETA, for the whole sweep."""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from catapult.engine.records import has_final_values
from catapult.sweep.store_schema import DONE_STATUSES

__all__ = ["SweepProgress"]

#: What :class:`SweepProgress` shows for each ``progress`` (None is "auto").
PROGRESS_MODES = ("auto", "bar", "lines", "none")


class SweepProgress:
    """One progress display for the whole sweep: cells done / diverged / failed and an ETA.

    ``mode``: ``"auto"`` (a tqdm bar on a terminal, plain lines otherwise), ``"bar"``,
    ``"lines"`` or ``"none"``. Lines go to ``stream`` (stderr), one per finished cell.
    """

    def __init__(self, total: int, counts: Mapping[str, int], mode: str = "auto", stream=None, name: str = "sweep"):
        self.stream = stream or sys.stderr
        if mode in (None, "auto"):
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.total = total
        self.name = name
        self.done = counts.get("finished", 0) + counts.get("diverged", 0)
        self.diverged = counts.get("diverged", 0)
        self.failed = 0
        self.started = time.perf_counter()
        self.ran = 0
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=self.done, desc=name, unit="cell", file=self.stream,
                            dynamic_ncols=True)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"diverged {self.diverged}, failed {self.failed}", refresh=True)

    def eta_seconds(self) -> float | None:
        """Remaining cells x mean seconds per cell run so far in this session."""
        if self.ran == 0:
            return None
        remaining = self.total - self.done - self.failed
        return max(remaining, 0) * (time.perf_counter() - self.started) / self.ran

    def start(self, queued: int, executor: str) -> None:
        """The sweep's first line (``lines`` mode; a bar shows its count at once): the cells it runs
        and on what. The first finished cell can be minutes away (Ray starting, lambda_0, a cell)."""
        if self.mode == "lines":
            print(f"[{self.name}] {queued} cell{'' if queued == 1 else 's'} to run ({self.done} of {self.total} "
                  f"already in the store) on {executor}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.mode == "bar" and self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def update(self, cell_id: int, status: str, swept: Mapping[str, Any], result: Any = None) -> None:
        self.ran += 1
        if status in DONE_STATUSES:
            self.done += 1
            self.diverged += status == "diverged"
        else:
            self.failed += 1
        if self.mode == "bar" and self.bar is not None:
            self.bar.update(1)
            self._postfix()
            if status == "failed":
                err = (getattr(result, "error", "") or "").splitlines()[:1]
                self.bar.write(f"[{self.name}] cell {cell_id} failed: {err[0] if err else ''}", file=self.stream)
        elif self.mode == "lines":
            where = " ".join(f"{k}={v}" for k, v in swept.items())
            eta = self.eta_seconds()
            eta_text = "?" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
            extra = ""
            summary = getattr(result, "summary", None) or {}
            if has_final_values(status) and summary.get("final_test_accuracy") is not None:
                extra = f" test_acc {summary['final_test_accuracy']:.4f}"
            elif status == "failed":
                err = (getattr(result, "error", "") or "").splitlines()[:1]
                extra = f": {err[0] if err else ''}"
            print(f"[{self.name}] cell {cell_id} {status} ({where}){extra} | done {self.done}/{self.total}, "
                  f"diverged {self.diverged}, failed {self.failed}, ETA {eta_text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
