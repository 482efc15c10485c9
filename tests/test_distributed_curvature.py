"""distributed=True: 2 CPU processes on gloo over loopback, each with its shard, give what one
process gives on the union of the shards (float64, to 1e-6), for a plain and a DDP model."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import catapult
from gloo_ranks import on_ranks

SHARDS = (10, 6)  # unequal shards: the all-reduce must weight them by size


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(sum(SHARDS), 3, dtype=torch.float64)
    y = torch.randn(sum(SHARDS), 2, dtype=torch.float64)
    return model, nn.MSELoss(), (x, y)


def adam_after_one_step(model, loss_fn, batch):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn(model(batch[0]), batch[1]).backward()
    opt.step()
    opt.zero_grad()
    return opt


def measure(model, loss_fn, batch, opt, distributed):
    kw = {"distributed": True} if distributed else {}
    out = {
        "sharpness": catapult.sharpness(model, loss_fn, batch, tol=1e-10, **kw).value,
        "ggn": catapult.sharpness(model, loss_fn, batch, tol=1e-10, curvature="ggn", **kw).value,
        # lean sizes its basis per shard; the ranks take the smallest so their products pair up
        "lean": catapult.sharpness(model, loss_fn, batch, tol=1e-10, max_iter=1000, memory="lean", **kw).value,
        "preconditioned": catapult.preconditioned_sharpness(model, loss_fn, batch, opt,
                                                            tol=1e-10, **kw).value,
        "top3": catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-10, **kw).values,
        # a block's seeded start directions are drawn alike on every rank
        "top3_block": catapult.top_eigenpairs(model, loss_fn, batch, k=3, tol=1e-10, block_size=2,
                                              **kw).values,
        "critical_lr": catapult.critical_lr(model, loss_fn, batch, opt, lr_start=1e-3,
                                            **kw).lr,
    }
    # difference products end with the certificate's products (certify.py): every rank takes them
    fd = catapult.sharpness(model, loss_fn, batch, tol=1e-8, hvp="finite_difference", **kw)
    fd_pairs = catapult.top_eigenpairs(model, loss_fn, batch, k=2, tol=1e-8, hvp="finite_difference", **kw)
    out.update(fd=fd.value, fd_converged=fd.converged, fd_top2=fd_pairs.values, fd_top2_converged=fd_pairs.converged)
    return out


def shard_measures(rank, world):
    model, loss_fn, (x, y) = problem()
    # the optimizer state comes from a full-batch step, identical on every rank
    opt = adam_after_one_step(model, loss_fn, (x, y))
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    plain = measure(model, loss_fn, shard, opt, True)
    ddp = nn.parallel.DistributedDataParallel(model)
    wrapped = measure(ddp, loss_fn, shard, opt, True)
    del ddp  # DDP's reducer goes while the group is alive
    return {"plain": plain, "ddp": wrapped}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_equal_one_process_on_the_union():
    model, loss_fn, batch = problem()
    opt = adam_after_one_step(model, loss_fn, batch)
    single = measure(model, loss_fn, batch, opt, False)
    results = on_ranks(shard_measures)
    for res in results:
        for flavour in ("plain", "ddp"):
            got = res[flavour]
            for key in ("sharpness", "ggn", "lean", "preconditioned", "critical_lr", "fd"):
                assert got[key] == pytest.approx(single[key], rel=1e-6), (flavour, key)
            assert got["fd_converged"] and single["fd_converged"] and single["fd_top2_converged"]
            assert got["fd_top2_converged"]
            np.testing.assert_allclose(got["fd_top2"], single["fd_top2"], rtol=1e-6)
            np.testing.assert_allclose(got["top3"], single["top3"], rtol=1e-6)
            np.testing.assert_allclose(got["top3_block"], single["top3_block"], rtol=1e-6)
    # and the shards alone differ, so the test can fail
    shard = (batch[0][:SHARDS[0]], batch[1][:SHARDS[0]])
    alone = catapult.sharpness(model, loss_fn, shard, tol=1e-10).value
    assert abs(alone - single["sharpness"]) > 1e-3 * abs(single["sharpness"])


def empty_shard_messages(rank, world):
    # rank 1 passes an empty shard: it used to fail alone ("batch is empty") while rank 0 saw
    # only gloo's "connection reset"; now both raise the same message naming rank 1
    model, loss_fn, (x, y) = problem()
    shard = (x, y) if rank == 0 else (x[:0], y[:0])
    messages = {}
    for name, call in (("sharpness", lambda: catapult.sharpness(model, loss_fn, shard, distributed=True)),
                       ("ggn", lambda: catapult.top_eigenpairs(model, loss_fn, shard, k=1, curvature="ggn",
                                                               distributed=True))):
        try:
            call()
            messages[name] = None
        except ValueError as err:
            messages[name] = str(err)
    return messages


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_an_empty_shard_is_refused_on_every_rank_alike():
    for messages in on_ranks(empty_shard_messages):
        for message in messages.values():
            assert message == "distributed=True: the shard of rank 1 holds no samples; give every rank some"


def init_after_solves(rank, world):
    """Each rank passes its own ``init`` (rank 0's wins: it is broadcast); the caller's tensor
    must come back as it went in -- the broadcast once wrote rank 0's values into it."""
    model, loss_fn, (x, y) = problem()
    opt = adam_after_one_step(model, loss_fn, (x, y))
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    n = sum(p.numel() for p in model.parameters())
    calls = {
        "sharpness": lambda i: catapult.sharpness(model, loss_fn, shard, init=i, distributed=True).value,
        "lean": lambda i: catapult.sharpness(model, loss_fn, shard, init=i, memory="lean",
                                             distributed=True).value,
        "preconditioned": lambda i: catapult.preconditioned_sharpness(
            model, loss_fn, shard, opt, init=i, distributed=True).value,
        "top2": lambda i: catapult.top_eigenpairs(model, loss_fn, shard, k=2, init=i,
                                                  distributed=True).values,
    }
    out = {}
    for name, call in calls.items():
        init = torch.linspace(1.0, 2.0 + rank, n, dtype=torch.float64)
        value = call(init)
        out[name] = (value, torch.equal(init, torch.linspace(1.0, 2.0 + rank, n, dtype=torch.float64)))
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_init_is_not_overwritten_by_the_broadcast():
    results = on_ranks(init_after_solves)
    for name in results[0]:
        for rank, res in enumerate(results):
            assert res[name][1], f"rank {rank}: {name} wrote into init"
        np.testing.assert_array_equal(results[0][name][0], results[1][name][0])  # one answer


def test_train_mode_batchnorm_is_refused_before_any_work():
    """A train-mode BatchNorm normalises each shard by its own statistics: two gloo ranks once
    gave a sharpness of 6.93 where one process on the union gives 3.94, silently. Now every
    distributed entry point refuses it, naming the module; in eval mode (running statistics)
    one rank holding the whole batch gives the single-process answer."""
    from catapult.curvature.distributed import single_process_group

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    loss_fn = nn.MSELoss()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    opt = adam_after_one_step(model, loss_fn, batch)
    calls = {
        "sharpness": lambda: catapult.sharpness(model, loss_fn, batch, distributed=True),
        "preconditioned": lambda: catapult.preconditioned_sharpness(model, loss_fn, batch, opt,
                                                                    distributed=True),
        "top_eigenpairs": lambda: catapult.top_eigenpairs(model, loss_fn, batch, k=2, distributed=True),
        "hessian_trace": lambda: catapult.hessian_trace(model, loss_fn, batch, distributed=True),
        "spectral_density": lambda: catapult.spectral_density(model, loss_fn, batch, distributed=True),
        "critical_lr": lambda: catapult.critical_lr(model, loss_fn, batch, opt, distributed=True),
    }
    with single_process_group():
        model.train()
        for name, call in calls.items():
            with pytest.raises(ValueError, match=r"module '1' is a BatchNorm in train mode"):
                call()
        model.eval()
        got = catapult.sharpness(model, loss_fn, batch, tol=1e-10, distributed=True).value
    assert got == pytest.approx(catapult.sharpness(model, loss_fn, batch, tol=1e-10).value, rel=1e-9)


def one_rank_refusals(rank, world):
    """Refusals that one rank's shard alone triggers: every rank must raise (the others waited
    in the next all-reduce until the failing rank exited: a hang in a notebook or a loop)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        relu[0].bias.zero_()
    x = torch.randn(400, 4) * 3
    y = torch.randn(400, 1)
    x[-64:] = 0.0  # rank 1's last samples sit on the kinks (pre-activations exactly 0)
    far = (relu[0](x).detach().abs() > 0.3).all(1)
    kinked = (x[far][:8], y[far][:8]) if rank == 0 else (x, y)

    tanh = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def per_sample_on_rank_1(out, target):
        losses = F.mse_loss(out, target, reduction="none").mean(1)
        return losses if rank == 1 else losses.mean()

    def token_ce(out, target):
        return F.cross_entropy(out.reshape(-1, 3), target.reshape(-1), ignore_index=-100)

    def squared_on_rank_1(out, target):  # rank 1's loss is the square of a mean: neither a mean nor a sum
        return token_ce(out, target) ** 2 if rank == 1 else token_ce(out, target)

    # (its micro-batches once counted different numbers of -100 tokens, which is measured since 21c0fc12)
    tokens = (torch.randn(4, 5, 4, dtype=torch.float64), torch.randint(0, 3, (4, 5)))
    dropout = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.1), nn.Linear(5, 2)).double()
    xd, yd = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    uneven = (xd, yd) if rank == 0 else (xd[:1], yd[:1])  # one micro-batch on rank 1: nothing to refuse there

    def lean_relative_rule(call):  # lean's 1 MiB floor keeps kilobytes whole; its relative rule cuts them
        from catapult.curvature import lean

        floor, lean.LEAN_MIN_CHUNK_BYTES = lean.LEAN_MIN_CHUNK_BYTES, 0
        try:
            return call()
        finally:   # the rank processes run other bodies after this one
            lean.LEAN_MIN_CHUNK_BYTES = floor

    calls = {
        "kink": lambda: catapult.sharpness(relu, nn.MSELoss(), kinked, hvp="finite_difference", distributed=True),
        "reduction": lambda: catapult.sharpness(tanh, squared_on_rank_1, tokens, chunk_size=2, distributed=True),
        "lean_dropout": lambda: lean_relative_rule(
            lambda: catapult.sharpness(dropout, nn.MSELoss(), uneven, memory="lean", distributed=True)),
        # rank 1's loss is per sample: "only one element tensors can be converted to Python scalars"
        "vector_loss": lambda: catapult.sharpness(dropout.eval(), per_sample_on_rank_1, (xd, yd), distributed=True),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except ValueError as err:
            out[name] = str(err)
            out.setdefault("kinds", {})[name] = type(err).__name__
    # an init given on rank 0 only: rank 0's is every rank's (it deadlocked, with no error)
    model, loss_fn, (xs, ys) = problem()
    n = sum(p.numel() for p in model.parameters())
    init = torch.linspace(1.0, 2.0, n, dtype=torch.float64) if rank == 0 else None
    est = catapult.sharpness(model, loss_fn, (xs, ys), init=init, max_iter=1, tol=1e-12, distributed=True)
    out["init_rank0"] = est.value
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_refusal_on_one_rank_stops_every_rank():
    zero, one = on_ranks(one_rank_refusals)
    assert "not reliable" in one["kink"] and "not reliable" in zero["kink"]   # the ranks' largest gap
    assert "neither a mean nor a sum" in one["reduction"]
    # every rank raises the failing rank's error, the same type and message (was a ValueError naming
    # the rank on the others: a defect's traceback in `catapult train-ddp`, where that rank exited 2)
    assert zero["reduction"] == one["reduction"] and zero["kinds"]["reduction"] == one["kinds"]["reduction"]
    assert "Dropout in train mode" in zero["lean_dropout"]
    assert one["lean_dropout"] == zero["lean_dropout"]
    assert zero["kinds"]["lean_dropout"] == one["kinds"]["lean_dropout"]
    assert one["vector_loss"] == "loss_fn must return a scalar tensor, got shape (64,)"
    assert zero["vector_loss"] == one["vector_loss"]
    model, loss_fn, batch = problem()
    n = sum(p.numel() for p in model.parameters())
    alone = catapult.sharpness(model, loss_fn, batch, init=torch.linspace(1.0, 2.0, n, dtype=torch.float64),
                               max_iter=1, tol=1e-12)
    assert zero["init_rank0"] == pytest.approx(alone.value, rel=1e-9) and one["init_rank0"] == zero["init_rank0"]


def sum_loss_measures(rank, world):
    model, _, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    total = nn.MSELoss(reduction="sum")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = {"sharpness": catapult.sharpness(model, total, shard, tol=1e-10, distributed=True).value,
           "critical_lr": catapult.critical_lr(model, total, shard, opt, lr_start=1e-4, distributed=True).lr}
    try:  # a mean on one rank and a sum on the other: no weighting adds them up
        catapult.sharpness(model, nn.MSELoss() if rank == 0 else total, shard, distributed=True)
        out["mixed"] = None
    except ValueError as err:
        out["mixed"] = str(err)
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_sum_loss_is_weighted_as_a_sum():
    # the shards were weighted |B_r| / |B| whatever the loss: a sum loss gave 27.7 for 42.7
    model, _, batch = problem()
    total = nn.MSELoss(reduction="sum")
    single = {"sharpness": catapult.sharpness(model, total, batch, tol=1e-10).value,
              "critical_lr": catapult.critical_lr(model, total, batch, torch.optim.SGD(model.parameters(), lr=0.1),
                                                  lr_start=1e-4).lr}
    for res in on_ranks(sum_loss_measures):
        assert res["sharpness"] == pytest.approx(single["sharpness"], rel=1e-6)
        assert res["critical_lr"] == pytest.approx(single["critical_lr"], rel=1e-6)
        assert "a mean over samples on some ranks' shards and a sum on others'" in res["mixed"]


def nan_on_one_rank_fd(rank, world):
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]].clone())
    if rank == 1:
        shard[1][0, 0] = float("inf")
    est = catapult.sharpness(model, loss_fn, shard, hvp="finite_difference", distributed=True)
    return est.value, est.converged


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_nan_loss_on_one_rank_with_finite_differences_is_nan_everywhere():
    # the rank whose loss was nan skipped the kink test's all-reduce, which then met the other
    # rank's product all-reduce: gloo aborted the process
    for value, converged in on_ranks(nan_on_one_rank_fd):
        assert math.isnan(value) and not converged


class RoutedExpert(nn.Module):
    """A per-sample route: ``b`` only for samples whose first input is positive, so a shard with
    none of them leaves ``b`` unused (an MoE expert no token of the shard is routed to)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        out = self.a(x)
        routed = x[:, 0] > 0
        if routed.any():
            out = out.clone()
            out[routed] = out[routed] + torch.tanh(self.b(x[routed]))
        return out


def routed_problem():
    torch.manual_seed(0)
    model = RoutedExpert().double()
    x = torch.randn(8, 3, dtype=torch.float64)
    x[:3, 0] = -x[:3, 0].abs()   # rank 0's 3 samples never reach b; rank 1's 5 do
    return model, nn.MSELoss(), (x, torch.randn(8, 2, dtype=torch.float64))


def routed_measures(rank, world):
    model, loss_fn, (x, y) = routed_problem()
    shard = (x[:3], y[:3]) if rank == 0 else (x[3:], y[3:])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    return {"sharpness": catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True).value,
            "critical_lr": catapult.critical_lr(model, loss_fn, shard, opt, lr_start=1e-3, distributed=True).lr}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_parameter_unused_on_one_rank_is_the_unions_gradient_all_the_same():
    # rank 0's gradient of b was None, and it skipped b's all-reduce that rank 1 made: the next
    # collectives paired the wrong tensors and gloo aborted both processes (critical_lr)
    model, loss_fn, batch = routed_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    single = {"sharpness": catapult.sharpness(model, loss_fn, batch, tol=1e-10).value,
              "critical_lr": catapult.critical_lr(model, loss_fn, batch, opt, lr_start=1e-3).lr}
    for res in on_ranks(routed_measures, timeout_s=60.0):
        for key in single:
            assert res[key] == pytest.approx(single[key], rel=1e-6), key


