"""A model's ``from_config`` given a dict of a few of the ``model`` section's keys (the "config object" of a
script) builds what ``catapult train`` builds from the same section: the section's defaults fill the rest.
Before: ``GPT.from_config({"name": "gpt", "width": 32, "depth": 2, "n_heads": 4}, 16, 50)`` failed in a bare
``KeyError: 'parametrization'``, and a misspelt key in the same words. Truth: the model built from
``catapult.config.validate``'s section, from the same seed (equal ``state_dict``s)."""
from __future__ import annotations

import pytest
import torch

from catapult.config import validate
from catapult.models import GPT, MLP

SECTIONS = [
    ({"name": "gpt", "width": 32, "depth": 2, "n_heads": 4, "positions": "sinusoidal", "parametrization": "sp"},
     {"name": "shakespeare"}, lambda m: GPT.from_config(m, 16, 50)),
    ({"name": "gpt", "width": 16, "depth": 1, "n_heads": 2, "parametrization": "supar", "base_width": 8,
      "density": 0.5}, {"name": "shakespeare"}, lambda m: GPT.from_config(m, 8, 30)),
    ({"width": 8, "depth": 3}, {"name": "digits"}, lambda m: MLP.from_config(m, 64, 10)),
]


@pytest.mark.parametrize("section, data, build", SECTIONS)
def test_a_dict_of_a_few_keys_builds_the_model_of_the_validated_section(section, data, build):
    whole = validate({"model": section, "data": data})["model"]
    torch.manual_seed(0)
    want = build(whole).state_dict()
    torch.manual_seed(0)
    got = build(dict(section)).state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_misspelt_or_bad_key_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"(?s)parametrizaton.*Extra inputs are not permitted"):
        GPT.from_config({"name": "gpt", "width": 32, "depth": 2, "n_heads": 4, "parametrizaton": "sp"}, 16, 50)
    with pytest.raises(ValueError, match=r"(?s)width.*expected an integer >= 1"):
        GPT.from_config({"name": "gpt", "width": "wide", "depth": 2}, 16, 50)
