"""A model sharded by FSDP2 whose forward takes a branch on some ranks' shards and not on others'
(``if x.shape[0] > 3: h = self.extra(h)``): FSDP2's backward reduce-scatters only the gradients a
rank has, so the ranks' collectives differ (and where the skipped module has its own ``fully_shard``,
already its all-gather in the forward). Before, ``sharpness`` and ``critical_lr`` with
``distributed=True`` aborted rank 1's process inside FSDP's backward (gloo: "op.preamble.length <=
op.nbytes ... collective mismatch", SIGABRT); now every rank raises the same ValueError naming the
parameters, before the backward, and the model measures again afterwards. Truth for the measure
after the refusal (every rank reaching ``extra``, 0 times its output on the rank that skips it):
the top eigenvalue of the dense float64 Hessian of the union's loss, one process."""
import pytest
import torch
import torch.nn as nn

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from torch_features import FSDP2

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in"),
              FSDP2]

ROWS = (slice(0, 4), slice(4, 7))   # rank 0's shard takes the branch (4 samples), rank 1's (3) skips it


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.extra, self.last = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.reach_always = False   # the way out: 0 times the branch where it is skipped

    def forward(self, x):
        h = torch.tanh(self.first(x))
        if x.shape[0] > 3:
            h = torch.tanh(self.extra(h))
        elif self.reach_always:
            h = h + 0 * torch.tanh(self.extra(h))
        return self.last(h)


class Union(nn.Module):
    """The two shards' forwards on one process: an MSE mean over the 7 rows is the union's loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([self.model(x[rows]) for rows in ROWS])


def problem():
    torch.manual_seed(0)
    model = Branchy().double()
    return model, torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)


def branch_on_one_rank(rank, world, layout):
    from torch.distributed.fsdp import fully_shard

    model, x, y = problem()
    if layout == "each module":   # the skipped module's all-gather (in its forward) would not pair up
        for module in (model.first, model.extra, model.last):
            fully_shard(module)
    fully_shard(model)   # one unit: the forwards agree, the backwards' reduce-scatters would not
    batch = (x[ROWS[rank]], y[ROWS[rank]])
    refused = []
    for call in (lambda: catapult.sharpness(model, nn.MSELoss(), batch, distributed=True),
                 lambda: catapult.critical_lr(model, nn.MSELoss(), batch, torch.optim.SGD(model.parameters(), lr=0.1),
                                              distributed=True)):
        try:
            call()
            refused.append("no error")
        except ValueError as err:
            refused.append(str(err))
    model.reach_always = True
    est = catapult.sharpness(model, nn.MSELoss(), batch, tol=1e-10, distributed=True)
    return refused, est.value, est.converged


@pytest.mark.parametrize("layout", ["one unit", "each module"])
def test_a_branch_some_ranks_take_is_refused_on_every_rank_and_the_model_measures_afterwards(layout):
    model, x, y = problem()
    truth = float(torch.linalg.eigvalsh(dense_hessian(Union(model), nn.MSELoss(), (x, y)))[-1])
    results = on_ranks(branch_on_one_rank, layout, timeout_s=60.0)
    expected = ("the loss reaches 'extra.weight' on 1, 'extra.bias' on 1 of the 2 ranks' shards" if layout == "one unit"
                else "the ranks' forwards call different sharded modules, 'extra' on some ranks and 'last' on others")
    for refused, value, converged in results:
        for message in refused:
            assert message.startswith(f"distributed=True on a model sharded by fully_shard: {expected}"), message
        assert converged and value == pytest.approx(truth, rel=1e-7)
    assert results[0][0] == results[1][0]   # the same error on both ranks


def test_more_than_six_parameters_reached_unevenly_are_named_six_and_counted():
    """Mutation pass 20 (BR3): the refusal names the first six parameters reached on some ranks but not all,
    and says how many more (BR3 left the rest unsaid); those reached on every rank or none are not named."""
    from catapult.curvature.sharded_reach import refuse_uneven_reach

    names = [f"block{i}.weight" for i in range(9)] + ["head.weight", "unused.weight"]
    with pytest.raises(ValueError) as refused:
        refuse_uneven_reach(names, [1.0] * 9 + [3.0, 0.0], 3)
    shown = ", ".join(f"'block{i}.weight' on 1" for i in range(6))
    assert str(refused.value).startswith(f"distributed=True on a model sharded by fully_shard: the loss reaches "
                                         f"{shown} (and 3 more) of the 3 ranks' shards (a branch some ranks take)")
    assert "head.weight" not in str(refused.value) and "unused" not in str(refused.value)


def test_a_tied_parameter_in_use_is_noted_by_its_first_name():
    """Mutation pass 20 (BR9): parameters_in_use names a tied parameter by its first name in
    model.named_parameters() (the name the operator's reach flags are of), whichever module uses it, and keeps
    the first note (BR9 noted the calling module's own alias, 'decoder.weight', which no flag is of). One process."""
    from catapult.curvature.sharded_reach import parameters_in_use

    model = nn.ModuleDict({"encoder": nn.Linear(3, 3, bias=False), "decoder": nn.Linear(3, 3, bias=False)})
    model["decoder"].weight = model["encoder"].weight
    assert [n for n, _ in model.named_parameters()] == ["encoder.weight"]
    for order in (["decoder"], ["encoder", "decoder"]):
        found = {}
        with parameters_in_use(model, found):
            for name in order:
                model[name](torch.zeros(1, 3))
        assert found == {id(model["encoder"].weight): "encoder.weight"}, order


class BranchAtTheEnd(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.last, self.extra = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2)

    def forward(self, x):
        h = self.last(torch.tanh(self.first(x)))
        return self.extra(h) if x.shape[0] > 3 else h


def branch_skipping_the_last_sharded_module(rank, world):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = BranchAtTheEnd().double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    for module in (model.first, model.last, model.extra):
        fully_shard(module)
    fully_shard(model)
    try:
        catapult.sharpness(model, nn.MSELoss(), (x[ROWS[rank]], y[ROWS[rank]]), distributed=True)
        return "no error"
    except ValueError as err:
        return str(err)


def test_a_branch_skipping_the_last_sharded_module_is_refused_at_the_end_of_the_forward():
    """Mutation pass 20 (BR7): rank 1's forward skips the last module with its own fully_shard ('extra'), so
    it ends where rank 0 gathers 'extra': the agreement at the end of the forward refuses it on both ranks, the
    same ValueError naming 'extra' and 'the end of the forward' (BR7 had no end agreement: rank 1 went on to
    its next collective while rank 0 waited to agree on 'extra')."""
    results = on_ranks(branch_skipping_the_last_sharded_module, timeout_s=60.0)
    expected = ("distributed=True on a model sharded by fully_shard: the ranks' forwards call different sharded "
                "modules, 'extra' on some ranks and 'the end of the forward' on others")
    assert results[0] == results[1] and results[0].startswith(expected), results