def answers_or_refusals(calls) -> dict:
    """Each call's answer, or its ValueError message."""
    out = {}
    for name, call in calls.items():
        try:
            out[name] = call()
        except ValueError as err:
            out[name] = str(err)
    return out


def refused_messages(calls, model, loss_fn, shard) -> dict:
    """Each call's ValueError message (None where it ran), and ``"after"``: the sharpness measured
    after them all (a rank left in a collective would hang it, or pair it wrongly)."""
    out = answers_or_refusals({name: (lambda call=call: (call(), None)[1]) for name, call in calls.items()})
    out["after"] = catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True).value
    return out


def mismatched_calls(rank, world):
    """Calls whose settings differ between the ranks: each rank raises the same message naming
    the setting, and the group is left usable (the last call pairs its collectives)."""
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = {
        # rank 0 stopped at its tolerance while rank 1 went on all-reducing: gloo aborted both
        "tol": lambda: catapult.sharpness(model, loss_fn, shard, tol=1e-2 if rank == 0 else 1e-12, distributed=True),
        # k=0 refused on rank 1 alone, while rank 0 waited in its first all-reduce
        "k": lambda: catapult.top_eigenpairs(model, loss_fn, shard, k=2 if rank == 0 else 0, distributed=True),
        # the start vectors differed: a silent answer of no operator
        "seed": lambda: catapult.sharpness(model, loss_fn, shard, seed=rank, distributed=True),
        "lr_start": lambda: catapult.critical_lr(model, loss_fn, shard, opt, lr_start=1e-3 * (1 + rank),
                                                 distributed=True),
        "optimizer": lambda: catapult.hessian_trace(model, loss_fn, shard, optimizer=opt if rank else None,
                                                    scale_by_group_lr=True, distributed=True),
    }
    return refused_messages(calls, model, loss_fn, shard)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_settings_that_differ_between_the_ranks_are_refused_on_every_rank():
    model, loss_fn, batch = problem()
    single = catapult.sharpness(model, loss_fn, batch, tol=1e-10).value
    functions = {"tol": "sharpness", "k": "top_eigenpairs", "seed": "sharpness", "lr_start": "critical_lr",
                 "optimizer": "hessian_trace"}
    for res in on_ranks(mismatched_calls, timeout_s=60.0):
        for name, function in functions.items():
            assert res[name] == (f"distributed=True: {function}'s {name} differs between the ranks; pass the same "
                                 f"on every rank (the ranks would run different collectives)"), name
        assert res["after"] == pytest.approx(single, rel=1e-6)


