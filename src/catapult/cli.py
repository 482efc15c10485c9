"""The ``catapult`` command: a thin dispatcher over subcommands.

Each module named in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser
and sets ``func=handler`` (``handler(args) -> exit code``). Commands that read a run config use
:func:`add_config_arguments` and :func:`config_from_args`, so they all accept ``key=value``
overrides after the config (anywhere on the line) and validate everything before any work.

Exit codes: 0 success (a diverged run is a result, still 0); 2 bad input (config key/value,
missing config or data file), with the problem on stderr and nothing written.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from catapult.config import ConfigError, load_config

#: Modules that provide subcommands (``register(subparsers)``), in ``--help`` order.
COMMANDS: list[str] = [
    "catapult.train",
    "catapult.demo",
    "catapult.critical_lr_cli",
    "catapult.coord_check_cli",
    "catapult.sweep.commands",
]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG [key=value ...] [--device DEVICE] [--progress MODE]`` for a config-driven command."""
    parser.add_argument("config", metavar="CONFIG", help="YAML run config")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. optimizer.lr=32/lambda0 schedule.warmup_steps=64")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as device=...)")
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="progress display (default: a bar on a terminal, plain lines otherwise)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is fastest for small "
                             "models on a busy machine)")


def config_from_args(args: argparse.Namespace) -> dict:
    """Load and validate ``args.config`` with ``args.overrides`` (and ``--device``) applied.

    Raises :class:`~catapult.config.ConfigError` naming each bad key; :func:`main` turns that
    into a message on stderr and exit code 2. Applies ``--threads`` (``torch.set_num_threads``).
    """
    config = load_config(args.config, overrides_from_args(args))
    apply_threads(args)
    return config


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of the command line, with ``--device D`` as ``device=D``."""
    overrides = list(args.overrides)
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    return overrides


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N``: ``torch.set_num_threads(N)``; a value below 1 is a ConfigError."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ConfigError([("--threads", f"must be >= 1, got {threads}")])
        import torch

        torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand from :data:`COMMANDS` registered."""
    from catapult import __version__

    parser = argparse.ArgumentParser(
        prog="catapult",
        description="Training dynamics at the edge of stability: sharpness, warmup, critical "
                    "learning rates, GI-Adam and SμPar. Run `catapult COMMAND --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``catapult`` command; returns the exit code."""
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        _error(args.command, f"invalid config: {err}" if len(err.problems) == 1 else str(err))
        return 2
    except FileNotFoundError as err:
        _error(args.command, str(err))
        return 2
    except KeyboardInterrupt:
        _error(args.command, "interrupted")
        return 130


def _error(command: str | None, message: str) -> None:
    prefix = f"catapult {command}" if command else "catapult"
    print(f"{prefix}: error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
