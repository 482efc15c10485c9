"""Progress display of one run: a tqdm bar on a terminal, plain lines otherwise, or nothing."""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from catapult.engine.records import SHARPNESS_CONVERGED_COLUMN

__all__ = ["Progress", "progress_mode"]


def progress_mode(mode: Any) -> str:
    """``"bar"``, ``"lines"`` or ``"none"`` for a run's ``progress`` (None/``"auto"``: a bar on a terminal,
    lines otherwise; True/False: bar/none); a ValueError for anything else. :func:`catapult.engine.run`
    asks it before any work (a typo was refused only once the data, the model and lambda_0 were built).

    >>> progress_mode(False), progress_mode("lines")
    ('none', 'lines')
    """
    if mode is None or mode == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    if mode is True:
        return "bar"
    if mode is False:
        return "none"
    if isinstance(mode, str) and mode in ("bar", "lines", "none"):
        return mode
    raise ValueError(f"progress must be None, 'auto', 'bar', 'lines', 'none' or a bool, got {mode!r}")


class Progress:
    """A tqdm bar on a terminal, plain lines (about 10 per run) otherwise, or nothing. The
    sharpness shown is the last measured, with a trailing ``?`` where its solve stopped short of
    ``eval.sharpness_tol`` (its row's ``sharpness_converged`` 0).
    ``before_line`` (optional) is called before a line shows a row (which then holds its
    ``train_accuracy``: :class:`~catapult.engine.step_accuracy.StepAccuracies`)."""

    def __init__(self, mode: Any, total: int, name: str, before_line: Callable[[], None] | None = None):
        mode = progress_mode(mode)
        self.mode, self.total, self.name, self.before_line = mode, total, name, before_line
        self.every = max(1, total // 10)
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True, leave=True)
        self.last_sharpness: float | None = None
        self.last_mark = ""  # "?" after a sharpness whose solve did not converge (sharpness_converged 0)

    def update(self, row: Mapping[str, Any]) -> None:
        if self.mode == "none":  # nothing shown: nothing to do at every step
            return
        if row.get("sharpness") is not None:  # a measured row: its value, and its solve's mark
            self.last_sharpness = row["sharpness"]
            self.last_mark = "?" if row.get(SHARPNESS_CONVERGED_COLUMN) == 0 else ""
        t = row["step"]
        if self.mode == "bar":
            post = {"loss": f"{row['train_loss']:.3e}", "lr": f"{row['lr']:.2e}"}
            if self.last_sharpness is not None:
                post["sharp"] = f"{self.last_sharpness:.3g}{self.last_mark}"
            self.bar.set_postfix(post, refresh=False)
            if t > self.bar.n:
                self.bar.update(t - self.bar.n)
        elif self.mode == "lines" and (t % self.every == 0 or t == self.total):
            if self.before_line is not None:
                self.before_line()
            text = f"[{self.name}] step {t}/{self.total} loss {row['train_loss']:.4e} acc {row['train_accuracy']:.3f} lr {row['lr']:.3e}"
            if self.last_sharpness is not None:
                text += f" sharpness {self.last_sharpness:.4g}{self.last_mark} (threshold {row['threshold']:.4g})"
            if row.get("test_loss") is not None:
                text += f" test_loss {row['test_loss']:.4e} test_acc {row['test_accuracy']:.3f}"
            print(text, file=sys.stderr, flush=True)

    def close(self, status: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name} ({status})")
            self.bar.close()
        elif self.mode == "lines":
            print(f"[{self.name}] {status}", file=sys.stderr, flush=True)
