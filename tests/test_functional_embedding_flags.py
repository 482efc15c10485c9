"""``F.embedding`` / ``F.embedding_bag`` called in a forward with ``scale_grad_by_freq=True`` (or
``sparse=True``), with no ``nn.Embedding`` module to see: the flags change the backward alone, and
the products took them (every hvp mode and the Gauss-Newton one 4% off a dense Hessian, converged;
sparse: torch's "reshape is not implemented for sparse tensors"). The build's graph walk sees the
lookup's saved flags and takes it without them, as for the module."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import catapult
from dense_curvature import dense_ggn, dense_hessian
from torch_features import FSDP2


class Lookup(nn.Module):
    def __init__(self, bag, **flags):
        super().__init__()
        self.weight, self.out, self.bag, self.flags = nn.Parameter(torch.randn(5, 4)), nn.Linear(4, 3), bag, flags

    def forward(self, tokens):
        if self.bag == "sum":   # embedding_bag's sum by a lookup (the truth: no double backward of the bag)
            rows = F.embedding(tokens, self.weight).sum(1)
        elif self.bag:
            rows = F.embedding_bag(tokens, self.weight, mode="sum", **self.flags)
        else:
            rows = F.embedding(tokens, self.weight, **self.flags).mean(1)
        return self.out(torch.tanh(rows))


def _problem(bag: bool, **flags):
    torch.manual_seed(0)
    model = Lookup(bag, **flags).double()
    plain = Lookup("sum" if bag else False).double()
    plain.load_state_dict(model.state_dict())
    tokens = torch.tensor([[0, 1, 1, 2], [1, 1, 3, 0], [2, 2, 2, 4]])
    return model, plain, (tokens, torch.randn(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("flag", ["scale_grad_by_freq", "sparse"])
@pytest.mark.parametrize("bag", [False, True])
def test_a_functional_lookup_is_taken_without_its_gradient_flags(bag, flag):
    model, plain, batch = _problem(bag, **{flag: True})
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    modes = ({}, {"hvp": "forward_over_reverse"}, {"hvp": "finite_difference"}, {"chunk_size": 2})
    if bag:   # torch has no second derivative of embedding_bag at all (refused, named): differences only
        modes = ({"hvp": "finite_difference"}, {"hvp": "finite_difference", "chunk_size": 2})
    for kwargs in modes:
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, **kwargs)
        assert est.converged and est.value == pytest.approx(truth, rel=1e-8), kwargs
    if not bag:
        ggn = np.linalg.eigvalsh(dense_ggn(plain, nn.MSELoss(), batch))[-1]
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, curvature="ggn")
        assert est.value == pytest.approx(ggn, rel=1e-8)


def test_compiled_products_take_a_functional_lookup_without_its_flags():
    model, plain, batch = _problem(False, scale_grad_by_freq=True)
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, hvp="compiled")
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


class ModuleLookup(nn.Module):
    def __init__(self, **flags):
        super().__init__()
        self.emb, self.out = nn.Embedding(5, 4, **flags), nn.Linear(4, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.emb(tokens).mean(1)))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@FSDP2
@pytest.mark.parametrize("functional", [False, True])
def test_a_model_sharded_by_fsdp2_takes_its_lookups_without_their_flags(functional):
    # the sharded operator's differences of the model's own gradient took scale_grad_by_freq (4.0% off, and
    # converged at the default tol), the module's and the F.embedding call's alike
    from torch.distributed.fsdp import fully_shard

    from catapult.curvature.distributed import single_process_group

    model, plain, batch = _problem(False, scale_grad_by_freq=True)
    truth = np.linalg.eigvalsh(dense_hessian(plain, nn.MSELoss(), batch).numpy())[-1]
    if not functional:
        flagged = ModuleLookup(scale_grad_by_freq=True).double()
        with torch.no_grad():
            flagged.emb.weight.copy_(model.weight)
        flagged.out.load_state_dict(model.out.state_dict())
        model = flagged
    with single_process_group():
        est = catapult.sharpness(fully_shard(model), nn.MSELoss(), batch, tol=1e-9, distributed=True)
    assert est.converged and est.value == pytest.approx(truth, rel=1e-8)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@FSDP2
def test_sharded_critical_lr_steps_along_the_optimizers_own_gradient():
    # critical_lr's direction is the optimizer's next step, from the gradient training takes (the flag's): the
    # sharded search must bracket the same lr as the unsharded one
    from torch.distributed.fsdp import fully_shard

    from catapult.curvature.distributed import single_process_group

    model, _, batch = _problem(False, scale_grad_by_freq=True)
    ref = catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1))
    with single_process_group():
        sharded = fully_shard(model)
        got = catapult.critical_lr(sharded, nn.MSELoss(), batch, torch.optim.SGD(sharded.parameters(), lr=0.1),
                                   distributed=True)
    assert got.lr == pytest.approx(ref.lr, rel=1e-12) and got.lower == pytest.approx(ref.lower, rel=1e-12)
