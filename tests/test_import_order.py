"""Each module imports as the first one of a fresh interpreter (no import cycle that only an
earlier import of another module resolves)."""
from __future__ import annotations

import importlib
import sys

import catapult.sweep


def test_store_export_imports_before_store():
    """`import catapult.sweep.store_export` first raised "cannot import name 'EXPORT_COLUMNS' from
    partially initialized module" (store_export imported store, whose last line imports store_export
    back); tests/test_plots_audit.py failed to collect when run alone."""
    names = ("catapult.sweep.store", "catapult.sweep.store_export")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    attrs = {n: getattr(catapult.sweep, n.rsplit(".", 1)[1]) for n in saved
             if hasattr(catapult.sweep, n.rsplit(".", 1)[1])}
    try:
        export = importlib.import_module("catapult.sweep.store_export")
        assert export.EXPORT_COLUMNS[0] == "status" and "test_accuracy" in export.EXPORT_COLUMNS
        assert importlib.import_module("catapult.sweep.store").write_csv is export.write_csv
    finally:  # the rest of the session keeps the modules (and classes) it had
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        for n, module in attrs.items():
            setattr(catapult.sweep, n.rsplit(".", 1)[1], module)
