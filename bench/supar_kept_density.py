"""SμPar's density against the masks' counts (bench/RESULTS.md, "SμPar's density: counts, rows and gmp's step 0").

Six tables:

* ``counts``: the density an exact mask keeps (``kept_density``) against the asked one, on every
  mask part (Q/K/V, attention output, MLP in and out) of the shipped ``configs/supar`` GPTs, and over
  MLP widths 8..64;
* ``rows``: live inputs per row of exact per-matrix masks (200 masks each, 10 of 2048 x 2048): their spread, the
  share of rows with none, ``E sqrt(nnz) / sqrt(E nnz)``;
* ``init``: mean |y| and mean y^2 at init of block 0's q/k/v, MLP-in, attention and MLP outputs of a
  SμPar GPT (2 blocks, base width = width) against density, relative to density 1 (8 seeds);
* ``gmp``: the same at step 0 of ``model.sparsity.method: gmp`` (masks all ones, SμPar corrected for the
  final density) and of a dense model, relative to the static-mask SμPar model;
* ``bernoulli_counts``: a Bernoulli mask's drawn density over the asked one per matrix (2000 masks each, 50 of
  2048 x 2048): its sd (closed form ``sqrt((1 - rho) / (n rho))``), the share more than 5% off, the share with none;
* ``bernoulli``: the ``init`` table's mean y^2 (seed mean +- seed sd) and mean |y| for exact masks, Bernoulli
  masks corrected by the asked density (the library's rule) and by each matrix's drawn density (emulated:
  weights times ``sqrt(asked / drawn)``), widths 32 and 64, 16 seeds.
"""
from __future__ import annotations

import argparse
import itertools
import math

import torch

from catapult.models import GPT
from catapult.sparsity import exact_nonzeros, kept_density, random_mask
from catapult.sparsity.static import keeps_no_entry

SHIPPED = {  # config: (widths, densities below 1), the grids of configs/supar
    "coord_check_small": ([64, 128, 256, 512], [0.0625, 0.125, 0.25, 0.5]),
    "coord_check_paper": ([2048], [0.0625, 0.125, 0.25, 0.5]),
    "lr_transfer_small": ([64], [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]),
    "lr_transfer_paper": ([4096], [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]),
    "init_std_small": ([64], [0.25, 0.0625, 0.015625]),
    "init_std_paper": ([4096], [0.25, 0.0625, 0.015625]),
    "width_transfer_small": ([32, 64, 128, 256], [0.25]),
    "width_transfer_paper": ([256, 512, 1024, 2048, 4096], [0.0625]),
    "dynamic_sparsity_small": ([64], [0.5, 0.125, 0.03125]),
    "fig3_610m_paper": ([2048], [0.125]),
}
DENSITIES = [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]
WATCHED = ("blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.0.attn", "blocks.0.mlp")


def counts() -> None:
    print("== kept / asked - 1 on every mask part of the shipped configs (GPT: d x d per Q, K, V and out; 4d x d)")
    for name, (widths, densities) in SHIPPED.items():
        worst = max(abs(kept_density(o * i, rho) / rho - 1) for d, rho in itertools.product(widths, densities)
                    for o, i in ((d, d), (4 * d, d), (d, 4 * d)))
        print(f"  {name:24s} {worst:.3g}")
    print("== hidden width x width (MLP) over widths 8..64: worst |kept / asked - 1|, widths off by more than 1%")
    for rho in [0.5, 0.3, 0.25, 0.125, 0.1, 0.0625, 0.03125, 0.015625]:
        errs = [(abs(kept_density(w * w, rho) / rho - 1), w) for w in range(8, 65) if not keeps_no_entry(w * w, rho)]
        worst, at = max(errs)
        print(f"  density {rho:<9g} {worst:7.3%} at width {at}; {sum(e > 0.01 for e, _ in errs)}/{len(errs)} over 1%")


def rows() -> None:
    print("== live inputs per row of exact per-matrix masks (200 masks each, 10 of 2048 x 2048)")
    print(f"  {'shape':>12s} {'density':>9s} {'mean':>6s} {'kept/asked':>10s} {'cv':>6s} {'P(none)':>7s} {'E sqrt/sqrt E':>13s}")
    g = torch.Generator().manual_seed(0)
    for (o, i), rho in [((64, 64), 1 / 64), ((256, 64), 1 / 64), ((64, 256), 1 / 64), ((64, 64), 1 / 32),
                        ((64, 64), 1 / 16), ((64, 64), 1 / 8), ((256, 256), 1 / 16), ((2048, 2048), 1 / 16),
                        ((9, 9), 1 / 32), ((16, 16), 0.1)]:
        draws = 200 if o * i <= 65536 else 10
        nnz = torch.stack([random_mask((o, i), rho, generator=g).sum(1) for _ in range(draws)]).double()
        mean = exact_nonzeros(o * i, rho) / o
        print(f"  {str((o, i)):>12s} {rho:9.5g} {mean:6.3g} {mean / (rho * i):10.4f} {float(nnz.std()) / mean:6.3f} "
              f"{float((nnz == 0).double().mean()):7.3f} {float(nnz.sqrt().mean()) / math.sqrt(mean):13.3f}")


def _outputs(width: int, seeds: int, drawn: bool = False, **kwargs) -> dict[str, tuple[float, float]]:
    """Mean (mean |y|, mean y^2) of the WATCHED outputs at init over seeds (per seed: :func:`_per_seed`)."""
    got = _per_seed(width, seeds, drawn, **kwargs)
    return {name: (sum(a) / seeds, sum(b) / seeds) for name, (a, b) in got.items()}


