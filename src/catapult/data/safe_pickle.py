"""A restricted unpickler for data files that are pickles (the CIFAR "python version" batches).

Plain ``pickle.load`` runs whatever callable the file names, so an untrusted pickle can run
code, and even NumPy's own constructors let a 240-byte file allocate gigabytes of
uninitialised memory (``numpy.ndarray((10**9,))``). ``RestrictedUnpickler`` resolves a global
only if it is one of the few the CIFAR format contains, and maps each to a *checked* stand-in
that builds nothing bigger than the bytes in the file:

* ``numpy.core.multiarray._reconstruct`` (NumPy 1.x and Python 2: the official files) and
  ``numpy._core.multiarray._reconstruct`` (NumPy 2), called exactly as ``ndarray.__reduce__``
  writes it, ``_reconstruct(numpy.ndarray, (0,), b"b")``; the array is then built from its
  pickled state ``(1, shape, dtype, is_fortran, raw_bytes)`` by ``numpy.frombuffer`` only if
  ``prod(shape) * itemsize == len(raw_bytes)``;
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``: how pickle
  protocol 5 writes a contiguous array (its bytes in-band), with the same size check;
* ``numpy.ndarray``: allowed *only* as the class argument of ``_reconstruct``; calling it is
  refused (that is the gigabyte allocation above);
* ``numpy.dtype``: plain numeric dtypes only (bool, int, uint, float; no objects, records or
  sub-arrays), with their pickled state checked;
* ``_codecs.encode(text, "latin1")`` and ``bytes()`` (no arguments): how Python 3 writes byte
  strings at pickle protocols below 3.

Anything else raises `UnsafePickleError` naming the file and the global before it is imported
or called; a corrupt or truncated file raises `CorruptPickleError`. Both are ``ValueError``
(and ``pickle.UnpicklingError``), so callers report them as bad input.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "CorruptPickleError", "RestrictedUnpickler", "safe_load", "safe_loads",
           "ALLOWED_GLOBALS", "ARRAY_DTYPES"]

#: The dtypes an array in a data pickle may have (``dtype.str`` without the byte order).
ARRAY_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
_MAX_NDIM = 32


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle named a global outside the allow-list, or used an allowed one in a way NumPy
    never writes; nothing it named was imported or run."""


class CorruptPickleError(pickle.UnpicklingError, ValueError):
    """A pickle that is truncated or malformed (its message names the file)."""


def _text(value: Any) -> str | None:
    """``value`` as text if it is ``str`` or ASCII ``bytes`` (Python 2 strings under
    ``encoding="bytes"``), else None."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


class _Refused(Exception):
    """Raised inside a stand-in; `RestrictedUnpickler.load` adds the file name."""


class _StandIn:
    """What ``find_class`` gives for an allowed global: callable as the checked stand-in, with no
    state a pickle may set. A plain function or class there took BUILD's attributes (a function's
    ``__defaults__``, the ndarray stand-in's ``__class__``) for the rest of the process."""

    __slots__ = ("name", "_call")

    def __init__(self, name: str, call: Any) -> None:
        self.name, self._call = name, call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"sets the state of {self.name}, which NumPy never writes")


def _call_ndarray(*args: Any, **kwargs: Any) -> Any:
    raise _Refused("calls numpy.ndarray directly (an array of any size, uninitialised); NumPy "
                   "writes arrays through _reconstruct or _frombuffer")


# Stands for ``numpy.ndarray``: an argument of ``_reconstruct``, never called.
_NDARRAY = _StandIn("numpy.ndarray", _call_ndarray)


