"""``catapult spectrum CONFIG [key=value ...]``: see :mod:`catapult.engine.spectrum_study`."""
from __future__ import annotations

import contextlib
import json

from catapult.cli.common import (add_config_arguments, check_image_file, config_from_args, figure_path, output_folders,
                                 path_option)
from catapult.config import ConfigError
from catapult.files import missing_file_problem


def register(subparsers) -> None:
    """Add the ``spectrum`` subcommand."""
    p = subparsers.add_parser(
        "spectrum",
        help="top eigenvalues, trace and spectral density of the config's model (at init or from "
             "trained weights)",
        description="Measure the curvature of the config's model on its first batch (the batch "
                    "`catapult train` starts with), with the config's eval.sharpness_* solver "
                    "settings: the top-k eigenvalues (Lanczos), the trace (Hutch++) and the "
                    "spectral density (stochastic Lanczos quadrature). At initialisation, or from "
                    "the model.pt a `catapult train` or `train-ddp` run directory holds (--weights; a run on token "
                    "shards reads them as train-ddp did). Prints the "
                    "numbers (--json: one JSON object) and, with --plot, draws the density with the "
                    "top eigenvalues marked. Nothing is trained.",
    )
    add_config_arguments(p)
    p.add_argument("--weights", type=path_option, metavar="FILE",
                   help="a saved state_dict (a run directory's model.pt) to measure instead of the "
                        "initial weights; read with torch.load(weights_only=True)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="eigenvalues to find (default: eval.spectrum_top_k, else 5; 0 skips)")
    p.add_argument("--trace-matvecs", type=int, default=None, metavar="N",
                   help="Hutch++ products for the trace (default: eval.trace_matvecs, else 100; 0 skips)")
    p.add_argument("--density-runs", type=int, default=8, metavar="R",
                   help="SLQ start vectors (default 8; 0 skips the density)")
    p.add_argument("--density-steps", type=int, default=40, metavar="S",
                   help="Lanczos steps per SLQ run (default 40)")
    p.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian",
                   help="the Hessian (default) or the Gauss-Newton matrix")
    p.add_argument("--preconditioned", action="store_true",
                   help="adam, adamw, gi-adam: the spectrum of P^-1/2 A P^-1/2 with the "
                        "optimizer's first-step preconditioner P (at initialisation only; radam's "
                        "first steps are un-rectified, momentum SGD, and have none)")
    p.add_argument("--plot", type=path_option, metavar="FILE",
                   help="write the density figure (PNG unless the suffix says otherwise)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object (with the "
                                                       "density's grid and values)")
    p.set_defaults(func=_command)


def _count(config: dict, key: str, given: int | None, fallback: int) -> int:
    """A count option: as given, else the config's ``eval.<key>`` when positive, else ``fallback``."""
    if given is not None:
        return given
    return int(config["eval"].get(key) or 0) or fallback


def _command(args) -> int:
    config = config_from_args(args)
    if args.plot is not None:
        check_image_file("--plot", args.plot)
        if args.density_runs == 0:
            raise ConfigError([("--plot", "draws the density, which --density-runs 0 skips")])
    if args.weights is not None and (problem := missing_file_problem(args.weights)) is not None:
        raise ConfigError([("--weights", problem)])
    # the figure's folders are made before the measurement: one that cannot be made (under /proc, no
    # permission) was an exit 2 after the whole measurement, its numbers printed; they go again if it fails
    with output_folders(args.plot, "--plot") if args.plot is not None else contextlib.nullcontext():
        return _measure(args, config)


def _measure(args, config: dict) -> int:
    """Measure, print and draw (``_command``, after its checks)."""
    from catapult.engine.spectrum_study import format_spectrum, measure_spectrum  # torch: after the checks

    result = measure_spectrum(config, weights=args.weights,
                              top_k=_count(config, "spectrum_top_k", args.top_k, 5),
                              trace_matvecs=_count(config, "trace_matvecs", args.trace_matvecs, 100),
                              density_runs=args.density_runs, density_steps=args.density_steps,
                              curvature=args.curvature, preconditioned=args.preconditioned)
    dens = result["density"]
    if args.json:
        from catapult.engine.records import json_safe

        doc = json_safe({k: v for k, v in result.items() if k != "density"})
        doc["density"] = None if dens is None else {
            "grid": [float(x) for x in dens.grid], "density": [float(x) for x in dens.density],
            "sigma": float(dens.sigma)}
        print(json.dumps(doc))
    else:
        print(format_spectrum(result))
    if args.plot is not None:
        from catapult.plots import plot_spectral_density

        what = "Gauss-Newton" if args.curvature == "ggn" else "Hessian"
        where = "trained weights" if args.weights else "initialisation"
        plot_spectral_density(dens, args.plot, title=f"{result['name']}\n{what} spectrum at {where}, batch 0",
                              marks=result["eigenvalues"])
        if not args.json:
            print(f"wrote {figure_path(args.plot)}")
    return 0