def parameters_apart(rank, world):
    model, loss_fn, (x, y) = problem()
    if rank == 1:  # a checkpoint loaded on one rank, or ranks seeded apart
        with torch.no_grad():
            model[2].bias.add_(1e-3)
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    return answers_or_refusals({
        "sharpness": lambda: catapult.sharpness(model, loss_fn, shard, distributed=True).value,
        "critical_lr": lambda: catapult.critical_lr(model, loss_fn, shard, torch.optim.SGD(model.parameters(), lr=0.1),
                                                    distributed=True).lr})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_parameters_that_differ_between_the_ranks_are_refused_on_every_rank():
    # the ranks' products were all-reduced all the same: a sharpness of no one model, silently
    for res in on_ranks(parameters_apart, timeout_s=60.0):
        for name in ("sharpness", "critical_lr"):
            assert res[name] == ("distributed=True: the model's parameter '2.bias' differs between the ranks; the "
                                 "curvature of the union's loss is that of one model and one optimizer state (wrap "
                                 "the model in DistributedDataParallel, or broadcast rank 0's parameters and state, "
                                 "before measuring)"), name


def one_sample_each(rank, world):
    model, _, (x, y) = problem()
    shard = (x[rank:rank + 1], y[rank:rank + 1])
    return {reduction: catapult.sharpness(model, nn.MSELoss(reduction=reduction), shard, tol=1e-10,
                                          distributed=True).value for reduction in ("sum", "mean")}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_shards_of_one_sample_tell_a_sum_loss_from_a_mean():
    # no rank could split its one sample in halves, so a mean was taken: a sum loss's sharpness halved
    model, _, (x, y) = problem()
    union = (x[:2], y[:2])
    single = {reduction: catapult.sharpness(model, nn.MSELoss(reduction=reduction), union, tol=1e-10).value
              for reduction in ("sum", "mean")}
    for res in on_ranks(one_sample_each, timeout_s=60.0):
        for reduction in single:
            assert res[reduction] == pytest.approx(single[reduction], rel=1e-6), reduction


