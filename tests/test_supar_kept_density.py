"""SμPar's corrections of a hidden matrix use the density its mask keeps, not the density asked.

An exact mask keeps ``round(density * numel)`` entries, so a small matrix keeps another density than
asked: 3 of 81 (0.037) for 1/32, 14 of 144 (0.0972) for 0.1. The forward's variance is set by the
live entries: a row's output ``y_i = sum_j W_ij M_ij x_j`` has ``E y_i^2 = var_w * sum_j M_ij x_j^2``,
so averaged over the rows ``var_w * (count / rows) * mean(x^2)``; SμPar's target is the dense base
model's, ``(v / fan_in_base) * fan_in_base * mean(x^2)``. The init variance and the lr corrected with
the asked density missed it by ``kept / asked`` (18.5% at 3 of 81). Truth here: that closed form
with the count read off the drawn mask, and the variance of the layer's output sampled over seeds.
"""
from __future__ import annotations

import math

import pytest
import torch

import catapult
from catapult.models import GPT, MLP
from catapult.sparsity import MaskUpdater


def _hidden(model):
    return [m for m in model.modules() if getattr(m, "catapult_role", None) == "hidden"]


def _lr_mult_of(groups, param):
    return next(g["lr_mult"] for g in groups if any(p is param for p in g["params"]))


def test_mlp_hidden_output_variance_at_init_is_the_dense_base_models():
    # width 9 = base width, density 1/32: round(81 / 32) = 3 live weights of 81 (0.037, not 0.03125).
    # Dense base model: var v / 9 over 9 live inputs, so E y_i^2 = v * mean(x^2) = v for x = ones.
    v = 2.0
    second_moments = []
    for seed in range(600):
        torch.manual_seed(seed)
        net = MLP(4, 2, width=9, depth=8, parametrization="supar", base_width=9, density=1 / 32,
                  weight_var=v, mask_seed=seed)
        for layer in net.layers[1:-1]:                     # the six hidden (9 x 9) layers
            assert int(layer.mask.sum()) == 3
            with torch.no_grad():
                y = layer(torch.ones(1, 9))                # biases are 0 at init
            second_moments.append(float(y.pow(2).mean()))
    got = sum(second_moments) / len(second_moments)
    # one layer's mean of y^2 has a relative sd of 0.90 (measured over 24000 layers: three live weights,
    # rows with two of them add a covariance), so the mean of 3600 layers 1.5%: 6% is 4 sd, and the
    # init of the asked density, 32 / 27 = 1.185 times the target, is 12 sd away
    assert got == pytest.approx(v, rel=0.06)


def test_mlp_hidden_init_variance_and_lr_follow_the_masks_count():
    torch.manual_seed(0)
    net = MLP(4, 2, width=9, depth=3, parametrization="supar", base_width=3, density=1 / 32, mask_seed=0)
    hidden = net.layers[1]
    kept = int(hidden.mask.sum()) / hidden.mask.numel()            # 3 / 81, read off the mask
    m_d = 9 / 3
    groups = catapult.param_groups(net, 1.0, "adam")
    assert _lr_mult_of(groups, hidden.weight) == pytest.approx(1 / (m_d * kept), rel=1e-12)   # 9.0; was 10.67
    sgd = catapult.param_groups(net, 1.0, "sgd")
    assert _lr_mult_of(sgd, hidden.weight) == pytest.approx(1 / kept, rel=1e-12)              # 27.0; was 32.0
    # the same weights drawn with the variance 2 / (3 * m_d * kept) (He at the base width, SμPar's table):
    # the kept entries are N(0, var) draws, so compare their std to sqrt(var) through many seeds
    draws = []
    for seed in range(400):
        torch.manual_seed(seed)
        layer = MLP(4, 2, width=9, depth=3, parametrization="supar", base_width=3, density=1 / 32,
                    mask_seed=seed).layers[1]
        draws.append(layer.weight.detach()[layer.mask])
    values = torch.cat(draws).double()
    var = 2.0 / 3 / (m_d * kept)
    # 1200 N(0, var) draws: the variance estimate's relative sd is sqrt(2 / 1200) = 4.1%; 15% is 3.6 sd,
    # and the asked density's variance (var * kept * 32 = 1.185 var) is 4.5 sd off that bound
    assert float(values.pow(2).mean()) == pytest.approx(var, rel=0.15)


