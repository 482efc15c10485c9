"""Config files and command-line overrides: YAML in (with each key's line and column), YAML out,
``key.sub=value`` overrides."""
from __future__ import annotations

import copy
import os
import re
import select
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel

from catapult.config.errors import ConfigError
from catapult.config.validation import checks_flag, section_model, unknown_key, validate
from catapult.config.sections import RUN_NAME, RunConfig

__all__ = ["STUDY_SECTIONS", "parse_override", "apply_overrides", "read_mapping", "read_yaml", "key_positions",
           "load_config", "dump_config", "safe_yaml", "yaml_problem", "plain_data", "MAX_YAML_DEPTH",
           "MAX_YAML_NODES", "MAX_CONFIG_BYTES", "name_from_file", "located_problems"]

#: Each top-level section that belongs to a study command, not to the run, and that command
#: (named when an override sets one of its keys).
_STUDY_COMMANDS = {"sweep": "catapult sweep", "coord_check": "catapult coord-check"}
#: ``sweep:`` and ``coord_check:``: :func:`load_config` sets them aside, so a study config also
#: trains as its base run.
STUDY_SECTIONS = tuple(_STUDY_COMMANDS)

_OVERRIDE_FORM = "an override must look like key=value (e.g. optimizer.lr=0.1)"

#: Bounds on what a config may be, so that a hostile file fails fast with a short message and
#: bounded memory: nesting depth (a config is ~3 levels deep), the number of values the
#: document holds once every alias is expanded (a "billion laughs" alias bomb names few nodes
#: but expands to billions), and the file size.
MAX_YAML_DEPTH = 50
MAX_YAML_NODES = 100_000
MAX_CONFIG_BYTES = 1_000_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents nested deeper than :data:`MAX_YAML_DEPTH` or
    expanding (aliases counted at their full size) to more than :data:`MAX_YAML_NODES` values.

    Both are counted while the node graph is composed, before any Python object is built, so
    the refusal costs memory proportional to the text, not to its expansion.
    """

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0                 # values seen so far, aliases expanded
        self._sizes: dict[int, int] = {}   # id(node) -> its expanded size (for aliases)

    def _count(self, n: int) -> None:
        self._expanded += n
        if self._expanded > MAX_YAML_NODES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_YAML_NODES:,} values "
                                 f"(aliases counted in full: an alias bomb?); a config is far smaller")

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)  # raises for an undefined alias
            if id(node) not in self._sizes:  # the alias sits inside its own anchor's value
                raise yaml.YAMLError(f"a recursive alias (line {mark.line + 1}, column "
                                     f"{mark.column + 1}) makes an infinite value")
            self._count(self._sizes[id(node)])
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1}, "
                                 f"column {mark.column + 1}); a config is a few levels deep")
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1)
        self._sizes[id(node)] = self._expanded - before
        return node

    def construct_mapping(self, node, deep=False):
        """Plain keys that YAML 1.1 reads as anything but a string (a boolean, null, a number, a
        date: ``yes:``, ``on:``, ``null:``, ``0x10:``) are kept as the text written: a config's
        keys are names, and ``yes: 1`` was reported as the unknown key ``1`` (True) with no
        position, ``on:`` inside ``train:`` as ``train.1``, ``0x10:`` as ``16``. An empty key
        (``? : 1``) stays YAML's null."""
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if (isinstance(key_node, yaml.ScalarNode) and key_node.style is None
                        and key_node.tag in _RESOLVED_TAGS and key_node.value):
                    key_node.tag = _STR_TAG
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node):
        """Refuse a key that two mappings of one merge list (``<<: [*a, *b]``) both set and the
        mapping itself does not: YAML readers differ on which wins (the YAML 1.1 merge rule: the
        first; PyYAML 6.0.4: the last, for keys of two or more characters), and ``optimizer: {<<:
        [{lr: 0.1}, {lr: 0.2}]}`` trained at 0.2 where the rule says 0.1."""
        own = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG or not isinstance(value_node, yaml.SequenceNode):
                continue
            first: dict[str, int] = {}
            for i, sub in enumerate(value_node.value):
                for name in _mapping_keys(sub, set()) - own:
                    if name in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"'{name}' is set by mappings {first[name] + 1} and {i + 1} of this "
                                        f"'<<' merge list, and YAML readers differ on which one wins (the merge "
                                        f"rule: the first; PyYAML 6.0.4: the last); set it in one of them only, "
                                        f"or in this mapping itself", key_node.start_mark)
                    first[name] = i
        super().flatten_mapping(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _mapping_keys(node: yaml.Node, seen: set[int]) -> set[str]:
    """The plain keys a mapping node holds once its own merges are applied (none for another node)."""
    if not isinstance(node, yaml.MappingNode) or id(node) in seen:
        return set()
    seen.add(id(node))
    keys: set[str] = set()
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            for sub in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                keys |= _mapping_keys(sub, seen)
        elif isinstance(key_node, yaml.ScalarNode):
            keys.add(key_node.value)
    return keys


_STR_TAG = "tag:yaml.org,2002:str"
#: The tags PyYAML's resolver gives a plain scalar other than a string.
_RESOLVED_TAGS = tuple(f"tag:yaml.org,2002:{kind}" for kind in ("bool", "null", "int", "float", "timestamp"))


#: Plain numbers YAML 1.1 (PyYAML) reads in another base than they look: ``010`` is the octal
#: number 8 and ``1:30`` is 90 (base 60), where YAML 1.2 and JSON read 10 and a string.
_OTHER_BASE = re.compile(r"^[-+]?(0[0-7_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)$")
#: How :func:`_number_as_written`'s refusal begins (:func:`parse_override` passes it on, naming the key).
_OTHER_BASE_WORDS = "YAML 1.1 reads "


def _number_as_written(loader: yaml.SafeLoader, node: yaml.ScalarNode, construct) -> Any:
    """A YAML int or float, refused (a ``yaml.YAMLError`` at its line and column) when
    :data:`_OTHER_BASE` matches: ``seed: 010`` trained seed 8, ``train.steps: 1:30`` 90 steps."""
    text = loader.construct_scalar(node)
    if _OTHER_BASE.match(text.strip()):
        value = construct(loader, node)
        raise yaml.constructor.ConstructorError(
            None, None, f"{_OTHER_BASE_WORDS}{text} as {value} ({'base 60' if ':' in text else 'octal'}); write "
                        f"the number you mean without leading zeros or colons, or quote it", node.start_mark)
    return construct(loader, node)


def _tagged_scalar(kind: str, construct):
    """PyYAML's constructor of a tag that only an explicit tag reaches with text it does not match
    (``seed: !!bool maybe``, ``!!timestamp x``, ``!!int ''``), refused as a ``yaml.YAMLError`` at its
    line and column: PyYAML raised KeyError, AttributeError and (int and float of empty text, or of
    ``_`` alone) IndexError, tracebacks from ``catapult train``."""
    def build(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except (KeyError, AttributeError, IndexError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(loader.construct_scalar(node))[:60]!r} is not a YAML {kind}", node.start_mark) from None
    return build


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _tagged_scalar("integer", lambda loader, node: (
    _number_as_written(loader, node, yaml.SafeLoader.construct_yaml_int))))
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _tagged_scalar("number", lambda loader, node: (
    _number_as_written(loader, node, yaml.SafeLoader.construct_yaml_float))))
