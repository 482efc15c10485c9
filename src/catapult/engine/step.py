"""The step semantics both engines share (the local loop in :mod:`catapult.engine.loop` and
the batched engines in :mod:`catapult.sweep`): a row's shape, the divergence rule and when a
step measures sharpness or evaluates on the test set. Each is a small pure function so a
batched engine applies exactly the local rule to each member.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from catapult.engine.records import METRIC_COLUMNS
from catapult.optim import registry

__all__ = ["new_row", "diverged", "measures_sharpness", "evaluates_test", "lambda0_batch_count",
           "chance_accuracy", "ADAM_FAMILY", "accuracy_rule_applies", "failure_of", "final_status",
           "output_collapsed", "COLLAPSE_RTOL", "weights_finite", "rows_finite", "NON_FINITE_WEIGHTS",
           "NON_FINITE_TEST_LOSS"]

#: Optimizers the paper's accuracy failure rule covers (``train.accuracy_failure: auto``): the
#: optimizer table's Adam family (:attr:`catapult.optim.registry.OptimizerSpec.family`).
ADAM_FAMILY = tuple(name for name in registry.names() if registry.get(name).family == "adam")

#: Classes of the image datasets (the accuracy rule's chance level is ``1 / classes``).
_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}

#: Relative spread below which a network's output counts as constant (see :func:`output_collapsed`).
COLLAPSE_RTOL = 1e-6


def new_row(t: int, lr: float, threshold: float) -> dict[str, Any]:
    """Row ``t`` before the forward pass: every :data:`METRIC_COLUMNS` key, unmeasured ones None.

    >>> row = new_row(3, 0.5, 4.0)
    >>> row["step"], row["lr"], row["threshold"], row["train_loss"]
    (3, 0.5, 4.0, None)
    """
    row = _EMPTY_ROW.copy()  # one C call (a keyword update built a dict: ~6 us of a step, cold)
    row["step"], row["lr"], row["threshold"] = t, lr, threshold
    return row


#: Every :data:`METRIC_COLUMNS` key, None: what :func:`new_row` copies.
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)


def diverged(loss_t: float, loss_0: float, factor: float) -> bool:
    """The divergence rule: ``L_t`` is not finite, or ``L_t > factor * L_0`` (when ``L_0 > 0``).
    ``factor = inf`` (the default ``train.divergence_factor``) is the paper's rule: only a
    non-finite loss.

    >>> diverged(float("nan"), 1.0, 1000), diverged(2000.0, 1.0, 1000), diverged(999.0, 1.0, 1000)
    (True, True, False)
    """
    return not math.isfinite(loss_t) or (loss_0 > 0 and loss_t > factor * loss_0)


#: ``failure`` of a run whose weights became non-finite while its training loss stayed finite
#: (entries its batches never read, e.g. Adam with ``eps: 0`` on a zero-gradient coordinate).
NON_FINITE_WEIGHTS = "non_finite_weights"
#: ``failure`` of a run whose test (validation) loss was non-finite at an evaluation step.
NON_FINITE_TEST_LOSS = "non_finite_test_loss"


def weights_finite(tensors) -> bool:
    """Whether every entry of every tensor in ``tensors`` is finite (one host sync). A sharded
    tensor (a DTensor) is checked on its local shard. The second half of the divergence rule:
    a run whose weights hold a nan or an inf has diverged even where its training loss, which
    may read none of those entries, is finite.

    >>> import torch
    >>> weights_finite([torch.ones(2, 2), torch.zeros(3)]), weights_finite([torch.tensor([1.0, float("nan")])])
    (True, False)
    """
    import torch

    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    local = [t.detach() for t in local if t.numel() and t.is_floating_point()]
    if not local:
        return True
    by_device: dict = {}
    for t in local:
        by_device.setdefault(t.device, []).append(t)
    for same in by_device.values():
        # each tensor's largest and smallest entry (amax/amin keep a nan; no copy of the tensor,
        # no overflow), then one host sync: 59 us for the 150k-weight MLP of bench_engine_overhead
        # against 71 us for amax of a copy's abs() and ~400 us for isfinite() or the fused inf-norm
        tops = torch.stack([m for t in same for m in (t.amax(), t.amin())])
        if not bool(torch.isfinite(tops).all()):
            return False
    return True


def rows_finite(tensors) -> list[bool]:
    """Per member of stacked tensors (each ``[N, ...]``, one row per member): whether every entry
    of that member's rows is finite (the batched engines' :func:`weights_finite`).

    >>> import torch
    >>> w = torch.ones(3, 2, 2); w[1, 0, 1] = float("inf")
    >>> rows_finite([w, torch.zeros(3, 4)])
    [True, False, True]
    """
    import torch

    ok = None
    for t in tensors:
        if t.numel() == 0:
            continue
        row = torch.isfinite(t.detach().reshape(t.shape[0], -1).abs().amax(dim=1))  # amax keeps nan
        ok = row if ok is None else ok & row
    return [] if ok is None else ok.tolist()


def measures_sharpness(t: int, every: int, steps: int) -> bool:
    """Sharpness at step ``t``: every ``every`` steps (0 = never) and at the final step ``steps``.

    >>> [t for t in range(11) if measures_sharpness(t, 4, 10)]
    [0, 4, 8, 10]
    """
    return every > 0 and (t % every == 0 or t == steps)


def evaluates_test(t: int, every: int, steps: int) -> bool:
    """Test loss/accuracy at step ``t``: every ``every`` steps (0 = only at the end) and at ``steps``.

    >>> [t for t in range(11) if evaluates_test(t, 0, 10)], [t for t in range(11) if evaluates_test(t, 5, 10)]
    ([10], [0, 5, 10])
    """
    return t == steps or (every > 0 and t % every == 0)


def lambda0_batch_count(config: Mapping[str, Any]) -> int:
    """``k`` of ``lambda_0 = mean_{b < k} lambda_max(H_b(theta_0))``: ``eval.lambda0_batches``, or
    (null) 10 for minibatch runs (the paper averages over 10 batches) and 1 for full batch.

    >>> lambda0_batch_count({"train": {"batch_size": None}, "eval": {"lambda0_batches": None}})
    1
    >>> lambda0_batch_count({"train": {"batch_size": 32}, "eval": {"lambda0_batches": None}})
    10
    """
    k = config["eval"].get("lambda0_batches")
    if k is not None:
        return int(k)
    return 1 if config["train"]["batch_size"] is None else 10


def chance_accuracy(config: Mapping[str, Any]) -> float | None:
    """``1 / classes`` for the image datasets, ``None`` for text (no accuracy rule there).

    >>> chance_accuracy({"data": {"name": "cifar100"}}), chance_accuracy({"data": {"name": "text"}})
    (0.01, None)
    """
    classes = _CLASSES.get(config["data"]["name"])
    return None if classes is None else 1.0 / classes


def accuracy_rule_applies(config: Mapping[str, Any]) -> bool:
    """``train.accuracy_failure``: on, off, or (auto) on for :data:`ADAM_FAMILY` optimizers, on image data.

    >>> rule = lambda opt, data="digits": {"train": {"accuracy_failure": "auto"},
    ...                                    "optimizer": {"name": opt}, "data": {"name": data}}
    >>> accuracy_rule_applies(rule("adam")), accuracy_rule_applies(rule("sgd")), accuracy_rule_applies(rule("adam", "text"))
    (True, False, False)
    """
    mode = config["train"].get("accuracy_failure", "off")
    on = mode == "on" or (mode == "auto" and config["optimizer"]["name"] in ADAM_FAMILY)
    return on and chance_accuracy(config) is not None


def failure_of(loss_t: float, weights_ok: bool = True) -> str:
    """Why a run diverged on a row with training loss ``loss_t``: ``"non_finite_loss"``; or,
    its loss finite, :data:`NON_FINITE_WEIGHTS` where its weights were not (``weights_ok``
    False), else ``"loss_above_factor"`` (:func:`diverged` fired on a finite loss). A loss that
    is not finite wins, so one event can be labelled apart where engines round apart: Adam with
    ``eps: 0`` turns a gradient that is exactly 0 in one engine into a nan weight the loss reads
    (``non_finite_loss``), where a rounding-sized one in another leaves only unread rows nan
    (:data:`NON_FINITE_WEIGHTS`); no rule on one row can tell the two apart (README, failure rules).

    >>> failure_of(float("inf")), failure_of(11.0), failure_of(2.0, weights_ok=False)
    ('non_finite_loss', 'loss_above_factor', 'non_finite_weights')
    """
    if not math.isfinite(loss_t):
        return "non_finite_loss"
    return "loss_above_factor" if weights_ok else NON_FINITE_WEIGHTS


def final_status(status: str, final_train_accuracy: float | None, config: Mapping[str, Any],
                 collapsed: bool = False) -> tuple[str, str | None]:
    """``(status, failure)`` of a run once its loop ended with ``status``.

    The paper's rules, in order: a run that ``"diverged"`` stays so; a finished run to which
    :func:`accuracy_rule_applies` and whose final training accuracy is ``< 1.5 * chance`` is
    ``"diverged"`` (failure ``"final_accuracy_below_1.5x_chance"``), unless it took no step
    (``train.steps: 0``: the model at init, not trained, so not failed by it); a finished run whose network
    output is constant across inputs (``collapsed``) is ``"collapsed"``; otherwise ``"finished"``.

    >>> c = {"data": {"name": "digits"}, "optimizer": {"name": "adam"}, "train": {"accuracy_failure": "auto"}}
    >>> final_status("finished", 0.14, c), final_status("finished", 0.16, c)
    (('diverged', 'final_accuracy_below_1.5x_chance'), ('finished', None))
    >>> final_status("finished", 0.14, {**c, "train": {"accuracy_failure": "auto", "steps": 0}})
    ('finished', None)
    >>> final_status("finished", 0.9, c, collapsed=True)
    ('collapsed', None)
    """
    if status != "finished":
        return status, None
    # 1.5 / classes, not 1.5 * chance: 1.5 * (1 / 10) rounds above the 0.15 of 3 hits in 20 rows
    trained = config["train"].get("steps") != 0  # steps 0: the model at init, which no training failed
    if trained and accuracy_rule_applies(config) and (final_train_accuracy is None
                                          or final_train_accuracy < 1.5 / _CLASSES[config["data"]["name"]]):
        return "diverged", "final_accuracy_below_1.5x_chance"
    if collapsed:
        return "collapsed", None
    return "finished", None


def output_collapsed(outputs, rtol: float = COLLAPSE_RTOL) -> bool:
    """The network maps every input to the same output: ``max_j std_i out[i, j] <= rtol * max |out|``
    (over the rows ``i`` of a batch, the output units ``j``; all-zero outputs count as collapsed).
    A batch of one row cannot tell, and is not collapsed. Works on a tensor or a nested list.

    >>> output_collapsed([[1.0, 2.0], [1.0, 2.0]]), output_collapsed([[1.0, 2.0], [1.0, 2.1]])
    (True, False)
    """
    import torch

    out = torch.as_tensor(outputs).detach()
    out = out.reshape(out.shape[0], -1) if out.dim() > 1 else out.reshape(-1, 1)
    if out.shape[0] < 2:
        return False
    if out.is_floating_point() and _clearly_spread(out, rtol):
        return False
    out = out.double()
    if not bool(torch.isfinite(out).all()):
        return False
    spread = float(out.std(dim=0, unbiased=False).max())
    return spread <= rtol * float(out.abs().max())


def _clearly_spread(out, rtol: float) -> bool:
    """A cheap proof that ``out`` (n x m, n >= 2, its own dtype) is not collapsed, skipping the
    float64 copy and column stds of :func:`output_collapsed` (~90 ms on a 512 x 4096 GPT batch).

    Samuelson's inequality bounds every deviation from a column's mean by ``sqrt(n - 1)`` times its
    (population) std, so a collapsed ``out`` has ``max_ij |out_ij - out_0j| <= 2 sqrt(n-1) rtol A``
    (``A = max |out|``, exact in any dtype). Twice that bound leaves room for the rounding of the
    differences. Non-finite values make a comparison False, leaving the decision to the exact rule.
    """
    spread = float((out - out[:1]).abs().amax())
    bound = 4.0 * math.sqrt(out.shape[0] - 1) * rtol * float(out.abs().amax())
    return bool(spread > bound and math.isfinite(spread) and math.isfinite(bound))
