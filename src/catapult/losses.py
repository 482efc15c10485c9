"""Losses with the warmup paper's conventions, and accuracy.

Every loss has the signature ``loss_fn(outputs, targets) -> scalar tensor``.
``targets`` may be integer class labels (``int64``, shape ``outputs.shape[:-1]``) or floats of
``outputs``' own shape (one-hot vectors, soft labels, regression targets).

The MSE convention matters for curvature: sharpness is the top eigenvalue of the Hessian of
*this* scalar, and the paper's numbers (e.g. ``lambda_0 ~ 50`` for the SP FCN on CIFAR-10) are
for ``0.5 * mean over (batch x outputs)``, not for a sum or a plain mean.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: The integer label :func:`cross_entropy` drops from its mean (torch's ``ignore_index``).
IGNORE_INDEX = -100

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _is_label_tensor(targets: torch.Tensor) -> bool:
    return not (targets.is_floating_point() or targets.is_complex())


def label_range_error(who: str, labels: torch.Tensor, num_classes: int, *, ignore_index: int | None = None
                      ) -> ValueError | None:
    """The ValueError for integer ``labels`` outside ``0 .. num_classes - 1`` (``ignore_index`` aside),
    naming ``who`` (the loss), the first such label and the number of classes; None when all are in
    range. Asked only once torch has refused the labels (no work on a loss that succeeds): torch said
    "Class values must be smaller than num_classes." (mse) or "Target 10 is out of bounds." (cross
    entropy), naming neither the loss nor the number of classes.

    >>> print(label_range_error("mse", torch.tensor([3, 10, 0]), 10))
    mse: label 10 is out of range for 10 classes (the outputs' last dimension): integer targets must be in 0..9
    >>> label_range_error("cross_entropy", torch.tensor([3, -100]), 10, ignore_index=-100) is None
    True
    """
    try:
        flat = labels.reshape(-1).long()
        bad = (flat < 0) | (flat >= num_classes)
        if ignore_index is not None:
            bad &= flat != ignore_index
        if not bool(bad.any()):
            return None
        value = int(flat[bad][0])
    except Exception:  # labels a transform cannot read back (vmap, fake tensors): torch's own error stands
        return None
    return ValueError(f"{who}: label {value} is out of range for {num_classes} classes (the outputs' last "
                      f"dimension): integer targets must be in 0..{num_classes - 1}")


def _check_label_shape(who: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    # labels of shape (T, B) for outputs (B, T, K) have the right count and were paired with the
    # wrong rows after flattening, silently; one label per row, in the rows' own shape, or either
    # side flat (labels (B*T,), or logits (B*T, K) for labels (B, T)): row order, no ambiguity
    flat = (targets.dim() == 1 or outputs.dim() == 2) and targets.numel() * outputs.shape[-1] == outputs.numel()
    if targets.shape != outputs.shape[:-1] and not flat:
        raise ValueError(f"{who}: integer targets of shape {tuple(targets.shape)} do not match outputs of shape "
                         f"{tuple(outputs.shape)}: give one label per output row, of shape "
                         f"{tuple(outputs.shape[:-1])} (or flat)")


def _check_soft_shape(who: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    # soft targets (3, 2, K) for outputs (2, 3, K) were paired with the wrong rows, silently
    rows = ((targets.dim() == 2 or outputs.dim() == 2) and targets.shape[-1:] == outputs.shape[-1:]
            and targets.numel() == outputs.numel())
    if targets.shape != outputs.shape and not rows:
        raise ValueError(f"{who}: float targets of shape {tuple(targets.shape)} do not match outputs of "
                         f"shape {tuple(outputs.shape)} (give integer labels or probabilities of the outputs' shape)")


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32, *,
            who: str = "one_hot") -> torch.Tensor:
    """One-hot encode integer ``labels``: ``out[..., k] = 1.0 if labels[...] == k else 0.0``; a label
    outside ``0 .. num_classes - 1`` is a ValueError naming ``who`` (:func:`label_range_error`)."""
    try:
        return F.one_hot(labels.long(), num_classes).to(dtype)
    except RuntimeError as err:
        problem = label_range_error(who, labels, num_classes)
        if problem is None:
            raise
        raise problem from err


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Half mean squared error over every entry: ``L = 0.5 * mean_{i,k} (f_k(x_i) - y_ik)^2``.

    The mean runs over the batch *and* the output dimension (``N * K`` terms). Integer
    ``targets`` are class labels and become one-hot vectors ``y_ik = [k == label_i]``;
    float ``targets`` must have ``outputs``' shape.
    """
    if _is_label_tensor(targets):
        targets = one_hot(targets, outputs.shape[-1], outputs.dtype, who="mse")
    if targets.shape != outputs.shape:
        raise ValueError(
            f"mse: targets of shape {tuple(targets.shape)} do not match outputs of shape "
            f"{tuple(outputs.shape)} (give integer labels or floats of the outputs' shape)"
        )
    return 0.5 * (outputs - targets.to(outputs.dtype)).pow(2).mean()


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch: ``L = mean_i [-log softmax(f(x_i))_{y_i}]``.

    ``outputs`` are logits ``(..., K)``; leading dimensions (batch, sequence) are flattened.
    Integer ``targets`` are labels in ``0 .. K - 1`` (-100, torch's ``ignore_index``, drops a row from
    the mean; any other label out of range is a ValueError); float ``targets`` of ``outputs``' shape are class
    probabilities: ``L = mean_i [-sum_k y_ik log softmax(f(x_i))_k]``.
    """
    num_classes = outputs.shape[-1]
    logits = outputs.reshape(-1, num_classes)
    if _is_label_tensor(targets):
        _check_label_shape("cross_entropy", outputs, targets)
        labels = targets.reshape(-1).long()
        try:
            return F.cross_entropy(logits, labels)
        except (IndexError, RuntimeError) as err:  # CPU: "Target 10 is out of bounds." (a CUDA device asserts)
            problem = label_range_error("cross_entropy", labels, num_classes, ignore_index=IGNORE_INDEX)
            if problem is None:
                raise
            raise problem from err
    if targets.shape != outputs.shape:
        raise ValueError(
            f"cross_entropy: targets of shape {tuple(targets.shape)} do not match outputs of "
            f"shape {tuple(outputs.shape)} (give integer labels or probabilities of the outputs' shape)"
        )
    return F.cross_entropy(logits, targets.reshape(-1, num_classes).to(logits.dtype))


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
}


def get_loss(name: str) -> LossFn:
    """The loss function registered under ``name`` (one of ``LOSSES``: ``mse``, ``cross_entropy``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}") from None


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the counted rows whose arg-max output is the target class.

    ``accuracy = mean_i [argmax_k f_k(x_i) == y_i]`` over the rows whose integer label is not
    :data:`IGNORE_INDEX` (-100: the rows :func:`cross_entropy` drops from its mean, as Hugging Face's
    and torchmetrics' ``ignore_index`` drop them; nan where none counts); float ``targets`` (one-hot
    or probabilities) count their own arg-max as the class, every row counted.

    >>> accuracy(torch.tensor([[1., 3.], [2., 0.], [0., 0.]]), torch.tensor([1, 1, 0]))
    0.6666666666666666
    >>> accuracy(torch.tensor([[1., 3.], [2., 0.], [0., 0.]]), torch.tensor([1, -100, 0]))
    1.0
    """
    hits, counted = accuracy_counts(outputs, targets)
    return hits / counted if counted else float("nan")


def accuracy_counts(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(hits, counted)`` behind :func:`accuracy`: the counted rows (integer labels other than
    :data:`IGNORE_INDEX`; every row of float targets) and those of them whose arg-max is the class.
    A mean over several batches or processes is ``sum(hits) / sum(counted)``.

    >>> accuracy_counts(torch.tensor([[1., 3.], [2., 0.], [0., 0.]]), torch.tensor([1, -100, 1]))
    (1, 2)
    """
    n = targets.shape[0] if targets.dim() == 1 else 0
    if (n and targets.dtype == torch.int64 and outputs.dim() == 2 and outputs.shape[0] == n
            and outputs.numel() <= PLAIN_ARGMAX_ENTRIES and outputs.device == targets.device):
        # a classifier's batch: argmax_hits' plain arg-max in a few torch calls, without the
        # fifteen and two no_grad contexts of the general path; a cold call inside a training
        # step costs ~10x its hot time (RESULTS, "Engine overhead"). An ignored label (-100) is
        # never an arg-max, so never a hit; the labels' minimum (~4 us) spares the count of
        # ignored ones (~9 us) where none is negative
        hits = int((outputs.argmax(dim=-1) == targets).sum())
        return hits, (n if int(targets.min()) >= 0 else n - int((targets == IGNORE_INDEX).sum()))
    return _accuracy_counts(outputs, targets)


@torch.no_grad()
def _accuracy_counts(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """:func:`accuracy_counts`' general path: leading dimensions flattened, float targets' arg-max."""
    flat = outputs.detach().reshape(-1, outputs.shape[-1])
    labels = _labels("accuracy", outputs, targets)
    if labels.numel() == 0:
        return 0, 0
    counted = labels.numel() - (int((labels == IGNORE_INDEX).sum()) if _is_label_tensor(labels) else 0)
    return argmax_hits(flat, labels.to(flat.device)), counted


def _labels(who: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The flat class labels of ``targets`` (integer labels as given, float targets' arg-max)."""
    if _is_label_tensor(targets):
        _check_label_shape(who, outputs, targets)
        return targets.reshape(-1)
    _check_soft_shape(who, outputs, targets)
    return targets.reshape(-1, targets.shape[-1]).argmax(dim=-1)


def loss_and_accuracy(loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor,
                      one_sync: bool | None = None) -> tuple[float, float]:
    """``(float(loss), accuracy(outputs, targets))`` with one device-to-host copy per call
    (:func:`loss_and_counts`' loss, and its hits over its counted rows; nan where none counts).

    >>> loss_and_accuracy(torch.tensor(0.5), torch.tensor([[1., 3.], [2., 0.]]), torch.tensor([1, -100]))
    (0.5, 1.0)
    """
    value, hits, counted = loss_and_counts(loss, outputs, targets, one_sync)
    return value, (hits / counted if counted else float("nan"))


def loss_and_counts(loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor,
                    one_sync: bool | None = None) -> tuple[float, int, int]:
    """``(float(loss), *accuracy_counts(outputs, targets))`` with one device-to-host copy per call.

    On the CPU (no copy to save) it is exactly those two calls. On an accelerator the arg-max
    hits and the counted rows are counted on the device and read back with the loss in one
    ``tolist()`` (one synchronisation per training step, not three); the values are the same (a
    float32 loss is exact in float64, and the counts are integers). ``one_sync`` forces either
    way (None: by device).

    >>> loss_and_counts(torch.tensor(0.5), torch.tensor([[1., 3.], [2., 0.]]), torch.tensor([1, -100]), one_sync=True)
    (0.5, 1, 1)
    """
    if one_sync is None:
        one_sync = not outputs.is_cpu  # outputs.device.type != "cpu", without a device object (~7 us cold)
    if not one_sync:
        return (float(loss.item()), *accuracy_counts(outputs, targets))
    labels = _labels("accuracy", outputs, targets)
    if labels.numel() == 0:
        return float(loss.item()), 0, 0
    flat = outputs.detach().reshape(-1, outputs.shape[-1])
    hits = (flat.argmax(dim=-1) == labels).sum()
    ignored = (labels == IGNORE_INDEX).sum() if _is_label_tensor(labels) else torch.zeros((), device=hits.device)
    value, count, skipped = torch.stack([loss.detach().double(), hits.double(), ignored.double()]).tolist()
    return value, int(count), labels.numel() - int(skipped)


#: Up to this many logits :func:`argmax_hits` takes the plain arg-max: on one CPU thread (torch 2.13)
#: the candidate search's dozen small ops cost ~45 us where a plain arg-max of a 128 x 10 batch costs
#: ~8 us; the two cross between 8k and 32k entries (1024 x 10: 32 against 72 us; 1024 x 32: 99 against 60).
PLAIN_ARGMAX_ENTRIES = 16384


def argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """``sum_i [argmax_k logits[i, k] == labels[i]]`` (torch's argmax: the first maximum, a NaN
    counting as the maximum), without an arg-max over every row.

    Why: on the CPU ``argmax`` over a (tokens x vocab) matrix costs ~10x an ``amax`` (a
    vectorised reduction), ~5% of a small GPT's training step. Row ``i`` can only be a hit if
    ``logits[i, y_i] == m_i = max_k logits[i, k]`` or ``m_i`` is NaN; every other row is a
    miss. The exact ``argmax`` then runs on those candidate rows only (ties and NaNs resolved
    as torch resolves them), so the count equals the full arg-max's exactly. Up to
    :data:`PLAIN_ARGMAX_ENTRIES` logits (a classifier's batch) the plain arg-max is the cheaper.

    >>> argmax_hits(torch.tensor([[1., 3., 3.], [2., 0., 1.], [0., 5., 1.]]), torch.tensor([2, 0, 1]))
    2
    """
    labels = labels.reshape(-1).long()
    if logits.numel() <= PLAIN_ARGMAX_ENTRIES:  # few entries: the dozen small ops below cost more
        return int((logits.reshape(-1, logits.shape[-1]).argmax(dim=-1) == labels).sum().item())
    in_range = (labels >= 0) & (labels < logits.shape[-1])  # e.g. an ignore index: never a hit
    maxima = logits.amax(dim=-1)
    at_label = logits.gather(-1, labels.clamp(0, logits.shape[-1] - 1).reshape(-1, 1)).reshape(-1)
    candidates = (in_range & ((at_label == maxima) | torch.isnan(maxima))).nonzero().reshape(-1)
    if candidates.numel() == 0:
        return 0
    return int((logits[candidates].argmax(dim=-1) == labels[candidates]).sum().item())
