"""One rank's error, raised on every rank as the same type with the same message.

A rank that fails between two collectives must stop the others with its error, not leave them in
their next collective. What travels between ranks is a *verdict*, ``[kind, message, details]``
(:func:`error_verdict`), plain JSON (never a pickle: another process's bytes are not run), and
every other rank raises :func:`same_error` of it: an exception of catapult's own (a
``ConfigError`` with its ``(key, message)`` problems, a ``MissingDependency``, a
``RunDirectoryError``, a ``MicroBatchRefused`` with its ``option``, an
``UnreliableDifferenceError``) as that class with that message and its plain attributes, so the
command line gives every rank its exit code and one line; a built-in one as itself (or its
nearest base that takes a message); any other kind as a RuntimeError naming it and the rank.
"""
from __future__ import annotations

import ast
import importlib
import json
from typing import Any

import torch

__all__ = ["error_message", "error_verdict", "same_error", "broadcast_json"]

#: The longest attribute (as JSON) a verdict carries: an exception's message is the point, not its data.
MAX_ATTRIBUTE_CHARS = 100_000


def error_message(err: BaseException) -> str:
    """``str(err)``, or a stand-in where that raises (an exception whose ``__str__`` fails): what a
    rank sends the others about its failure must not raise on that rank alone.

    >>> class Broken(Exception):
    ...     def __str__(self):
    ...         raise RuntimeError("no message")
    >>> error_message(ValueError("bad")), error_message(Broken())
    ('bad', '(its message raised RuntimeError)')
    """
    try:
        return str(err)
    except Exception as inner:   # noqa: BLE001 - any kind
        return f"(its message raised {type(inner).__name__})"


def error_verdict(err: BaseException) -> list:
    """``[kind, message, details]`` for :func:`same_error`: the class's name, the message
    (:func:`error_message`), and for a class of catapult's own ``{"module": ..., "attributes": ...}``,
    its module and its public attributes as JSON carries them (a ``ConfigError``'s problems, a
    ``MicroBatchRefused``'s option; a value JSON cannot encode as its ``repr``; one longer than
    :data:`MAX_ATTRIBUTE_CHARS` left out); None for any other class. Never raises.

    >>> from catapult.config import ConfigError
    >>> error_verdict(ConfigError([("data.root", "no shards")]))
    ['ConfigError', 'data.root: no shards', {'module': 'catapult.config.errors', 'attributes': {'problems': [['data.root', 'no shards']]}}]
    >>> error_verdict(KeyError("x"))
    ['KeyError', "'x'", None]
    >>> error_verdict(FileNotFoundError(2, "No such file or directory", "a.npy"))
    ['FileNotFoundError', "[Errno 2] No such file or directory: 'a.npy'", {'os_error': [2, 'No such file or directory', 'a.npy']}]
    """
    kind, module = type(err).__qualname__, type(err).__module__
    details = None
    if module.split(".")[0] == "catapult":
        attributes = {}
        for name, value in list(getattr(err, "__dict__", {}).items()):
            if isinstance(name, str) and not name.startswith("_"):
                try:   # a value JSON cannot encode as its repr (a Path in a ConfigError's problems)
                    text = json.dumps(value, default=repr)
                except Exception:   # noqa: BLE001 - a repr that raises, a cycle: left out
                    continue
                if len(text) <= MAX_ATTRIBUTE_CHARS:
                    attributes[name] = json.loads(text)
        details = {"module": module, "attributes": attributes}
    elif isinstance(err, OSError) and isinstance(err.errno, int) and isinstance(err.strerror, str):
        # its parts, so the copy names the file as the original does (the CLI's "FILE: problem")
        # (and a rename's second file: os.replace's "A -> B")
        details = {"os_error": [err.errno, err.strerror, err.filename if isinstance(err.filename, str) else None]
                   + ([err.filename2] if isinstance(err.filename2, str) else [])}
    return [kind, error_message(err), details]


