"""parametrize() on a model that reads out through its embedding's weight with F.linear (a tied
unembedding that is no module): infer_roles took the last Linear, a hidden layer, as the readout
(output init, 1/m_d multiplier, output lr) and the real readout got nothing; a silent wrong muP.
Now refused before any change, naming the remedies; a tied readout *module* is muP's readout."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rounding import assert_within_rounding, both_sides

import catapult


class FunctionTied(nn.Module):
    """embed (50 x 16) -> residual MLP 16 -> 64 -> 16 -> logits = h E^T through F.linear."""

    def __init__(self, vocab: int = 50, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return F.linear(h, self.embed.weight)


class ModuleTied(FunctionTied):
    """The same with the readout a module sharing the embedding's weight: the remedy."""

    def __init__(self, vocab: int = 50, d: int = 16):
        super().__init__(vocab, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        h = self.embed(x)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def test_a_readout_tied_through_f_linear_is_refused_before_any_change_naming_the_remedies():
    torch.manual_seed(0)
    model = FunctionTied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        catapult.parametrize(model, "mup", base_width=8)
    message = str(info.value)
    assert "'fc2' (Linear 64 -> 16) is the last Linear, so it was taken as the readout" in message
    assert "width of the embedding 'embed' (16)" in message and "F.linear(h, embed.weight)" in message
    assert "head = nn.Linear(16, 50, bias=False); head.weight = embed.weight" in message
    assert "roles={'fc2': 'output'}" in message
    # nothing changed: no role, no multiplier, the same weights and classes
    assert type(model.fc2) is nn.Linear and not hasattr(model.fc2, "catapult_role")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    # the remedies it names: a readout module tied to the embedding: it is muP's readout, fc2 is hidden
    model = catapult.parametrize(ModuleTied(), "mup", base_width=8)   # width 16: m_d = 2
    assert (model.embed.catapult_role, model.fc1.catapult_role, model.fc2.catapult_role,
            model.head.catapult_role) == ("input", "hidden", "hidden", "output")
    assert model.head.weight is model.embed.weight and model.head.multiplier == 0.5
    x = torch.tensor([[1, 2, 3]])
    h = model.embed.weight[x] * model.embed.multiplier
    h = h + model.fc2(torch.relu(model.fc1(h)))
    # logits = (1/m_d) h E^T: length-16 dot products and the multiplier (h is the model's own, bit for bit)
    assert_within_rounding(model(x), 0.5 * h @ model.embed.weight.T,
                           both_sides(16 + 1, 0.5 * h.abs() @ model.embed.weight.abs().T, torch.float32))
    # naming the layer the readout is taken as said (and kept by a second call)
    named = catapult.parametrize(FunctionTied(), "mup", base_width=8, roles={"fc2": "output"})
    assert named.fc2.catapult_role == "output"
    catapult.parametrize(named, "mup", base_width=4)
    # an embedding model whose readout maps to classes (not back to the embedding's width) is no tie
    classifier = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(48, 32), nn.Linear(32, 3))
    assert catapult.parametrize(classifier, "mup", base_width=8)[3].catapult_role == "output"