def _per_seed(width: int, seeds: int, drawn: bool = False, **kwargs) -> dict[str, tuple[list, list]]:
    """Per seed (mean |y|, mean y^2) of the WATCHED outputs at init; ``drawn``: every masked weight
    times ``sqrt(density / drawn density)``, i.e. corrected by the density its mask drew."""
    acc = {name: ([], []) for name in WATCHED}
    tokens = torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(100))
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = GPT(256, d_model=width, n_layers=2, n_heads=max(1, width // 32), context=32, parametrization="supar",
                    base_width=width, init_std=0.02, mask_seed=seed, **kwargs).eval()
        if drawn:
            with torch.no_grad():
                for module in model.modules():
                    mask = getattr(module, "mask", None)
                    if mask is not None and bool(mask.any()):
                        module.weight.mul_(math.sqrt(model.density / float(mask.double().mean())))
        modules = dict(model.named_modules())

        def record(_module, _inputs, out, name):
            acc[name][0].append(float(out.abs().mean()))
            acc[name][1].append(float(out.pow(2).mean()))

        hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
                 for name in WATCHED]
        with torch.no_grad():
            model(tokens)
        for hook in hooks:
            hook.remove()
    return acc


def init(widths: list[int], seeds: int) -> None:
    for width in widths:
        print(f"== SμPar GPT width {width} at init: mean|y| / its density-1 value [mean y^2 ratio], {seeds} seeds")
        dense = _outputs(width, seeds)
        print("  density  " + "  ".join(f"{name[9:]:>16s}" for name in WATCHED))
        for rho in DENSITIES[1:]:
            got = _outputs(width, seeds, density=rho)
            print(f"  {rho:<8g} " + "  ".join(f"{got[n][0] / dense[n][0]:7.3f} [{got[n][1] / dense[n][1]:6.3f}]"
                                            for n in WATCHED))


def gmp(seeds: int) -> None:
    print(f"== step 0 of gmp (masks all ones, SμPar of the final density) and dense, over the static-mask model; "
          f"width 64, {seeds} seeds: mean y^2 ratio (mean |y| ratio)")
    for rho in (0.5, 0.125, 0.03125):
        static = _outputs(64, seeds, density=rho)
        pruned = _outputs(64, seeds, density=rho, mask_density=1.0)
        dense = _outputs(64, seeds)
        print(f"  final density {rho}")
        for n in WATCHED:
            print(f"    {n:18s} gmp {pruned[n][1] / static[n][1]:8.2f} ({pruned[n][0] / static[n][0]:6.2f})   "
                  f"dense {dense[n][1] / static[n][1]:5.2f} ({dense[n][0] / static[n][0]:5.2f})")


def bernoulli_counts() -> None:
    print("== Bernoulli masks: drawn / asked density per matrix (2000 masks each, 50 of 2048 x 2048)")
    g = torch.Generator().manual_seed(0)
    for (o, i), rho in [((9, 9), 1 / 32), ((16, 16), 1 / 16), ((32, 32), 1 / 32), ((64, 64), 1 / 64),
                        ((64, 64), 1 / 32), ((64, 64), 1 / 16), ((256, 64), 1 / 64), ((256, 256), 1 / 64),
                        ((2048, 2048), 1 / 16)]:
        draws = 2000 if o * i <= 65536 else 50
        r = torch.stack([random_mask((o, i), rho, method="bernoulli", generator=g).double().mean()
                         for _ in range(draws)]) / rho
        print(f"  {str((o, i)):>12s} {rho:8.4g} n*rho {o * i * rho:8.1f}  sd {float(r.std()):.3f} "
              f"(closed {math.sqrt((1 - rho) / (o * i * rho)):.3f})  >5% off {float(((r - 1).abs() > 0.05).double().mean()):.2f}"
              f"  none {float((r == 0).double().mean()):.3f}")


def bernoulli(widths: list[int], seeds: int) -> None:
    for width in widths:
        dense = _outputs(width, seeds)
        print(f"== SμPar GPT width {width}, {seeds} seeds: mean y^2 / its density-1 mean, seed mean +- seed sd "
              "[mean |y| ratio]")
        print("  density  masks      " + "  ".join(f"{name[9:]:>22s}" for name in WATCHED))
        for rho in (1 / 8, 1 / 32, 1 / 64):
            for label, kwargs, drawn in (("exact", {}, False), ("bern/asked", {"mask_method": "bernoulli"}, False),
                                         ("bern/drawn", {"mask_method": "bernoulli"}, True)):
                got = _per_seed(width, seeds, drawn, density=rho, **kwargs)
                cells = []
                for n in WATCHED:
                    square = torch.tensor(got[n][1]) / dense[n][1]
                    size = torch.tensor(got[n][0]) / dense[n][0]
                    cells.append(f"{float(square.mean()):.3f}+-{float(square.std()):.3f} [{float(size.mean()):.3f}]")
                print(f"  {rho:<8.4g} {label:10s} " + "  ".join(f"{c:>22s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="counts,rows,init,gmp",
                        help="comma-separated: counts,rows,init,gmp,bernoulli_counts,bernoulli")
    parser.add_argument("--widths", default=None, help="widths of the init (64,256) and bernoulli (32,64) tables")
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    tables = args.tables.split(",")
    torch.set_num_threads(1)
    if "counts" in tables:
        counts()
    if "rows" in tables:
        rows()
    if "init" in tables:
        init([int(w) for w in (args.widths or "64,256").split(",")], args.seeds)
    if "gmp" in tables:
        gmp(args.seeds)
    if "bernoulli_counts" in tables:
        bernoulli_counts()
    if "bernoulli" in tables:
        bernoulli([int(w) for w in (args.widths or "32,64").split(",")], args.seeds)


if __name__ == "__main__":
    main()
