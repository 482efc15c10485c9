"""``catapult train CONFIG [key=value ...] [--out DIR] [--device DEVICE]``: one run (:func:`catapult.engine.run`)."""
from __future__ import annotations

from pathlib import Path

from catapult.cli.common import add_config_arguments, config_from_args, path_option
from catapult.engine.run_dir import check_out_dir


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train one run from a YAML config",
        description="Train one run from a YAML config. Writes runs/<name>/ (or --out DIR): "
                    "config.yaml (resolved), metrics.csv, summary.json, trajectories.png and "
                    "model.pt (the final state_dict; `catapult spectrum --weights` reads it).",
    )
    add_config_arguments(p)
    p.add_argument("--out", type=path_option, metavar="DIR",
                   help="run directory (default: runs/<name>); one that holds anything is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files (config.yaml, metrics.csv, summary.json, trajectories.png, "
                        "model.pt) of an earlier run's directory, judged by their contents (and the digests "
                        "its summary.json records); a folder "
                        "holding no run's metrics.csv or summary.json, or a file of one of those names "
                        "that a run did not write (or a link), is refused")
    p.set_defaults(func=_train_command)


def _train_command(args) -> int:
    config = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / config["name"]
    check_out_dir(out, overwrite=args.overwrite)  # a folder in the way is refused before torch is imported
    from catapult.engine import format_summary, run  # torch: after the config and the folder are checked

    result = run(config, out_dir=out, progress=args.progress, overwrite=args.overwrite)
    print(format_summary(result.summary))
    print(f"wrote {out}/ (config.yaml, metrics.csv, summary.json, trajectories.png, model.pt)")
    return 0


