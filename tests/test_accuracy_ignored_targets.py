"""Accuracy with ignored (-100) targets is a mean over the counted targets, as the loss is
(cross_entropy drops them; Hugging Face's and torchmetrics' ignore_index drop them from the
accuracy too): losses.accuracy on both arg-max paths and both sync paths, engine.evaluate, the
local loop's train/test accuracy (classifier and token batches), and across two gloo processes
(DataParallel.mean, its evaluate, the data-parallel loop's training row). Truth: a NumPy count
of arg-max hits over the labels other than -100."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from catapult import config as cfg
from catapult import losses
from catapult.engine.build import assemble_run, build_run
from catapult.engine.loop import evaluate, train
from catapult.losses import accuracy, cross_entropy, loss_and_accuracy
from gloo_ranks import on_ranks
from tiny_run import tiny_config


def numpy_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """hits / counted by NumPy: the arg-max of each row, over the labels other than -100."""
    scores = logits.detach().double().numpy().reshape(-1, logits.shape[-1])
    y = labels.numpy().reshape(-1)
    kept = y != -100
    if not kept.any():
        return math.nan
    return float((np.argmax(scores, axis=1)[kept] == y[kept]).sum()) / float(kept.sum())


def _labels(shape, classes, seed, ignored=0.4):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, shape, generator=g)
    y[torch.rand(shape, generator=g) < ignored] = -100
    return y


@pytest.mark.parametrize("plain_up_to", [0, losses.PLAIN_ARGMAX_ENTRIES], ids=["candidates", "shipped"])
def test_accuracy_counts_only_the_labels_other_than_minus_100(plain_up_to, monkeypatch):
    monkeypatch.setattr(losses, "PLAIN_ARGMAX_ENTRIES", plain_up_to)
    g = torch.Generator().manual_seed(1)
    for seed in range(5):
        classifier = torch.randn(64, 5, generator=g)          # the fast path (N x C, int64 labels)
        y = _labels((64,), 5, seed)
        tokens = torch.randn(3, 40, 7, generator=g)          # the general path (B x T x K)
        yt = _labels((3, 40), 7, seed + 10)
        for logits, labels in ((classifier, y), (tokens, yt)):
            truth = numpy_accuracy(logits, labels)
            assert int((labels == -100).sum()) > 0 and 0 < truth < 1
            assert accuracy(logits, labels) == pytest.approx(truth, rel=1e-15, abs=0)
            hits, counted = losses.accuracy_counts(logits, labels)
            assert counted == int((labels != -100).sum()) and hits / counted == pytest.approx(truth, rel=1e-15, abs=0)
            for one_sync in (False, True):
                value, acc = loss_and_accuracy(torch.tensor(0.25), logits, labels, one_sync=one_sync)
                assert value == 0.25 and acc == pytest.approx(truth, rel=1e-15, abs=0)


def test_accuracy_of_labels_all_ignored_is_nan_as_the_loss_is():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.full((4,), -100)
    assert math.isnan(torch.nn.functional.cross_entropy(logits, y).item())
    assert math.isnan(accuracy(logits, y)) and math.isnan(accuracy(logits.reshape(2, 2, 3), y.reshape(2, 2)))
    for one_sync in (False, True):
        assert math.isnan(loss_and_accuracy(torch.tensor(0.0), logits, y, one_sync=one_sync)[1])


class Tokens(nn.Module):
    """(B, T) integer tokens -> (B, T, K) logits."""

    def __init__(self, vocab: int = 7):
        super().__init__()
        self.emb = nn.Embedding(vocab, 5)
        self.out = nn.Linear(5, vocab)

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x)))


def _tokens_case():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Tokens()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (6, 5), generator=g)
    y = _labels((6, 5), 7, 3)
    y[4, :] = -100                       # a row with no counted target
    return model, x, y


@pytest.mark.parametrize("chunk", [None, 1, 2, 4])
def test_evaluate_accuracy_is_hits_over_counted_targets(chunk):
    model, x, y = _tokens_case()
    _, acc = evaluate(model, cross_entropy, x, y, chunk=chunk)
    with torch.no_grad():
        truth = numpy_accuracy(model(x), y)
    assert acc == pytest.approx(truth, rel=1e-12, abs=0)
    _, none = evaluate(model, cross_entropy, x, torch.full_like(y, -100), chunk=chunk)
    assert math.isnan(none)


class FixedBatches:
    """Batch t is ``(x, y)`` every step (the loop's batches interface)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def batch(self, t):
        return self.x, self.y

    def first_batches(self, k):
        return [(self.x, self.y)] * k


def _digits_run(steps: int = 0, distributed: bool = False, rows=slice(None)):
    config = cfg.validate({**yaml.safe_load(tiny_config("ignored")), "loss": "cross_entropy",
                           "train": {"steps": steps}})
    setup = build_run(config)
    x, y = setup.data.x_train[:32], _labels((32,), 10, 5)
    xt, yt = setup.data.x_test[:16], _labels((16,), 10, 6)
    model = setup.model
    with torch.no_grad():
        truths = numpy_accuracy(model(x), y), numpy_accuracy(model(xt), yt)
    run = assemble_run(setup.config, model, FixedBatches(x[rows], y[rows]), setup.device,
                       test_set=(xt[rows], yt[rows]), distributed=distributed)
    return run, truths


def test_the_local_loops_train_and_test_accuracy_count_no_ignored_target():
    run, (train_truth, test_truth) = _digits_run()
    result = train(run, progress="none")
    row = result.metrics[0]
    assert 0 < train_truth < 1 and 0 < test_truth < 1
    assert row["train_accuracy"] == pytest.approx(train_truth, rel=1e-15, abs=0)   # StepAccuracies' path
    assert row["test_accuracy"] == pytest.approx(test_truth, rel=1e-15, abs=0)


def test_the_local_loops_token_batches_count_no_ignored_target():
    config = cfg.validate({**yaml.safe_load(tiny_config("tokens")), "loss": "cross_entropy", "train": {"steps": 0}})
    model, x, y = _tokens_case()
    with torch.no_grad():
        truth = numpy_accuracy(model(x), y)
    run = assemble_run(config, model, FixedBatches(x, y), torch.device("cpu"), test_set=(x, y))
    row = train(run, progress="none").metrics[0]
    assert row["train_accuracy"] == pytest.approx(truth, rel=1e-12, abs=0)          # loss_and_accuracy's path
    assert row["test_accuracy"] == pytest.approx(truth, rel=1e-12, abs=0)


def _across_ranks(rank, world):
    from catapult.engine.distributed import DataParallel

    procs = DataParallel(rank, world)
    got = {}
    half = slice(0, 20) if rank == 0 else slice(20, 32)   # unequal shares, unequal counts
    run, _ = _digits_run(distributed=True, rows=half)
    result = train(run, processes=procs, progress="none")
    got["row"] = {k: result.metrics[0][k] for k in ("train_accuracy", "test_accuracy")}
    model, x, y = _tokens_case()
    share = slice(0, 2) if rank == 0 else slice(2, 6)
    got["evaluate"] = procs.evaluate(model, cross_entropy, x[share], y[share])[1]
    # rank 0: mean 0.5 of 2 counted, rank 1: mean 0.25 of 6; None: the ranks' means averaged
    got["mean"] = procs.mean((0.5 + rank, 0.5 - rank / 4), rows=(None, 2 + 4 * rank))
    return got


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_across_processes_the_accuracy_is_a_mean_over_every_ranks_counted_targets():
    # the union of the ranks' shares: the whole 32 training rows; of the 16 test rows rank 0 holds
    # all (its first 20), rank 1 none (a rank without test rows adds nothing)
    _, (train_truth, test_truth) = _digits_run()
    model, x, y = _tokens_case()
    with torch.no_grad():
        token_truth = numpy_accuracy(model(x), y)
    for got in on_ranks(_across_ranks):
        assert got["row"]["train_accuracy"] == pytest.approx(train_truth, rel=1e-12, abs=0)
        assert got["row"]["test_accuracy"] == pytest.approx(test_truth, rel=1e-12, abs=0)
        assert got["evaluate"] == pytest.approx(token_truth, rel=1e-12, abs=0)
        assert got["mean"][0] == pytest.approx((0.5 + 1.5) / 2, rel=1e-15, abs=0)
        assert got["mean"][1] == pytest.approx((0.5 * 2 + 0.25 * 6) / 8, rel=1e-15, abs=0)


def test_only_minus_100_is_ignored_another_negative_label_is_a_counted_miss():
    """IGNORE_INDEX (-100) alone is dropped; a label -5 is counted, a miss (no arg-max is negative), alike on
    the plain arg-max path, the general path (3-D outputs) and the one-sync path (before, the plain path
    could drop every negative label and pass: no test had one other than -100)."""
    out = torch.tensor([[1., 3.], [2., 0.], [0., 5.], [4., 1.]])
    y = torch.tensor([-5, 1, -100, 0])
    keep = y.numpy() != -100
    truth = (int((out.numpy().argmax(axis=1) == y.numpy())[keep].sum()), int(keep.sum()))
    assert truth == (1, 3)
    assert losses.accuracy_counts(out, y) == truth
    assert losses.accuracy_counts(out[None], y[None]) == truth
    assert losses.loss_and_counts(torch.tensor(0.5), out, y, one_sync=True)[1:] == truth