def dropout_sum_loss(rank, world):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    _, _, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    torch.manual_seed(1 + rank)   # each rank draws its own masks, as in training
    total = catapult.sharpness(model, nn.MSELoss(reduction="sum"), shard, tol=1e-10, distributed=True).value
    # the same masks (re-drawn from the same seed) on a mean loss: its curvature is the sum's / |B|
    torch.manual_seed(1 + rank)
    mean = catapult.sharpness(model, nn.MSELoss(), shard, tol=1e-10, distributed=True).value
    return {"sum": total, "mean": mean, "training": model.training and model[2].training}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_sum_loss_on_a_train_mode_dropout_model_is_weighted_as_a_sum():
    # no rank could tell the loss's reduction through the masks, so a mean was taken: the sum
    # loss's curvature came out 1/|B| x |B_r| per rank, about half on 2 ranks
    for res in on_ranks(dropout_sum_loss, timeout_s=60.0):
        assert res["training"]
        # MSELoss's mean divides by the union's entries (16 samples x 2 outputs), its sum does not
        assert res["sum"] == pytest.approx(res["mean"] * sum(SHARDS) * 2, rel=1e-6)


def failed_forward_on_one_rank(rank, world):
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    wrong = shard if rank == 0 else (shard[0][:, :2], shard[1])   # 2 features for a 3-input model
    try:
        catapult.sharpness(model, loss_fn, wrong, memory="lean", distributed=True)
        out = {"lean": None}
    except (ValueError, RuntimeError) as err:
        out = {"lean": str(err)}
    out["after"] = catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True).value
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_forward_that_fails_on_one_rank_while_sizing_lean_stops_every_rank():
    # lean's sizing forward failed on rank 1 alone, and rank 0 waited in the basis all-reduce
    # until the group's timeout (a hang with NCCL's default)
    model, loss_fn, batch = problem()
    single = catapult.sharpness(model, loss_fn, batch, tol=1e-10).value
    zero, one = on_ranks(failed_forward_on_one_rank, timeout_s=30.0)
    assert "mat1 and mat2 shapes cannot be multiplied" in one["lean"] and zero["lean"] == one["lean"]
    assert zero["after"] == pytest.approx(single, rel=1e-6) and one["after"] == zero["after"]


