"""A run whose weights or test loss become non-finite is ``diverged`` (with the step), in the
local engine and both batched engines alike, even where its training loss stays finite.

Adam with ``eps: 0`` divides a zero gradient entry by ``sqrt(v) = 0``: the embedding rows of
tokens that no training batch contains become nan after the first update, while the training
loss, which never reads them, stays finite. Such runs used to finish with nan weights and a nan
test loss."""
from __future__ import annotations

import math

import pytest
import torch

from catapult import config as cfg
from catapult import engine
from catapult.engine import loop
from catapult.sweep.batched import FuncStack, run_group
from catapult.sweep.ensemble_run import KernelStack, run_ensemble
from catapult.sweep.executors import Cell

pytestmark = pytest.mark.usefixtures("single_thread")

# full batch, no biases (a key bias has a gradient of exactly 0 in one engine and of rounding
# size in the other, so only the embedding rows are certain to have zero gradients)
GPT = {"name": "eps0", "seed": 0, "data": {"name": "shakespeare", "context": 4, "n_train": 8, "n_test": 8},
       "model": {"name": "gpt", "width": 8, "depth": 1, "n_heads": 2, "bias": False}, "loss": "cross_entropy",
       "optimizer": {"name": "adam", "lr": 0.001, "eps": 0.0}, "schedule": {"warmup": "linear", "warmup_steps": 1},
       "train": {"steps": 3, "batch_size": None}, "eval": {"sharpness_every": 0, "test_every": 1}}


def test_nan_embedding_rows_with_a_finite_training_loss_are_a_divergence_in_every_engine():
    config = cfg.validate(GPT)
    setup = engine.build_run(config)
    x, _ = setup.batches.batch(0)
    unseen = sorted(set(range(setup.model.wte.num_embeddings)) - set(x.flatten().tolist()))
    assert unseen  # the premise: some tokens are in no training batch

    local = engine.run(config, progress="none")
    wte = local.model.wte.weight.detach()
    # the rows that went nan are exactly those of the unseen tokens; everything else is finite
    assert torch.isnan(wte[unseen]).all()
    seen = [i for i in range(wte.shape[0]) if i not in set(unseen)]
    assert torch.isfinite(wte[seen]).all()
    assert all(torch.isfinite(p).all() for n, p in local.model.named_parameters() if n != "wte.weight")
    assert (local.status, local.summary["diverged_at"], local.summary["failure"]) == ("diverged", 1, "non_finite_weights")
    assert [r["step"] for r in local.metrics] == [0, 1]
    assert math.isfinite(local.metrics[1]["train_loss"])   # the loss alone would not have told
    assert local.summary["final_test_loss"] is None and local.summary["steps_completed"] == 1

    batched = dict(run_group([Cell(0, config)]))[0]
    assert (batched.status, batched.summary["diverged_at"], batched.summary["failure"]) == (
        "diverged", 1, "non_finite_weights")
    assert [r["step"] for r in batched.metrics] == [0, 1]
    assert batched.metrics[1]["train_loss"] == pytest.approx(local.metrics[1]["train_loss"], rel=1e-5)


MLP = {"data": {"name": "digits", "n_train": 64, "n_test": 32}, "dtype": "float64",
       "model": {"name": "mlp", "width": 16, "depth": 3}, "optimizer": {"name": "sgd", "lr": 0.05},
       "train": {"steps": 4}, "eval": {"sharpness_every": 0, "test_every": 1}}


def _mlp(i: int) -> dict:
    return cfg.validate({**MLP, "name": f"c{i}", "seed": i})


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])   # (an overflowing loss is inf)
def test_a_nan_test_loss_ends_a_local_run_as_diverged_at_that_step(monkeypatch, bad):
    real, calls = loop.Processes.evaluate, []   # (the loop's evaluation of the test set)

    def spoiled(self, model, loss_fn, x, y):
        calls.append(1)
        loss, acc = real(self, model, loss_fn, x, y)
        return (bad, acc) if len(calls) == 3 else (loss, acc)   # the step-2 evaluation

    monkeypatch.setattr(loop.Processes, "evaluate", spoiled)
    result = engine.run(_mlp(0), progress="none")
    assert (result.status, result.summary["diverged_at"], result.summary["failure"]) == (
        "diverged", 2, "non_finite_test_loss")
    assert [r["step"] for r in result.metrics] == [0, 1, 2] and not math.isfinite(result.metrics[2]["test_loss"])
    assert result.summary["final_test_loss"] is None and result.summary["steps_completed"] == 2


