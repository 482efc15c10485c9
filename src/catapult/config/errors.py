"""Config errors: :class:`ConfigError` (every problem at once) and did-you-mean suggestions."""
from __future__ import annotations

import difflib
from typing import Any, Collection, Iterable, Sequence

__all__ = ["ConfigError", "InvalidValue", "describe", "suggest", "unknown_key_message"]


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
        lines = [f"{key}: {msg}" if key else msg for key, msg in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems in the config:\n" + "\n".join("  " + line for line in lines)

    @property
    def keys(self) -> list[str]:
        """The dotted keys with a problem, in order."""
        return [key for key, _ in self.problems]


class InvalidValue(ValueError):
    """Raised by an option's check with a message saying what was wrong and what is allowed."""


def describe(value: Any) -> str:
    """``value`` as an error message shows it: its repr and its type, ``'many' (str)``."""
    return f"{value!r} ({type(value).__name__})"


def suggest(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate (difflib ratio >= 0.6), else ``""``."""
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
    parts = dotted.split(".")
    level = len(parts) - 1 if level is None else level
    siblings = list(siblings)
    match = difflib.get_close_matches(parts[level], siblings, n=1, cutoff=0.6)
    if match:
        fixed = ".".join(parts[:level] + [match[0]] + parts[level + 1:])
        if fixed not in exists:
            fixed = ".".join(parts[:level] + [match[0]])
        return f"unknown key (did you mean {fixed!r}?)"
    match = difflib.get_close_matches(dotted, list(leaves), n=1, cutoff=0.75)
    if match:
        return f"unknown key (did you mean {match[0]!r}?)"
    same_name = [k for k in leaves if k.rsplit(".", 1)[-1] == parts[-1]]
    if same_name:
        return f"unknown key (did you mean {same_name[0]!r}?)"
    return "unknown key; valid keys here: " + ", ".join(siblings)