def test_gpt_hidden_lrs_follow_each_matrixs_count():
    # d_model 12: Q, K, V and the attention output are 12 x 12 (round(14.4) = 14 of 144: 0.0972),
    # the MLP's 48 x 12 and 12 x 48 (round(57.6) = 58 of 576: 0.1007); base width 6, base density 0.5
    torch.manual_seed(0)
    model = GPT(11, d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", base_width=6,
                density=0.1, base_density=0.5, mask_seed=0)
    groups = catapult.param_groups(model, 1.0, "adam")
    seen = set()
    for layer in _hidden(model):
        parts = 3 if layer.out_features == 36 else 1
        counts = [int(block.sum()) for block in layer.mask.chunk(parts)]
        assert len(set(counts)) == 1                                   # Q, K, V each keep one count
        kept = sum(counts) / layer.mask.numel()
        expected = 1 / ((12 / 6) * (kept / 0.5))
        assert _lr_mult_of(groups, layer.weight) == pytest.approx(expected, rel=1e-12)
        seen.add(round(kept, 6))
    assert seen == {round(14 / 144, 6), round(58 / 576, 6)}


def test_gmp_corrects_for_the_count_it_prunes_to():
    # model.sparsity.method gmp: masks all ones, pruned to density 0.1 by the end; SμPar's hidden lr is
    # the final mask's (the count GMP keeps), read here off the pruned masks
    torch.manual_seed(0)
    model = GPT(11, d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", density=0.1,
                mask_density=1.0, mask_seed=0)
    groups = catapult.param_groups(model, 1.0, "adam")
    updater = MaskUpdater(model, "gmp", final_density=0.1, update_every=1, end_step=2)
    for t in range(3):
        updater.step(t)
    for layer in _hidden(model):
        kept = int(layer.mask.sum()) / layer.mask.numel()
        assert kept in (14 / 144, 58 / 576)
        assert _lr_mult_of(groups, layer.weight) == pytest.approx(1 / kept, rel=1e-12)