class _DtypeSpec:
    """Stands for ``numpy.dtype(spec, align, copy)`` until its pickled state is set."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        name = _text(spec)
        if name is None or name.lstrip("<>|=") not in ARRAY_DTYPES:
            raise _Refused(f"asks for the dtype {str(spec)[:40]!r}; allowed: {', '.join(ARRAY_DTYPES)}")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        # NumPy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags);
        # for a plain numeric dtype everything but the byte order is empty.
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and _text(state[1]) in ("|", "<", ">", "=") and state[2:5] == (None, None, None)
                and state[5:7] == (-1, -1) and state[7] == 0):
            raise _Refused(f"sets a dtype state NumPy does not write for a plain dtype: {str(state)[:80]}")
        order = _text(state[1])
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _Refused(f"gives an array the shape {str(shape)[:80]}; expected a tuple of sizes >= 0")
    return shape


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """``numpy.frombuffer(raw, dtype).reshape(shape)``, only if ``raw`` holds exactly
    ``prod(shape) * itemsize`` bytes (so the array is never larger than the file)."""
    if not isinstance(dtype, _DtypeSpec):
        raise _Refused("gives an array a dtype that is not a plain numpy.dtype")
    shape = _checked_shape(shape)
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"gives an array data of type {type(raw).__name__}; expected bytes")
    need = math.prod(shape) * dtype.dtype.itemsize
    if need != len(raw):
        raise _Refused(f"declares an array of shape {shape} ({need:,} bytes) but holds {len(raw):,} bytes")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order)


class _ArrayState:
    """The empty array ``_reconstruct`` returns; its pickled state (set by BUILD) makes it."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[3], bool)):
            raise _Refused(f"sets an array state NumPy does not write: {str(state)[:80]}")
        _, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayState:
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused("calls numpy's _reconstruct other than as ndarray.__reduce__ writes it "
                       "(_reconstruct(numpy.ndarray, (0,), b'b'))")
    return _ArrayState()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if _text(order) not in ("C", "F"):
        raise _Refused(f"gives an array the memory order {str(order)[:20]!r}")
    return _array_from_bytes(buf, dtype, shape, _text(order))


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or _text(encoding) not in ("latin1", "latin-1"):
        raise _Refused("calls _codecs.encode other than as encode(text, 'latin1')")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    if args:  # bytes(10**12) would allocate a terabyte of zeros
        raise _Refused("calls bytes() with arguments; pickle writes only bytes() for b''")
    return b""


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _StandIn("numpy's _reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _StandIn("numpy's _reconstruct", _reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _StandIn("numpy's _frombuffer", _frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _StandIn("numpy's _frombuffer", _frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn("numpy.dtype", _DtypeSpec),
    ("_codecs", "encode"): _StandIn("_codecs.encode", _encode),
    ("builtins", "bytes"): _StandIn("bytes", _bytes),
    ("__builtin__", "bytes"): _StandIn("bytes", _bytes),
}


def _finish(obj: Any) -> Any:
    """Replace each `_ArrayState` in the loaded containers by its array, and refuse a stand-in
    that was never completed (``_reconstruct`` without state, a bare dtype or class)."""
    todo = [obj]
    seen: set[int] = set()
    while todo:  # iterative: a deeply nested pickle must not overflow the stack here
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (dict, list)):
            for key, value in list(node.items() if isinstance(node, dict) else enumerate(node)):
                if isinstance(value, _ArrayState):
                    node[key] = _built(value)
                else:
                    _plain_value(value)
                    todo.append(value)
        elif isinstance(node, tuple):
            for value in node:
                if isinstance(value, _ArrayState):
                    raise _Refused("puts an array in a tuple, which NumPy data files never do")
                _plain_value(value)
                todo.append(value)
    if isinstance(obj, _ArrayState):
        return _built(obj)
    _plain_value(obj)
    return obj


def _built(state: _ArrayState) -> np.ndarray:
    if state.array is None:
        raise _Refused("calls numpy's _reconstruct without giving the array its data")
    return state.array


def _plain_value(value: Any) -> None:
    if isinstance(value, (_DtypeSpec, _StandIn)):
        raise _Refused("leaves a numpy class, dtype or function in the data itself")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only `ALLOWED_GLOBALS`.

    ``source`` names the file in error messages. Persistent ids and out-of-band buffers are
    refused by the base class (no ``persistent_load``, no ``buffers``). Use `safe_load`: it
    also turns the stand-ins into arrays and every failure into a message naming the file.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<bytes>", encoding: str = "bytes",
                 allowed: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__(file, encoding=encoding)
        self.source = source
        self.allowed = ALLOWED_GLOBALS if allowed is None else allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            allowed = ", ".join(f"{m}.{n}" for m, n in self.allowed)
            raise UnsafePickleError(
                f"{self.source}: refused to load the global '{str(module)[:80]}.{str(name)[:80]}': this "
                f"file is not a plain data pickle (allowed globals: {allowed}). It was not unpickled; "
                f"re-download the file from its official source if you did not make it."
            ) from None


def safe_load(file: BinaryIO, *, source: str = "<file>", encoding: str = "bytes") -> Any:
    """Unpickle from a binary file object with `RestrictedUnpickler`; arrays come back as
    ``numpy.ndarray`` (read-only views of the file's bytes when those were immutable).

    Raises `UnsafePickleError` for a disallowed global or a NumPy call NumPy never writes, and
    `CorruptPickleError` (with ``source`` in the message) for a corrupt or truncated file.
    """
    try:
        return _finish(RestrictedUnpickler(file, source=source, encoding=encoding).load())
    except UnsafePickleError:
        raise
    except _Refused as exc:
        raise UnsafePickleError(f"{source}: refused: the pickle {exc}. It is not a file NumPy wrote; "
                                f"re-download it from its official source.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as exc:
        what = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc) else "corrupt"
        raise CorruptPickleError(f"{source}: not a valid pickle, the file is {what} "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "bytes") -> Any:
    """`safe_load` on an in-memory byte string."""
    return safe_load(io.BytesIO(data), source=source, encoding=encoding)
