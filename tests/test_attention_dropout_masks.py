"""A MultiheadAttention with ``dropout > 0`` draws a mask on its attention weights in train mode,
as a Dropout module does: micro-batches and compiled products refuse it naming the module, and
``distributed=True`` tells the loss's reduction in eval mode (it refused the model, blaming a
plain cross-entropy mean: "loss_fn is neither a mean nor a sum over samples")."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import catapult
from catapult.curvature.distributed import single_process_group


class Attention(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, dropout=dropout, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h, _ = self.attn(x, x, x)
        return self.out(h.mean(1))


def problem(dropout=0.3):
    torch.manual_seed(0)
    model = Attention(dropout).double()
    return model, (torch.randn(12, 3, 4, dtype=torch.float64), torch.randint(0, 3, (12,)))


def test_distributed_takes_attention_dropout_as_one_process_does():
    model, batch = problem()
    alone = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_alone = catapult.critical_lr(model, F.cross_entropy, batch, opt).lr
    with single_process_group():
        got = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, seed=3, distributed=True)
        lr_got = catapult.critical_lr(model, F.cross_entropy, batch, opt, distributed=True).lr
    assert got.value == pytest.approx(alone.value, rel=1e-9)   # the same mask: the same seed
    assert lr_got == lr_alone


@pytest.mark.parametrize("options, option", [({"chunk_size": 5}, "chunk_size"),
                                             ({"hvp": "compiled"}, "hvp='compiled'")])
def test_micro_batches_and_compiled_products_refuse_it_naming_the_module(options, option):
    model, batch = problem()
    with pytest.raises(ValueError, match=rf"{option}: module 'attn' is a MultiheadAttention in train mode "
                                         r"with dropout=0.3, whose mask"):
        catapult.sharpness(model, F.cross_entropy, batch, **options)
    model.eval()   # no mask drawn: accepted, and exact over chunks
    whole = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10).value
    assert catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, chunk_size=5).value == pytest.approx(whole, rel=1e-9)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 3, num_layers=2, dropout=0.3, batch_first=True)
        self.out = nn.Linear(3, 3)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


def test_an_lstm_with_dropout_between_layers_draws_masks_too():
    torch.manual_seed(0)
    model = Recurrent().double()
    batch = (torch.randn(12, 3, 4, dtype=torch.float64), torch.randint(0, 3, (12,)))
    with pytest.raises(ValueError, match=r"chunk_size: module 'rnn' is a LSTM in train mode with dropout=0.3"):
        catapult.sharpness(model, F.cross_entropy, batch, chunk_size=5)
    alone = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, seed=3).value
    with single_process_group():
        got = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-10, seed=3, distributed=True).value
    assert got == pytest.approx(alone, rel=1e-9)
