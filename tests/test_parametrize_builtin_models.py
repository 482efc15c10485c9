"""parametrize() on catapult's own models. ``parametrize(GPT(...), "mup", base_width=8)`` set
``lm_head.multiplier = 1/4``, which the GPT never applies (its forward reads out through
``F.linear(h, lm_head.weight)`` times its own ``output_multiplier``, still 1): the logits kept SP's
scale under muP's init and learning rates. The built-in models take ``parametrization=`` instead;
parametrize refuses them, alone or inside a container, before any layer changes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from catapult.models import GPT, MLP, WRN
from catapult.parametrize import parametrize


def _models():
    return [GPT(11, d_model=32, n_layers=1, n_heads=2, context=6), GPT(11, d_model=32, n_layers=1, n_heads=2,
                                                                       context=6, tie_embeddings=True),
            MLP(4, 2, width=16, depth=3), WRN(1, 2, depth=10, widen=1)]


def test_a_gpt_is_refused_or_reads_out_with_the_multiplier_parametrize_set():
    # the recomputation that showed it: logits = F.linear(ln_f(h), W) * alpha_out / m_d, with m_d = 32 / 8
    torch.manual_seed(0)
    gpt = GPT(11, d_model=32, n_layers=1, n_heads=2, context=6)
    try:
        parametrize(gpt, "mup", base_width=8)
    except ValueError as error:
        assert "catapult.models.GPT" in str(error)
    else:
        x = torch.randint(0, 11, (2, 6))
        with torch.no_grad():
            h = gpt.ln_f(gpt.blocks[0](gpt.wte(x) + gpt.wpe(torch.arange(6))))
            assert torch.equal(gpt(x), F.linear(h, gpt.lm_head.weight) * 0.25)


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("contained", [False, True])
def test_catapults_own_models_are_refused_naming_the_constructor_before_any_change(index, contained):
    torch.manual_seed(0)
    model = _models()[index]
    target = torch.nn.Sequential(torch.nn.Identity(), model) if contained else model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    name = type(model).__name__
    words = (r"parametrize\(\): '1' is" if contained else r"parametrize\(\): the module is") + \
        rf" a catapult.models.{name}, .* build it as {name}\(\.\.\., parametrization='mup'"
    with pytest.raises(ValueError, match=words):
        parametrize(target, "mup", base_width=8)
    assert [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert getattr(model, "catapult_roles", None) is None
