"""The ranks' agreement checks (catapult.curvature.rank_agreement) against small differences between
the ranks' parameters, and its float64 fingerprint of a tensor against NumPy's sums (split from
test_distributed_curvature.py, whose problem and helpers these use)."""
import numpy as np
import pytest
import torch
import torch.distributed as dist

import catapult
from gloo_ranks import on_ranks
from test_distributed_curvature import SHARDS, answers_or_refusals, problem


def parameters_apart_by(rank, world, case):
    model, loss_fn, (x, y) = problem()
    if rank == 1:
        with torch.no_grad():
            if case == "relative 1e-6":
                model[0].weight[0, 1] *= 1 + 1e-6
            elif case == "a sign":  # the same sum of |w| and of w^2
                model[0].weight[0, 0] *= -1
            else:  # two entries of one sign moved towards each other: the same sum and sum of |w|
                model[0].weight[1, 0] += 1e-3
                model[0].weight[1, 1] -= 1e-3
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    return answers_or_refusals({"sharpness": lambda: catapult.sharpness(model, loss_fn, shard,
                                                                        distributed=True).value})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("case", ["relative 1e-6", "a sign", "same sums"])
def test_parameters_that_differ_slightly_between_the_ranks_are_refused(case):
    # mutation pass 6: RA3 (a slack of 1e-2 of sum |w|: the sign of a weight of 0.004 flipped passed)
    # and RA4 (the sum of squares not compared: entries moved with sum and sum |w| kept passed)
    assert bool(problem()[0][0].weight[1, :2].lt(0).all())   # the two moved entries share a sign
    for res in on_ranks(parameters_apart_by, case, timeout_s=60.0):
        assert res["sharpness"] == ("distributed=True: the model's parameter '0.weight' differs between the ranks; "
                                    "the curvature of the union's loss is that of one model and one optimizer state "
                                    "(wrap the model in DistributedDataParallel, or broadcast rank 0's parameters "
                                    "and state, before measuring)")


BN_SHARDS = (3, 5)


def bn_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double()
    x = torch.randn(sum(BN_SHARDS), 3, dtype=torch.float64)
    y = torch.randn(sum(BN_SHARDS), 2, dtype=torch.float64)
    return model, (x, y)


def running_statistics_apart(rank, world):
    """Each rank's BatchNorm ran its own shard in train mode (a DDP forward updates each rank's running
    statistics from its shard, after it broadcast rank 0's), then eval mode: the buffers differ."""
    model, (x, y) = bn_problem()
    lo = sum(BN_SHARDS[:rank])
    shard = (x[lo:lo + BN_SHARDS[rank]], y[lo:lo + BN_SHARDS[rank]])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp(shard[0]).sum().backward()
    model.eval()
    out = answers_or_refusals({name: (lambda m=m: catapult.sharpness(m, torch.nn.MSELoss(), shard, tol=1e-10,
                                                                     distributed=True).value)
                               for name, m in (("plain", model), ("ddp", ddp))})
    del ddp   # DDP's reducer goes while the group is alive
    for b in model.buffers():   # the remedy the refusal names
        dist.broadcast(b, 0)
    out["broadcast"] = catapult.sharpness(model, torch.nn.MSELoss(), shard, tol=1e-10, distributed=True).value
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_buffers_that_differ_between_the_ranks_are_refused():
    # each rank's own running statistics were used for its shard's products: a sharpness of 2.6587, of
    # neither rank's model (the union with rank 0's statistics: 2.6787; with rank 1's: 2.6319)
    from dense_curvature import dense_hessian

    model, (x, y) = bn_problem()
    model.train()
    model(x[:BN_SHARDS[0]])   # rank 0's running statistics
    model.eval()
    truth = float(np.linalg.eigvalsh(dense_hessian(model, torch.nn.MSELoss(), (x, y)).numpy())[-1])
    for res in on_ranks(running_statistics_apart, timeout_s=60.0):
        for name in ("plain", "ddp"):
            assert res[name] == ("distributed=True: the model's buffer '1.running_mean' differs between the ranks; the "
                                 "curvature of the union's loss is that of one model and one optimizer state (a "
                                 "BatchNorm's running statistics, updated by each rank's shard: broadcast rank 0's "
                                 "buffers, torch.distributed.broadcast(b, 0) for each b in model.buffers(), before "
                                 "measuring)"), name
        assert res["broadcast"] == pytest.approx(truth, rel=1e-8)


def dtypes_apart(rank, world):
    """Rank 1 measures the float32 copy of the model (its parameters hold the same values: the
    float64 model's are float32's, from torch's float32 init) on a float32 shard."""
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    if rank == 1:
        model, shard = model.float(), tuple(t.float() for t in shard)
    return answers_or_refusals({"sharpness": lambda: catapult.sharpness(model, loss_fn, shard,
                                                                        distributed=True).value})


