"""The sweep store's errors: :class:`StoreError` (a store that cannot be used) and
:class:`SpecChanged` (a store of another sweep). Also importable from :mod:`catapult.sweep.store`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["StoreError", "SpecChanged"]


class StoreError(RuntimeError):
    """A store that cannot be used: not a catapult store, a newer schema, no sweep in it."""


class SpecChanged(StoreError):
    """The store holds a different sweep than the one requested. ``changes`` lists what differs
    (one ``"key: old -> new"`` line each); ``advice`` replaces the closing hint (what to do)."""

    def __init__(self, path: str | Path, changes: Sequence[str], advice: str | None = None):
        self.changes = list(changes)
        lines = "\n".join(f"  {line}" for line in self.changes) or "  (the spec documents differ)"
        super().__init__(
            f"{path} holds a different sweep; refusing to mix results. What changed:\n{lines}\n"
            + (advice or "Use a new --store path for the new sweep, or rerun the original config to resume it.")
        )
