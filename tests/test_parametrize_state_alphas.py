"""A state_dict records ``alpha_in`` / ``alpha_out`` with the parameterization. A GPT's weights trained
under ``alpha_out=2`` loaded silently into the same GPT built with ``alpha_out=1``: its readout
multiplier ``alpha_out / m_d`` went from 2/2 to 1/2 (the logits halved), while another ``m_d``, which
changes that same multiplier, was refused."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import catapult
from catapult.models import GPT, MLP, WRN
from catapult.parametrize_state import ParametrizationMismatch


def _saved(model) -> dict:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _user(alpha_in=1.0, alpha_out=1.0):
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    return catapult.parametrize(net, "supar", base_width=8, density=0.5, mask_seed=0, alpha_in=alpha_in,
                                alpha_out=alpha_out)


BUILDERS = {
    "gpt": lambda **a: GPT(11, d_model=16, n_layers=1, n_heads=2, context=4, parametrization="mup", base_width=8, **a),
    "mlp": lambda **a: MLP(4, 2, width=16, depth=3, parametrization="supar", base_width=8, density=0.5, **a),
    "wrn": lambda **a: WRN(1, 2, depth=10, widen=2, parametrization="mup", base_widen=1, **a),
    "parametrize": _user,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("key", ["alpha_in", "alpha_out"])
def test_another_alpha_is_refused_naming_both_before_any_tensor_is_copied(name, key):
    torch.manual_seed(0)
    saved = _saved(BUILDERS[name](**{key: 2.0}))
    torch.manual_seed(1)
    target = BUILDERS[name]()
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(ParametrizationMismatch, match=rf"saved from a model with .*{key} 2, .*; the model it is "
                                                      rf"loaded into has .*{key} 1, "):
        target.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))
    torch.manual_seed(1)
    same = BUILDERS[name](**{key: 2.0})
    same.load_state_dict(saved)   # the same alphas load, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(saved.values(), same.state_dict().values()))


def test_the_gpts_logits_under_the_other_alpha_are_halved_which_only_an_old_record_still_allows():
    # the silent load, recomputed: the readout multiplier alpha_out / m_d is the only difference
    torch.manual_seed(0)
    trained = BUILDERS["gpt"](alpha_out=2.0)
    x = torch.randint(0, 11, (2, 4))
    saved = _saved(trained)
    target = BUILDERS["gpt"]()
    with pytest.raises(ParametrizationMismatch, match="alpha_out 2"):
        target.load_state_dict(saved)
    saved._metadata[""]["catapult"].pop("alpha_out", None)   # a record from before the alphas: not compared
    target.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(target(x) * 2, trained(x))
