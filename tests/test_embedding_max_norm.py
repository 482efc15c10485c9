"""An ``nn.Embedding`` with ``max_norm`` renormalises its weight in place in every forward: the
curvature functions and ``critical_lr`` must leave the model's weight as it was
(``catapult.curvature.stateless.renormed_copies``)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dense_curvature import dense_hessian
from torch_features import FSDP2

import catapult


class Bag(nn.Module):
    def __init__(self, max_norm):
        super().__init__()
        self.embed = nn.Embedding(7, 4, max_norm=max_norm)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens).mean(1)))


def problem():
    torch.manual_seed(0)
    model = Bag(max_norm=0.5).double()   # rows of norm ~2: every one looked up is renormalised
    tokens, labels = torch.randint(0, 7, (12, 3)), torch.randint(0, 3, (12,))
    return model, (tokens, labels)


def unchanged(model, before):
    return all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_sharpness_is_that_of_the_renormalised_rows():
    """The forward looks the rows up renormalised (without a derivative through the renorm), so
    the Hessian is the plain embedding's at the renormalised weight."""
    model, batch = problem()
    plain = Bag(max_norm=None).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.embedding_renorm_(plain.embed.weight, batch[0].reshape(-1), 0.5, 2.0)
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, batch).numpy())[-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, tol=1e-8)
    assert abs(est.value - truth) <= 1e-7 * truth


class DirectBag(nn.Module):
    """The same lookup by a direct ``F.embedding(..., max_norm=)`` call: no nn.Embedding to see."""

    def __init__(self, max_norm):
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 4) * 2)
        self.out = nn.Linear(4, 3)
        self.max_norm = max_norm

    def forward(self, tokens):
        return self.out(torch.tanh(F.embedding(tokens, self.table, max_norm=self.max_norm).mean(1)))


def direct_problem():
    torch.manual_seed(0)
    model = DirectBag(max_norm=0.5).double()   # rows of norm ~4: every one looked up is renormalised
    tokens, labels = torch.randint(0, 7, (12, 3)), torch.randint(0, 3, (12,))
    return model, (tokens, labels)


CALLS = [
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b),
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b, hvp="forward_over_reverse"),
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b, chunk_size=5),
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b, curvature="ggn"),
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b, hvp="compiled"),   # raised torch's view error (direct)
    lambda m, b: catapult.top_eigenpairs(m, F.cross_entropy, b, k=2),
    lambda m, b: catapult.hessian_trace(m, F.cross_entropy, b, matvecs=6),
    lambda m, b: catapult.critical_lr(m, F.cross_entropy, b, torch.optim.SGD(m.parameters(), lr=0.1)),
]


@pytest.mark.parametrize("make", [problem, direct_problem])
@pytest.mark.parametrize("call", CALLS)
def test_calls_leave_a_max_norm_table_as_it_was(make, call):
    # every call renormalised the looked-up rows of the model's own table in place (to 0.5): an
    # nn.Embedding(max_norm=) before stop 48, a direct F.embedding_bag(max_norm=) call before stop 51
    model, batch = make()
    before = copy.deepcopy(model.state_dict())
    call(model, batch)
    assert unchanged(model, before)


@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse"])
def test_sharpness_through_a_direct_max_norm_lookup_is_that_of_the_renormalised_rows(hvp):
    model, batch = direct_problem()
    plain = DirectBag(max_norm=None).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.embedding_renorm_(plain.table, batch[0].reshape(-1), 0.5, 2.0)
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, batch).numpy())[-1]
    for _ in range(2):   # the first call renormalised the rows: the second measured there too
        est = catapult.sharpness(model, F.cross_entropy, batch, hvp=hvp, tol=1e-8)
        assert abs(est.value - truth) <= 1e-7 * truth


@pytest.mark.parametrize("make", [problem, direct_problem])
def test_finite_differences_over_renormalised_rows_are_refused(make):
    # the gradient at shifted weights is taken at rows renormalised again, so the differences took in
    # the renormalisation's derivative, which the Hessian of the exact modes leaves out: 0.3847 for
    # 0.3952 (nn.Embedding), converged with an error bound of 1.5e-4; the weights stay as they were
    model, batch = make()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="hvp='finite_difference': an embedding lookup with max_norm.*double_backprop"):
        catapult.sharpness(model, F.cross_entropy, batch, hvp="finite_difference")
    assert unchanged(model, before)


def test_finite_differences_under_a_max_norm_no_row_reaches_are_measured():
    torch.manual_seed(0)
    model = Bag(max_norm=50.0).double()   # a cap far above every row: the lookup is a plain one
    batch = (torch.randint(0, 7, (12, 3)), torch.randint(0, 3, (12,)))
    before = copy.deepcopy(model.state_dict())
    plain = Bag(max_norm=None).double()
    plain.load_state_dict(model.state_dict())
    truth = np.linalg.eigvalsh(dense_hessian(plain, F.cross_entropy, batch).numpy())[-1]
    est = catapult.sharpness(model, F.cross_entropy, batch, hvp="finite_difference", tol=1e-8)
    assert abs(est.value - truth) <= 1e-6 * truth and unchanged(model, before)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@FSDP2
@pytest.mark.parametrize("make", [problem, direct_problem])
def test_a_sharded_model_refuses_finite_differences_over_renormalised_rows(make):
    # FSDP2's products are finite differences: 0.3847 (0.3832 for the direct call) for the exact 0.3952
    from torch.distributed.fsdp import fully_shard

    from catapult.curvature.distributed import single_process_group

    model, batch = make()
    before = copy.deepcopy(model.state_dict())
    with single_process_group():
        sharded = fully_shard(model)
        with pytest.raises(ValueError, match="distributed=True on a model sharded.*max_norm.*unsharded"):
            catapult.sharpness(sharded, F.cross_entropy, batch, distributed=True)
        after = {k: v.full_tensor() for k, v in sharded.state_dict().items()}
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("call", [
    lambda m, b: catapult.sharpness(m, F.cross_entropy, b, distributed=True),
    lambda m, b: catapult.critical_lr(m, F.cross_entropy, b, torch.optim.SGD(m.parameters(), lr=0.1),
                                      distributed=True),
])
def test_distributed_calls_leave_a_direct_max_norm_lookup_as_it_was(call):
    # telling the loss's reduction on the shard ran forwards that renormalised the model's own rows
    # (critical_lr then searched from them: 9.8304 where the call without distributed gives 6.5536)
    from catapult.curvature.distributed import single_process_group

    model, batch = direct_problem()
    before = copy.deepcopy(model.state_dict())
    with single_process_group():
        call(model, batch)
    assert unchanged(model, before)


def test_probe_loss_and_critical_lr_trials_leave_a_direct_max_norm_table_as_it_was():
    # probe_loss (the persistent warmup's check) and critical_lr's trial forwards of a frozen table (which
    # the trials do not replace: only trainable parameters move) renormalised the model's own rows
    from catapult.critical_lr import probe_loss

    model, batch = direct_problem()
    before = copy.deepcopy(model.state_dict())
    plain = DirectBag(max_norm=None).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.embedding_renorm_(plain.table, batch[0].reshape(-1), 0.5, 2.0)
        truth = float(F.cross_entropy(plain(batch[0]), batch[1]))
    assert probe_loss(model, F.cross_entropy, batch) == pytest.approx(truth, rel=1e-12)
    assert unchanged(model, before)
    model.table.requires_grad_(False)
    catapult.critical_lr(model, F.cross_entropy, batch, torch.optim.SGD([model.out.weight, model.out.bias], lr=0.1))
    assert unchanged(model, before)
