"""The `Split` container every image/vector loader returns, and small helpers on tensors.

Conventions (a contract between loaders, models and the training engine):

* inputs are float32 tensors in their *natural* per-sample shape, ``(N, C, H, W)`` for images
  (CIFAR: ``(N, 3, 32, 32)``, digits: ``(N, 1, 8, 8)``); models flatten what they need
  (``Split.in_features`` is the flattened size);
* labels are int64 class indices in ``[0, num_classes)``;
* a batch is ``(inputs, targets)``: ``split.train`` and ``split.test`` give those tuples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from catapult.arguments import check_integer, check_real

__all__ = ["Split", "standardize_per_sample", "first_n", "one_hot"]


def standardize_per_sample(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Standardise each sample to zero mean and unit standard deviation over all its entries.

    ``x_i <- (x_i - mean(x_i)) / std(x_i)`` with the population std (divide by the number of
    entries, not by that number minus one), taken over every dimension but the first. A constant
    sample (std = 0) becomes all zeros instead of NaN: its std is clamped below at ``eps`` (a finite
    number > 0).
    Computed in float64 and returned in ``x``'s floating dtype (float32 for integer input).
    """
    # eps=nan made every sample NaN, and eps <= 0 a constant sample 0/0 = NaN (not the zeros promised)
    check_real("standardize_per_sample", "eps", eps, low=0.0, low_open=True)
    if not isinstance(x, torch.Tensor) or x.is_complex():  # complex: the imaginary part was dropped, silently
        raise TypeError(f"standardize_per_sample: x must be a real tensor (N, ...); got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"standardize_per_sample expects (N, ...) with a sample dimension, got shape {tuple(x.shape)}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: ambiguous for zero samples
    out = torch.empty(flat.shape, dtype=out_dtype, device=x.device)
    rows = max(1, (1 << 22) // max(flat.shape[1], 1))  # float64 work in chunks of ~32 MB
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start:start + rows].to(torch.float64)
        mean = chunk.mean(dim=1, keepdim=True)
        std = chunk.std(dim=1, correction=0, keepdim=True).clamp_min(eps)
        out[start:start + rows] = (chunk - mean) / std
    return out.reshape(x.shape)


def check_count(n: int | None, available: int, what: str, name: str) -> int:
    """Validate a requested sample count `n` (None = all) against `available`."""
    n = check_integer("", what, n, low=0, optional=True)  # a NumPy integer too (n_train=np.int64(100))
    if n is None:
        return available
    if n > available:
        raise ValueError(f"{what}={n} exceeds the {available} samples available in {name}")
    return n


def first_n(tensor: torch.Tensor, n: int | None, *, what: str = "n", name: str = "the data") -> torch.Tensor:
    """The first ``n`` rows of ``tensor`` (all when ``n`` is None); an error if there are fewer."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim < 1:  # a 0-d tensor: "tuple index out of range"
        raise ValueError(f"first_n: tensor must have a first (sample) dimension; got "
                         f"{tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__}")
    return tensor[: check_count(n, tensor.shape[0], what, name)]


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot rows: ``out[i, labels[i]] = 1`` and 0 elsewhere, shape ``(N, num_classes)``."""
    # num_classes=-1 said "labels must lie in [0, -1)", 2.5 torch's "must be int, not float", 0 with
    # no labels "Can not infer total number of classes"; labels of shape (1, N) came back (1, N, K)
    k = check_integer("one_hot", "num_classes", num_classes)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError(f"one_hot: labels must be a 1-d tensor of class labels (N,); got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    num_classes = k
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"one_hot expects integer class labels, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


@dataclass(repr=False)
class Split:
    """A train/test split of a classification dataset, held as tensors.

    Attributes:
        x_train, x_test: float inputs, shape ``(N, *sample_shape)`` (natural shape, e.g.
            ``(N, 3, 32, 32)``); float32 unless moved with ``.to(dtype=...)``.
        y_train, y_test: int64 class labels, shape ``(N,)``, values in ``[0, num_classes)``.
        num_classes: number of classes (the model's output width).
        name: dataset name, e.g. ``"cifar10"``.
        classes: optional class names, ``classes[k]`` names label ``k``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    classes: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                raise TypeError(f"{self.name}: x_{part} and y_{part} must be torch tensors")
            if not x.is_floating_point():
                raise TypeError(f"{self.name}: x_{part} must be a floating tensor, got {x.dtype}")
            if y.dtype != torch.int64 or y.ndim != 1:
                raise TypeError(f"{self.name}: y_{part} must be a 1-D int64 tensor, got {y.dtype} "
                                f"of shape {tuple(y.shape)}")
            if x.ndim < 2 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: x_{part} has shape {tuple(x.shape)} but y_{part} has "
                                 f"{y.shape[0]} labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: y_{part} holds labels in [{int(y.min())}, {int(y.max())}] "
                                 f"but num_classes={self.num_classes}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train samples have shape {tuple(self.x_train.shape[1:])} "
                             f"but test samples {tuple(self.x_test.shape[1:])}")
        if self.classes is not None:
            self.classes = tuple(self.classes)
            if len(self.classes) != self.num_classes:
                raise ValueError(f"{self.name}: {len(self.classes)} class names for "
                                 f"{self.num_classes} classes")

    # -- views ------------------------------------------------------------------------------
    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training set as one batch ``(x_train, y_train)``."""
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole test set as one batch ``(x_test, y_test)``."""
        return self.x_test, self.y_test

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(3, 32, 32)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Number of entries of one flattened input (an MLP's input width)."""
        return math.prod(self.sample_shape)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    # -- transforms -------------------------------------------------------------------------
    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Split":
        """The first ``n_train`` training and first ``n_test`` test samples (None = all).

        "First N" in the stored order, as the warmup paper uses the first 5,000 CIFAR-10
        training images. Asking for more samples than there are is an error.
        """
        return replace(
            self,
            x_train=first_n(self.x_train, n_train, what="n_train", name=f"{self.name} (train)"),
            y_train=first_n(self.y_train, n_train, what="n_train", name=f"{self.name} (train)"),
            x_test=first_n(self.x_test, n_test, what="n_test", name=f"{self.name} (test)"),
            y_test=first_n(self.y_test, n_test, what="n_test", name=f"{self.name} (test)"),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Split":
        """A copy on ``device`` with inputs cast to the floating ``dtype``; labels stay int64."""
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"Split.to: dtype must be a floating dtype for the inputs, got {dtype}")
        return replace(
            self,
            x_train=self.x_train.to(device=device, dtype=dtype),
            y_train=self.y_train.to(device=device),
            x_test=self.x_test.to(device=device, dtype=dtype),
            y_test=self.y_test.to(device=device),
        )

    def __repr__(self) -> str:
        return (f"Split(name={self.name!r}, num_classes={self.num_classes}, "
                f"x_train={tuple(self.x_train.shape)}, x_test={tuple(self.x_test.shape)}, "
                f"dtype={self.x_train.dtype}, device={self.x_train.device})")