def batch_refused_on_one_rank(rank, world):
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bare = shard if rank == 0 else shard[0]   # rank 1 forgot the targets
    calls = {
        # rank 1's lean sizing skipped the collectives of a batch it could not read: rank 0's
        # sizing all-reduce met rank 1's shard sizes ("the shard of rank 0 holds no samples")
        "lean": lambda: catapult.sharpness(model, loss_fn, bare, memory="lean", distributed=True),
        # critical_lr refused the batch on rank 1 alone; rank 0 waited for the group's timeout
        "critical_lr": lambda: catapult.critical_lr(model, loss_fn, bare, opt, distributed=True),
    }
    return refused_messages(calls, model, loss_fn, shard)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_batch_refused_on_one_rank_stops_every_rank():
    model, loss_fn, batch = problem()
    single = catapult.sharpness(model, loss_fn, batch, tol=1e-10).value
    zero, one = on_ranks(batch_refused_on_one_rank, timeout_s=30.0)
    for name, function in (("lean", "sharpness"), ("critical_lr", "critical_lr")):
        assert zero[name] == one[name], name
        assert one[name] == f"{function}: batch must be a pair (inputs, targets); got a tensor of shape (6, 3)"
    assert zero["after"] == pytest.approx(single, rel=1e-6) and one["after"] == zero["after"]


