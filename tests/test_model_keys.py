"""``catapult.models.options.MODEL_KEYS``: the ``model.*`` keys each model is built from, which
``catapult spectrum --weights`` compares with a run's config. Truth: the keys each model's
``from_config`` actually reads (a recording mapping), plus ``name`` and ``sparsity``."""
from __future__ import annotations

import pytest

from catapult.config import ModelConfig
from catapult.models import GPT, MLP, WRN
from catapult.models.options import MODEL_KEYS, model_keys


class _Reads(dict):
    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("name, build", [
    ("mlp", lambda m: MLP.from_config(m, 4, 2)),
    ("wrn", lambda m: WRN.from_config(m, (3, 8, 8), 2)),
    ("gpt", lambda m: GPT.from_config(m, 8, 16)),
])
def test_model_keys_are_the_keys_from_config_reads(name, build):
    extra = {"gpt": {"n_heads": 2}, "wrn": {"depth": 10, "widen": 1, "channels": 2}}.get(name, {})
    section = _Reads(ModelConfig(name=name, width=8, parametrization="mup", **{"depth": 2, **extra}).model_dump())
    build(section)
    assert section.read | {"name", "sparsity"} == set(MODEL_KEYS[name])
    assert set(model_keys(section)) == set(MODEL_KEYS[name])
    assert not {"alpha_in", "alpha_out"} & set(model_keys({**section, "parametrization": "sp"}))


def test_a_gpts_function_record_tells_its_final_norm():
    # (mutation pass 23) final_norm (a LayerNorm before the head, or none) changes what the same weights
    # compute: two records that differ in it are two functions
    from catapult.config import ModelConfig
    from catapult.models.options import function_record

    on, off = (function_record(ModelConfig(name="gpt", final_norm=f, width=8, depth=1, n_heads=2)) for f in (True, False))
    assert on["final_norm"] is True and off["final_norm"] is False
    assert {k: v for k, v in on.items() if k != "final_norm"} == {k: v for k, v in off.items() if k != "final_norm"}


def test_a_model_name_of_yours_keeps_every_key():
    # (mutation pass 23) model_keys of a name not in MODEL_KEYS: all of the section's keys, in order
    from catapult.models.options import model_keys

    assert model_keys({"name": "mine", "width": 3, "gain": 0.5}) == ("name", "width", "gain")
