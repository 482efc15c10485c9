"""GPT cells of a SμPar sweep: the local engine vs the batched (torch.func) engine, same cells.

Expands a sweep config (``catapult sweep``'s own :func:`~catapult.sweep.spec.load_sweep` and
:func:`~catapult.sweep.spec.expand`, with the same overrides), keeps the cells matching
``--where key=value`` (dotted keys of the swept axes or ``seed``), and trains exactly those cells
through :func:`catapult.engine.run` one after another (what ``--executor local`` does) and through
:func:`catapult.sweep.ensemble.run_batched` (what ``--executor ensemble`` does for GPT cells),
alternating, ``--reps`` times. Reports wall and CPU seconds per engine (medians), the ratio
local / batched, and the largest relative difference of the final validation loss between the
engines (float32 rounding).

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_supar_cells.py configs/supar/lr_transfer_small.yaml \\
        data.vocab_size=512 'sweep.grid.model.density=[1.0,0.125,0.015625]' \\
        'sweep.grid.optimizer.lr={log2: [-12, -3, 1.5]}' --where model.parametrization=supar seed=0
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from catapult import engine as train
from catapult.cli.common import where_values
from catapult.plots.phase import value_positions, value_selects
from catapult.sweep.driver import axes_metadata
from catapult.sweep.ensemble import run_batched
from catapult.sweep.executors import Cell
from catapult.sweep.spec import expand, load_sweep


def select_cells(base, spec, items) -> list[Cell]:
    """The cells of the grid that ``--where`` ``items`` select, read as ``catapult plot`` and
    ``transfer`` read them (:func:`catapult.cli.common.where_values`: ``seed=1e1`` is seed 10,
    ``model.density=1`` the grid's ``1.0``, an lr by its label ``2^-3/lambda0`` or ``0.125/λ0``;
    as text, ``str(1.0) == "1"`` selected nothing). ``seed`` may be given unswept (the config's).
    A ValueError names a key no axis sweeps, a value the config refuses, or a selection of no cell."""
    axes = axes_metadata(spec)
    where = where_values(items, axes)
    swept = {a["key"]: a for a in axes}
    unknown = [k for k in where if k not in swept and k != "seed"]
    if unknown:
        raise ValueError(f"--where {unknown[0]}: not a swept key; swept keys: {', '.join(swept) or '(none)'}, seed")
    expanded = expand(base, spec)
    records = [{"id": c.id, "swept": c.swept} for c in expanded]
    positions = {k: value_positions(axes, k, records) for k in where if k in swept}

    def selected(c) -> bool:
        return all(value_selects(swept[k], positions[k], c.swept.get(k), v) if k in swept
                   else c.config["seed"] == v for k, v in where.items())

    cells = [Cell(c.id, c.config) for c in expanded if selected(c)]
    if not cells:
        raise ValueError(f"no cell matches --where {' '.join(items)}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--where", nargs="*", default=[], help="key=value filters on the swept values")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, spec = load_sweep(args.config, args.overrides)
    try:
        cells = select_cells(base, spec, args.where)
    except ValueError as err:
        parser.error(str(err))   # exit 2, before any training
    train.load_data(cells[0].config)  # data and imports warm for both engines
    dict(run_batched(cells[:2], threads=args.threads))
    rows = {"local": [], "batched": []}
    diffs = []
    for _ in range(args.reps):
        w0, c0 = time.perf_counter(), time.process_time()
        local = {c.id: train.run(c.config, progress="none") for c in cells}
        rows["local"].append((time.perf_counter() - w0, time.process_time() - c0))
        w0, c0 = time.perf_counter(), time.process_time()
        batched = dict(run_batched(cells, threads=args.threads))
        rows["batched"].append((time.perf_counter() - w0, time.process_time() - c0))
        for c in cells:
            a, b = local[c.id].summary.get("final_test_loss"), batched[c.id].summary.get("final_test_loss")
            if a is not None and b is not None and a == a and b == b:
                diffs.append(abs(a - b) / abs(a))
    print(f"{len(cells)} cells of {args.config} ({' '.join(args.overrides)}; where {' '.join(args.where)}), "
          f"threads {args.threads}, {args.reps} reps (alternating)")
    for name, r in rows.items():
        print(f"{name:8s} wall s {statistics.median([w for w, _ in r]):7.1f} (runs {', '.join(f'{w:.1f}' for w, _ in r)})"
              f"   CPU s {statistics.median([c for _, c in r]):7.1f} (runs {', '.join(f'{c:.1f}' for _, c in r)})")
    ratio_w = [lw / bw for (lw, _), (bw, _) in zip(rows["local"], rows["batched"])]
    ratio_c = [lc / bc for (_, lc), (_, bc) in zip(rows["local"], rows["batched"])]
    print(f"local / batched: wall {statistics.median(ratio_w):.2f}x (per rep {', '.join(f'{r:.2f}' for r in ratio_w)}), "
          f"CPU {statistics.median(ratio_c):.2f}x (per rep {', '.join(f'{r:.2f}' for r in ratio_c)})")
    print(f"final validation loss, largest relative difference between engines: {max(diffs) if diffs else float('nan'):.2e}")


if __name__ == "__main__":
    main()
