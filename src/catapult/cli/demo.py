"""``catapult demo [--out DIR] [--workers N] [--write-configs DIR]``: see :mod:`catapult.demo`."""
from __future__ import annotations

from pathlib import Path

from catapult import demo
from catapult.cli.common import check_study_dir
from catapult.config import ConfigError


def register(subparsers) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="the warmup-mechanisms study (Fig. 1) in miniature on embedded data (a few minutes on CPU)",
        description=demo.__doc__.split("\n\n")[1] if demo.__doc__ else None,
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default: runs/demo)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes, one torch thread each (default: min(2, CPUs))")
    p.add_argument("--write-configs", metavar="DIR",
                   help="only write the study's run configs as DIR/<name>.yaml and exit")
    p.set_defaults(func=_demo_command)


def _demo_command(args) -> int:
    if args.write_configs:
        for path in demo.write_configs(args.write_configs):
            print(path)
        return 0
    if args.workers is not None and args.workers < 1:
        raise ConfigError([("--workers", f"must be >= 1, got {args.workers}")])
    runs = {c["name"] for c in demo.demo_configs()}  # the demo owns the directory it wrote, nothing else
    check_study_dir("demo", args.out, owned=lambda entry: _owned(entry, runs),
                    marker=lambda entry: entry.is_dir() and entry.name in runs)
    demo.run_demo(args.out, workers=args.workers, echo=lambda line: print(line, flush=True))
    return 0



def _owned(entry: Path, runs: set) -> bool:
    """Whether ``entry`` is something ``catapult demo`` writes: a run directory, a figure, the report
    (a link is not: the file written would be the one it points to)."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in runs
    return entry.is_file() and (entry.name == "report.md" or (entry.name.startswith("fig1_") and entry.suffix == ".png"))