def same_error(rank: int, kind: str, message: str, details: Any = None) -> Exception:
    """An exception like the one ``rank`` raised, from its verdict (:func:`error_verdict`):
    catapult's own class with that message and attributes (a list of lists back as a list of
    tuples: a ConfigError's problems); a built-in as itself (a ``KeyError`` of the same key); a
    kind neither names, a RuntimeError naming it and ``rank``.

    >>> from catapult.config import ConfigError
    >>> err = same_error(1, *error_verdict(ConfigError([("data.root", "no shards")])))
    >>> type(err).__name__, err.problems, str(err)
    ('ConfigError', [('data.root', 'no shards')], 'data.root: no shards')
    >>> same_error(1, "FileNotFoundError", "no a.npy"), same_error(1, "Odd", "x")
    (FileNotFoundError('no a.npy'), RuntimeError('rank 1: Odd: x'))
    """
    own = _own_class(kind, details)
    if own is not None:
        err = own.__new__(own)
        Exception.__init__(err, message)
        for name, value in (details.get("attributes") or {}).items():
            if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
                value = [tuple(v) for v in value]
            setattr(err, name, value)
        return err
    import builtins

    builtin = getattr(builtins, kind, None)
    parts = details.get("os_error") if isinstance(details, dict) else None
    if isinstance(builtin, type) and issubclass(builtin, OSError) and _os_parts(parts):
        err = (builtin(*parts[:3], None, parts[3]) if len(parts) == 4 else builtin(*parts) if parts[2] is not None
               else builtin(*parts[:2]))
        if str(err) == message:   # its errno, strerror and filename, as the original's
            return err
    if builtin is KeyError:   # its message is its key's repr: KeyError(message) quoted it again ("'x'" as "\"'x'\"")
        return _key_error(message)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        # one that takes more than a message (UnicodeDecodeError's 5 arguments, ExceptionGroup's list)
        # raised a TypeError here, on every other rank, in place of the failure: its nearest base that
        # takes one, the kind named in the message
        for base in builtin.__mro__:
            if issubclass(base, Exception):
                try:
                    return base(message if base is builtin else f"{kind}: {message}")
                except TypeError:
                    continue
    return RuntimeError(f"rank {rank}: {kind}: {message}")


def _os_parts(parts: Any) -> bool:
    """Whether ``parts`` is an OSError's ``[errno, strerror, filename or None]``, or with a rename's
    ``filename2`` after them (:func:`error_verdict`)."""
    return (isinstance(parts, list) and len(parts) in (3, 4) and type(parts[0]) is int and isinstance(parts[1], str)
            and (parts[2] is None or isinstance(parts[2], str)) and all(isinstance(p, str) for p in parts[3:]))


def _own_class(kind: str, details: Any) -> type | None:
    """Catapult's exception class ``kind`` of ``details["module"]``, or None (no such module of the
    package, no such Exception class there)."""
    if not isinstance(details, dict) or not isinstance(details.get("module"), str):
        return None
    module = details["module"]
    if module.split(".")[0] != "catapult" or not isinstance(kind, str):
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in kind.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError):
        return None
    if isinstance(found, type) and issubclass(found, Exception) and found.__module__ == module:
        return found
    return None


def _key_error(message: str) -> KeyError:
    """A KeyError whose ``str`` is ``message`` (a KeyError's ``str`` is its key's ``repr``): of the key
    itself where ``message`` is a literal's repr (a string, a number, a tuple of them), else one that
    prints ``message`` as it is."""
    try:
        key = ast.literal_eval(message)
        if repr(key) == message:
            return KeyError(key)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    return _RankKeyError(message)


class _RankKeyError(KeyError):
    """A KeyError another rank raised whose key cannot be rebuilt: printed as that rank printed it."""

    def __str__(self) -> str:
        return str(self.args[0])


def broadcast_json(obj: Any, src: int, device=None, group=None) -> Any:
    """``obj`` of rank ``src`` on every rank (every rank must call it), as JSON bytes in uint8
    tensors on ``device`` (the length first, then the bytes); the other ranks' ``obj`` is not
    read. ``obj`` must be JSON (a verdict of :func:`error_verdict` is).

    >>> from catapult.curvature.distributed import single_process_group
    >>> with single_process_group():
    ...     broadcast_json(["ValueError", "bad", None], 0)
    ['ValueError', 'bad', None]
    """
    import torch.distributed as dist

    mine = dist.get_rank() == src   # src is a global rank, as dist.broadcast takes it
    data = json.dumps(obj).encode() if mine else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=src, group=group)
    payload = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if mine:
        payload.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(payload, src=src, group=group)
    return json.loads(payload.cpu().numpy().tobytes().decode())
