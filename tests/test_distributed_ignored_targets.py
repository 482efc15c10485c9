"""distributed=True with integer targets of -100 (torch's ``ignore_index``) counted unevenly between
the ranks: 2 CPU processes on gloo over loopback, each with its shard, against the dense float64
Hessian of one process on the union of the shards.

``F.cross_entropy`` is a mean over the targets it counts, so the union's loss weighs each rank by its
counted targets, not its samples: weighted by samples, a shard with as many -100 in each half was
silently wrong (0.448 for the union's 0.487), and one with its -100 in one half was refused as
neither a mean nor a sum. A loss that sums each sample's counted terms and divides by the samples
stays weighted by the samples."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import catapult
from dense_curvature import dense_hessian
from gloo_ranks import on_ranks
from torch_features import FSDP2

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")

VOCAB = 4


def per_sample_mean(out, y):
    """The counted terms of each sample summed, over the samples: -100 rows count as samples."""
    return F.cross_entropy(out, y, reduction="sum") / out.shape[0]


def tokens_mean(out, y):
    return F.cross_entropy(out.reshape(-1, VOCAB), y.reshape(-1))


def problem(case):
    """``(model, loss_fn, x, y, rows of rank 0)``."""
    torch.manual_seed(0)
    if case == "tokens":   # (samples, tokens) labels; rank 0's second and third samples half padding
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, VOCAB)).double()
        x = torch.randn(6, 2, 3, dtype=torch.float64)
        y = torch.tensor([[0, 1], [2, -100], [-100, 3], [1, 1], [0, 2], [3, 0]])
        return model, tokens_mean, x, y, 3
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, VOCAB)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    if case == "halves alike":   # one -100 in each of rank 0's halves: told a mean, weighted by samples
        y, rows = torch.tensor([0, -100, 2, -100, 1, 3, 0, 2]), 4
    else:   # rank 0's -100 in one half (refused as neither), rank 1's last target -100
        y, rows = torch.tensor([0, -100, 2, 1, 3, 0, 2, -100]), 3
    loss_fn = {"per sample": per_sample_mean, "sum": nn.CrossEntropyLoss(reduction="sum")}.get(
        case, nn.CrossEntropyLoss())
    return model, loss_fn, x, y, rows


CASES = ["halves alike", "one half", "tokens", "per sample", "sum"]


def sharpness_or_refusal(model, loss_fn, shard):
    """The rank's distributed sharpness, or the text of the ValueError that refused it."""
    try:
        return catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True).value
    except ValueError as err:
        return str(err)


def measures(rank, world):
    out = {}
    for case in CASES:
        model, loss_fn, x, y, rows = problem(case)
        shard = (x[:rows], y[:rows]) if rank == 0 else (x[rows:], y[rows:])
        try:
            out[case] = (catapult.sharpness(model, loss_fn, shard, tol=1e-10, distributed=True).value,
                         catapult.top_eigenpairs(model, loss_fn, shard, k=2, tol=1e-10, distributed=True).values,
                         catapult.critical_lr(model, loss_fn, shard, torch.optim.SGD(model.parameters(), lr=0.1),
                                              lr_start=1e-3, distributed=True).lr)
        except ValueError as err:
            out[case] = str(err)
    return out


def test_the_ranks_are_weighted_by_the_targets_the_loss_counts():
    truth, alone = {}, {}
    for case in CASES:
        model, loss_fn, x, y, rows = problem(case)
        truth[case] = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[::-1][:2]
        alone[case] = catapult.critical_lr(model, loss_fn, (x, y), torch.optim.SGD(model.parameters(), lr=0.1),
                                           lr_start=1e-3).lr
        # the two weightings differ here, so the test can fail: rank 0's counted share is not its samples'
        counted = (y[:rows] != -100).sum().item() / (y != -100).sum().item()
        assert counted != pytest.approx(rows / len(y), rel=1e-3)
    for res in on_ranks(measures, timeout_s=120.0):
        for case in CASES:
            assert not isinstance(res[case], str), (case, res[case])
            top, pair, lr = res[case]
            assert top == pytest.approx(truth[case][0], rel=1e-7), case
            np.testing.assert_allclose(pair, truth[case], rtol=1e-7, err_msg=case)
            # the critical lr's trial losses and gradient are the union's too: one process's search on it
            assert lr == pytest.approx(alone[case], rel=1e-9), case


