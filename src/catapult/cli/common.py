"""What every config-driven command shares: ``CONFIG [key=value ...]`` arguments, loading and
validating the config (exit code 2 on bad input, by :func:`catapult.cli.main`), ``--threads``."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from catapult.arguments import max_threads, max_workers
from catapult.config import ConfigError
from catapult.files import UNMARKED_FIGURES, figure_path, is_run_record, partial_of_ours, written_by_catapult
from catapult.run_root import relocated_root
from catapult.sweep.store_file import has_sqlite_header

__all__ = ["add_config_arguments", "config_from_args", "overrides_from_args", "apply_threads", "check_out_file",
           "output_folders", "check_image_file", "figure_path", "check_study_dir", "threads_problem", "max_threads", "workers_problem",
           "max_workers",
           "partial_of_ours", "path_option", "store_problem", "coord_check_ignored_note", "where_values"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG [key=value ...] [--device DEVICE] [--progress MODE]`` for a config-driven command."""
    parser.add_argument("config", metavar="CONFIG", help="YAML run config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", default=[],
                        help="override config keys, e.g. optimizer.lr=32/lambda0 schedule.warmup_steps=64")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as device=...; default: the config's "
                                              "device, cpu where it sets none)")
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="progress display (default: a bar on a terminal, plain lines otherwise)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is fastest for small "
                             "models on a busy machine; at most 4 per CPU or 64, whichever is more)")


def path_option(text: str) -> str:
    """The argparse ``type`` of every path option (``--out``, ``--plot``, ``--weights``,
    ``--write-configs``, ``--trajectories-out``): an empty value is refused (exit 2, naming the option) rather than
    taken as the option left out, which wrote to the default place (``--out ''`` wrote
    runs/<name>/, ``demo --write-configs ''`` started the whole demo)."""
    if text == "":
        raise argparse.ArgumentTypeError("an empty path; give a name, or leave the option out for its default")
    return text


def config_from_args(args: argparse.Namespace) -> dict:
    """Load and validate ``args.config`` with ``args.overrides`` (and ``--device``) applied.

    Raises :class:`~catapult.config.ConfigError` naming each bad key; :func:`main` turns that
    into a message on stderr and exit code 2. Applies ``--threads`` (``torch.set_num_threads``).
    A run folder's ``config.yaml`` with a relative ``data.root`` reads the data the run read,
    from any directory (:func:`catapult.run_root.relocated_root`; not where the command line
    sets ``data.root``); where they moved, a ConfigError naming ``data.root`` and both paths.
    """
    from catapult.config import load_config  # here: the parser's build (``--help``) reads no YAML, no pydantic

    set_aside: dict = {}
    overrides = overrides_from_args(args)
    config = load_config(args.config, overrides, set_aside=set_aside)
    if not _set_on_command_line(overrides, "data.root"):
        root, problem = relocated_root(args.config, config)  # a run folder's relative data.root, from here
        if problem is not None:
            raise ConfigError([("data.root", problem)])
        if root is not None:
            config["data"]["root"] = root
    if config["data"].get("n_train") is not None and not _set_on_command_line(overrides, "data.n_train") \
            and is_run_record(Path(args.config).parent / "summary.json"):
        from catapult.engine.shard_run import reads_shards
        if reads_shards(config["data"]):   # a run before shards refused n_train recorded it, and read every token
            print(f"catapult {getattr(args, 'command', None) or 'train'}: note: data.n_train "
                  f"({config['data']['n_train']}) in this run's config.yaml is not applied: the run read every "
                  f"token of its shards (it was recorded before token shards refused the key)", file=sys.stderr)
            config["data"]["n_train"] = None
    apply_threads(args)
    if "sweep" in set_aside:
        print(sweep_ignored_note(getattr(args, "command", None), set_aside["sweep"], config), file=sys.stderr)
    if "coord_check" in set_aside:  # as for sweep: (it was set aside without a word)
        print(coord_check_ignored_note(getattr(args, "command", None)), file=sys.stderr)
    if config["model"]["name"] == "gpt" and config["loss"] == "mse":  # the default: a GPT's first loss read 0.038
        print(f"catapult {getattr(args, 'command', None) or 'train'}: note: loss is mse (the default) on the GPT's "
              f"logits; language models train with loss: cross_entropy (the papers' GPT configs set it)",
              file=sys.stderr)
    schedule = config["schedule"]
    if schedule["warmup"] == "persistent" and schedule["warmup_steps"] != 1:  # persistent has no T_wrm
        print(f"catapult {getattr(args, 'command', None) or 'train'}: note: schedule.warmup_steps "
              f"({schedule['warmup_steps']}) is not used by schedule.warmup: persistent, which raises the lr "
              f"to lr_trgt at the critical lr whenever the loss improved; any T_wrm gives the same run",
              file=sys.stderr)
    if (note := search_keys_note(getattr(args, "command", None), schedule)) is not None:
        print(note, file=sys.stderr)
    return config


