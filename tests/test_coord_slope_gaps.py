"""A coordinate check's slope over the values whose mean |activation| is a finite number > 0 only:
a width whose run diverged (inf or nan activations) or whose block was dead (all 0) was left out of
the fit, so widths [64, 128, 256, 512] with a flat curve to 256 and inf at 512 printed slope +0.000,
"flat, a correct parameterization", for the least flat curve of all (S); a dead width-1 block printed
"+nan". Now the slope is NaN and the table says which value: "n/a (inf at width 512)". The truth: the
rows' own numbers; end to end, a real model whose readout overflows float32 at one width."""
from __future__ import annotations

import math

import pytest
import torch

from catapult.coord_check import coord_check, coord_slopes, unfit_values
from catapult.engine.coord_check_study import slope_table


def _rows(means, block="mlp", step=0):
    return [{"parametrization": "supar", "axis": "width", "block": block, "step": step, "value": float(v),
             "seed": 0, "module": block, "mean_abs": a, "loss": 1.0} for v, a in means]


@pytest.mark.parametrize("last", [math.inf, math.nan, 0.0])
def test_a_diverged_or_dead_width_is_no_flat_slope(last):
    rows = _rows([(64, 1.0), (128, 1.0), (256, 1.0), (512, last)])
    assert math.isnan(coord_slopes(rows)[("mlp", 0)])
    assert list(unfit_values(rows)) == [("mlp", 0)]
    table = slope_table(rows)
    assert f"n/a ({last:g} at width 512)" in table and "+0.000" not in table, table


def test_finite_curves_keep_their_least_squares_slope():
    means = [(64, 2.0), (128, 1.5), (256, 1.0), (512, 0.9)]
    x = [math.log(v) for v, _ in means]
    y = [math.log(a) for _, a in means]
    mx, my = sum(x) / 4, sum(y) / 4
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    rows = _rows(means) + _rows([(64, 1.0), (128, 0.0), (256, 1.0), (512, 1.0)], block="hidden")
    assert coord_slopes(rows)[("mlp", 0)] == pytest.approx(slope, rel=1e-12)
    table = slope_table(rows)
    assert f"| mlp | {slope:+.3f} |" in table and "n/a (0 at width 128)" in table, table


def test_a_real_run_that_overflows_at_one_width_is_named():
    def make(width):
        model = torch.nn.Sequential(torch.nn.Linear(4, int(width)), torch.nn.Linear(int(width), 3))
        model[0].catapult_block, model[1].catapult_block = "hidden", "logits"
        if width == 32:
            with torch.no_grad():
                model[0].weight.fill_(1.0), model[0].bias.zero_()   # every hidden unit 4
                model[1].weight.fill_(3e38)   # float32's max is 3.4e38: the logits overflow to inf
        return model

    x, y = torch.ones(8, 4), torch.zeros(8, dtype=torch.long)
    rows = coord_check(make, [8, 16, 32], batch=(x, y), steps=1, seeds=[0], optimizer="sgd", lr=0.0)
    assert any(math.isinf(r["mean_abs"]) for r in rows if r["block"] == "logits")
    rows = [dict(r, parametrization="sp", axis="width") for r in rows]
    assert math.isnan(coord_slopes(rows)[("logits", 0)])
    assert "| sp | width | logits | n/a (inf at width 32) |" in slope_table(rows)
    assert math.isfinite(coord_slopes(rows)[("hidden", 0)])


def test_the_unfit_values_are_sorted_and_of_the_seeds_mean_and_the_cell_says_there_are_more():
    """Mutation pass 20 (CU3, CU4, CU6, CU7): unfit_values lists the values in increasing order whatever the
    rows' order (CU3 kept the rows' order), each with the mean over the seeds (seeds 1.0 and nan: nan, unfit;
    CU4 took the largest seed, max(1.0, nan) = 1.0, and passed the value over); the slope table's cell names the
    first three and '...' where there are more (CU6 dropped the '...', CU7 named one)."""
    rows = _rows([(512, 0.0), (256, 0.0), (128, 0.0), (64, 0.0), (32, 1.0)])
    rows += [dict(r, seed=s, mean_abs=a) for r in _rows([(16, 0.0)]) for s, a in ((0, 1.0), (1, math.nan))]
    unfit = unfit_values(rows)[("mlp", 0)]
    assert [v for v, _ in unfit] == [16.0, 64.0, 128.0, 256.0, 512.0]
    assert math.isnan(unfit[0][1]) and all(mean == 0.0 for _, mean in unfit[1:])
    assert "| supar | width | mlp | n/a (nan at width 16, 0 at width 64, 0 at width 128, ...) |" in slope_table(rows)
