"""The batched engine's accuracy and evaluation with ignored (-100) targets, as the local engine's.

Truth: each member's own outputs (a plain forward), NumPy's arg-max over the rows whose label is not
-100, and F.cross_entropy's token mean over those rows.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from catapult.losses import get_loss
from catapult.sweep.batched_model import StackedModel, accuracies


def _members_and_data():
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    x = torch.randn(12, 4)
    y = torch.tensor([0, 1, 2, -100, 1, -100, 0, 2, -100, -100, 1, 0])
    return models, x, y


def _truth(model, x, y):
    with torch.no_grad():
        out = model(x)
    keep = y.numpy() != -100
    hits = (out.numpy().argmax(axis=1) == y.numpy())[keep]
    return float(F.cross_entropy(out.double(), y, ignore_index=-100)), hits.sum() / keep.sum()


def test_accuracies_count_hits_over_the_labels_that_are_not_ignored():
    models, x, y = _members_and_data()
    with torch.no_grad():
        out = torch.stack([m(x) for m in models])
    got = accuracies(out, y)
    for m, value in zip(models, got):
        assert value == pytest.approx(_truth(m, x, y)[1], rel=1e-12)
    assert all(np.isnan(v) for v in accuracies(out[:, :2], torch.tensor([-100, -100])))


@pytest.mark.parametrize("chunk", [None, 5])
def test_evaluate_weights_each_chunk_by_its_counted_targets(chunk):
    models, x, y = _members_and_data()
    stacked = StackedModel(models, get_loss("cross_entropy"))
    for (loss, acc), m in zip(stacked.evaluate([0, 1], x, y, chunk=chunk), models):
        true_loss, true_acc = _truth(m, x, y)
        assert loss == pytest.approx(true_loss, rel=1e-5)   # float32 losses summed in float64
        assert acc == pytest.approx(true_acc, rel=1e-12)


def test_an_empty_batch_counts_no_label():
    """No label, no count: ``([0] * M, 0)``, so a mean over batches ``sum(hits) / sum(counted)`` is not
    diluted by an empty one (before, an empty batch claimed 1 counted label and passed)."""
    from catapult.sweep.batched_model import accuracy_counts

    hits, counted = accuracy_counts(torch.zeros(3, 0, 5), torch.zeros(0, dtype=torch.int64))
    assert (hits, counted) == ([0, 0, 0], 0)
    hits, counted = accuracy_counts(torch.zeros(2, 0, 5), torch.zeros(0, 5))   # float targets
    assert (hits, counted) == ([0, 0], 0)


@pytest.mark.parametrize("split", ["y_train", "y_test"])
def test_the_hand_kernels_refuse_ignored_labels_the_torch_func_engine_counts_them(split):
    # before: run_ensemble averaged the ignored rows in (cross-entropy 0 there, a miss for the accuracy):
    # train loss 1.1514 and accuracy 0.075 for the counted 2.3029 and 0.15 (half the labels -100)
    import dataclasses

    from catapult import config as cfg
    from catapult import engine
    from catapult.sweep.batched import run_group
    from catapult.sweep.ensemble_run import run_ensemble
    from catapult.sweep.executors import Cell

    config = cfg.validate({"name": "c", "seed": 0, "data": {"name": "digits", "n_train": 40, "n_test": 20},
                           "model": {"name": "mlp", "width": 8, "depth": 2}, "loss": "cross_entropy",
                           "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"steps": 0, "batch_size": None},
                           "eval": {"sharpness_every": 0, "test_every": 1}})
    data = engine.load_data(config)
    labels = getattr(data, split).clone()
    labels[::2] = -100
    ignored = dataclasses.replace(data, **{split: labels})
    with pytest.raises(ValueError, match=rf"run_ensemble: the {split[2:]} labels hold -100 .*run_group"):
        next(run_ensemble([Cell(0, config)], data=ignored))
    # the engine it points to counts them (truth: the member's own model, F.cross_entropy's ignore_index)
    row = dict(run_group([Cell(0, config)], data=ignored))[0].metrics[0]
    with torch.no_grad():
        x = data.x_train if split == "y_train" else data.x_test
        out = engine.build_run(config).model(x)
    keep = labels != -100
    true_loss = float(F.cross_entropy(out.double(), labels, ignore_index=-100))
    true_acc = float((out.argmax(1)[keep] == labels[keep]).double().mean())
    prefix = "train" if split == "y_train" else "test"
    assert row[f"{prefix}_loss"] == pytest.approx(true_loss, rel=1e-5)   # float32 forward
    assert row[f"{prefix}_accuracy"] == pytest.approx(true_acc, rel=1e-12)


@pytest.mark.parametrize("method", ["loss_grads", "sharpness", "evaluate"])
def test_direct_kernel_stack_calls_with_ignored_labels_are_refused(method):
    # only run_ensemble's entry checked: KernelStack.evaluate on test labels half -100 read a loss of 1.2232 and an
    # accuracy of 0.05 for the true 2.4463 and 0.1 (the ignored rows' zero losses averaged in, counted as misses);
    # loss_grads and sharpness raised IndexError in Python's words
    from test_sweep_ensemble import _stacked

    stack, data = _stacked("cross_entropy", "sp", 1.0, "relu", n=2)
    x, y = data.x_test, data.y_test.clone()
    y[::2] = -100
    calls = {"loss_grads": lambda y: stack.loss_grads(x, y, True),
             "sharpness": lambda y: stack.sharpness([0, 1], x, y, torch.ones(2, stack.n_params, dtype=torch.float64)),
             "evaluate": lambda y: stack.evaluate([0, 1], x, y)}
    with pytest.raises(ValueError, match=rf"^KernelStack\.{method}: the labels y hold -100 \(ignored targets\).*run_group"):
        calls[method](y)
    keep = y != -100
    with torch.no_grad():
        out = stack.forward(stack.params, stack.masks, x)
    # the counted rows alone pass: F.cross_entropy's mean leaving -100 out, and the hits among them
    truth = [float(F.cross_entropy(out[m], y, ignore_index=-100)) for m in range(2)]
    hits = [float((out[m][keep].argmax(1) == y[keep]).double().mean()) for m in range(2)]
    if method == "evaluate":
        got = stack.evaluate([0, 1], x[keep], y[keep])
        assert [g[0] for g in got] == pytest.approx(truth, rel=1e-12)
        assert [g[1] for g in got] == pytest.approx(hits, rel=1e-12, abs=1e-15)
    else:
        losses, accs, _ = stack.loss_grads(x[keep], y[keep], False)
        assert losses.tolist() == pytest.approx(truth, rel=1e-12) and accs == pytest.approx(hits, rel=1e-12, abs=1e-15)
