"""``distributed=True`` on a shard held as a BSR tensor (blocks of 2 rows): whether ``loss_fn`` is a mean
or a sum is told from the shard's halves (``shard_reduction.halves``), and half of 6 rows is 3, no
whole number of blocks: the call raised 'a torch.sparse_bsr tensor holds blocks of 2 rows: 3 of its
rows (dim 0) are not a whole number of blocks', naming nothing the user set. Now the halves are cut at
a block's edge (4 + 2 rows; a shard of one block is compared with itself twice over). Truth: the dense
batch's sharpness, and the dense Hessian's top eigenvalue."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import catapult
from catapult.curvature.distributed import single_process_group
from catapult.curvature.shard_reduction import halves

pytestmark = pytest.mark.filterwarnings("ignore:Sparse (CSR|BSR).*beta")


class Tanh(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.tanh(x.to_dense() @ self.w)     # (torch differentiates no BSR product on the CPU)


def _dense_top(model, loss, x, y) -> float:
    H = torch.autograd.functional.hessian(lambda w: loss(torch.tanh(x @ w), y), model.w.detach())
    return float(np.linalg.eigvalsh(H.reshape(12, 12).numpy())[-1])


@pytest.mark.parametrize("rows", [6, 2])
@pytest.mark.parametrize("loss", [torch.nn.MSELoss(), torch.nn.MSELoss(reduction="sum")], ids=["mean", "sum"])
def test_a_bsr_shard_is_halved_at_a_blocks_edge(rows, loss):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 4, dtype=torch.float64, generator=gen)
    y = torch.randn(rows, 3, dtype=torch.float64, generator=gen)
    model = Tanh()
    with single_process_group():
        est = catapult.sharpness(model, loss, (x.to_sparse_bsr((2, 2)), y), tol=1e-10, distributed=True)
    assert est.value == pytest.approx(_dense_top(model, loss, x, y), rel=1e-8)


def test_the_halves_of_a_blocked_shard_hold_whole_blocks():
    x = torch.arange(24.0).view(6, 4)
    _, _, pieces, _ = halves(x.to_sparse_bsr((2, 2)), x)
    assert [p[0].to_dense().tolist() for p in pieces] == [x[:4].tolist(), x[4:].tolist()]
    assert [p[1].tolist() for p in pieces] == [x[:4].tolist(), x[4:].tolist()]
    whole, targets, pieces, _ = halves(x[:2].to_sparse_bsr((2, 2)), x[:2])
    assert whole.to_dense().tolist() == targets.tolist() == x[[0, 1, 0, 1]].tolist()
    assert all(p[0].to_dense().tolist() == x[:2].tolist() for p in pieces)


def test_a_shard_of_one_block_of_rows_is_its_samples_twice_over():
    # (mutation pass 19, HV6) one 2-row block: the halves are the whole shard and it twice over, said
    # in the plural (HV6 said 'its sample'), the rows doubled in order
    x = torch.arange(4.0).view(2, 2)
    whole, ys, pieces, what = halves(x.to_sparse_bsr((2, 2)), torch.zeros(2))
    assert what == "its samples and the samples twice over" and len(pieces) == 2
    assert torch.equal(whole.to_dense(), x[[0, 1, 0, 1]]) and torch.equal(ys, torch.zeros(4))
    assert halves(x[:1], torch.zeros(1))[3] == "its sample and the sample twice over"
