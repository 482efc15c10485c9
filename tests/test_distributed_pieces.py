"""The pieces of a data-parallel run checked one by one against a recomputation by hand: which
held-out shard is validated on, each rank's block of the first ``n_test`` validation windows,
and :class:`DataParallel`'s reductions across two gloo processes (loopback)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from catapult.config import ConfigError
from catapult.engine.distributed import DataParallel, ShardBatches, TokenShards, train_ddp, validation_windows
from gloo_ranks import on_ranks

VOCAB = 257


def _save(path, n, seed):
    ids = np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)
    np.save(path, ids)
    return ids.astype(np.int64)


@pytest.mark.parametrize("names, want", [
    (["wiki.valid.npy", "wiki.test.npy"], "wiki.valid.npy"),   # validation preferred to test
    (["wiki.test.npy", "wiki.val.npy"], "wiki.val.npy"),
    (["wiki.test.npy"], "wiki.test.npy"),                      # no validation shard: the test one
])
def test_the_validation_stream_is_the_validation_shards_else_the_test_ones(tmp_path, names, want):
    _save(tmp_path / "part0.npy", 300, 0)
    for i, name in enumerate(names):
        _save(tmp_path / name, 100 + i, i + 1)
    assert [f.name for f in TokenShards(tmp_path, VOCAB, held_out=True).files] == [want]
    assert [f.name for f in TokenShards(tmp_path, VOCAB).files] == ["part0.npy"]


def test_each_rank_holds_its_block_of_the_first_n_test_windows(tmp_path):
    valid = _save(tmp_path / "wiki.valid.npy", 201, 3)   # 200 // 8 = 25 windows of 8 (+1 target)
    _save(tmp_path / "part0.npy", 300, 0)
    held_out = TokenShards(tmp_path, VOCAB, held_out=True)

    def by_hand(i):  # window i: tokens [8 i, 8 i + 8), targets shifted by one
        return valid[8 * i:8 * i + 8], valid[8 * i + 1:8 * i + 9]

    # rank r holds windows [r n // world, (r + 1) n // world): together exactly the first n
    for n_test, world, blocks in [(10, 2, [(0, 5), (5, 10)]), (7, 2, [(0, 3), (3, 7)]), (25, 1, [(0, 25)]),
                                  (25, 3, [(0, 8), (8, 16), (16, 25)]), (1, 2, [(0, 0), (0, 1)])]:
        for rank, (lo, hi) in enumerate(blocks):
            x, y = validation_windows(held_out, 8, n_test, rank=rank, world=world)
            assert x.shape == y.shape == (hi - lo, 8)  # a rank may hold none (fewer windows than ranks)
            for j in range(hi - lo):
                want_x, want_y = by_hand(lo + j)
                assert np.array_equal(x[j].numpy(), want_x) and np.array_equal(y[j].numpy(), want_y)
    with pytest.raises(ConfigError, match="data.n_test"):
        validation_windows(held_out, 8, 26, rank=0, world=1)


def _reductions_and_verdict(rank, world, bad):
    procs = DataParallel(rank, world)
    got = {"mean": procs.mean((rank + 1.0, 10.0 * rank)), "all_one": procs.all(rank == 0),
           "all_both": procs.all(True), "writes": procs.writes}
    from catapult.curvature.distributed import agreed_minimum

    got["minimum"] = agreed_minimum(7 - 3 * rank)   # 7 and 4: the ranks agree on 4
    layer = SimpleNamespace(module=SimpleNamespace(dense_grad=torch.full((2, 2), float(rank + 1))))
    updater = SimpleNamespace(layers=[layer], is_update_step=lambda t: t == 4)
    procs.before_mask_update(updater, 3)   # not an update step: this rank's own gradient
    got["grad_3"] = layer.module.dense_grad.clone()
    procs.before_mask_update(updater, 4)
    got["grad_4"] = layer.module.dense_grad.clone()
    # only rank 0 checks the ids; every rank raises its verdict, a ConfigError naming the file
    config = dict(seed=0, data=dict(name="text", root=bad, tokenizer="bpe", vocab_size=VOCAB, context=8),
                  model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy",
                  train=dict(steps=1, batch_size=2))
    try:
        train_ddp(config)
        got["error"] = None
    except ConfigError as exc:
        got["error"] = (type(exc).__name__, str(exc))
        got["pairs"] = [type(p).__name__ for p in exc.problems]   # (key, message) tuples, as ConfigError's
    return got


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_data_parallel_reduces_over_both_processes_and_shares_rank0s_verdict(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    ids = np.random.default_rng(0).integers(0, VOCAB, 100).astype(np.uint16)
    ids[40] = VOCAB + 3
    np.save(bad / "part0.npy", ids)
    for rank, got in enumerate(on_ranks(_reductions_and_verdict, str(bad))):
        assert got["mean"] == pytest.approx(((1.0 + 2.0) / 2, (0.0 + 10.0) / 2), rel=1e-15, abs=0)
        assert got["all_one"] is False and got["all_both"] is True and got["minimum"] == 4
        assert got["writes"] is (rank == 0)
        assert torch.equal(got["grad_3"], torch.full((2, 2), float(rank + 1)))
        assert torch.equal(got["grad_4"], torch.full((2, 2), 1.5))   # (1 + 2) / 2 on every rank
        kind, message = got["error"]
        assert kind == "ConfigError" and "data.root" in message and "part0.npy" in message
        assert got["pairs"] == ["tuple"]   # rank 1's, rebuilt from rank 0's verdict (sent as JSON lists)


def test_batch_t_is_drawn_from_the_data_seed_and_t(tmp_path):
    # the module docstring's rule, by hand: B window starts ~ Uniform{0 .. N - T - 1} from a
    # torch.Generator seeded with data_seed * 1_000_003 + t, data_seed = seeds(seed)[1]
    from catapult.engine.seeds import seeds

    stream = np.concatenate([_save(tmp_path / "part0.npy", 300, 0), _save(tmp_path / "part1.npy", 200, 1)])
    config = dict(seed=5, dtype="float64", data=dict(name="text", root=str(tmp_path), tokenizer="bpe",
                                                     vocab_size=VOCAB, context=8),
                  model=dict(name="gpt", width=8, depth=1, n_heads=2), loss="cross_entropy",
                  train=dict(steps=1, batch_size=4), schedule=dict(warmup_steps=1), optimizer=dict(lr=1e-30))
    result = train_ddp(config, progress="none")
    for t in range(2):
        gen = torch.Generator().manual_seed(seeds(5)[1] * 1_000_003 + t)
        starts = torch.randint(len(stream) - 8, (4,), generator=gen).tolist()
        w = torch.from_numpy(np.stack([stream[s:s + 9] for s in starts]))
        with torch.no_grad():   # lr 1e-30: the initial model at both steps
            logits = result.model(w[:, :-1])
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))
        assert result.metrics[t]["train_loss"] == pytest.approx(float(want), rel=1e-12)

    # lambda_0's batches: 0 .. k-1 of this order, this rank's rows (k of them, not k + 1)
    shards = TokenShards(tmp_path, VOCAB)
    mine = ShardBatches(shards, 8, 4, rank=1, world=2, data_seed=seeds(5)[1], device=torch.device("cpu"))
    first = mine.first_batches(3)
    assert len(first) == 3
    for t, (x, y) in enumerate(first):
        gen = torch.Generator().manual_seed(seeds(5)[1] * 1_000_003 + t)
        starts = torch.randint(len(stream) - 8, (4,), generator=gen).tolist()[2:]   # rank 1: rows 2, 3
        assert torch.equal(x, torch.from_numpy(np.stack([stream[s:s + 8] for s in starts])))
        assert torch.equal(y, torch.from_numpy(np.stack([stream[s + 1:s + 9] for s in starts])))


def test_build_warmup_refuses_the_persistent_rule_across_processes():
    from catapult.engine import build_run
    from catapult.engine.build import build_warmup

    setup = build_run({"data": {"name": "digits", "n_train": 64, "n_test": 16}, "model": {"width": 8, "depth": 2},
                       "optimizer": {"lr": 0.05}, "schedule": {"warmup": "persistent"}, "train": {"steps": 2}})
    args = (setup.config, 0.05, setup.model, setup.loss_fn, setup.batches.batch(0), setup.optimizer)
    with pytest.raises(ConfigError, match=r"schedule\.warmup"):
        build_warmup(*args, distributed=True)
    assert build_warmup(*args).persistent is not None   # one process: the persistent rule


def test_a_shard_is_cut_into_halves_of_ceil_and_floor_n_over_2_samples():
    # a shard of 2 samples was cut into 2 and 0 (an empty half's mean loss is nan): every mean
    # and sum loss was then refused as "neither a mean nor a sum"
    from catapult.curvature.distributed import single_process_group, union_weight
    from catapult.curvature.shard_reduction import halves as _halves

    for n, sizes in ((2, [1, 1]), (3, [2, 1]), (4, [2, 2]), (5, [3, 2])):
        x, y = torch.randn(n, 2), torch.randn(n, 1)
        _, _, pieces, _ = _halves(x, y)
        assert [len(p[0]) for p in pieces] == sizes and [len(p[1]) for p in pieces] == sizes
    with single_process_group():
        assert union_weight(torch.nn.Linear(2, 1), torch.nn.MSELoss(), (torch.randn(2, 2), torch.randn(2, 1))) == 1.0


def _collapse_verdicts(rank, world):
    procs = DataParallel(rank, world)
    one_row = torch.tensor([[1.0, 2.0, 3.0]])          # each rank one row, the same: the union is constant
    constant = torch.full((3, 4), 1.0 + rank)          # each rank constant, at 1.0 and at 2.0: the union is not
    near = torch.tensor([[1.0, 5.0], [1.0, 5.0]]) + 1e-3 * rank   # spread 5e-4 of max 5.001: not below 1e-6
    return {"one_row": procs.collapsed(one_row), "constant": procs.collapsed(constant),
            "near": procs.collapsed(near), "same": procs.collapsed(torch.full((2, 2, 3), 0.5))}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_the_collapse_rule_is_the_union_batchs_not_each_ranks():
    # a B = 2 run on 2 ranks never collapsed (each rank's one row "cannot tell"), and ranks each
    # constant at a different output collapsed: the rule is the union batch's, as one process sees it
    for got in on_ranks(_collapse_verdicts):
        assert got == {"one_row": True, "constant": False, "near": False, "same": True}


def _slow_rank0_set_up(rank, world):
    import time

    from catapult.engine.every_rank import on_every_rank

    # rank 0 tokenising text shards for longer than the process group's timeout (3 s here;
    # NCCL's default is 10 minutes) while rank 1 waits for its verdict
    started = time.perf_counter()
    got = on_every_rank(lambda: time.sleep(5) or "tokenised" if rank == 0 else None, True)
    return {"got": got, "waited": time.perf_counter() - started}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_a_set_up_step_waits_for_rank_0_past_the_groups_timeout():
    # rank 1 failed with gloo's "Timed out waiting 3000ms" (NCCL: the watchdog killed the job
    # after 10 minutes of tokenising a corpus); it waits for rank 0's verdict instead
    got = on_ranks(_slow_rank0_set_up, timeout_s=3)
    assert got[0]["got"] == "tokenised" and got[1]["got"] is None
    assert got[1]["waited"] >= 4.5


def test_single_process_group_waits_for_its_collectives_before_freeing_the_group(monkeypatch):
    # torch 2.2's gloo destructor joins its workers holding the GIL while a worker frees a
    # finished all-reduce whose tensor Python dropped (shard_weight's example hung every few
    # uses on 2.2.2). 2.13's destructor releases the GIL, so the deadlock cannot happen here: the
    # test emulates the old destructor by asking, when the group is destroyed, whether a barrier
    # (which waits, the GIL released, until the earlier collectives are done) came after the
    # last collective.
    import torch.distributed as dist

    from catapult.curvature.distributed import shard_weight, single_process_group

    calls = []
    barrier, destroy, all_reduce = dist.barrier, dist.destroy_process_group, dist.all_reduce
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append("barrier"), barrier(*a, **k))[1])
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: (calls.append("all_reduce"), all_reduce(*a, **k))[1])
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: (calls.append("destroy"), destroy(*a, **k))[1])
    with single_process_group():
        assert shard_weight((torch.zeros(6, 2), torch.zeros(6))) == 1.0
    assert calls[-1] == "destroy" and calls[:-1].index("all_reduce") < len(calls) - 2
    assert calls[-2] == "barrier", calls
    assert not dist.is_initialized()


def _verdict_json_cannot_encode(rank, world):
    from pathlib import PurePosixPath

    from catapult.engine import every_rank

    def work():   # rank 0's verdict holds a value JSON cannot encode (a path as a problem's message)
        if rank == 0:
            raise ConfigError([("data.root", PurePosixPath("/data/part0.npy"))])
        return "done"
    try:
        every_rank.on_every_rank(work, True)
        return None
    except Exception as exc:
        return type(exc).__name__, [list(map(str, p)) for p in getattr(exc, "problems", [])]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_a_verdict_json_cannot_encode_still_reaches_every_rank():
    # json.dumps raised TypeError on rank 0 alone, before its collective, and rank 1 waited in
    # its all_gather (the set-up group's 24-hour timeout): now the value travels as its repr
    ranks = on_ranks(_verdict_json_cannot_encode)
    assert ranks[0] == ("ConfigError", [["data.root", "/data/part0.npy"]])      # rank 0's own error
    assert ranks[1] == ("ConfigError", [["data.root", "PurePosixPath('/data/part0.npy')"]])


def _every_rank_failing(rank, world):
    from catapult.engine import every_rank

    def work():
        raise ConfigError([("data.root", f"rank {rank}'s shard is missing")])
    try:
        every_rank.on_every_rank(work, True)
        return None
    except ConfigError as exc:
        return [list(p) for p in exc.problems]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_where_every_rank_fails_every_rank_raises_the_lowest_failing_ranks_error():
    """Mutation pass 20 (EV3): where each rank's set-up step fails with its own error, every rank raises
    the lowest failing rank's, rank 0's own there (EV3 took the highest: rank 0 raised rank 1's)."""
    assert on_ranks(_every_rank_failing) == [[["data.root", "rank 0's shard is missing"]]] * 2


def test_the_set_up_group_is_gloo_waiting_setup_timeout_connected_at_once_and_destroyed_on_exit(monkeypatch):
    """Mutation pass 20 (EV4, EV5, EV6): setup_group asks for a gloo group whose collectives wait SETUP_TIMEOUT
    (EV5: the default, 30 minutes with gloo, for a tokenisation of hours), meets every rank in a barrier on it at
    once (its connections made while every rank is there; EV4 left them to the first collective), and destroys
    it on exit, the default group left (EV6 kept it). One process: the calls, as torch.distributed receives them."""
    import torch.distributed as dist

    from catapult.curvature.distributed import single_process_group
    from catapult.engine.every_rank import SETUP_TIMEOUT, setup_group

    calls = []
    new_group, barrier, destroy = dist.new_group, dist.barrier, dist.destroy_process_group

    def spy_new_group(*args, **kwargs):
        group = new_group(*args, **kwargs)
        calls.append(("new_group", kwargs.get("backend"), kwargs.get("timeout"), group))
        return group
    monkeypatch.setattr(dist, "new_group", spy_new_group)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append(("barrier", k.get("group"))), barrier(*a, **k))[1])
    monkeypatch.setattr(dist, "destroy_process_group",
                        lambda group=None: (calls.append(("destroy", group)), destroy(group))[1])
    with single_process_group():
        with setup_group() as group:
            assert calls[0][:3] == ("new_group", "gloo", SETUP_TIMEOUT) and calls[0][3] is group
            assert calls[1:] == [("barrier", group)]
        assert calls[2:] == [("destroy", group)] and dist.is_initialized()
    assert SETUP_TIMEOUT.total_seconds() == 24 * 3600
