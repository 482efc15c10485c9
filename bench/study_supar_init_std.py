"""SμPar paper Fig. 7 from sweep exports (``catapult export``): the loss against the init std at
each density, each parametrization at one lr per density, with the best std of every density.

The paper (its Fig. 7) finds SμPar's optimal init std the same at every density, while SP's and
muP's move. Here each (parametrization, density) curve is drawn at the lr with the most init stds
run there (ties: the one reaching the lower loss), so an export holding an lr search at one std
and an std search at the best lr gives the std curve at that lr. Diverged or failed cells count
as +inf; rows without a ``model.init_std`` value are left out. Several exports are read as one.
Prints a Markdown table; ``--out`` draws the curves.

    python bench/study_supar_init_std.py bench/supar_bpe/fig3_lr_per_density_width256.csv \\
        bench/supar_bpe/init_std_per_density_width256.csv --out bench/figures/supar_bpe_init_std_per_density_width256.png
"""
from __future__ import annotations

import math

from study_supar_fig3 import LABEL, command_line, load, mean_std, parametrizations

#: The columns below density that a curve's cells are keyed by.
AXES = ("optimizer.lr", "model.init_std")


def curve(by_lr: dict) -> tuple[float, dict]:
    """The lr with the most init stds run, and its ``{init_std: (mean, std, per-seed losses)}``."""
    def rank(lr):
        best = min(mean_std(seeds.values())[0] for seeds in by_lr[lr].values())
        return -len(by_lr[lr]), best

    lr = min(by_lr, key=rank)
    return lr, {s: (*mean_std(seeds.values()), seeds) for s, seeds in sorted(by_lr[lr].items())}


def best_per_seed(points: dict) -> list[float]:
    """Each seed's own best init std (seeds run at every std of the curve)."""
    seeds = set.intersection(*(set(p[2]) for p in points.values()))
    return [min(points, key=lambda s: points[s][2][seed]) for seed in sorted(seeds)]


def main(argv=None) -> None:
    args = command_line(argv, __doc__)
    data = load(args.csv, args.metric, axes=AXES)
    params = parametrizations(data)
    curves = {(p, d): curve(data[p][d]) for p in params for d in sorted(data[p], reverse=True)}
    stds = sorted({s for _, points in curves.values() for s in points})
    print(f"Final {args.metric}, mean ± std over seeds, against model.init_std; the best of each row in bold:\n")
    print("| parametrization | density | lr | " + " | ".join(f"{s:g}" for s in stds) + " | best (per seed) |")
    print("|---" * (len(stds) + 4) + "|")
    for (p, d), (lr, points) in curves.items():
        finite = {s: m for s, (m, *_rest) in points.items() if math.isfinite(m)}
        best = min(finite, key=finite.get) if finite else None
        cells = []
        for s in stds:
            if s not in points:
                cells.append("-")
                continue
            m, sd, _ = points[s]
            text = f"{m:.3f} ± {sd:.3f}" if math.isfinite(m) else "diverged"
            cells.append(f"**{text}**" if s == best else text)
        seeds = ", ".join(f"{s:g}" for s in best_per_seed(points))
        density = "dense" if d == 1 else f"1/{round(1 / d)}"
        print(f"| {LABEL.get(p, p)} | {density} | 2^{math.log2(lr):g} | " + " | ".join(cells)
              + f" | {'-' if best is None else f'{best:g}'} ({seeds}) |")
    if args.out:
        plot(curves, params, args.out, args.metric)
        print(f"\nwrote {args.out}")


def plot(curves: dict, params: list[str], out: str, metric: str) -> None:
    """One panel per parametrization: loss against init std, one curve per density (error bars:
    seed std), a star at each curve's best."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from catapult.files import save_figure

    fig = Figure(figsize=(4.2 * len(params), 3.6), layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    densities = sorted({d for _, d in curves}, reverse=True)
    for ax, p in zip(axes, params):
        for i, d in enumerate(densities):
            if (p, d) not in curves:
                continue
            lr, points = curves[p, d]
            xs = [s for s in points if math.isfinite(points[s][0])]
            ms = [points[s][0] for s in xs]
            sds = [points[s][1] if math.isfinite(points[s][1]) else 0.0 for s in xs]
            color = colormaps["viridis"](i / max(1, len(densities) - 1))
            label = ("dense" if d == 1 else f"1/{round(1 / d)}") + f" (lr 2^{math.log2(lr):g})"
            ax.errorbar(xs, ms, yerr=sds, marker="o", ms=3, capsize=2, color=color, label=label)
            if ms:
                j = min(range(len(ms)), key=ms.__getitem__)
                ax.plot([xs[j]], [ms[j]], marker="*", ms=11, color=color)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="model.init_std", title=LABEL.get(p, p))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"final {metric} (mean ± std over seeds)")
    save_figure(fig, out, dpi=120)


if __name__ == "__main__":
    main()