# (one shared loop: a nan in one engine, an inf in the other)
@pytest.mark.parametrize("run_engine, stack, bad", [(run_ensemble, KernelStack, math.inf), (run_group, FuncStack, math.nan)],
                         ids=["kernels", "func"])
def test_a_nan_test_loss_ends_that_member_alone_in_the_batched_engines(run_engine, stack, bad, monkeypatch):
    real, calls = stack.evaluate, []

    def spoiled(self, rows, x, y, *args, **kwargs):
        calls.append(1)
        out = list(real(self, rows, x, y, *args, **kwargs))
        if len(calls) == 3:  # step 2: member 1 (the second row) gets a non-finite test loss
            out[1] = (bad, out[1][1])
        return out

    alone = dict(run_engine([Cell(0, _mlp(0))]))[0]
    monkeypatch.setattr(stack, "evaluate", spoiled)
    results = dict(run_engine([Cell(0, _mlp(0)), Cell(1, _mlp(1))]))
    hit = results[1]
    assert (hit.status, hit.summary["diverged_at"], hit.summary["failure"]) == ("diverged", 2, "non_finite_test_loss")
    assert [r["step"] for r in hit.metrics] == [0, 1, 2] and not math.isfinite(hit.metrics[2]["test_loss"])
    other = results[0]
    assert other.status == "finished" and len(other.metrics) == 5
    for a, b in zip(other.metrics, alone.metrics):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12, abs=0)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-12, abs=0)


@pytest.mark.parametrize("run_engine, stack", [(run_ensemble, KernelStack), (run_group, FuncStack)],
                         ids=["kernels", "func"])
def test_the_stacks_weight_check_reads_each_members_own_rows(run_engine, stack, monkeypatch):
    seen = []
    real = stack.finite_rows

    def spy(self):
        params = self.params if stack is KernelStack else list(self.model.params.values())
        if not seen:
            with torch.no_grad():
                params[0][1].view(-1)[3] = float("inf")   # member 1's first weight, after update 0
        seen.append(real(self))
        return seen[-1]

    monkeypatch.setattr(stack, "finite_rows", spy)
    results = dict(run_engine([Cell(0, _mlp(0)), Cell(1, _mlp(1)), Cell(2, _mlp(2))]))
    assert seen[0] == [True, False, True]
    assert (results[1].status, results[1].summary["diverged_at"]) == ("diverged", 1)
    assert results[0].status == results[2].status == "finished"


def test_a_spike_the_run_diverged_in_by_its_weights_is_no_catapult():
    from catapult.engine.records import summarize

    # loss 1 -> spike to 5 at step 2, sharpness 10 before, 4 after the peak; the run ends at step 4
    # still above 1.5x its minimum: a spike it never came back from
    losses, sharp = [1.0, 1.0, 5.0, 4.0, 3.0], [10.0, 10.0, None, 4.0, None]
    metrics = [{"step": t, "train_loss": l, "train_accuracy": 0.5, "sharpness": s, "test_loss": None,
                "test_accuracy": None, "lr": 0.1, "threshold": 20.0} for t, (l, s) in enumerate(zip(losses, sharp))]
    config = cfg.validate({"train": {"steps": 4}})

    def events(**status):
        return summarize(config, metrics, lambda_0=1.0, lr_trgt=0.1, threshold_target=20.0, n_params=1,
                         device="cpu", sharpness_kind="hessian", matvecs_total=0, measurements=3, unconverged=0,
                         wall_time=0.0, **status)["catapults"]

    assert len(events(status="finished", diverged_at=None)) == 1   # the spike, as the rule reads it
    assert events(status="diverged", diverged_at=4, failure="non_finite_weights") == []


