"""``catapult demo [--out DIR] [--workers N] [--write-configs DIR]``: see :mod:`catapult.demo`."""
from __future__ import annotations

from catapult import demo
from catapult.config import ConfigError
from catapult.engine.loop import check_out_dir


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
    check_out_dir(args.out, overwrite=True)  # the demo owns its directory; a file in the way is not
    demo.run_demo(args.out, workers=args.workers, echo=lambda line: print(line, flush=True))
    return 0

