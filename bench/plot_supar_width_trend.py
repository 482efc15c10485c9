"""SμPar Fig. 3 across widths: SμPar's lead over muP and over SP at each sparse density, against
the width, from the tuned-proxy runs' exports (one CSV per width, as ``study_supar_fig3.py``
reads them; each parametrization at its single lr).

The lead is ``(L_other - L_SμPar) / L_other`` of the seed means (positive: SμPar's loss lower);
its error bar is one standard error of that difference, from the two seed spreads. Prints a
Markdown table; ``--out`` draws one panel per baseline.

    python bench/plot_supar_width_trend.py 64=bench/supar_bpe/fig3_1000steps_width64_proxy.csv \\
        128=bench/supar_bpe/fig3_1000steps_width128_proxy.csv 256=bench/supar_bpe/fig3_1000steps_width256_proxy.csv \\
        --out bench/figures/supar_bpe_fig3_proxy_width_trend.png
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from study_supar_fig3 import load

BASELINES = (("mup", "muP"), ("sp", "SP"))


def seed_losses(data, parametrization: str, density: float) -> list[float]:
    """The seeds' losses of ``parametrization`` at ``density`` (its one lr in these runs)."""
    runs = data[parametrization][density]
    if len(runs) != 1:
        raise SystemExit(f"{parametrization} at density {density} has {len(runs)} lrs; these runs have one")
    return list(next(iter(runs.values())).values())


def lead(other: list[float], supar: list[float]) -> tuple[float, float]:
    """SμPar's relative lead over ``other`` and one standard error of it."""
    a, b = np.mean(other), np.mean(supar)
    se = math.sqrt(np.var(other, ddof=1) / len(other) + np.var(supar, ddof=1) / len(supar))
    return float((a - b) / a), float(se / a)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="WIDTH=CSV", help="a width and its export")
    parser.add_argument("--out", help="figure file")
    args = parser.parse_args(argv)
    by_width = {}
    for item in args.runs:
        width, _, path = item.partition("=")
        by_width[int(width)] = load([path], "test_loss")
    widths = sorted(by_width)
    densities = sorted({d for data in by_width.values() for d in data["supar"] if d < 1.0}, reverse=True)
    leads = {(key, w, d): lead(seed_losses(by_width[w], key, d), seed_losses(by_width[w], "supar", d))
             for key, _ in BASELINES for w in widths for d in densities}
    print("| SμPar's lead over | density | " + " | ".join(f"width {w}" for w in widths) + " |")
    print("|---|---|" + "---|" * len(widths))
    for key, name in BASELINES:
        for d in densities:
            cells = [f"{100 * leads[key, w, d][0]:+.1f}% ± {100 * leads[key, w, d][1]:.1f}" for w in widths]
            print(f"| {name} | 1/{round(1 / d)} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from catapult.files import save_figure

        fig, axes = plt.subplots(1, len(BASELINES), figsize=(9, 3.6), sharey=True, layout="constrained")
        for ax, (key, name) in zip(axes, BASELINES):
            for d in densities:
                values = [100 * leads[key, w, d][0] for w in widths]
                errors = [100 * leads[key, w, d][1] for w in widths]
                ax.errorbar(widths, values, yerr=errors, marker="o", capsize=3, label=f"density 1/{round(1 / d)}")
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.set_xlabel("width (d_model; the proxy's is 64)")
            ax.set_title(f"SμPar's loss below {name}'s (%)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("lead, % of the baseline's loss")
        axes[0].legend(fontsize=8)
        fig.suptitle("SμPar Fig. 3 at CPU scale, tuned dense proxy: the lead against width (3 seeds, ± 1 s.e.)",
                     fontsize=10)
        save_figure(fig, args.out)
        plt.close(fig)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
