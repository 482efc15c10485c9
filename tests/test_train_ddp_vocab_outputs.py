"""``catapult train-ddp`` with a model of yours (the ``gpt`` entry of ``engine.MODELS`` replaced)
that gives fewer scores per token than the shards' vocabulary: refused before any work, naming
``model.name`` and both sizes, as ``catapult train``'s ``check_labels`` refuses such a classifier.
It failed at the first loss (lambda_0's solve): a ValueError on the CPU, a device assert on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from catapult.config import ConfigError
from catapult.engine import MODELS
from catapult.engine.distributed import train_ddp

VOCAB = 257


class TokenModel(torch.nn.Module):
    """A user's token model: ids in, ``outputs`` scores per token out."""

    def __init__(self, vocab: int, outputs: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, outputs)

    def forward(self, idx):
        return self.out(self.emb(idx))


def _config(root, steps=1):
    return dict(seed=0, dtype="float64", data=dict(name="text", root=str(root), tokenizer="bpe", vocab_size=VOCAB,
                                                  context=8),
                model=dict(name="gpt", width=16, depth=1, n_heads=2), loss="cross_entropy",
                optimizer=dict(name="adam", lr=1e-3), train=dict(steps=steps, batch_size=4),
                eval=dict(sharpness_every=1, sharpness_max_iter=5))


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    ids = np.random.default_rng(0).integers(0, VOCAB, 400).astype(np.uint16)
    ids[7] = VOCAB - 1   # the top id is there: a label the model must score
    np.save(root / "part0.npy", ids)
    return root


def test_a_model_with_fewer_outputs_than_the_vocabulary_is_refused_before_any_work(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "gpt", lambda model, context, vocab: TokenModel(vocab, 200))
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train_ddp(_config(shards), out_dir=out)
    assert err.value.keys == ["model.name"]
    assert "gives 200 outputs per token" in str(err.value) and "out_features=257" in str(err.value)
    assert not out.exists()


def test_the_command_exits_2_naming_the_key_and_the_sizes(shards, tmp_path, monkeypatch, capsys):
    from catapult.cli import main

    monkeypatch.setitem(MODELS, "gpt", lambda model, context, vocab: TokenModel(vocab, 200))
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(shards)))
    assert main(["train-ddp", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "200 outputs" in err and "257" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_model_with_the_vocabulary_s_outputs_trains(shards, monkeypatch):
    monkeypatch.setitem(MODELS, "gpt", lambda model, context, vocab: TokenModel(vocab, vocab))
    result = train_ddp(_config(shards, steps=2))
    assert result.summary["steps_completed"] == 2 and len(result.losses) == 3
