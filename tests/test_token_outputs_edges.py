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
        self.context, self.reduce, self.seen = context, reduce, []

    def forward(self, idx):
        self.seen.append(idx.clone())   # what the check ran the model on
        if self.context is not None:   # a model that reads whole windows only
            idx = idx.view(idx.shape[0], self.context)
        out = self.out(self.emb(idx))
        return out.sum() if self.reduce else out


def _probed_once(model) -> bool:
    """Whether the check ran ``model`` once, on one window of 8 ids 0 (the docstring's probe)."""
    return len(model.seen) == 1 and torch.equal(model.seen[0], torch.zeros(1, 8, dtype=torch.long))


def test_more_scores_than_ids_are_taken():
    model = Tokens(300, 300)
    assert check_token_outputs(CONFIG, model, 257, 8) is None and _probed_once(model)


def test_a_vocabulary_of_one_id_is_probed_with_that_id():
    model = Tokens(1, 1)
    assert check_token_outputs(CONFIG, model, 1, 8) is None and _probed_once(model)


def test_the_probe_is_one_whole_window_of_context_ids():
    model = Tokens(300, 300, context=8)
    assert check_token_outputs(CONFIG, model, 257, 8) is None and _probed_once(model)


def test_a_model_giving_no_scores_per_token_is_left_to_its_loss():
    model = Tokens(300, 2, reduce=True)   # 2 outputs for 257 ids, but a scalar: not scores per token
    assert check_token_outputs(CONFIG, model, 257, 8) is None and _probed_once(model)


def test_a_lazy_models_weights_are_left_for_the_first_step():
    model = torch.nn.Sequential(torch.nn.Embedding(300, 4), torch.nn.LazyLinear(200))
    check_token_outputs(CONFIG, model, 257, 8)   # fewer outputs, but not drawn yet: not judged here
    assert isinstance(model[1].weight, torch.nn.parameter.UninitializedParameter)