#: the critical-lr search's keys, read by ``warmup: catapult`` / ``persistent`` and ``catapult critical-lr``
SEARCH_KEYS = ("delta", "lr_start", "rtol")


def search_keys_note(command: str | None, schedule: dict) -> str | None:
    """The note ``catapult train`` / ``train-ddp`` print where ``schedule.delta`` / ``lr_start`` /
    ``rtol`` are set (not their default, null) beside ``warmup: linear``, which runs no critical-lr
    search and read them without a word; None otherwise (``catapult critical-lr`` reads them).

    Example:
        >>> search_keys_note("train", {"warmup": "linear", "delta": 0.05, "lr_start": None, "rtol": None})[:51]
        'catapult train: note: schedule.delta (0.05) is not '
        >>> search_keys_note("critical-lr", {"warmup": "linear", "delta": 0.05, "lr_start": None, "rtol": None})
    """
    command = command or "train"
    if command not in ("train", "train-ddp") or schedule.get("warmup") != "linear":
        return None
    given = [f"schedule.{key} ({schedule[key]:g})" for key in SEARCH_KEYS if schedule.get(key) is not None]
    if not given:
        return None
    return (f"catapult {command}: note: {', '.join(given)} {'is' if len(given) == 1 else 'are'} not used by "
            f"schedule.warmup: linear, which runs no critical-lr search (warmup: catapult or persistent "
            f"reads {'it' if len(given) == 1 else 'them'}, as does catapult critical-lr)")


def _set_on_command_line(overrides, key: str) -> bool:
    """Whether an override sets ``key`` or a section above it (``data=...``)."""
    parts = key.split(".")
    given = {text.split("=", 1)[0].strip() for text in overrides}
    return any(".".join(parts[:i]) in given for i in range(1, len(parts) + 1))


def sweep_ignored_note(command: str | None, sweep, config: dict) -> str:
    """The one line a single-run command prints for a config with a ``sweep:`` section: the
    section is ignored (``catapult sweep`` runs it), and the swept keys take the base config's
    values, which may appear nowhere in the file (a default lr)."""
    grid = sweep.get("grid") if isinstance(sweep, dict) else None
    keys = [str(key) for key in grid] if isinstance(grid, dict) else []
    if isinstance(sweep, dict) and "seeds" in sweep:
        keys.append("seed")
    shown = ", ".join(f"{key}={_value_at(config, key)}" for key in keys) or "none"
    return (f"catapult {command or 'train'}: note: the config's sweep: section is ignored (`catapult sweep` "
            f"runs it); the swept keys take their base values: {shown}")


def coord_check_ignored_note(command: str | None) -> str:
    """The one line a command other than ``coord-check`` prints for a config with a
    ``coord_check:`` section, which it sets aside.

    >>> coord_check_ignored_note("sweep")
    "catapult sweep: note: the config's coord_check: section is ignored (`catapult coord-check` runs it)"
    """
    return (f"catapult {command or 'train'}: note: the config's coord_check: section is ignored "
            f"(`catapult coord-check` runs it)")


