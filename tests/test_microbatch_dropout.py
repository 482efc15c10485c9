"""A train-mode Dropout with ``p = 0`` draws no mask (it is the identity), so it does not couple
a micro-batch's samples: ``chunk_size`` splits such a model, and the product equals the whole
batch's. Refusing it (any train-mode Dropout) survived the curvature tests."""
import torch

from catapult.curvature import HessianOperator
from catapult.curvature.microbatch import batch_coupling


def test_a_dropout_of_zero_in_train_mode_does_not_stop_micro_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Dropout(0.0),
                                torch.nn.Linear(4, 2)).double().train()
    batch = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64))
    assert batch_coupling(model) is None
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    whole = HessianOperator(model, torch.nn.MSELoss(), batch)(v)
    chunked = HessianOperator(model, torch.nn.MSELoss(), batch, chunk_size=4)(v)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)