def optimizer_states_apart(rank, world):
    model, loss_fn, (x, y) = problem()
    opt = adam_after_one_step(model, loss_fn, (x, y))
    if rank == 1:  # a checkpoint's optimizer state loaded on one rank
        for state in opt.state.values():
            state["exp_avg_sq"].mul_(4.0)
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    return answers_or_refusals({
        "preconditioned": lambda: catapult.preconditioned_sharpness(model, loss_fn, shard, opt, distributed=True).value,
        "betas": lambda: catapult.top_eigenpairs(
            model, loss_fn, shard, k=1, distributed=True,
            optimizer=torch.optim.Adam(model.parameters(), betas=(0.9, 0.99 + 0.001 * rank))).values})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_optimizer_states_that_differ_between_the_ranks_are_refused_on_every_rank():
    # each rank pre-conditioned by its own second moments: 121.0 on rank 0, 94.1 on rank 1
    for res in on_ranks(optimizer_states_apart, timeout_s=60.0):
        assert res["preconditioned"] == (
            "distributed=True: the optimizer's 'exp_avg_sq' of parameter '0.weight' differs between the ranks; the "
            "curvature of the union's loss is that of one model and one optimizer state (wrap the model in "
            "DistributedDataParallel, or broadcast rank 0's parameters and state, before measuring)")
        assert res["betas"] == ("distributed=True: top_eigenpairs's optimizer's betas (param group 0) differs between "
                                "the ranks; pass the same on every rank (the ranks would run different collectives)")


