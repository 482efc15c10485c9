"""``engine.check_token_outputs``' edges (mutation pass 14), per its docstring: only *fewer* scores
per token than the vocabulary are refused; the model runs once on one window of ``context`` ids 0
(valid for any vocabulary, one id included); output that is no tensor of scores and a lazy
module's weights are left to the first step. Truth: hand-made token models of known width."""
from __future__ import annotations

import pytest
import torch

from catapult.engine.model_size import MODELS, check_token_outputs

CONFIG = {"model": {"name": "gpt"}}


@pytest.fixture(autouse=True)
def users_gpt(monkeypatch):   # a model of yours: catapult's own GPT is not checked
    monkeypatch.setitem(MODELS, "gpt", lambda model, context, vocab: None)


def test_fewer_scores_than_ids_are_refused():   # the rule itself, beside its edges
    with pytest.raises(ValueError, match="gives 256 outputs per token"):
        check_token_outputs(CONFIG, Tokens(300, 256), 257, 8)


class Tokens(torch.nn.Module):
    def __init__(self, vocab: int, outputs: int, context: int | None = None, reduce: bool = False):
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(vocab, 4), torch.nn.Linear(4, outputs)
        self.context, self.reduce = context, reduce

    def forward(self, idx):
        if self.context is not None:   # a model that reads whole windows only
            idx = idx.view(idx.shape[0], self.context)
        out = self.out(self.emb(idx))
        return out.sum() if self.reduce else out


def test_more_scores_than_ids_are_taken():
    check_token_outputs(CONFIG, Tokens(300, 300), 257, 8)


def test_a_vocabulary_of_one_id_is_probed_with_that_id():
    check_token_outputs(CONFIG, Tokens(1, 1), 1, 8)


def test_the_probe_is_one_whole_window_of_context_ids():
    check_token_outputs(CONFIG, Tokens(300, 300, context=8), 257, 8)


def test_a_model_giving_no_scores_per_token_is_left_to_its_loss():
    check_token_outputs(CONFIG, Tokens(300, 2, reduce=True), 257, 8)


def test_a_lazy_models_weights_are_left_for_the_first_step():
    model = torch.nn.Sequential(torch.nn.Embedding(300, 4), torch.nn.LazyLinear(200))
    check_token_outputs(CONFIG, model, 257, 8)   # fewer outputs, but not drawn yet: not judged here
    assert isinstance(model[1].weight, torch.nn.parameter.UninitializedParameter)
