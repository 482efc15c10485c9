"""critical_lr on a model sharded by FSDP2 whose ``nn.Embedding`` module has ``scale_grad_by_freq``:
its step direction is the optimizer's, from the gradient training takes (the flag's), so the
sharded operator it builds (``forms=False``) must not take the lookup without its flag as the
curvature products do (needs_forms sees the module, where the existing test's F.embedding call is
seen by the graph walk only). Truth: the unsharded search, which steps with the flag's gradient,
and which differs from the search on the same model without the flag."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import catapult
from test_functional_embedding_flags import ModuleLookup, _problem
from torch_features import FSDP2

pytestmark = FSDP2   # it shards with fully_shard


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_sharded_critical_lr_steps_along_the_flagged_modules_own_gradient():
    from torch.distributed.fsdp import fully_shard

    from catapult.curvature.distributed import single_process_group

    base, _, batch = _problem(False)
    models = {}
    for flag in (True, False):
        models[flag] = ModuleLookup(scale_grad_by_freq=flag).double()
        with torch.no_grad():
            models[flag].emb.weight.copy_(base.weight)
        models[flag].out.load_state_dict(base.out.state_dict())
    ref = catapult.critical_lr(models[True], nn.MSELoss(), batch, torch.optim.SGD(models[True].parameters(), lr=0.1))
    unflagged = catapult.critical_lr(models[False], nn.MSELoss(), batch,
                                     torch.optim.SGD(models[False].parameters(), lr=0.1))
    assert unflagged.lr != pytest.approx(ref.lr, rel=1e-3)    # the flag moves the answer: the test can fail
    with single_process_group():
        sharded = fully_shard(models[True])
        got = catapult.critical_lr(sharded, nn.MSELoss(), batch, torch.optim.SGD(sharded.parameters(), lr=0.1),
                                   distributed=True)
    assert got.lr == pytest.approx(ref.lr, rel=1e-12) and got.lower == pytest.approx(ref.lower, rel=1e-12)
