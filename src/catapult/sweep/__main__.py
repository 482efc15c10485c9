"""``python -m catapult.sweep COMMAND ...``: the sweep commands (sweep, export, plot, transfer,
report) on their own, with the same parsing, validation and exit codes as ``catapult COMMAND``."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from catapult import cli

    saved = cli.COMMANDS
    cli.COMMANDS = ["catapult.sweep.commands"]  # just the sweep commands, for this call only
    try:
        return cli.main(argv)
    finally:
        cli.COMMANDS = saved


if __name__ == "__main__":
    sys.exit(main())