_BoundedLoader.add_constructor("tag:yaml.org,2002:bool", _tagged_scalar(
    "boolean (true or false)", yaml.SafeLoader.construct_yaml_bool))
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _tagged_scalar(
    "timestamp (e.g. 2001-12-14)", yaml.SafeLoader.construct_yaml_timestamp))


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` within :data:`MAX_YAML_DEPTH` and :data:`MAX_YAML_NODES`
    (``yaml.YAMLError`` beyond them)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (ValueError, OverflowError) as err:  # a constructor's own error: a 5,000-digit int, 2024-13-45
        raise yaml.YAMLError(f"a value cannot be read: {str(err)[:200]}") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key.sub=value"`` and read the value as a YAML scalar/list (``null``, ``1e-3``,
    ``[0.9, 0.95]``, ``32/lambda0``). Raises :class:`ConfigError` on a malformed override, and
    where YAML's syntax would change a plain value: a ``#`` read as a comment, a ``: `` as a
    mapping (a quoted value keeps both).

    >>> parse_override("data.root='/data/a #2.txt'"), parse_override("optimizer.betas=[0.9, 0.95]")
    (('data.root', '/data/a #2.txt'), ('optimizer.betas', [0.9, 0.95]))
    >>> parse_override("data.root=/data/a #2.txt")
    Traceback (most recent call last):
    ...
    catapult.config.errors.ConfigError: data.root: YAML reads the '#' in '/data/a #2.txt' as a comment and drops what follows; quote the value: data.root='...'
    """
    if "=" not in text:
        raise ConfigError([(text, _OVERRIDE_FORM)])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError([(text, _OVERRIDE_FORM)])
    try:
        value = safe_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or ""
        if problem.startswith(_OTHER_BASE_WORDS):
            # the file's rule (_number_as_written): seed=010 ran seed 10 where seed: 010 in a file is
            # refused, and 1:30 was text here, 90 there, [010, 1] text here; one text means one thing
            raise ConfigError([(key, problem)]) from None
        value = raw   # digits YAML keeps as text (09) stay text, as in a file: an integer key refuses them
    except RecursionError:  # pragma: no cover - the loader's depth bound comes first
        raise ConfigError([(key, "the value is nested too deeply")]) from None
    # YAML's syntax inside a plain value: data.root=/data/a #2.txt was cut to /data/a (a comment),
    # and data.root=/data/my: file.txt became a mapping, each silently or with no word on why
    if raw.count("#") > str(value).count("#"):
        raise ConfigError([(key, f"YAML reads the '#' in {raw!r} as a comment and drops what follows; "
                                 f"quote the value: {key}='...'")])
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        raise ConfigError([(key, f"YAML reads {raw!r} as a mapping (a ': ' inside it); quote the value: "
                                 f"{key}='...'")])
    return key, value


def apply_overrides(mapping: Mapping[str, Any], overrides: Iterable[str],
                    model: type[BaseModel] = RunConfig) -> dict:
    """Return a copy of ``mapping`` with each ``key.sub=value`` override set.

    Keys are checked against the config's models here (unknown key -> :class:`ConfigError`
    with a suggestion); values are checked later by :func:`~catapult.config.validate`.
    """
    config = copy.deepcopy(dict(mapping))
    problems = []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        parts = key.split(".")
        node, section = config, model
        for i, part in enumerate(parts):
            fields = section.model_fields if section is not None else {}
            if i == 0 and model is RunConfig and part in _STUDY_COMMANDS:
                # not a misspelt run key: a study's own section, set aside for the base run
                problems.append((key, f"a key of the {part}: section, which `{_STUDY_COMMANDS[part]}` reads; "
                                      f"this command runs the config's base run without it (give it to "
                                      f"`{_STUDY_COMMANDS[part]}`)"))
                break
            if part not in fields:
                problems.append((key, unknown_key(key, fields, model, level=i)))
                break
            section = section_model(fields[part])
            if i == len(parts) - 1:
                if section is not None:
                    first = next(iter(section.model_fields))
                    problems.append((key, f"is a section; set one of its keys, e.g. {key}.{first}=..."))
                else:
                    node[part] = value
                break
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    if problems:
        raise ConfigError(problems)
    return config


def key_positions(text: str, duplicates: list | None = None) -> dict[str, tuple[int, int]]:
    """Dotted key -> (line, column), both from 1, of each key in the YAML mapping ``text``.

    A key written twice in one mapping is appended to ``duplicates`` (when given) as
    ``(dotted, first position, second position)``: YAML keeps the last silently."""
    out: dict[str, tuple[int, int]] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, tuple[int, int]] = {}  # this mapping's keys: a repeated section is one duplicate
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}{key_node.value}"
                position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if dotted in seen and duplicates is not None:
                    duplicates.append((dotted, seen[dotted], position))
                out[dotted] = seen[dotted] = position
                walk(value_node, dotted + ".")

    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    if root is not None:
        walk(root, "")
    return out


FIFO_WAIT_S = 10.0   # how long a config given as a named pipe waits for its writer


def _pipe_start(fd: int, seconds: float) -> bytes | None:
    """The first bytes of the pipe ``fd`` (opened non-blocking), or None when no writer came
    within ``seconds``. A writer already there (``<(...)``, ``/dev/stdin``) is waited on without
    a limit, however slow its first byte; only a FIFO with no writer yet (read: end of file at
    once) waits for one, up to ``seconds``."""
    try:
        first = os.read(fd, 1 << 16)
    except BlockingIOError:   # a writer, no data yet
        return b""
    if first or not hasattr(select, "poll"):
        return first
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return b"" if poller.poll(int(seconds * 1000)) else None


def read_yaml(path: str | Path) -> tuple[dict, dict[str, tuple[int, int]]]:
    """The YAML mapping in ``path`` and its :func:`key_positions`; :class:`ConfigError` naming
    the file when it is missing, unreadable, not YAML or not a mapping."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to returns at once (open() waited forever);
        # a pipe is then read as _pipe_start says, and to its end
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            first = _pipe_start(fd, FIFO_WAIT_S) if stat.S_ISFIFO(os.fstat(fd).st_mode) else b""
            if first is None:
                raise ConfigError([("<file>", f"{path} is a pipe that no writer wrote to within {FIFO_WAIT_S:g} s; "
                                              f"give a config file, or start the writer first")])
            os.set_blocking(fd, True)
            f = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)   # fdopen does not close an fd it refuses (a directory)
            raise
        with f:
            data = first + f.read(MAX_CONFIG_BYTES + 1 - len(first))
    except FileNotFoundError:
        raise ConfigError([("<file>", f"config file not found: {path}")]) from None
    except OSError as err:
        raise ConfigError([("<file>", f"cannot read config file {path}: {err.strerror}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([("<file>", f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a "
                                      f"short YAML file")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError([("<file>", f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at line "
                                      f"{line}); save it as UTF-8")]) from None
    duplicates: list = []
    try:
        mapping = safe_yaml(text)
        positions = key_positions(text, duplicates)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        hint = _assignment_hint(text, None if mark is None else mark.line)
        raise ConfigError([("<file>", f"{path} is not valid YAML: {yaml_problem(err)}{hint}")]) from None
    if duplicates:  # the earlier value would be dropped without a word
        raise ConfigError([(key, f"written twice in {path.name} (line {first[0]} and line {second[0]}); "
                                 f"keep one") for key, first, second in duplicates])
    if mapping is None:  # an empty file (or comments only): most likely not the file meant
        raise ConfigError([("<file>", f"{path} is empty (no keys); give a config with its keys, "
                                      f"e.g. one of configs/, or '{{}}' for every default")])
    if not isinstance(mapping, dict):
        # TOML or INI (`seed = 1`, `[optimizer]`) reads in YAML as one string: "got str" said nothing of why
        hint = _assignment_hint(text) if isinstance(mapping, str) else ""
        raise ConfigError([("<file>", f"{path} must hold a mapping of keys, got {type(mapping).__name__}{hint}")])
    return mapping, positions


#: A line ``key = value`` (TOML, INI), which YAML reads as part of a plain string.
_ASSIGNMENT = re.compile(r"^[ \t]*[A-Za-z_][\w.-]*[ \t]*=", re.M)
#: A ``[section]`` line (TOML, INI).
_SECTION = re.compile(r"^[ \t]*\[[^\]\n]+\][ \t]*$", re.M)


def _assignment_hint(text: str, error_line: int | None = None) -> str:
    """What a refused config's message adds where ``text`` has a ``key = value`` line: it looks
    like TOML or INI ("got str", or a YAML syntax error, said nothing of why). For a syntax error
    at ``error_line`` (0-based), only where that line or the one before it is such a line or a
    ``[section]``: a YAML file whose error was elsewhere (an unclosed ``[``) was told it looked like
    TOML for an ``x = 1`` inside one of its strings."""
    if error_line is not None:
        near = "\n".join(text.splitlines()[max(0, error_line - 1):error_line + 1])
        if not (_ASSIGNMENT.search(near) or _SECTION.search(near)):
            return ""
    if not _ASSIGNMENT.search(text):
        return ""
    return ("; it looks like TOML or INI (key = value): a config is YAML, written key: value, a section's keys "
            "under it (optimizer: {lr: 0.1})")


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: ``line L, column C: <problem> (<context> at line L, column C)``.

    PyYAML's own text spans several lines and quotes the document as ``"<unicode string>"``
    with a caret under the offending column; one line keeps the message a message."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem is None:
        return _short_text(" ".join(str(err).split()))

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    text = f"{at(err.problem_mark)}: {err.problem}" if err.problem_mark else err.problem
    if err.context:
        text += f" ({err.context} at {at(err.context_mark)})" if err.context_mark else f" ({err.context})"
    return _short_text(" ".join(text.split()))


def _short_text(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters (a YAML error quotes the offending line)."""
    return text if len(text) <= limit else text[:limit] + " ..."


def read_mapping(path: str | Path) -> dict:
    """The YAML mapping in ``path`` (empty file: ``{}``); :class:`ConfigError` as :func:`read_yaml`."""
    return read_yaml(path)[0]


def located_problems(problems: Iterable[tuple[str, str]], positions: Mapping[str, tuple[int, int]],
                     file: str, overrides: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Each problem whose key is written in the file (``positions``: :func:`read_yaml`'s), with
    ``(file line L, column C)`` appended; not one whose key (or a section above it) a ``key=value``
    of ``overrides`` set: that value came from the command line, not from the file. What
    ``catapult train`` and ``catapult sweep`` both say of a config's problems.

    >>> problems = [("train.steps", "must be > 0"), ("optimizer.lr", "must be > 0"), ("seed", "bad")]
    >>> at = {"train.steps": (3, 3), "optimizer.lr": (5, 3)}
    >>> for key, message in located_problems(problems, at, "a.yaml", ["optimizer=..."]):
    ...     print(key, "|", message)
    train.steps | must be > 0 (a.yaml line 3, column 3)
    optimizer.lr | must be > 0
    seed | bad
    """
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        positions = {k: v for k, v in positions.items() if k != key and not k.startswith(key + ".")}
    out = []
    for key, message in problems:
        if key in positions:
            line, column = positions[key]
            message = f"{message} ({file} line {line}, column {column})"
        out.append((key, message))
    return out


def name_from_file(mapping: dict, path: str | Path, fallback: str = "run") -> list[tuple[str, str]]:
    """Where ``mapping`` sets no ``name``, set it from the config file's stem (characters a run name
    cannot hold as ``_``) and return ``[]``; where that stem gives no run name, set ``fallback`` (the
    other keys are still checked) and return the problem, for ``name`` (``'...yaml'`` gave the name
    ``'..'``, and ``catapult sweep`` of ``ü.yaml`` was refused as ``got '_'``, a name never written).

    >>> named = {}
    >>> name_from_file(named, "configs/fig 1.yaml"), named
    ([], {'name': 'fig_1'})
    >>> name_from_file({}, "ü.yaml")[0][1][:60]
    "not set, and the config file's name 'ü.yaml' gives no run na"
    """
    if mapping.get("name") is not None:
        return []
    path = Path(path)
    mapping["name"] = re.sub(r"[^A-Za-z0-9_.+=-]", "_", path.stem) or fallback
    if re.fullmatch(RUN_NAME, mapping["name"]):
        return []
    mapping["name"] = fallback
    return [("name", f"not set, and the config file's name {path.name!r} gives no run name "
                     f"(its stem {path.stem!r}; a run name starts with a letter or digit, then "
                     f"letters, digits and _ . + = -, as it names runs/<name>/): set name: in the "
                     f"file or name=... on the command line")]


def load_config(path: str | Path, overrides: Iterable[str] = (), set_aside: dict | None = None, *,
                checks: bool = True) -> dict:
    """Read a YAML config, apply ``key=value`` overrides, validate, fill defaults.

    ``name`` defaults to the file's stem. The :data:`STUDY_SECTIONS` (``sweep:``, what
    ``catapult sweep`` grids over, and ``coord_check:``) are set aside, so a study config also
    trains as its base run; ``set_aside`` (a dict) receives those the file had, so a command can
    say they were ignored (a file may be a pipe: it is read once). Raises :class:`ConfigError`
    for a missing or unreadable file, bad YAML, or any invalid key/value; a problem with a key
    written in the file names the key's line and column there. ``checks=False``: each key on its
    own only (:func:`~catapult.config.validate`'s).
    """
    checks = checks_flag("load_config", checks)  # a flag: checks=[] skipped the cross-key checks
    path = Path(path)
    mapping, positions = read_yaml(path)
    for section in STUDY_SECTIONS:
        if section in mapping and set_aside is not None:
            set_aside[section] = mapping[section]
        mapping.pop(section, None)
    overrides = list(overrides)
    mapping = apply_overrides(mapping, overrides)
    unnamed = name_from_file(mapping, path)
    try:
        config = validate(mapping, checks=checks)
    except ConfigError as err:
        raise ConfigError(unnamed + located_problems(err.problems, positions, path.name, overrides)) from None
    if unnamed:
        raise ConfigError(unnamed)
    return config


def dump_config(config: Mapping[str, Any] | BaseModel) -> str:
    """The config (a plain dict or a :class:`RunConfig`) as YAML, keys in schema order (what a
    run writes as ``config.yaml``)."""
    if isinstance(config, BaseModel):
        config = config.model_dump()
    return yaml.safe_dump(plain_data(config), sort_keys=False, default_flow_style=None)


def plain_data(value: Any) -> Any:
    """``value`` with mappings as plain dicts (string keys) and tuples as lists: what YAML and
    JSON write the same way everywhere."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value
