"""A state_dict carries its model's parameterization and density; loading it into a model
with another one is refused with a message that names both."""
from __future__ import annotations

import io

import pytest
import torch

import catapult
from catapult.models import MLP
from catapult.parametrize_state import ParametrizationMismatch, model_density


def _saved(model) -> dict:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _mlp(parametrization, density, seed=0):
    torch.manual_seed(seed)
    return MLP(12, 3, width=32, depth=3, parametrization=parametrization, base_width=16, density=density)


def test_same_parametrization_and_density_loads_exactly():
    a, b = _mlp("supar", 0.5, seed=0), _mlp("supar", 0.5, seed=1)
    b.load_state_dict(_saved(a))
    x = torch.randn(5, 12)
    assert torch.equal(a(x), b(x))
    assert model_density(a) == 0.5 and model_density(_mlp("sp", 1.0)) == 1.0


def test_another_parametrization_is_refused_naming_both():
    target = _mlp("mup", 0.5)
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(ParametrizationMismatch, match=r"saved from a model with parametrization 'supar', .*"
                                                      r"density multiplier 0\.5 .*; .* has parametrization 'mup', "
                                                      r".*density multiplier 0\.5"):
        target.load_state_dict(_saved(_mlp("supar", 0.5)))
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))  # nothing copied


def test_another_density_is_refused_naming_both():
    with pytest.raises(ParametrizationMismatch, match=r"density multiplier 0\.5 .*; .* density multiplier 0\.25"):
        _mlp("supar", 0.25).load_state_dict(_saved(_mlp("supar", 0.5)))
    with pytest.raises(ParametrizationMismatch, match=r"parametrization 'sp', density multiplier 1 .*; .* density multiplier 0\.5"):
        _mlp("sp", 0.5).load_state_dict(_saved(_mlp("sp", 1.0)), strict=False)


@pytest.mark.parametrize("parametrization", ["mup", "supar"])
def test_another_base_width_is_refused_under_mup_and_supar(parametrization):
    # the width multiplier was saved but not compared: a base_width=16 checkpoint loaded silently
    # into a base_width=64 model of the same shape, whose readout multiplier is 4x larger
    def build(base_width):
        torch.manual_seed(0)
        return MLP(12, 3, width=64, depth=3, parametrization=parametrization, base_width=base_width)

    with pytest.raises(ParametrizationMismatch, match=r"width multiplier 4 .*; .* width multiplier 1 "):
        build(64).load_state_dict(_saved(build(16)))
    build(16).load_state_dict(_saved(build(16)))
    if parametrization == "mup":  # the warmup paper's muP (no base width) is another rule
        with pytest.raises(ParametrizationMismatch, match="'global' rule.*'table' rule"):
            build(64).load_state_dict(_saved(build(None)))
    sp = [MLP(12, 3, width=64, depth=3, parametrization="sp") for _ in range(2)]
    sp[1].load_state_dict(_saved(sp[0]))  # SP has no multipliers: nothing to compare


def test_parametrize_on_a_user_model_records_it_too():
    def build(p):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                  torch.nn.Linear(16, 1))
        return catapult.parametrize(net, p, base_width=4, density=0.5, mask_seed=0)

    build("mup").load_state_dict(_saved(build("mup")))
    with pytest.raises(ParametrizationMismatch, match="'mup'.*'supar'"):
        build("supar").load_state_dict(_saved(build("mup")))


def test_a_checkpoint_loads_into_the_model_its_own_arguments_build():
    # the live density was compared: Bernoulli masks draw it per seed, and GMP prunes it, so a
    # checkpoint was refused by the very model it came from
    from catapult.models import GPT, MLP
    from catapult.sparsity import MaskUpdater

    a = MLP(12, 3, width=64, depth=3, parametrization="supar", density=0.5, mask_method="bernoulli", mask_seed=0)
    b = MLP(12, 3, width=64, depth=3, parametrization="supar", density=0.5, mask_method="bernoulli", mask_seed=1)
    assert model_density(a) != model_density(b)
    b.load_state_dict(_saved(a))
    assert model_density(b) == model_density(a)
    kw = dict(d_model=8, n_layers=1, n_heads=2, context=4, density=0.25, mask_density=1.0)   # sparsity.method gmp
    pruned = GPT(7, **kw)
    updater = MaskUpdater(pruned, "gmp", final_density=0.25, update_every=1, end_step=2)
    for t in range(3):
        updater.step(t)
    fresh = GPT(7, **kw)
    fresh.load_state_dict(_saved(pruned))
    assert model_density(fresh) == pytest.approx(0.25, abs=0.02)


