"""Reading a user's data files: an error names the file it came from.

A read error that the OS reports without a file name (``EIO`` from a failing disk, a link to
``/proc/self/mem``) reached the CLI as "Input/output error" alone, naming no file.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["read_errors_named"]


@contextlib.contextmanager
def read_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an ``OSError`` without a file name as one that starts with ``path`` (errors that
    name their file pass unchanged).

    >>> try:
    ...     with read_errors_named("/data/batch_1"):
    ...         raise OSError(5, "Input/output error")
    ... except OSError as err:
    ...     print(err)
    [Errno 5] /data/batch_1: cannot be read (Input/output error)
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, f"{path}: cannot be read ({exc.strerror or exc})") from exc