def test_gpt_masks_sparser_than_density_are_refused():
    """GPT(density=0.5, mask_density=0.25) drew masks keeping 0.25 (nothing grows them: gmp prunes down to
    density, rigl keeps the count) and corrected SμPar's hidden init and lr for 0.5's count: lr_mult 2.0
    for the 4.0 of the count its masks keep. Now a ValueError naming mask_density; values outside (0, 1]
    are GPT's mask_density ValueError (they were random_mask's density). Truth: the masks' count."""
    kwargs = dict(d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", mask_seed=0)
    with pytest.raises(ValueError, match=r"GPT mask_density \(0\.25\) is below density \(0\.5\)"):
        GPT(11, density=0.5, mask_density=0.25, **kwargs)
    for bad in (2.0, 0.0, "x"):
        with pytest.raises(ValueError, match=r"GPT mask_density must be a finite number in \(0, 1\]"):
            GPT(11, density=0.5, mask_density=bad, **kwargs)
    model = GPT(11, density=0.25, mask_density=0.25, **kwargs)   # as asked: m_rho of the count it keeps
    groups = catapult.param_groups(model, 1.0, "adam")
    for layer in _hidden(model):
        kept = int(layer.mask.sum()) / layer.mask.numel()
        assert _lr_mult_of(groups, layer.weight) == pytest.approx(1 / kept, rel=1e-12)


def test_parametrize_hidden_lr_and_init_follow_the_count():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(3, 10), torch.nn.Linear(10, 10), torch.nn.Linear(10, 2)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    net = catapult.parametrize(Net(), "supar", base_width=5, density=0.07, mask_seed=0)   # round(7.0) = 7 of 100
    exact = catapult.param_groups(net, 1.0, "adam")
    assert _lr_mult_of(exact, net.b.weight) == pytest.approx(1 / (2 * 0.07), rel=1e-12)
    net = catapult.parametrize(Net(), "supar", base_width=5, density=0.066, mask_seed=0)  # round(6.6) = 7 of 100
    kept = int(net.b.mask.sum()) / 100
    assert kept == 0.07
    groups = catapult.param_groups(net, 1.0, "adam")
    assert _lr_mult_of(groups, net.b.weight) == pytest.approx(1 / (2 * kept), rel=1e-12)     # 7.14; was 7.58
    # the init: gain^2 / (fan_in * m_rho) with m_rho the kept density, over many seeds
    draws = []
    for seed in range(300):
        torch.manual_seed(seed)
        layer = catapult.parametrize(Net(), "supar", base_width=5, density=0.066, mask_seed=seed).b
        draws.append(layer.weight.detach()[layer.mask])
    values = torch.cat(draws).double()
    # 2100 N(0, var) draws: relative sd of the variance sqrt(2 / 2100) = 3.1%; 10% is 3.2 sd, and the
    # asked density's variance (kept / asked = 1.061 var) lies 2 sd past it -- this checks the size,
    # the lr above checks which density
    assert float(values.pow(2).mean()) == pytest.approx(1 / (10 * kept), rel=0.10)


def test_kept_density_is_the_exact_masks_count():
    from catapult.sparsity import kept_density   # new in this change

    for numel, density in [(81, 1 / 32), (144, 0.1), (576, 0.1), (4096, 0.015625), (100, 0.3)]:
        mask = catapult.sparsity.random_mask((numel,), density, generator=torch.Generator().manual_seed(1))
        assert kept_density(numel, density) == int(mask.sum()) / numel
    # three parts (Q, K, V) keep their own counts: 3 * round(0.1 * 144) of 432, not round(0.1 * 432)
    assert kept_density(432, 0.1, parts=3) == 3 * 14 / 432
    assert math.isclose(kept_density(81, 1 / 32, method="bernoulli"), 1 / 32, rel_tol=0, abs_tol=0)


def test_rigl_or_static_masks_denser_than_density_are_refused():
    """GPT(density=0.25, mask_density=0.5) draws masks keeping 0.5 and corrects SμPar's init and lrs for
    0.25's count; gmp prunes them to 0.25, but rigl keeps each mask's count and static masks change never,
    so the model trained at twice its masks' lr silently (Adam lr_mult 4.0 on masks keeping 0.5, whose own is 2.0).
    Now MaskUpdater for rigl or static refuses it naming mask_density and density; gmp runs. Truth: the
    masks' count against the lr_mult param_groups gives."""
    kwargs = dict(d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", mask_seed=0)
    model = GPT(11, density=0.25, mask_density=0.5, **kwargs)
    groups = catapult.param_groups(model, 1.0, "adam")
    for layer in _hidden(model):
        kept = int(layer.mask.sum()) / layer.mask.numel()
        assert kept == 0.5 and _lr_mult_of(groups, layer.weight) * kept == pytest.approx(2.0, rel=1e-12)
    for method, extra in (("rigl", {"update_every": 1}), ("static", {})):
        with pytest.raises(ValueError, match=r"keeps 0\.5 of its weights \(GPT's mask_density above its density "
                                             rf"0\.25\).* {method} never prunes"):
            MaskUpdater(model, method, end_step=4, **extra)
    updater = MaskUpdater(model, "gmp", final_density=0.25, update_every=1, end_step=2)
    for t in range(3):
        updater.step(t)
    for layer in _hidden(model):   # pruned to density's count: the lr_mult is its masks' again
        kept = int(layer.mask.sum()) / layer.mask.numel()
        assert _lr_mult_of(groups, layer.weight) * kept == pytest.approx(1.0, rel=1e-12)
    MaskUpdater(model, "rigl", update_every=1, end_step=4)   # at density's count: rigl keeps it
    dense_start = GPT(11, density=1.0, mask_density=1.0, **kwargs)   # the dense-start correction: nothing to prune to
    MaskUpdater(dense_start, "gmp", final_density=0.25, update_every=1, end_step=2)


def test_bernoulli_masks_drawn_at_density_itself_are_not_refused():
    # mask_density equal to density has nothing for gmp to prune: a Bernoulli draw that keeps more than
    # density's exact count (19 of 20 seeds here) was refused by rigl as if it were gmp's start
    kwargs = dict(d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", density=0.25,
                  mask_density=0.25, mask_method="bernoulli")
    above = 0
    for seed in range(20):
        model = GPT(11, mask_seed=seed, **kwargs)
        above += any(int(m.mask.sum()) > 0.25 * m.mask.numel() for m in _hidden(model))
        updater = MaskUpdater(model, "rigl", update_every=1, end_step=4)
        assert len(updater.layers) == 4
    assert above >= 15