def _value_at(config: dict, dotted: str):
    """The value of the dotted key in the resolved ``config`` ("?" where there is none)."""
    from catapult.sweep.spec import get_dotted

    try:
        return get_dotted(config, dotted)
    except (KeyError, TypeError):
        return "?"


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of the command line, with ``--device D`` as ``device=D``. A
    key given twice is a ConfigError (one of the two was a mistake, as a key written twice in a
    YAML file is), and so is an empty ``--device ""`` (it was ignored)."""
    given = [(text, text) for text in args.overrides]
    if getattr(args, "device", None) is not None:
        given.append((f"device={args.device}", f"--device {args.device}"))
    seen: dict[str, str] = {}
    for text, shown in given:
        key = text.split("=", 1)[0].strip()
        if key in seen:
            raise ConfigError([(key, f"given twice on the command line ({seen[key]!r} and {shown!r}); keep one")])
        seen[key] = shown
    overrides = [text for text, _ in given]
    return overrides


def threads_problem(threads: int | None) -> str | None:
    """What is wrong with a ``--threads`` value (below 1, above :func:`max_threads`), or None."""
    return _count_problem(threads, max_threads())


def workers_problem(workers: int | None) -> str | None:
    """What is wrong with a ``--workers`` value (below 1, above :func:`max_workers`), or None."""
    return _count_problem(workers, max_workers(), "; each worker is a process of its own")


def _count_problem(count: int | None, most: int, why: str = "") -> str | None:
    """What is wrong with a count of threads or processes (below 1, above ``most``), or None."""
    if count is None:
        return None
    if count < 1:
        return f"must be >= 1, got {count}"
    if count > most:
        return f"{count} is more than this machine's {os.cpu_count()} CPUs can use (at most {most}){why}"
    return None


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N``: ``torch.set_num_threads(N)``; a value below 1 or above
    :func:`max_threads` is a ConfigError."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        problem = threads_problem(threads)
        if problem:
            raise ConfigError([("--threads", problem)])
        import torch

        torch.set_num_threads(threads)


def store_problem(text: str, *, reading: bool = False) -> str | None:
    """What makes ``text`` no path of a sweep store, or None: empty, a directory, or a link to
    nothing (SQLite would create the file it names); with ``reading`` (``export``, ``plot``,
    ``transfer``, ``report``) also no file at all, refused as :class:`~catapult.sweep.store.Store`
    refuses it but before the command imports its tables and figures (matplotlib, numpy: a missing
    store's refusal took 0.7 s of CPU), and an existing file that is no store (another program's
    SQLite file, a text file: :func:`~catapult.sweep.store.file_problem`, in the Store's words;
    ``plot`` and ``transfer`` imported matplotlib first). Checked before any work and before output
    names are derived from it (``Path('.').with_suffix`` raised ValueError).

    >>> store_problem("no/such/store.db", reading=True)
    'store not found: no/such/store.db'
    >>> store_problem("no/such/store.db") is None   # `catapult sweep` makes a new store there
    True
    """
    if text == "":  # Path("") is Path("."), the current folder
        return "an empty path is not a catapult sweep store; give the path of the store's SQLite file"
    if Path(text).is_dir():
        return f"{text} is a directory, not a catapult sweep store"
    if Path(text).is_symlink() and not Path(text).exists():   # was called "not a catapult sweep store"
        return (f"{text} is a link to {os.readlink(text)}, which does not exist; give the path of a "
                f"store, or of a new file")
    if reading and not Path(text).exists():
        return f"store not found: {text}"   # Store(create=False)'s words
    if reading:  # read-only through SQLite; this process holds no lock on the store yet
        from catapult.sweep.store import file_problem

        return file_problem(text)
    return None


def check_out_file(option: str, path, replaces: tuple[str, ...] | None = None, *,
                   as_suffix: str | None = None) -> None:
    """Refuse, before any work, an output file path (``--out``) that is a directory, a symbolic
    link (writing through it would change the file it points to), an SQLite database (the store
    being read, or another), an existing file catapult did not write, one of a ``catapult train``
    run's own files in its directory, or whose folder cannot be made or written (a file or a link
    to nothing in its place, the nearest existing folder not writable): a ConfigError naming the
    option. Missing folders are made when the file is written (:func:`output_folders`).

    ``replaces``: the suffixes of the files the command writes (e.g. ``(".html",)``). An existing
    file is replaced only when catapult wrote it in the format the command writes
    (:func:`catapult.files.written_by_catapult`: an earlier output of this kind), so
    ``--out config.yaml`` or a user's own ``results.csv`` is refused (the first as not of a
    suffix of ``replaces``). Without ``replaces`` (a
    figure), an existing file is replaced only when catapult wrote it. ``as_suffix``: the suffix of
    the format the command writes to a name without one of ``replaces`` (``export --format
    parquet --out results``, ``report --out page.txt``), by which such a file is judged: the
    same command replaces it."""
    if path is None:
        return
    path = Path(path)
    if path.is_symlink():
        raise ConfigError([(option, f"{path} is a symbolic link; writing through it would change "
                                    f"{os.path.realpath(path)}: give the path of a plain file")])
    if path.is_dir():
        raise ConfigError([(option, f"{path} is a directory; give a file name")])
    folder = path.absolute().parent
    # missing folders are made when the file is written (output_folders); what stands in the way of
    # making them is refused now: a file or a link to nothing where a folder goes, an unwritable folder
    present = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not present.is_dir():
        what = "a link to nothing" if present.is_symlink() and not present.exists() else "a file"
        raise ConfigError([(option, f"{present} is {what}, not a folder")])
    if not os.access(present, os.W_OK | os.X_OK):
        raise ConfigError([(option, f"the folder {present} is not writable")])
    if path.exists() and any(is_run_record(folder / name) for name in ("metrics.csv", "summary.json")):
        from catapult.engine.run_dir import RUN_FILES  # not the loop: no torch for a refusal

        if path.name in RUN_FILES:  # a run record or marked figure, but the run's: `train --overwrite` refused it after
            raise ConfigError([(option, f"{path} is a file of the `catapult train` run in {path.parent}; give a "
                                        f"new file name")])
    if _is_sqlite(path):  # `export s.db --out s.db` wrote the table over the store it read
        raise ConfigError([(option, f"{path} is an SQLite database (a sweep store?) that would be overwritten; "
                                    f"give a new file name")])
    named = path.suffix.lower()
    # a name of no format the command writes is judged as the one it writes there (as_suffix)
    judged = as_suffix.lower() if as_suffix is not None and named not in (replaces or ()) else named
    ours = path.exists() and written_by_catapult(path, as_suffix=judged or None)
    if replaces is not None and path.is_file() and not ours and (named or judged) not in replaces:
        raise ConfigError([(option, f"{path} exists and is not a {' / '.join(replaces)} file this command "
                                    f"writes; give a new file name")])
    if path.exists() and not ours:
        raise ConfigError([(option, f"{path} exists and catapult did not write it; give a new file name "
                                    f"(or remove it first)")])


@contextlib.contextmanager
def output_folders(path, option: str | None = None):
    """Make the missing folders of an output file the user named (``--plot runs/spectrum.png`` in
    a fresh clone) for the block that writes it, as ``catapult train --out`` and a new sweep store
    make theirs; where the block raises (a store that cannot be read, an interrupt), the folders it
    made are removed again while empty, so a refused command leaves nothing behind. Only folders on
    that path are made (:func:`check_out_file` refused, before any work, a file in their place). A
    folder the file system refuses (under ``/proc``, no permission) is a :class:`ConfigError` naming
    ``option`` where one is given (it was the OS's words alone: "[Errno 2] No such file or directory").

    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> with output_folders(os.path.join(root, "runs", "deep", "fig.png")):
    ...     sorted(os.listdir(os.path.join(root, "runs")))
    ['deep']
    >>> try:
    ...     with output_folders(os.path.join(root, "other", "fig.png")):
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     sorted(os.listdir(root))
    ['runs']
    """
    folder = Path(path).absolute().parent
    missing = [p for p in (folder, *folder.parents) if not (p.exists() or p.is_symlink())]   # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(missing)
        if option is None:
            raise
        problem = ("a file is there" if isinstance(err, FileExistsError) else
                   f"{err.strerror or err} (the file system refused it)")
        raise ConfigError([(option, f"cannot create the directory {folder} for {path}: {problem}; "
                                    f"choose another location")]) from None
    try:
        yield folder
    except BaseException:
        _remove_empty(missing)
        raise


def _remove_empty(folders) -> None:
    """Remove ``folders`` (deepest first) while they are empty and there."""
    for made in folders:
        try:
            made.rmdir()
        except OSError:
            # not made (the mkdir failed at or above it: FileNotFoundError, or ENAMETOOLONG for the
            # name refused, which left the folders made above it behind): go on to those above
            if not os.path.isdir(made):
                continue
            break   # something was written there: leave it and those above


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is an existing file with SQLite's header (a sweep store, this one or another;
    :func:`~catapult.sweep.store_file.has_sqlite_header`, which leaves a driver's locks of this process alone)."""
    return has_sqlite_header(path)


def check_image_file(option: str, path) -> None:
    """:func:`check_out_file` of the file matplotlib writes (:func:`figure_path`: ``fig`` is
    written as ``fig.png``, so that is the file a user's own or a link must not be), and a suffix
    matplotlib can write: a figure file otherwise fails only once the figure is drawn, after the
    work, as a ValueError."""
    if path is None:
        return
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix == "pgf" and shutil.which(_texsystem()) is None:  # was a traceback after the work
        raise ConfigError([(option, f"a .pgf figure is written through LaTeX ({_texsystem()}), which is not "
                                    f"installed; use .pdf or .svg")])
    if suffix in UNMARKED_FIGURES and Path(path).is_file() and not Path(path).is_symlink():
        # refused as "catapult did not write it" before, even the command's own earlier figure
        raise ConfigError([(option, f"{path} exists, and a .{suffix} figure carries no mark by which catapult "
                                    f"could tell it wrote it; give a new file name (or remove it first)")])
    check_out_file(option, path)  # as given: a directory or a link there is refused too
    if figure_path(path) != Path(path):
        check_out_file(option, figure_path(path))
    from matplotlib.backend_bases import FigureCanvasBase  # lazily: matplotlib is slow to import

    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ConfigError([(option, f"cannot write a figure as .{suffix}; use one of "
                                    f"{', '.join('.' + f for f in sorted(formats))}")])


def _texsystem() -> str:
    """The LaTeX program matplotlib writes PGF figures with (``rcParams["pgf.texsystem"]``)."""
    import matplotlib

    return str(matplotlib.rcParams["pgf.texsystem"])


def check_study_dir(command: str, out, owned, marker) -> Path:
    """``out`` as a usable output directory of a study command that replaces its own files
    there (``coord-check``, ``demo``): new, empty, or one this command wrote before, i.e. one
    where ``marker(entry)`` holds for some entry and ``owned(entry)`` for every entry. Anything
    else (a user's folder, a ``train`` run of the same name, the folder of the config itself)
    is a :class:`~catapult.engine.loop.RunDirectoryError` (exit 2) before any work: its files
    would be overwritten."""
    from catapult.engine.run_dir import RunDirectoryError, check_out_dir  # not the loop: no torch for a refusal

    path = check_out_dir(out, overwrite=True, replaces=())  # ownership is judged below
    entries = list(path.iterdir()) if path.is_dir() else []
    if entries:
        foreign = sorted(entry.name for entry in entries if not owned(entry))
        if foreign or not any(marker(entry) for entry in entries):
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            shown = shown or ", ".join(sorted(entry.name for entry in entries)[:3])
            raise RunDirectoryError(f"{path} is not a directory `catapult {command}` wrote (it holds {shown}); "
                                    f"choose a new or empty --out directory rather than overwrite files there")
    return path


def where_values(items, axes=()) -> dict:
    """``--where KEY=VALUE ...`` (every ``--where`` given, of ``plot`` and ``transfer``) as a dict,
    each value read as the config reads it: its text as a ``key=value`` override's
    (:func:`~catapult.config.io.parse_override`: ``seed=010``, YAML 1.1's octal 8, is refused as the
    file and the override refuse it), then normalized by the key's config check (``seed=1e1`` is
    seed 10, ``seed=09`` refused as the config refuses it for an integer key). A value written as
    one of the axis's labels or grid values (``2^-3/λ0``, ``dense``) is kept as written: the plots
    match it to its grid position. A ValueError names the key and the value: a form the override
    refuses, an integer key's refusal, a key given twice (a cell has one value of each key, and
    ``--where seed=0 seed=1`` took the last silently).

    >>> where_values(["seed=1e1", "model.activation=tanh"])
    {'seed': 10, 'model.activation': 'tanh'}
    >>> where_values(["seed=010"])
    Traceback (most recent call last):
    ...
    ValueError: --where seed=010: YAML 1.1 reads 010 as 8 (octal); write the number you mean without leading zeros or colons, or quote it
    """
    from catapult import config as C
    from catapult.config.io import parse_override

    written = {a["key"]: {str(v) for v in (*a["values"], *a["labels"])} for a in axes}
    where, given = {}, {}
    for text in items:
        if "=" not in text:
            raise ValueError(f"--where expects KEY=VALUE, got {text!r}")
        key = text.split("=", 1)[0].strip()
        if key in given:
            raise ValueError(f"--where gives {key} twice ({given[key]!r} and {text!r}); a cell has one "
                             f"value of each key: keep one")
        given[key] = text
        try:
            key, value = parse_override(text)
        except ConfigError as err:
            raise ValueError("; ".join(f"--where {text}: {message}" for _, message in err.problems)) from None
        if str(value) in written.get(key, ()) or value is None or (written and key not in written):
            where[key] = value   # (a key no axis sweeps: the plots refuse it, naming the swept keys)
            continue
        try:
            option = C.get(key)
        except KeyError:   # no config key (a typo): the plots name the swept keys
            option = None
        try:
            value = option.validate(value) if option is not None else value
        except C.InvalidValue as err:
            if option.kind.startswith("an integer"):   # 09, '10', 1.5, 2^3: refused as the config refuses them
                raise ValueError(f"--where {text}: {err}") from None
            # another key's own forms the matcher reads (0.125/λ0, a variant name): kept as written
        where[key] = value
    return where
