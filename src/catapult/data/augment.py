"""Training-time image augmentation, per sample and on the batch's own device (torch ops only).

:class:`Augment` maps a training batch ``(x, y)`` (images ``(N, C, H, W)``, integer labels) to an
augmented one, in this order, each sample independently:

1. **flip** -- with probability 1/2, ``x[n] <- x[n, :, :, ::-1]`` (horizontal mirror);
2. **crop** ``p`` -- pad ``p`` zero pixels on every side and cut an ``H x W`` window at a
   uniformly random offset ``(i, j) in {0..2p}^2``: a random translation by up to ``p`` pixels,
   with zeros (the per-sample mean, since loaders standardise each sample) shifted in.
   CIFAR's usual ``p = 4`` is 1/8 of a 32-pixel side; on the 8x8 digits the same fraction is
   ``p = 1`` (a digit moved by 4 of its 8 pixels loses half of its strokes);
3. **mixup** ``a`` -- sample ``n`` is mixed with a random partner ``pi(n)`` (a random
   permutation of the batch) at its own weight ``lam_n ~ Beta(a, a)``:
   ``x[n] <- lam_n x[n] + (1 - lam_n) x[pi(n)]``, and the labels become the soft targets
   ``y[n] <- lam_n e_{y_n} + (1 - lam_n) e_{y_pi(n)}`` (rows of ``(N, K)`` in ``x``'s dtype;
   both losses and the accuracy take such targets, see :mod:`catapult.losses`).

Determinism: every random draw (flip bits, offsets, permutation, weights) comes from
``numpy.random.default_rng([seed, step])`` on the CPU, so the augmentation of step ``t`` is a
pure function of ``(seed, t)`` -- the same on CPU and GPU, whatever the order batches are asked
for -- and only the O(N) parameters cross to the device; the pixel work runs there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from catapult.arguments import as_integer, check_flag, check_integer, check_real
from catapult.losses import label_range_error

__all__ = ["Augment", "flip_images", "pad_crop_images", "mixup_batch"]


def flip_images(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``x[n]`` mirrored along its width where ``flip[n]`` is true, unchanged elsewhere.

    Example:
        >>> x = torch.arange(4.0).reshape(2, 1, 1, 2)
        >>> flip_images(x, torch.tensor([True, False])).flatten().tolist()
        [1.0, 0.0, 2.0, 3.0]

    ``x``: images ``(N, C, H, W)``; ``flip``: a bool tensor of shape ``(N,)``. Anything else is a
    ValueError naming it (shapes only: no scan of the values): ``flip`` of shape ``(1,)`` was
    broadcast and mirrored every image, a 3-d ``x`` came back with an extra dimension, silently.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"flip_images: x must be images (N, C, H, W); got {_shape_of(x)}")
    if not isinstance(flip, torch.Tensor) or flip.dtype != torch.bool or flip.shape != (x.shape[0],):
        raise ValueError(f"flip_images: flip must be a bool tensor of shape ({x.shape[0]},) (one per image); "
                         f"got {_shape_of(flip)}")
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def pad_crop_images(x: torch.Tensor, pad: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n] = zero_pad(x[n], pad)[:, rows[n] : rows[n] + H, cols[n] : cols[n] + W]``.

    ``rows``, ``cols``: integer offsets in ``0..2 pad`` (``pad`` = no shift), one per image; a
    ValueError names the argument otherwise (a negative offset read the padded image from its
    far end: ``rows = -1`` put the last padding row on top of the image, silently).

    Example (shift a 1x3 image one pixel right, zeros come in on the left):
        >>> x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
        >>> pad_crop_images(x, 1, torch.tensor([1]), torch.tensor([0])).flatten().tolist()
        [0.0, 1.0, 2.0]
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"pad_crop_images: x must be images (N, C, H, W); got {_shape_of(x)}")
    p = check_integer("pad_crop_images", "pad", pad, low=0)
    for label, offsets in (("rows", rows), ("cols", cols)):
        if not isinstance(offsets, torch.Tensor) or offsets.shape != (x.shape[0],) or offsets.is_floating_point() \
                or offsets.is_complex() or offsets.dtype == torch.bool:
            raise ValueError(f"pad_crop_images: {label} must be an integer tensor of shape ({x.shape[0]},) "
                             f"(one offset per image); got {_shape_of(offsets)}")
        if offsets.numel() and not (0 <= int(offsets.min()) and int(offsets.max()) <= 2 * p):
            raise ValueError(f"pad_crop_images: {label} must lie in 0..{2 * p} (2 pad); got values from "
                             f"{int(offsets.min())} to {int(offsets.max())}")
    return _pad_crop(x, p, rows, cols)


def _shape_of(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value) if isinstance(value, (int, float, str)) else type(value).__name__


def _pad_crop(x: torch.Tensor, pad: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    # Augment's path: its offsets are drawn in 0..2 pad, so no per-batch scan of them (a sync on GPU)
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    r = rows.view(n, 1) + torch.arange(h, device=x.device)          # (N, H)
    q = cols.view(n, 1) + torch.arange(w, device=x.device)          # (N, W)
    return padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                  r.view(n, 1, h, 1), q.view(n, 1, 1, w)]


def mixup_batch(x: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor,
                lam: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lam x + (1 - lam) x[partner], lam t + (1 - lam) t[partner])`` per sample (``t``: float
    targets of shape ``(N, K)``; ``partner``: integer indices of shape ``(N,)``).

    ``lam``: weights in ``[0, 1]``, one per sample (shape ``(N,)``) or one number for the whole
    batch (a float or a 0-d tensor). A ValueError/TypeError names the argument otherwise: integer
    targets cast the weights to 0 (every sample took its partner's label, silently), and weights
    outside ``[0, 1]`` or NaN extrapolated past both samples.

    Example:
        >>> x, t = torch.tensor([[0.0], [4.0]]), torch.eye(2)
        >>> xm, tm = mixup_batch(x, t, torch.tensor([1, 0]), torch.tensor([0.75, 1.0]))
        >>> xm.flatten().tolist(), tm.tolist()
        ([1.0, 4.0], [[0.75, 0.25], [0.0, 1.0]])
        >>> mixup_batch(x, t, torch.tensor([1, 0]), 0.5)[1].tolist()
        [[0.5, 0.5], [0.5, 0.5]]
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise TypeError(f"mixup_batch: x must be a floating-point tensor (N, ...); got {_shape_of(x)}")
    n = x.shape[0]
    if not isinstance(targets, torch.Tensor) or targets.shape[:1] != (n,) or targets.dim() != 2 \
            or not targets.is_floating_point():
        raise TypeError(f"mixup_batch: targets must be floating-point soft targets of shape ({n}, K) "
                        f"(one-hot integer labels first); got {_shape_of(targets)}")
    if not isinstance(partner, torch.Tensor) or partner.shape != (n,) or partner.is_floating_point() \
            or partner.is_complex() or partner.dtype == torch.bool:
        raise TypeError(f"mixup_batch: partner must be an integer tensor of shape ({n},); got {_shape_of(partner)}")
    if isinstance(lam, torch.Tensor):
        if lam.shape not in ((), (n,)) or not lam.is_floating_point():
            raise ValueError(f"mixup_batch: lam must be a float, a 0-d tensor or a floating-point tensor of "
                             f"shape ({n},); got {_shape_of(lam)}")
        if lam.numel() and not bool(((lam >= 0) & (lam <= 1)).all()):
            got = "NaN" if bool(lam.isnan().any()) else f"values from {float(lam.min())} to {float(lam.max())}"
            raise ValueError(f"mixup_batch: lam must lie in [0, 1]; got {got}")
        lam = lam.expand(n)
    else:
        lam = torch.full((n,), check_real("mixup_batch", "lam", lam, low=0.0, high=1.0), device=x.device)
    return _mixup(x, targets, partner, lam)


def _mixup(x: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor,
           lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Augment's path: its weights are Beta draws and its targets float, so no per-batch checks
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam_x = lam.to(x.dtype).view(shape)
    lam_t = lam.to(targets.dtype).view(-1, 1)
    return (lam_x * x + (1 - lam_x) * x[partner],
            lam_t * targets + (1 - lam_t) * targets[partner])


@dataclass(frozen=True)
class Augment:
    """Flip, pad-and-crop and mixup of training batches (see the module docstring).

    Args:
        flip: random horizontal flips.
        crop: pad-and-crop margin ``p`` in pixels (0 = off).
        mixup: Beta parameter ``a`` (0 = off).
        num_classes: ``K``, for mixup's soft targets.
        seed: the stream's seed (the engine uses the run's data seed).

    Example:
        >>> aug = Augment(flip=True, crop=1, mixup=0.4, num_classes=10, seed=3)
        >>> x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
        >>> xa, ya = aug(x, y, step=0)
        >>> xa.shape, ya.shape, bool(torch.allclose(ya.sum(1), torch.ones(6)))
        (torch.Size([6, 1, 8, 8]), torch.Size([6, 10]), True)
        >>> bool(torch.equal(aug(x, y, step=0)[0], xa)), bool(torch.equal(aug(x, y, step=1)[0], xa))
        (True, False)
    """

    flip: bool = False
    crop: int = 0
    mixup: float = 0.0
    num_classes: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # crop=inf raised OverflowError, mixup="0.5" "'>=' not supported", mixup=inf gave all-nan
        # soft targets, and a negative or text seed failed at the first batch, in NumPy's words
        object.__setattr__(self, "flip", check_flag("augment", "flip", self.flip))  # flip="no" flipped
        crop = self.crop
        if not (as_integer(crop) is not None or isinstance(crop, float) and crop.is_integer()) or crop < 0:
            raise ValueError(f"augment crop must be an integer >= 0; got {crop!r}")
        check_real("augment", "mixup", self.mixup, low=0.0)
        if self.mixup > 0 and not self.num_classes:
            raise ValueError("augment mixup needs num_classes (for the soft targets)")
        if self.mixup > 0:
            object.__setattr__(self, "num_classes", check_integer("augment", "num_classes", self.num_classes))
        object.__setattr__(self, "seed", check_integer("augment", "seed", self.seed, low=0))

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return bool(self.flip or self.crop or self.mixup)

    def check_images(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless a batch of ``shape`` can be augmented: ``(N, C, H, W)`` with
        ``crop < min(H, W)`` (a shift by the whole side leaves no pixel: at ``crop = H`` a quarter of
        the 8x8 digits came out blank, their labels kept)."""
        if len(shape) != 4:
            raise ValueError(f"augment works on images (N, C, H, W); got samples of shape {tuple(shape[1:])}")
        if self.crop >= min(shape[2], shape[3]):
            raise ValueError(f"augment crop {self.crop} is not below the {shape[2]}x{shape[3]} image side: the "
                             f"largest shifts leave no pixel (CIFAR: 4; 8x8 digits: 1)")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented batch of training step ``step``."""
        if not self.active:
            return x, y
        self.check_images(tuple(x.shape))
        if self.mixup and not x.is_floating_point():  # the weights cast to uint8 were 0 or 1: no mixing
            raise TypeError(f"augment mixup needs floating-point images; got {x.dtype} of shape {tuple(x.shape)}")
        n = x.shape[0]
        rng = np.random.default_rng([int(self.seed), int(step)])
        flips = rng.random(n) < 0.5
        offsets = rng.integers(0, 2 * int(self.crop) + 1, size=(2, n))
        partner = rng.permutation(n)
        lam = rng.beta(self.mixup, self.mixup, size=n) if self.mixup > 0 else None
        device = x.device
        if self.flip:
            x = flip_images(x, torch.as_tensor(flips, device=device))
        if self.crop:
            x = _pad_crop(x, int(self.crop), torch.as_tensor(offsets[0], device=device),
                          torch.as_tensor(offsets[1], device=device))
        if lam is not None:
            if y.is_floating_point():
                targets = y
            else:
                try:
                    targets = F.one_hot(y.long(), int(self.num_classes)).to(x.dtype)
                except RuntimeError as err:  # torch: "Class values must be smaller than num_classes."
                    problem = label_range_error("augment mixup", y, int(self.num_classes))
                    if problem is None:
                        raise
                    raise problem from err
            x, y = _mixup(x, targets, torch.as_tensor(partner, device=device),
                          torch.as_tensor(lam, device=device))
        return x, y
