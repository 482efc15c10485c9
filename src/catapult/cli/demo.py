"""``catapult demo [--out DIR] [--workers N] [--write-configs DIR]``: see :mod:`catapult.demo`."""
from __future__ import annotations

from pathlib import Path

from catapult import demo
from catapult.cli.common import check_study_dir, partial_of_ours, path_option, workers_problem
from catapult.config import ConfigError
from catapult.files import PARTIAL_PREFIX, PNG_START, is_run_record, written_by_catapult


def register(subparsers) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="the warmup-mechanisms study (Fig. 1) in miniature on embedded data (a few minutes on CPU)",
        description=demo.__doc__.split("\n\n")[1] if demo.__doc__ else None,
    )
    p.add_argument("--out", type=path_option, default="runs/demo", metavar="DIR",
                   help="output directory (default: runs/demo)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel processes, one torch thread each (default: min(2, CPUs))")
    p.add_argument("--write-configs", type=path_option, metavar="DIR",
                   help="only write the study's run configs as DIR/<name>.yaml and exit")
    p.set_defaults(func=_demo_command)


def _demo_command(args) -> int:
    if args.write_configs:
        for path in demo.write_configs(args.write_configs):
            print(path)
        return 0
    if problem := workers_problem(args.workers):
        raise ConfigError([("--workers", problem)])
    runs = {c["name"] for c in demo.demo_configs()}  # the demo owns the directory it wrote, nothing else
    check_study_dir("demo", args.out, owned=lambda entry: _owned(entry, runs),
                    marker=lambda entry: _demo_run(entry, runs))
    demo.run_demo(args.out, workers=args.workers, echo=lambda line: print(line, flush=True))
    return 0



def _owned(entry: Path, runs: set) -> bool:
    """Whether ``entry`` is something ``catapult demo`` wrote, judged by content as the run's own
    files are: a run directory ``--overwrite`` may reuse (no user's ``config.yaml`` in it), a
    figure carrying catapult's mark, the demo's report (its first line). A name alone is not
    enough (a user's ``report.md`` was replaced), nor is a link (the file written would be the
    one it points to)."""
    from catapult.engine.run_dir import RunDirectoryError, check_out_dir  # not the loop: no torch to judge

    if entry.is_symlink():
        return False
    if entry.name.startswith(PARTIAL_PREFIX):  # what a stopped write_whole left: the next one replaces it
        return partial_of_ours(entry, _whole, _start)
    if entry.is_dir():
        if entry.name not in runs:
            return False
        try:
            check_out_dir(entry, overwrite=True)
        except (RunDirectoryError, OSError):
            return False
        return True
    if not entry.is_file():
        return False
    if entry.name == "report.md":
        return _titled_report(entry)
    return entry.name.startswith("fig1_") and entry.suffix == ".png" and written_by_catapult(entry)


def _titled_report(entry: Path) -> bool:
    """Whether the first line of ``entry`` is the demo report's title."""
    try:
        with open(entry, encoding="utf-8") as fh:
            return fh.readline(1024).rstrip("\n") == demo.REPORT_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def _figures() -> set:
    return {demo.figure_name(param) for param in demo.PARAMETRIZATIONS}


def _whole(entry: Path, name: str) -> bool:
    """A demo file written whole under the partial name: its report (the title first) or one of
    its figures (catapult's mark)."""
    return (name == "report.md" and _titled_report(entry)) or (name in _figures() and written_by_catapult(entry))


def _start(name: str) -> bytes | None:
    """How a demo file under ``name`` starts (a write cut off before its mark is judged by it)."""
    return demo.REPORT_TITLE.encode() if name == "report.md" else PNG_START if name in _figures() else None


def _demo_run(entry: Path, runs: set) -> bool:
    """A run directory of an earlier demo: its name, and a run's records inside."""
    return entry.is_dir() and entry.name in runs and any(
        is_run_record(entry / name) for name in ("summary.json", "metrics.csv"))
