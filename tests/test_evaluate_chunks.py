"""``engine.evaluate`` bounds the output one chunk holds (a GPT's logits are rows x context x
vocabulary: 8,192 windows of the 610M config's would be terabytes), and its answer does not
depend on the chunking: the loss and accuracy of the whole set computed in one call."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from catapult.engine import loop


class Recorder(nn.Module):
    """A token model (embedding + readout, outputs rows x context x vocab) that records the rows
    of every forward."""

    def __init__(self, vocab=11, width=4):
        super().__init__()
        self.embed, self.head, self.rows = nn.Embedding(vocab, width), nn.Linear(width, vocab), []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.head(self.embed(x))


def test_chunks_hold_at_most_the_output_budget_and_the_answer_is_the_whole_sets(monkeypatch):
    torch.manual_seed(0)
    model = Recorder().double()
    x, y = torch.randint(0, 11, (50, 6)), torch.randint(0, 11, (50, 6))

    def loss_fn(out, target):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    with torch.no_grad():
        out = model(x)
        want_loss = float(loss_fn(out, y))
        want_acc = float((out.argmax(-1) == y).double().mean())
    model.rows.clear()
    monkeypatch.setattr(loop, "EVAL_CHUNK_ELEMENTS", 7 * 6 * 11)  # 7 rows of 6 tokens x 11 logits
    loss, acc = loop.evaluate(model, loss_fn, x, y)
    assert model.rows[0] == 1  # the probe that measures a row's output
    assert max(model.rows[1:]) == 7 and sum(model.rows[1:]) == 50
    assert loss == pytest.approx(want_loss, rel=1e-12) and acc == pytest.approx(want_acc, abs=1e-12)
    model.rows.clear()
    assert loop.evaluate(model, loss_fn, x, y, chunk=50) == pytest.approx((want_loss, want_acc), rel=1e-12, abs=0)
    assert model.rows == [50]  # an explicit chunk: no probe
