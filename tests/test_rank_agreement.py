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


def test_the_ranks_fingerprint_of_a_tensor_sums_every_chunk():
    # (sum |t|, sum t, sum t^2) in float64 over chunks of FINGERPRINT_CHUNK entries (mutation pass
    # 6, RA5: the last chunk's sums alone, so ranks apart in the first 2^20 entries of a parameter
    # passed); truth: NumPy's float64 sums
    from catapult.curvature.rank_agreement import FINGERPRINT_CHUNK, _fingerprint

    t = torch.randn(2 * FINGERPRINT_CHUNK + 4 * 12345, generator=torch.Generator().manual_seed(0)).reshape(-1, 4)
    a = t.numpy().astype(np.float64).ravel()
    np.testing.assert_allclose(_fingerprint(t).numpy(), [np.abs(a).sum(), a.sum(), np.square(a).sum()], rtol=1e-12)
