"""``catapult critical-lr CONFIG [key=value ...]``: see :mod:`catapult.engine.critical_lr_study`."""
from __future__ import annotations

import json

from catapult.cli.common import add_config_arguments, config_from_args


def register(subparsers) -> None:
    """Add the ``critical-lr`` subcommand."""
    p = subparsers.add_parser(
        "critical-lr",
        help="critical learning rate at init from a loss catapult (forward passes only), beside 2/lambda_0",
        description="Run the critical-lr search (warmup paper Alg. 1-2) on the config's model at "
                    "initialisation and print lr_c, its bracket and the forward passes, beside "
                    "2/lambda_0 (and, for Adam-family optimizers, estimates from the pre-conditioned "
                    "sharpness). Nothing is trained or written.",
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
    e = estimate(config, cap=args.cap)
    if args.json:
        print(json.dumps(json_safe(e)))
    else:
        print(format_estimate(e))
    return 0
