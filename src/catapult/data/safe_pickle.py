"""A restricted unpickler for data files that are pickles (the CIFAR "python version" batches).

Plain ``pickle.load`` runs whatever callable the file names, so an untrusted pickle can run
code. ``RestrictedUnpickler`` resolves a global only if it is on an explicit allow-list of what
the CIFAR batch format contains, and refuses anything else with `UnsafePickleError` naming the
file and the global *before* it is imported or called:

* ``numpy.core.multiarray._reconstruct`` (as written by NumPy 1.x / Python 2, the official
  files) and ``numpy._core.multiarray._reconstruct`` (NumPy 2): builds an empty ndarray;
* ``numpy.ndarray`` and ``numpy.dtype``: the array class and its dtype;
* ``_codecs.encode`` and ``builtins.bytes`` / ``__builtin__.bytes``: how Python 3 writes byte
  strings at pickle protocols below 3 (``encode(text, "latin1")``, ``bytes()`` when empty).

Allowed names are mapped straight to the objects, so nothing is imported by name (and NumPy 2
never warns about the ``numpy.core`` alias).
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_load", "safe_loads", "ALLOWED_GLOBALS"]

# The function numpy's ndarray.__reduce__ uses to rebuild an array, whatever module it lives in.
_np_reconstruct = np.zeros(0).__reduce__()[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing it named was imported or run."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only `ALLOWED_GLOBALS`.

    ``source`` names the file in error messages. Persistent ids and out-of-band buffers are
    refused by the base class (no ``persistent_load``, no ``buffers``).
    """

    def __init__(self, file: BinaryIO, *, source: str = "<bytes>", encoding: str = "bytes",
                 allowed: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__(file, encoding=encoding)
        self.source = source
        self.allowed = ALLOWED_GLOBALS if allowed is None else allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self.allowed)
            raise UnsafePickleError(
                f"{self.source}: refused to load the global '{module}.{name}': this file is not a "
                f"plain data pickle (allowed globals: {allowed}). It was not unpickled; "
                f"re-download the file from its official source if you did not make it."
            ) from None


def safe_load(file: BinaryIO, *, source: str = "<file>", encoding: str = "bytes") -> Any:
    """Unpickle from a binary file object with `RestrictedUnpickler`.

    Raises `UnsafePickleError` for a disallowed global and ``pickle.UnpicklingError`` (with
    ``source`` in the message) for a corrupt or truncated file.
    """
    try:
        return RestrictedUnpickler(file, source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError) as exc:
        raise pickle.UnpicklingError(f"{source}: not a valid pickle ({type(exc).__name__}: {exc})") from exc


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "bytes") -> Any:
    """`safe_load` on an in-memory byte string."""
    return safe_load(io.BytesIO(data), source=source, encoding=encoding)
