"""``python -m catapult.sweep COMMAND ...``: the sweep commands (sweep, export, plot, report)
on their own, with the same parsing, validation and exit codes as ``catapult COMMAND``."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from catapult import cli

    cli.COMMANDS = ["catapult.sweep.commands"]  # this process only: just the sweep commands
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