def test_products_of_a_diverged_union_are_counted_as_the_local_operators_are():
    # a non-finite union loss: every product is nan without a local product, but each one asked
    # is counted, as the local operator counts its nan products (est.matvecs was 0 under mutation)
    from catapult.curvature import HessianOperator
    from catapult.curvature.distributed import DistributedOperator, single_process_group

    model = nn.Linear(2, 1, bias=False)
    batch = (torch.tensor([[2.0, 0.0], [0.0, math.inf]]), torch.tensor([[1.0], [0.0]]))
    local = HessianOperator(model, nn.MSELoss(), batch)
    with single_process_group():
        union = DistributedOperator(HessianOperator(model, nn.MSELoss(), batch), 1.0)
        products = [union(torch.ones(2)) for _ in range(3)]
    for _ in range(3):
        assert torch.isnan(local(torch.ones(2))).all()
    assert all(torch.isnan(p).all() for p in products) and union.matvecs == local.matvecs == 3


def init_on_rank_1_only(rank, world):
    model, loss_fn, (x, y) = problem()
    lo = sum(SHARDS[:rank])
    shard = (x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]])
    n = sum(p.numel() for p in model.parameters())
    init = None if rank == 0 else torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    est = catapult.sharpness(model, loss_fn, shard, init=init, tol=1e-3, max_iter=3, coarse=None, distributed=True)
    return {"value": est.value, "vector": est.vector, "matvecs": est.matvecs}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_an_init_on_a_rank_other_than_0_is_ignored_as_rank_0_gave_none():
    # rank 0 decides: with no init there, every rank starts from the seeded random vector (mutation
    # pass 6, WS16: rank 1 started from its own init, rank 0 from the random one, and the ranks'
    # Krylov vectors parted); truth: one process's cold solve on the union, three products
    model, loss_fn, batch = problem()
    cold = catapult.sharpness(model, loss_fn, batch, tol=1e-3, max_iter=3, coarse=None)
    results = on_ranks(init_on_rank_1_only)
    for res in results:
        assert res["matvecs"] == cold.matvecs
        assert res["value"] == pytest.approx(cold.value, rel=1e-9)
        torch.testing.assert_close(res["vector"], cold.vector, rtol=0, atol=1e-9)
