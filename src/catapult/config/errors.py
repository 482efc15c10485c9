"""Config errors: :class:`ConfigError` (every problem at once) and did-you-mean suggestions."""
from __future__ import annotations

import difflib
import reprlib
from typing import Any, Collection, Iterable, Sequence

__all__ = ["ConfigError", "InvalidValue", "MissingDependency", "describe", "short_repr", "suggest", "unknown_key_message",
           "MAX_PROBLEMS", "MAX_LINE"]

#: A ConfigError lists at most this many problems, each line cut to ``MAX_LINE`` characters:
#: a hostile config must not turn into a megabyte of error text.
MAX_PROBLEMS = 20
MAX_LINE = 400

# reprlib bounds the work as well as the text: a huge nested value is never fully formatted.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


class ConfigError(ValueError):
    """A config problem, raised before any work starts.

    ``problems`` is a list of ``(dotted_key, message)``; ``str(err)`` has one line per
    problem, ``"<dotted.key>: <what is wrong>; <what is allowed>"``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]] | str, key: str | None = None):
        if isinstance(problems, str):
            problems = [(key or "", problems)]
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [_cut(f"{_cut_key(key, 120)}: {msg}" if key else msg, MAX_LINE)
                 for key, msg in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in the config:\n" + "\n".join("  " + line for line in lines)

    @property
    def keys(self) -> list[str]:
        """The dotted keys with a problem, in order."""
        return [key for key, _ in self.problems]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _cut_key(key: str, limit: int) -> str:
    """``key`` cut to ``limit`` characters in its middle, keeping its last word whole: a cell's key
    ``cell 3 (<every swept value>) model.sparsity.update_every`` lost the key it names at its end.

    >>> _cut_key("cell 0 (" + "x=1, " * 30 + "y=2) model.sparsity.method", 60)
    'cell 0 (x=1, x=1, x=1, x=1, x=1, x ... model.sparsity.method'
    """
    if len(key) <= limit:
        return key
    tail = key.rsplit(" ", 1)[-1]
    if len(tail) > limit // 2:  # a key that long is not worth keeping whole
        return _cut(key, limit)
    return key[:limit - len(tail) - 5] + " ... " + tail


class MissingDependency(ModuleNotFoundError):
    """An option needs a package that is not installed (``data.tokenizer: bpe`` needs
    ``tokenizers``): the command line says which and how to install it, exit code 2."""


class InvalidValue(ValueError):
    """Raised by an option's check with a message saying what was wrong and what is allowed."""


def describe(value: Any) -> str:
    """``value`` as an error message shows it: its (bounded) repr and its type, ``'many' (str)``."""
    return f"{short_repr(value)} ({type(value).__name__})"


def short_repr(value: Any) -> str:
    """``repr(value)`` bounded to a few dozen characters (``reprlib``: long strings, lists and
    nesting are elided with ``...``), whatever the size of ``value``."""
    return _REPR.repr(value)


def suggest(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate (difflib ratio >= 0.6), else ``""``."""
    if len(word) > 100:  # nothing that long is close to a config word; difflib is quadratic
        return ""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_key_message(dotted: str, siblings: Iterable[str], leaves: Sequence[str],
                        exists: Collection[str], level: int | None = None) -> str:
    """'unknown key' plus the closest valid key.

    ``level`` is the index of the dotted part that is unknown (default: the last one),
    ``siblings`` the valid names at that level, ``leaves`` every dotted leaf key and
    ``exists`` every dotted key (leaves and sections). Tries, in order: a close sibling
    (keeping the rest of the key), a close full dotted key, the same leaf name in another
    section.
    """
    if len(dotted) > 200:  # nothing that long is close to a key; difflib is quadratic
        return "unknown key; valid keys here: " + ", ".join(siblings)
    parts = dotted.split(".")
    level = len(parts) - 1 if level is None else level
    siblings = list(siblings)
    match = difflib.get_close_matches(parts[level], siblings, n=1, cutoff=0.6)
    if match:
        fixed = ".".join(parts[:level] + [match[0]] + parts[level + 1:])
        if fixed not in exists:
            fixed = ".".join(parts[:level] + [match[0]])
        if fixed in exists:  # else no key: 'model.spars.method' was told 'model.spars.mask_method'
            return f"unknown key (did you mean {fixed!r}?)"
    match = difflib.get_close_matches(dotted, list(leaves), n=1, cutoff=0.75)
    if match:
        return f"unknown key (did you mean {match[0]!r}?)"
    same_name = [k for k in leaves if k.rsplit(".", 1)[-1] == parts[-1]]
    if same_name:
        return f"unknown key (did you mean {same_name[0]!r}?)"
    return "unknown key; valid keys here: " + ", ".join(siblings)