def all_ignored_on_rank_1(rank, world):
    model, _, x, y, _ = problem("one half")
    y = torch.tensor([0, 1, 2, 3, 1, -100, -100, -100])
    shard = (x[:5], y[:5]) if rank == 0 else (x[5:], y[5:])
    out = {}
    for name, loss_fn in (("mean", nn.CrossEntropyLoss()), ("sum", nn.CrossEntropyLoss(reduction="sum"))):
        out[name] = sharpness_or_refusal(model, loss_fn, shard)
    return out


def test_a_shard_whose_targets_are_all_ignored_is_refused_for_a_mean_and_summed_for_a_sum():
    # rank 1's mean over no counted target is nan, and every rank read nan for the union's 0.983
    model, _, x, _, _ = problem("one half")
    y = torch.tensor([0, 1, 2, 3, 1, -100, -100, -100])
    truth = np.linalg.eigvalsh(dense_hessian(model, nn.CrossEntropyLoss(reduction="sum"), (x, y)).numpy())[-1]
    for res in on_ranks(all_ignored_on_rank_1, timeout_s=120.0):
        assert res["mean"] == ("distributed=True: the targets of the shard of rank 1 are all -100 (ignored): a mean "
                               "over the targets that count is nan there; give every rank some targets that count, "
                               "or use a sum loss")
        assert res["sum"] == pytest.approx(truth, rel=1e-7)


def sharded_measures(rank, world):
    from torch.distributed.fsdp import fully_shard

    out = {}
    for case in CASES:
        model, loss_fn, x, y, rows = problem(case)
        fully_shard(model[0])
        fully_shard(model)
        shard = (x[:rows], y[:rows]) if rank == 0 else (x[rows:], y[rows:])
        out[case] = sharpness_or_refusal(model, loss_fn, shard)
    return out


@FSDP2
def test_a_sharded_model_weighs_the_ranks_by_the_targets_the_loss_counts():
    # a model sharded by FSDP2 tells the loss from its output's rows: weighted by samples, 0.896 for the
    # union's 1.134, and the other -100 layouts refused
    truth = {}
    for case in CASES:
        model, loss_fn, x, y, _ = problem(case)
        truth[case] = np.linalg.eigvalsh(dense_hessian(model, loss_fn, (x, y)).numpy())[-1]
    for res in on_ranks(sharded_measures, timeout_s=120.0):
        for case in CASES:
            assert res[case] == pytest.approx(truth[case], rel=1e-7), case


def unlike_targets_or_losses(rank, world):
    """Rank 0: F.cross_entropy's token mean over labels holding -100 (told "counted"); rank 1: class
    probabilities (no integer labels to count), or the same labels under a sum."""
    model, _, x, y, rows = problem("one half")
    out = {}
    for case in ("probabilities", "sum"):
        if rank == 0:
            shard, loss_fn = (x[:rows], y[:rows]), nn.CrossEntropyLoss()
        elif case == "probabilities":
            shard, loss_fn = (x[rows:], F.one_hot(y[rows:].clamp(min=0), VOCAB).double()), nn.CrossEntropyLoss()
        else:
            shard, loss_fn = (x[rows:], y[rows:]), nn.CrossEntropyLoss(reduction="sum")
        out[case] = sharpness_or_refusal(model, loss_fn, shard)
    return out


def test_a_counted_mean_beside_targets_it_cannot_count_or_a_sum_is_refused_on_every_rank():
    # the union's loss has no weights for these ranks: rank 0's counted targets beside rank 1's samples
    # read c_0 / (c_0 - 1) and -1 / (c_0 - 1) (mutation pass 27, DI4), and a counted mean beside a sum was
    # taken as a sum, weight 1 on each rank (DI5): both gave a number of no loss, silently
    for res in on_ranks(unlike_targets_or_losses, timeout_s=120.0):
        assert res["probabilities"] == (
            "distributed=True: loss_fn leaves out targets of -100 (a mean over the counted targets) on some ranks' "
            "shards, and other ranks' targets are no tensor of integer labels to count; give every rank the same "
            "kind of targets")
        assert res["sum"] == ("distributed=True: loss_fn is a mean over samples on some ranks' shards and a sum on "
                              "others'; give every rank the same loss")