def layout_refusal(what: str, name: str = "sharpness") -> str:
    """What a rank raises when the ranks' model or optimizer layouts differ (the collectives' sizes
    would), naming ``what`` differs first as that rank sees it."""
    return (f"distributed=True: the ranks called {name} with different models or optimizer states: {what}; call it "
            f"with the same on every rank")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_model_of_another_dtype_on_one_rank_is_refused_on_every_rank():
    # the first product's all-reduce of float64 on rank 0 and float32 on rank 1 aborted gloo (SIGABRT,
    # gloo::EnforceNotMet) in rank 1's process, and rank 0 read 'Connection reset by peer'
    model = problem()[0]
    assert all(torch.equal(p, p.float().double()) for p in model.parameters())   # same values: no fingerprint tells
    zero, one = on_ranks(dtypes_apart, timeout_s=60.0)
    assert zero["sharpness"] == layout_refusal("the model's parameter '0.weight' is torch.float64 on this rank, of "
                                               "another dtype on another")
    assert one["sharpness"] == layout_refusal("the model's parameter '0.weight' is torch.float32 on this rank, of "
                                              "another dtype on another")


def frozen_on_one_rank(rank, world):
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    if rank == 1:
        model[0].bias.requires_grad_(False)
    return answers_or_refusals({"sharpness": lambda: catapult.sharpness(model, loss_fn, shard,
                                                                        distributed=True).value})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_parameter_frozen_on_one_rank_only_is_refused_on_every_rank():
    # rank 1's products had 5 entries fewer: their all-reduce aborted gloo (SIGABRT) in one rank's process
    zero, one = on_ranks(frozen_on_one_rank, timeout_s=60.0)
    assert zero["sharpness"] == layout_refusal("the model's parameter '0.bias' requires grad on this rank, not on "
                                               "another")
    assert one["sharpness"] == layout_refusal("the model's parameter '0.bias' is frozen on this rank, not on another")


def param_groups_apart(rank, world):
    """Rank 0's SGD holds the two layers in two param groups, rank 1's in one; then both hold two,
    rank 1's second with one more setting (a name)."""
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    first, last = list(model[0].parameters()), list(model[2].parameters())
    groups = [{"params": first}, {"params": last}] if rank == 0 else [{"params": first + last}]
    named = [{"params": first}, {"params": last} if rank == 0 else {"params": last, "name": "head"}]

    def measure(groups):
        return lambda: catapult.preconditioned_sharpness(model, loss_fn, shard, torch.optim.SGD(groups, lr=0.1),
                                                         distributed=True).value
    return answers_or_refusals({"count": measure(groups), "settings": measure(named)})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_optimizers_with_other_param_groups_are_refused_naming_the_count_and_the_group():
    # both said "(names, shapes, dtypes or which parameters require grad)": no count, no group
    zero, one = on_ranks(param_groups_apart, timeout_s=60.0)
    assert zero["count"] == layout_refusal("the optimizer's param groups: 2 on this rank, 1 to 2 over the ranks",
                                           "preconditioned_sharpness")
    assert one["count"] == layout_refusal("the optimizer's param groups: 1 on this rank, 1 to 2 over the ranks",
                                          "preconditioned_sharpness")
    keys = sorted(k for k in torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).param_groups[0]
                  if k != "params")
    assert zero["settings"] == layout_refusal(f"param group 1 of the optimizer holds other settings on another rank "
                                              f"({', '.join(keys)} on this one)", "preconditioned_sharpness")
    assert one["settings"] == layout_refusal(f"param group 1 of the optimizer holds other settings on another rank "
                                             f"({', '.join(sorted(keys + ['name']))} on this one)",
                                             "preconditioned_sharpness")
    assert "lr" in keys and "momentum" in keys


def optimizers_over_other_parameters(rank, world, case):
    """Rank 0's optimizer holds every parameter (``case`` "count") or those of the first layer ("names":
    as many as rank 1's), rank 1's those of the last layer."""
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    first = list(model.parameters()) if case == "count" else list(model[0].parameters())
    params = first if rank == 0 else list(model[2].parameters())
    return answers_or_refusals({
        "critical_lr": lambda: catapult.critical_lr(model, loss_fn, shard, torch.optim.SGD(params, lr=0.1),
                                                    lr_start=1e-3, distributed=True).lr,
        "preconditioned_sharpness": lambda: catapult.preconditioned_sharpness(
            model, loss_fn, shard, torch.optim.SGD(params, lr=0.1), scale_by_group_lr=True, distributed=True).value})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("case", ["count", "names"])
def test_optimizers_over_other_parameters_on_the_ranks_are_refused_on_every_rank(case):
    # the ranks' trial steps and pre-conditioners moved other parameters: they waited in unpaired
    # collectives until the group's timeout (gloo's default: 30 minutes). "names": two parameters on each
    # rank (the first layer's on rank 0, the last's on rank 1), told apart by their names alone
    # (mutation pass 27, RA4: a count alone passed them)
    for res in on_ranks(optimizers_over_other_parameters, case, timeout_s=60.0):
        for name in ("critical_lr", "preconditioned_sharpness"):
            assert res[name] == (f"distributed=True: {name}'s optimizer's parameters (param group 0) differs between "
                                 f"the ranks; pass the same on every rank (the ranks would run different "
                                 f"collectives)"), name