def test_the_weights_are_read_where_the_test_set_is_so_a_run_that_tests_only_at_its_end_diverges_there(monkeypatch):
    # the scan of every weight is not paid per step (1-3% of a small minibatch step): it runs where
    # the test set is evaluated, here only the final step, and finds the nan rows there
    config = cfg.validate({**GPT, "eval": {"sharpness_every": 0, "test_every": 0}})
    real, calls = loop.weights_finite, []

    def counted(parameters):
        calls.append(1)
        return real(parameters)

    monkeypatch.setattr(loop, "weights_finite", counted)
    local = engine.run(config, progress="none")
    assert len(calls) == 1
    assert (local.status, local.summary["diverged_at"], local.summary["failure"]) == ("diverged", 3, "non_finite_weights")
    assert [r["step"] for r in local.metrics] == [0, 1, 2, 3]
    assert all(r["test_loss"] is None for r in local.metrics)
    batched = dict(run_group([Cell(0, config)]))[0]
    assert (batched.status, batched.summary["diverged_at"], batched.summary["failure"]) == (
        "diverged", 3, "non_finite_weights")



ABSURD_GPT = {"name": "absurd", "seed": 0, "dtype": "float64",
              "data": {"name": "shakespeare", "context": 8, "n_train": 32, "n_test": 16}, "loss": "cross_entropy",
              "model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2}, "optimizer": {"name": "sgd", "lr": 4.0},
              "schedule": {"warmup": "linear", "warmup_steps": 4}, "train": {"steps": 10, "divergence_factor": 1000},
              "eval": {"sharpness_every": 0, "test_every": 0}}


def test_an_absurd_lr_cell_ends_alike_in_both_engines_under_a_finite_divergence_factor():
    # under the paper's rule alone (a non-finite loss) the status of such a cell is rounding's: the
    # loss grows ~100x a step and the engines' rounding (the local GPT's fused attention kernel, the
    # batched engine's math kernel) grows with it; this GPT at divergence_factor .inf and 20 steps ended
    # 'diverged' at step 15 (nan: q k^T overflowing at weights ~1e186) locally and 'finished' at loss
    # 2e23 on the torch.func engine. A finite factor decides while the engines still agree (README)
    config = cfg.validate(ABSURD_GPT)
    local = engine.run(config, progress="none")
    assert (local.status, local.summary["diverged_at"], local.summary["failure"]) == ("diverged", 9, "loss_above_factor")
    loss_0 = local.metrics[0]["train_loss"]
    assert [r["train_loss"] > 1000 * loss_0 for r in local.metrics] == [False] * 9 + [True]
    batched = dict(run_group([Cell(0, config)]))[0]
    assert (batched.status, batched.summary["diverged_at"], batched.summary["failure"]) == (
        "diverged", 9, "loss_above_factor")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_the_weight_checks_find_any_non_finite_entry_of_either_sign(bad):
    # truth: torch.isfinite over every entry (per tensor; per member row for the stacks). A row whose
    # entries are finite but one -inf has a finite largest entry: amax alone would pass it
    from catapult.engine.step import rows_finite, weights_finite

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    w[1, 2, 3] = bad
    others = [torch.randn(3, 2, generator=g), torch.randn(3, generator=g)]
    assert weights_finite([*others, w]) is bool(torch.isfinite(w).all()) is False
    assert weights_finite([*others, w[0]]) is True
    assert rows_finite([*others, w]) == [bool(torch.isfinite(w[i]).all()) for i in range(3)] == [True, False, True]


def test_a_member_is_read_for_non_finite_weights_at_its_own_test_steps_not_at_another_members():
    # train.steps and eval.test_every are per member: the eps=0 member tests only at its end (step 3),
    # as run reads it; the other member's test at step 2 is not a weights check of the first
    nan_rows = cfg.validate({**GPT, "name": "a", "eval": {"sharpness_every": 0, "test_every": 0}})
    other = cfg.validate({**GPT, "name": "b", "optimizer": {**GPT["optimizer"], "eps": 1e-8},
                          "train": {**GPT["train"], "steps": 4}, "eval": {"sharpness_every": 0, "test_every": 2}})
    local = engine.run(nan_rows, progress="none")
    assert (local.status, local.summary["diverged_at"]) == ("diverged", 3)
    results = dict(run_group([Cell(0, nan_rows), Cell(1, other)]))
    assert (results[0].status, results[0].summary["diverged_at"], results[0].summary["failure"]) == (
        "diverged", 3, "non_finite_weights")
    assert [r["step"] for r in results[0].metrics] == [r["step"] for r in local.metrics] == [0, 1, 2, 3]
    assert results[1].status == "finished"
