"""Start vectors of any scale: only their direction counts, so ``2**k v`` must give the solve ``v``
gives, bit for bit (a power of two scales every number exactly). Before, the norms were plain sums
of squares: at 2**-530 (float64) they are partly subnormal (a norm 2e-6 off), below ~2**-540 zero
and past ~2**512 infinite. Truth: the solve from ``v`` itself, and numpy's dense ``eigh``."""
import math

import numpy as np
import pytest
import torch

import catapult
from catapult.curvature.lanczos import batched_lanczos
from catapult.curvature.start import init_direction, mixed_start, start_vector


def matrix_and_start():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(12, 12, generator=g, dtype=torch.float64)
    return B + B.T, torch.randn(12, generator=g, dtype=torch.float64)


def test_batched_rows_of_extreme_norm_give_the_plain_rows_solve():
    # before: 2**-530 v gave 6.489995807 (2.8e-7 off at tol 1e-8), "converged"; 2**-600 v nan after one
    # product; 2**520 v and 2**600 v the value 0.0 after one product, "converged"
    A0, v0 = matrix_and_start()
    exponents = [0, -530, -600, 520, 600]
    V = torch.stack([v0 * 2.0 ** k for k in exponents])
    # one product per row (a matrix product's rows may round by their place in the block)
    ests = batched_lanczos(lambda active, W: torch.stack([A0 @ w for w in W]), V, tol=[1e-8] * 5, max_iter=[100] * 5)
    top = float(np.linalg.eigh(A0.numpy())[0][-1])
    assert ests[0].converged and ests[0].value == pytest.approx(top, rel=1e-13, abs=0)
    for k, est in zip(exponents[1:], ests[1:]):
        assert est.value == ests[0].value and est.matvecs == ests[0].matvecs and est.converged, k
        assert torch.equal(est.vector, ests[0].vector), k


@pytest.mark.parametrize("exponent", [-530, -545, -1000, 600])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_warm_start_of_any_scale_is_the_warm_start_of_its_direction(exponent, dtype):
    # before, at 2**-530 the start differed by 5.9e-8 (float64; the norm's squares partly subnormal); a
    # float64 init cast to float32 at 2**-545 / 2**-1000 became 0 and was rescaled from the float64 source
    v = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = start_vector(v, 40, dtype, torch.device("cpu"), 0, tol=1e-3)
    scaled = start_vector(v * 2.0 ** exponent, 40, dtype, torch.device("cpu"), 0, tol=1e-3)
    assert torch.equal(scaled, plain)
    if dtype == torch.float64:   # the start is v's direction plus 0.1 of a unit random part
        random = start_vector(None, 40, dtype, torch.device("cpu"), 0, tol=1e-3)
        np.testing.assert_allclose(plain.numpy(), (v / v.norm() + 0.1 * random / random.norm()).numpy(),
                                   rtol=0, atol=1e-15)


def test_sharpness_from_a_scaled_init_is_the_sharpness_from_the_init():
    # two products: the value still depends on the start (6 digits differed before, at 2**-530)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    batch = (torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64))
    n = sum(p.numel() for p in model.parameters())
    init = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    plain = catapult.sharpness(model, torch.nn.MSELoss(), batch, init=init, max_iter=2, coarse=None)
    for k in (-530, -545, 600):
        est = catapult.sharpness(model, torch.nn.MSELoss(), batch, init=init * 2.0 ** k, max_iter=2, coarse=None)
        assert est.value == plain.value, k


@pytest.mark.parametrize("dtype, exponent", [(torch.float16, 20), (torch.float16, -30), (torch.float32, 90),
                                             (torch.float32, -90)])
def test_a_float64_init_in_float64s_window_but_not_the_solves_is_its_direction(dtype, exponent):
    # (mutation pass 18, KS3) the window is the target dtype's (product_exponent(dtype=)): 2**20 v is
    # no float16 (inf past 65504) and 2**-30 v is 0 there, though float64 would scale neither
    v = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = start_vector(v, 40, dtype, torch.device("cpu"), 0, tol=1e-3)
    scaled = start_vector(v * 2.0 ** exponent, 40, dtype, torch.device("cpu"), 0, tol=1e-3)
    assert bool(torch.isfinite(plain).all()) and torch.equal(scaled, plain)


def test_init_direction_takes_one_power_of_two_over_the_ranks_parts():
    # (mutation pass 18, KS4) two ranks' parts of one init, their largest entries 2**-600 and 2**-604 apart in
    # scale: each rank's reduce sums the other's largest entry in (as an all-reduce of the maxima does), so both
    # scale by the same 2**-e and the parts stay one direction (each scaled by its own: a factor 16 between them)
    gen = torch.Generator().manual_seed(5)
    parts = [torch.randn(6, generator=gen, dtype=torch.float64) * 2.0 ** -600,
             torch.randn(4, generator=gen, dtype=torch.float64) * 2.0 ** -604]
    tops = [float(p.abs().max()) for p in parts]
    out = [init_direction(p, torch.float64, "cpu", reduce=lambda t, r=r: t + tops[1 - r]) for r, p in enumerate(parts)]
    ratios = torch.cat([o / p for o, p in zip(out, parts)])
    assert torch.equal(ratios, torch.full_like(ratios, ratios[0].item()))
    assert math.frexp(ratios[0].item())[0] == 0.5   # an exact power of two
    assert 2.0 ** -100 <= float(torch.cat(out).abs().max()) < 1   # into the window


def test_init_direction_is_a_copy_and_mixed_start_norms_over_the_ranks():
    # (mutation pass 18, KS5) init_direction returns a copy even where nothing is scaled or cast (the
    # caller's init is not the start it may write into)
    v = torch.linspace(1.0, 2.0, 7, dtype=torch.float64)
    out = init_direction(v, torch.float64, "cpu")
    assert torch.equal(out, v) and out.data_ptr() != v.data_ptr()
    # (KS7) two ranks holding equal parts p of the vector [p, p]: an all-reduce of a sum is 2 t. Each rank's
    # part of the mixed start is the half of the whole vector's (both norms over the ranks, the random part's too)
    gen = torch.Generator().manual_seed(7)
    p, r = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    whole = mixed_start(torch.cat([p, p]), torch.cat([r, r]), 0.25)
    np.testing.assert_allclose(mixed_start(p, r, 0.25, lambda t: 2 * t).numpy(), whole[:5].numpy(), rtol=1e-15, atol=0)
