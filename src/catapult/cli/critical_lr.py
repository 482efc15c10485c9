"""``catapult critical-lr CONFIG [key=value ...]``: see :mod:`catapult.engine.critical_lr_study`."""
from __future__ import annotations

import json
import sys
import warnings

from catapult.cli.common import add_config_arguments, config_from_args

_SEARCH_WARNING = "critical_lr: "   # how catapult.critical_lr's warnings begin


def register(subparsers) -> None:
    """Add the ``critical-lr`` subcommand."""
    p = subparsers.add_parser(
        "critical-lr",
        help="critical learning rate at init from a loss catapult (forward passes only), beside 2/lambda_0",
        description="Run the critical-lr search (warmup paper Alg. 1-2) on the config's model at "
                    "initialisation and print lr_c, its bracket and the forward passes, beside "
                    "2/lambda_0 (and, for adam, adamw and gi-adam, estimates from the pre-conditioned "
                    "sharpness; radam's first step has no pre-conditioner). Nothing is trained or written.",
    )
    add_config_arguments(p)
    p.add_argument("--cap", action="store_true", help="stop the search at lr_trgt (as the catapult warmup does)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.set_defaults(func=_command)


def _command(args) -> int:
    # (imported here: the records' analysis and dataclasses were paid by every catapult call)
    from catapult.engine.critical_lr_study import estimate, format_estimate
    from catapult.engine.records import json_safe

    config = config_from_args(args)
    # the search's own warnings (no rise in 64 doublings, a zero step) are notes here: as Python
    # warnings they printed "RuntimeWarning" and the line "sys.exit(main())" of the catapult script
    with warnings.catch_warnings(record=True) as caught:
        e = estimate(config, cap=args.cap)
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, RuntimeWarning) and message.startswith(_SEARCH_WARNING):
            print(f"catapult critical-lr: note: {message[len(_SEARCH_WARNING):]}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if args.json:
        print(json.dumps(json_safe(e)))
    else:
        print(format_estimate(e))
    return 0
