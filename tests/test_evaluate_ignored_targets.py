"""engine.evaluate (public: catapult.engine.evaluate, and what train() runs on a Run's test_set,
e.g. one given to assemble_run) with cross_entropy's ignored (-100) targets: the loss is the exact
token mean over the counted tokens, recomputed here with F.cross_entropy(reduction='sum')."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.engine.loop import Processes, evaluate
from catapult.losses import cross_entropy


class Tokens(nn.Module):
    """(B, T) integer tokens -> (B, T, K) logits."""

    def __init__(self, vocab: int = 7):
        super().__init__()
        self.emb = nn.Embedding(vocab, 5, dtype=torch.float64)
        self.out = nn.Linear(5, vocab, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x)))


def _case():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the same weights every run, the session's RNG untouched
        torch.manual_seed(0)
        model = Tokens()
    x = torch.randint(0, 7, (5, 4), generator=g)
    y = torch.randint(0, 7, (5, 4), generator=g)
    y[0, 1:] = -100          # row 0 counts 1 token, row 3 none, the others 4 or 3
    y[2, 3] = -100
    y[3, :] = -100
    return model, x, y


def _truth(model, x, y):
    with torch.no_grad():
        logits = model(x)
    total = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1), reduction="sum", ignore_index=-100)
    return float(total) / int((y != -100).sum())


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_evaluate_is_the_token_mean_over_counted_tokens(chunk):
    model, x, y = _case()
    loss, _ = evaluate(model, cross_entropy, x, y, chunk=chunk)
    assert loss == pytest.approx(_truth(model, x, y), rel=1e-12, abs=0)


def test_the_loops_processes_evaluate_is_the_token_mean(monkeypatch):
    # chunks of one row (a GPT's full-size logits make such chunks): the loop's own evaluation
    monkeypatch.setattr("catapult.engine.loop.EVAL_CHUNK_ELEMENTS", 4 * 7)
    model, x, y = _case()
    loss, acc = Processes().evaluate(model, cross_entropy, x, y)
    assert loss == pytest.approx(_truth(model, x, y), rel=1e-12, abs=0)
    with torch.no_grad():  # the accuracy is a mean over the same counted targets (-100 neither hit nor miss)
        hits = int((model(x).argmax(-1) == y).sum())
    assert acc == pytest.approx(hits / int((y != -100).sum()), rel=1e-12, abs=0)


def test_evaluate_of_targets_all_ignored_is_nan_as_torchs_mean_is():
    # Mutation pass 23b (EL5): with no counted target the loss read 0.0, a perfect loss, where
    # torch's cross_entropy (the truth: 0/0) gives nan
    import math
    import torch
    from torch import nn
    from catapult.engine.loop import evaluate
    from catapult.losses import cross_entropy

    torch.manual_seed(0)
    net = nn.Linear(2, 3)
    x, y = torch.randn(4, 2), torch.full((4,), -100)
    assert math.isnan(torch.nn.functional.cross_entropy(net(x), y).item())
    for chunk in (None, 2):
        loss, _ = evaluate(net, cross_entropy, x, y, chunk=chunk)
        assert math.isnan(loss), (chunk, loss)


def _evaluated_on_two_ranks(rank, world):
    from catapult.engine.distributed import DataParallel

    model, x, y = _case()
    share = slice(0, 3) if rank == 0 else slice(3, 5)   # rank 0: 3 rows, 8 counted tokens; rank 1: 2 rows, 4
    return DataParallel(rank, world).evaluate(model, cross_entropy, x[share], y[share])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_the_ranks_evaluate_is_the_token_mean_over_every_ranks_counted_tokens():  # Mutation pass 24 (EL6)
    # two gloo ranks whose shares hold 3 and 2 rows but 8 and 4 counted tokens: the loss is the token
    # mean of the union (weighted by counted tokens), not the rows' (3 : 2) mean of the ranks' means
    from gloo_ranks import on_ranks

    model, x, y = _case()
    truth = _truth(model, x, y)
    rows_weighted = (3 * _truth(model, x[:3], y[:3]) + 2 * _truth(model, x[3:], y[3:])) / 5
    assert abs(truth - rows_weighted) > 1e-3 * abs(truth)   # the case tells them apart
    with torch.no_grad():
        hits = int((model(x).argmax(-1) == y).sum())
    for loss, acc in on_ranks(_evaluated_on_two_ranks):
        assert loss == pytest.approx(truth, rel=1e-12, abs=0)
        # hits over the union's counted targets, as one process (7e781d46: accuracy ignores -100 as the loss does)
        assert acc == pytest.approx(hits / int((y != -100).sum()), rel=1e-12, abs=0)
