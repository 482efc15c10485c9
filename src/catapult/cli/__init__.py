"""The ``catapult`` command: one module per subcommand, each with ``register(subparsers)``,
which adds its parser and sets ``func=handler`` (``handler(args) -> exit code``).

Commands that read a run config use :mod:`catapult.cli.common`, so they all accept
``key=value`` overrides after the config (anywhere on the line) and validate everything before
any work.

Exit codes: 0 success (a diverged run is a result, still 0); 2 bad input (config key/value,
missing, corrupt or hostile config or data file, an unusable run directory, a full disk, a batch
the config's micro-batches cannot split: ``MicroBatchRefused``, naming the key),
with a short message on stderr (at most :data:`MAX_MESSAGE` characters, no traceback) and no
partial run directory left behind; 1, with such a message, a run that failed on a measurement it
cannot make (finite-difference products whose steps cross ReLU kinks, which the config's checks
cannot foresee in float64: a pre-conditioned operator's steps are large on some parameters), or whose
step after the work failed (a figure, the summary: ``ResultsKept``, naming the file; what the work
produced, ``model.pt`` and ``metrics.csv`` of a run, stays); 141 (128 + SIGPIPE, no message) when the reader of stdout
went away, as in ``catapult sweep CONFIG --dry-run | head``.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

from catapult.cli import coord_check, critical_lr, demo, spectrum, sweep, train, train_ddp
from catapult.cli.common import add_config_arguments, apply_threads, config_from_args, overrides_from_args
from catapult.config import ConfigError, MissingDependency
from catapult.engine.run_dir import ResultsKept, RunDirectoryError
from catapult.writing import printable

__all__ = ["main", "report", "build_parser", "COMMANDS", "add_config_arguments", "config_from_args",
           "overrides_from_args", "apply_threads", "MAX_MESSAGE"]

#: The longest error message printed; a longer one is cut (it quotes some hostile input).
MAX_MESSAGE = 4000

#: The subcommand modules, in ``--help`` order.
COMMANDS = (train, demo, critical_lr, spectrum, coord_check, sweep, train_ddp)


def build_parser(commands: Sequence = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of ``commands`` registered."""
    from catapult import __version__

    parser = argparse.ArgumentParser(
        prog="catapult",
        description="Training dynamics at the edge of stability: sharpness, warmup, critical "
                    "learning rates, GI-Adam and SμPar. Run `catapult COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in commands:
        module.register(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    # Overrides may follow options (`train cfg.yaml --out d lr=1`); argparse's nargs="*"
    # positional stops at the first option, so collect trailing key=value tokens here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = [tok for tok in extra if "=" in tok and not tok.startswith("-")]
        rest = [tok for tok in extra if tok not in overrides]
        if rest or not hasattr(args, "overrides"):
            parser.error("unrecognized arguments: " + " ".join(rest or extra))
        args.overrides = list(args.overrides) + overrides
    return args


def main(argv: Sequence[str] | None = None, commands: Sequence = COMMANDS) -> int:
    """Entry point of the ``catapult`` command; returns the exit code."""
    parser = build_parser(commands)
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as err:
        return report(args.command, err, store=getattr(args, "store", None))


def report(command: str | None, err: BaseException, store: str | None = None) -> int:
    """Print ``err`` as ``catapult COMMAND: error: ...`` and return its exit code (module
    docstring); an exception of no kind listed here is a defect, and is raised again (its
    traceback is the report). ``store``: the sweep store a SQLite error is about. ``train-ddp`` calls this itself on a rank that must leave its
    process group without the interpreter's teardown."""
    try:
        raise err
    except ConfigError as err:
        _error(command, _config_problem(err))
        return 2
    except MissingDependency as err:  # an option whose package is not installed: say which, and how
        _error(command, str(err))
        return 2
    except FileNotFoundError as err:
        _error(command, str(err))
        return 2
    except RunDirectoryError as err:
        _error(command, str(err))
        return 2
    except ResultsKept as err:  # a figure or summary after the work failed: its results stay, named
        _error(command, str(err))
        return 1
    except BrokenPipeError:  # whoever read stdout stopped (`catapult sweep --dry-run | head`): no error of the input
        _detach_stdout()
        return 141
    except OSError as err:  # a full disk, a read-only directory, a directory where a file goes
        _error(command, _os_problem(err))
        return 2
    except sqlite3.OperationalError as err:
        if "unable to open" in str(err):  # a folder SQLite may not create files in (/proc, permissions)
            _error(command, f"the store {store or ''} cannot be opened: {err}")
            return 2
        where = store or "the store"
        if any(word in str(err) for word in ("disk", "full", "readonly", "read-only")):
            _error(command, f"{where} cannot be written: {err}")
        elif "locked" in str(err):
            _error(command, f"{where} stayed locked by another process for 30 s: {err}")
        else:  # a schema that is not the store's ("no such column", "foreign key mismatch")
            _error(command, f"{where} is damaged (SQLite says: {err})")
        return 2
    except sqlite3.DatabaseError as err:  # a store damaged past its header: its pages fail when read
        where = store or "the store"
        _error(command, f"{where} is a damaged SQLite file (SQLite says: {err})")
        return 2
    except KeyboardInterrupt:
        _error(command, "interrupted")
        return 130
    except _micro_batch_refused() as err:  # the config's micro-batches cannot split this model's batch
        key = "eval.sharpness_memory: fast" if err.option == "memory" else "eval.sharpness_chunk_size: null"
        _error(command, f"{err} (in a config: {key})")
        return 2
    except _unreliable_difference() as err:  # a measurement the run cannot make: its failure, not a defect
        _error(command, f"{err}; or set eval.sharpness_hvp: double_backprop (exact products)")
        return 1


def _unreliable_difference() -> type | tuple:
    """:class:`~catapult.curvature.difference.UnreliableDifferenceError`, or no class (``()``, which
    ``except`` matches nothing with) where its module was never imported: no such error can have
    been raised then, and the command's start-up does not import torch for it."""
    difference = sys.modules.get("catapult.curvature.difference")
    return () if difference is None else difference.UnreliableDifferenceError


def _micro_batch_refused() -> type | tuple:
    """:class:`~catapult.curvature.microbatch.MicroBatchRefused`, or no class where its module was
    never imported (as :func:`_unreliable_difference`)."""
    microbatch = sys.modules.get("catapult.curvature.microbatch")
    return () if microbatch is None else microbatch.MicroBatchRefused


def _detach_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's flush at exit does not hit the
    closed pipe again (and print "Exception ignored ... BrokenPipeError")."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (captured)
        pass


def _config_problem(err: ConfigError) -> str:
    """``err`` as printed: one problem with a config key is an ``invalid config``; one with a
    command-line option (``--out``, ``--workers``: commands such as ``export`` read no config)
    is named as the option alone."""
    if len(err.problems) != 1:
        return str(err)
    return str(err) if err.problems[0][0].startswith("-") else f"invalid config: {err}"


def _os_problem(err: OSError) -> str:
    """``err`` as ``FILE: what`` (mkdir through a file says "File exists": say it is a file)."""
    if isinstance(err, FileExistsError) and err.filename and Path(err.filename).is_file():
        return f"{err.filename} is a file where a directory is needed"
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def _error(command: str | None, message: str) -> None:
    prefix = f"catapult {command}" if command else "catapult"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f" ... ({len(message) - MAX_MESSAGE:,} more characters)"
    print(f"{prefix}: error: {printable(message)}", file=sys.stderr)   # quoted input: no escape sequences


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
