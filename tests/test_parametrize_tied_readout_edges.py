"""parametrize()'s refusal of a readout inferred beside an embedding it returns to (mutation pass
16): a readout module tied to the embedding is taken even where the vocabulary is as wide as the
embedding (its out_features then equal the embedding's width, as the layer before an F.linear
readout's do). Truth: the model as constructed (the head shares the embedding's weight)."""
from __future__ import annotations

import torch
import torch.nn as nn

import catapult


class SquareTied(nn.Module):
    """vocab 16 = d 16: embed -> fc 16 -> 16 -> head (the embedding's weight) -> logits."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(d, d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, d, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.embed(x))))


def test_a_tied_readout_module_as_wide_as_the_embedding_is_the_readout():
    torch.manual_seed(0)
    model = catapult.parametrize(SquareTied(), "mup", base_width=4)
    assert model.head.catapult_role == "output" and model.fc.catapult_role == "hidden"
    assert model.head.weight is model.embed.weight
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)