def test_another_mask_method_is_refused_under_supar():
    """An exact-mask checkpoint (width 9, density 1/32: 3 of 81 weights, m_rho 0.037) loaded into a model
    built with Bernoulli masks took its masks and kept the Bernoulli model's m_rho, the asked 1/32: hidden
    Adam lr_mult 32.0 for the 27.0 of the masks' count (18.5%); the other way, a Bernoulli draw's mask in an
    exact model. Now refused naming both methods, under SμPar and its ablations; under SP and muP, which do
    not read the masks, it loads. Truth: 1 / the loaded mask's count, against param_groups' lr_mult."""
    def build(parametrization, method, seed=0):
        torch.manual_seed(seed)
        return MLP(4, 2, width=9, depth=3, parametrization=parametrization, base_width=9, density=1 / 32,
                   mask_method=method, mask_seed=seed)

    exact = build("supar", "exact")
    bernoulli = build("supar", "bernoulli", seed=1)
    kept = int(exact.layers[1].mask.sum()) / 81
    groups = catapult.param_groups(bernoulli, 1.0, "adam")
    hidden_lr = next(g["lr_mult"] for g in groups if any(p is bernoulli.layers[1].weight for p in g["params"]))
    assert kept == 3 / 81 and hidden_lr == pytest.approx(32.0, rel=1e-12)   # 1 / kept = 27: the load would mix them
    for parametrization in ("supar", "supar_init", "supar_lr"):
        with pytest.raises(ParametrizationMismatch, match=r"saved from a model with exact masks; the model it is "
                                                          r"loaded into has bernoulli masks"):
            build(parametrization, "bernoulli", seed=1).load_state_dict(_saved(build(parametrization, "exact")))
        with pytest.raises(ParametrizationMismatch, match=r"with bernoulli masks; .* has exact masks"):
            build(parametrization, "exact").load_state_dict(_saved(build(parametrization, "bernoulli", seed=1)))
    for parametrization in ("sp", "mup"):
        target = build(parametrization, "bernoulli", seed=1)
        target.load_state_dict(_saved(build(parametrization, "exact")))
        assert int(target.layers[1].mask.sum()) == 3


def test_a_gmp_models_masks_are_refused_by_a_static_model():
    """GPT(density=d, mask_density=1.0) is model.sparsity.method gmp: masks start all ones and are pruned to d.
    Its checkpoint loaded into the static GPT(density=d): the model took the all-ones (or part-pruned) masks,
    which nothing prunes there, with SμPar's init and lrs of d: at step 0 it trained dense (live density 1.0
    in a 0.25 model). Now refused, either way and under any parametrization. Truth: the masks' count."""
    from catapult.models import GPT

    kw = dict(d_model=8, n_layers=1, n_heads=2, context=4, density=0.25, mask_seed=0)
    for parametrization in ("supar", "sp"):
        gmp = GPT(7, mask_density=1.0, parametrization=parametrization, **kw)
        static = GPT(7, parametrization=parametrization, **kw)
        assert model_density(gmp) == 1.0 and model_density(static) == 0.25
        with pytest.raises(ParametrizationMismatch, match=r"with masks drawn at mask_density 1 for gmp to prune; "
                                                          r"the model it is loaded into has exact masks"):
            static.load_state_dict(_saved(gmp))
        assert model_density(static) == 0.25                         # nothing copied
        with pytest.raises(ParametrizationMismatch, match=r"with exact masks; .* has masks drawn at mask_density 1"):
            gmp.load_state_dict(_saved(static))
    old = _saved(GPT(7, mask_density=1.0, parametrization="supar", **kw))
    for entry in old._metadata.values():   # a record saved before the mask keys existed: not compared on them
        for key in ("mask_method", "mask_density"):
            entry.get("catapult", {}).pop(key, None)
    static = GPT(7, parametrization="supar", **kw)
    static.load_state_dict(old)
    assert model_density(static) == 1.0


def test_masks_drawn_at_the_density_itself_are_a_static_models():
    """GPT(density=d, mask_density=d) draws the masks a static GPT(density=d) draws (nothing for gmp to
    prune): its checkpoint loads into that model and back (the mask record refused it, naming a gmp start),
    and a Bernoulli one is corrected by the asked density as the static one is (it took the exact count's:
    14 of 144 at 0.1, hidden lr_mult 10.29 for 10.0). Truth: the static model's record and lr_mults."""
    from catapult.models import GPT

    kw = dict(d_model=12, n_layers=1, n_heads=2, context=4, parametrization="supar", density=0.1, mask_seed=0)
    GPT(7, **kw).load_state_dict(_saved(GPT(7, mask_density=0.1, **kw)))
    GPT(7, mask_density=0.1, **kw).load_state_dict(_saved(GPT(7, **kw)))
    for method in ("exact", "bernoulli"):
        static, drawn = GPT(7, mask_method=method, **kw), GPT(7, mask_density=0.1, mask_method=method, **kw)
        lrs = [[g["lr_mult"] for g in catapult.param_groups(m, 1.0, "adam")] for m in (static, drawn)]
        assert lrs[0] == lrs[1] and max(lrs[0]) == pytest.approx(1 / 0.1 if method == "bernoulli" else 144 / 14,
                                                                   rel=1e-12)
        static.load_state_dict(_saved(drawn))
