"""``python -m catapult.cli COMMAND ...``: the same as the ``catapult`` command."""
import sys

from catapult.cli import main

sys.exit(main())
