"""Rounding bounds for the tests' float compares, in place of ``assert_close``'s float32 defaults
(rtol 1.3e-6, atol 1e-5: the atol alone allows 10% of a value of 1e-4, and every value of 1e-5).

Two computations of one real number that differ only in rounding (another summation order, a fused
kernel, a multiplier applied before or after a sum) each lie within their forward-error bound of it,
so within the sum of the two bounds of each other. A sum of ``n`` products computed in any order is
within ``gamma_n * sum |x_i y_i|`` of its exact value, ``gamma_k = k u / (1 - k u)`` with ``u`` the unit
roundoff (``eps / 2``), and every further rounding on the way to an entry adds one to ``k`` (Higham,
Accuracy and Stability of Numerical Algorithms, 2nd ed., sections 2.2 and 3.1). A site states ``k``, its
longest chain of roundings, and ``magnitude``, the same computation on absolute values (or a bound of
it), entry by entry.
"""
from __future__ import annotations

import torch


def gamma(k: int, dtype: torch.dtype) -> float:
    """``k u / (1 - k u)``: the relative bound of ``k`` roundings in ``dtype``.

    >>> round(gamma(1, torch.float32) / 2.0 ** -24, 6)
    1.0
    """
    u = torch.finfo(dtype).eps / 2
    assert k * u < 1, (k, dtype)
    return k * u / (1 - k * u)


def assert_within_rounding(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    """``|actual - expected| <= bound`` entry by entry, compared in float64, with equal shapes and dtypes.

    >>> x = torch.tensor([1.0, 1e-6])
    >>> assert_within_rounding(x * 3, 3 * x, 2 * gamma(1, torch.float32) * 3 * x.abs())
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    diff = (actual.detach().double() - expected.detach().double()).abs()
    bound = torch.as_tensor(bound).detach().double().expand_as(diff)
    bad = ~(diff <= bound)   # nan fails too
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} of {diff.numel()} entries differ by more than their rounding "
                             f"bound; first at flat index {i}: {actual.flatten()[i].item()!r} vs "
                             f"{expected.flatten()[i].item()!r}, difference {diff.flatten()[i].item():.3g} > "
                             f"bound {bound.flatten()[i].item():.3g}")


def both_sides(k: int, magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bound between two computations of ``k`` roundings each on a value of ``magnitude``:
    ``2 gamma_k magnitude``.

    >>> float(both_sides(2, torch.tensor(1.0), torch.float64)) == 2 * gamma(2, torch.float64)
    True
    """
    return 2 * gamma(k, dtype) * magnitude.detach().double()