def test_the_ranks_fingerprint_of_a_tensor_sums_every_chunk():
    # (sum |t|, sum t, sum t^2) in float64 over chunks of FINGERPRINT_CHUNK entries (mutation pass
    # 6, RA5: the last chunk's sums alone, so ranks apart in the first 2^20 entries of a parameter
    # passed); truth: NumPy's float64 sums
    from catapult.curvature.rank_agreement import FINGERPRINT_CHUNK, _fingerprint

    t = torch.randn(2 * FINGERPRINT_CHUNK + 4 * 12345, generator=torch.Generator().manual_seed(0)).reshape(-1, 4)
    a = t.numpy().astype(np.float64).ravel()
    np.testing.assert_allclose(_fingerprint(t).numpy(), [np.abs(a).sum(), a.sum(), np.square(a).sum()], rtol=1e-12)


def nested_settings_apart(rank, world):
    from catapult.curvature.rank_agreement import check_same_call

    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["milestones"] = [(0, 0.1), (10, 0.01 * (rank + 1))]   # nested, apart by rank
    long = list(range(5000))   # past MAX_SETTING_ENTRIES: counted by type and length, alike on both ranks
    long[-1] = rank
    return answers_or_refusals({
        # explicit levels whose divisors differ (coarse_ranks.union_levels compares only their kinds and tols)
        "sharpness": lambda: catapult.sharpness(model, loss_fn, shard, distributed=True,
                                                coarse=[(4 if rank == 0 else 2, 3e-3)]).value,
        "nested": lambda: check_same_call("measure", {"model": model, "batch": shard,
                                                      "levels": {"a": ((1, 2.0), [3, "x" * (rank + 1)])}}),
        "group": lambda: check_same_call("measure", {"model": model, "batch": shard, "optimizer": optimizer}),
        "long": lambda: check_same_call("measure", {"model": model, "batch": shard, "levels": long}),
        "alike": lambda: check_same_call("measure", {"model": model, "batch": shard,
                                                     "levels": {"b": [1, (2, None)], "a": ((1, 2.0), [3])}}),
        # mutation pass 21 (RA1): each rank's own micro-batch size is its own (it does not change the collectives)
        "chunks": lambda: check_same_call("measure", {"model": model, "batch": shard, "chunk_size": rank + 1}),
        # mutation pass 21 (RA8): two functions of the same argument names are told apart by name
        "names": lambda: check_same_call("measure" if rank == 0 else "gauge", {"model": model, "batch": shard}),
    })


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_settings_nested_in_tuples_lists_and_dicts_that_differ_between_the_ranks_are_refused():
    # _setting spelt a tuple or list holding tuples or lists by its type only: coarse=[(4, tol)] on
    # one rank and [(2, tol)] on the other, or an optimizer group's nested setting apart by rank, passed
    for rank, res in enumerate(on_ranks(nested_settings_apart, timeout_s=60.0)):
        assert res["names"] == (f"distributed=True: the ranks called different functions ({['measure', 'gauge'][rank]} "
                                "on this one); call the same on every rank")
        assert res["sharpness"] == ("distributed=True: sharpness's coarse differs between the ranks; pass the same "
                                    "on every rank (the ranks would run different collectives)")
        assert res["nested"] == ("distributed=True: measure's levels differs between the ranks; pass the same on "
                                 "every rank (the ranks would run different collectives)")
        assert res["group"] == ("distributed=True: measure's optimizer's milestones (param group 0) differs between "
                                "the ranks; pass the same on every rank (the ranks would run different collectives)")
        assert res["long"] is None and res["alike"] is None and res["chunks"] is None


def test_a_setting_is_spelt_by_value_up_to_its_bound():
    from catapult.curvature.rank_agreement import MAX_SETTING_ENTRIES, _setting

    assert _setting([(16, 1e-3), (4, 1e-3)]) != _setting([(8, 1e-3), (4, 1e-3)])
    assert _setting({"b": 1, "a": [2]}) == _setting({"a": [2], "b": 1}) != _setting({"a": [3], "b": 1})
    assert _setting(((1,), object())) == "tuple(tuple(1), <object>)"
    assert _setting(list(range(MAX_SETTING_ENTRIES))) == f"<list of {MAX_SETTING_ENTRIES}>"
    assert _setting([list(range(3))]) == "list(list(0, 1, 2))"


def test_a_device_is_spelt_by_value_and_nesting_past_the_depth_bound_by_type():
    # mutation pass 21: a torch.device is spelt as itself (RA4: '<device>' on every rank, cpu and meta alike);
    # a list 33 levels deep is counted by type, 32 levels deep by value (RA5: the bound one level further)
    from catapult.curvature.rank_agreement import MAX_SETTING_DEPTH, _setting

    assert _setting(torch.device("cpu")) == "device(type='cpu')" != _setting(torch.device("meta"))

    def nested(levels):
        value = 0
        for _ in range(levels):
            value = [value]
        return value

    assert MAX_SETTING_DEPTH == 32
    assert _setting(nested(32)) == "list(" * 32 + "0" + ")" * 32
    assert _setting(nested(33)) == "<list of 1>"
