"""The orthonormal basis of a Krylov solver, kept on the vectors' device: append, Gram-Schmidt
against it (one pass, or with the DGKS second pass), combinations (Ritz vectors), fresh
directions where the space is invariant, and thick restarts in place. Shared by the top
eigenpair (:mod:`catapult.curvature.lanczos`) and the top-k solver
(:mod:`catapult.curvature.top_k`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from catapult.arguments import check_integer

__all__ = ["KrylovBasis", "FRESH_DRAWS", "inner_product", "rows_inner_products", "vector_norm", "unit_roundoff",
           "operator_chain", "product_exponent", "scaled_back", "SAFE_EXPONENT", "scaled_norm"]

#: Random draws :meth:`KrylovBasis.fresh_direction` makes before it gives up (each one lies
#: in the basis' span with probability zero, unless the basis spans the space).
FRESH_DRAWS = 16


def inner_product(a: torch.Tensor, b: torch.Tensor, reduce=None) -> torch.Tensor:
    """``a^T b`` as a 0-d tensor; with ``reduce`` (a function summing a tensor over the ranks of a
    process group, in place), the inner product of vectors whose entries are split over the
    ranks, each rank holding its part (a model sharded by FSDP2).

    >>> float(inner_product(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])))
    11.0
    """
    dot = _dot(a, b)
    return dot if reduce is None else reduce(dot.reshape(1)).reshape(())


#: Entries per chunk of :func:`inner_product` and :func:`vector_norm` on the CPU.
DOT_CHUNK = 1 << 16


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^T b``; on the CPU, past :data:`DOT_CHUNK` entries, the sum of the chunks' dots.

    Why the chunks: torch's one-pass float32 sums on the CPU accumulate their rounding. At 4e6
    entries on one thread, ``q^T A q`` (Lanczos's ``alpha_j``, like-signed terms near a
    positive-definite top) was 2.2e-5 off and the norm 7.7e-5 (6.3e-4 at 1.6e7), and a float32
    solve returned a value 8.8e-6 off with an ``error_bound`` of 4e-6. In chunks: ~1e-7, for
    1.2x a dot's time (a float64 copy would be exact but 12-30x slower). GPUs sum in trees
    already, and would pay a launch per chunk.
    """
    if a.device.type != "cpu" or a.numel() <= DOT_CHUNK:
        return torch.dot(a, b)
    return torch.stack([torch.dot(x, y) for x, y in zip(a.split(DOT_CHUNK), b.split(DOT_CHUNK))]).sum()


def rows_inner_products(rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``rows @ w`` (one inner product per row of ``rows``); on the CPU, past :data:`DOT_CHUNK`
    entries, the sum of the column chunks' products (as :func:`_dot`).

    >>> rows_inner_products(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([3.0, 4.0])).tolist()
    [11.0, 4.0]
    """
    if w.device.type != "cpu" or w.numel() <= DOT_CHUNK:
        return rows @ w
    return torch.stack([r @ x for r, x in zip(rows.split(DOT_CHUNK, dim=1), w.split(DOT_CHUNK))]).sum(0)


def operator_chain(op) -> Iterator:
    """``op``, then the operators it wraps (each wrapper holds the next as ``.op``: a
    pre-conditioned or an all-reduced operator), outermost first.

    >>> class Wrapper:
    ...     def __init__(self, op):
    ...         self.op = op
    >>> inner = object()
    >>> [type(o).__name__ for o in operator_chain(Wrapper(Wrapper(inner)))]
    ['Wrapper', 'Wrapper', 'object']
    """
    while op is not None:
        yield op
        op = getattr(op, "op", None)


def unit_roundoff(matvec, dtype: torch.dtype) -> float:
    """``dtype``'s machine epsilon, or the coarser one the operator computes in: a
    :class:`~catapult.curvature.HessianOperator` keeps the coarsest dtype of its parameters as
    ``_eps`` (found through wrappers, :func:`operator_chain`), and a model mixing float64 and
    float32 parameters rounds its products at float32 whatever its vectors' dtype (float64
    vectors gave float64's rounding floor: converged at ``tol=1e-9`` with a bound of 4e-10 for an
    error of 1.7e-8).

    >>> unit_roundoff(lambda v: v, torch.float64) == torch.finfo(torch.float64).eps
    True
    """
    own = [o._eps for o in operator_chain(matvec) if isinstance(getattr(o, "_eps", None), float)]
    return max([float(torch.finfo(dtype).eps), *own])


def vector_norm(a: torch.Tensor, reduce=None) -> torch.Tensor:
    """``||a||`` as a 0-d tensor (over every rank's part with ``reduce``, see :func:`inner_product`);
    of a long vector on the CPU, ``sqrt(a^T a)`` from :func:`_dot`'s chunks.

    >>> float(vector_norm(torch.tensor([3.0, 4.0])))
    5.0
    """
    if a.dtype == torch.float16 and (reduce is not None or (a.device.type == "cpu" and a.numel() > DOT_CHUNK)):
        return _float16_norm(a, reduce)
    if reduce is not None:
        return inner_product(a, a, reduce).sqrt()
    if a.device.type != "cpu" or a.numel() <= DOT_CHUNK:
        return torch.linalg.vector_norm(a)
    flat = a.reshape(-1)
    return _dot(flat, flat).sqrt()


def _float16_norm(a: torch.Tensor, reduce=None) -> torch.Tensor:
    """:func:`vector_norm` of a float16 vector from float32 sums of squares (chunks of
    :data:`DOT_CHUNK` entries, summed over the ranks with ``reduce``), as a float16 0-d tensor.
    float16 squares overflow from 256: a dot ``a^T a`` of 300000 entries near 0.5 was ``inf`` (the
    solvers refused a start of ones as "not finite"); torch's own norm sums in float32 already."""
    flat = a.reshape(-1)
    squares = torch.stack([torch.linalg.vector_norm(c, dtype=torch.float32) for c in flat.split(DOT_CHUNK)]
                          or [flat.new_zeros((), dtype=torch.float32)]).square().sum()
    if reduce is not None:
        squares = reduce(squares.reshape(1)).reshape(())
    return squares.sqrt().to(a.dtype)


#: :func:`product_exponent`'s window: a float64 product whose largest entry lies in
#: ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT)`` is used as it is (squares of its entries, and of a
#: remainder ``1e-100`` of it, stay normal floats); float32's is ``2**+-21`` (its squares overflow
#: from ``2**64``; a remainder ``1e-12`` of such an entry still squares to a normal float), float16's
#: ``2**+-2`` (a sixth of the exponent range each time; float16 norms are float32 sums of squares,
#: :func:`vector_norm`).
SAFE_EXPONENT = 100


def product_exponent(w: torch.Tensor, reduce=None, dtype: torch.dtype | None = None) -> int:
    """``e`` with ``2**-e * w``'s largest entry in ``[0.5, 1)`` (an exact power of two, within
    +-1000 and ``2**-e`` a normal number of ``w``'s dtype: float16 +-14, float32 +-126), or 0 where ``w``'s largest entry already lies in ``[2**-SAFE_EXPONENT,
    2**SAFE_EXPONENT)`` (narrower for a narrower dtype: ``dtype``'s where given, the one ``w`` is
    to be cast to, else ``w``'s), is 0 or is not finite. With ``reduce``, the largest entries of the ranks'
    parts summed over the ranks (the same ``e`` on every rank).

    Why: the solvers' norms are square roots of sums of squares, which underflow for a float64
    operator of norm ~1e-154 (a tiny loss: ``beta = 0``, "invariant", converged after 1-2
    products on a wrong value) and overflow past ~1e154 (``nan``). A solver scales its operator by
    ``2**-e`` (exact: the same rounding) and its eigenvalue back by ``2**e``.

    >>> product_exponent(torch.tensor([3.0, -1.0])), product_exponent(torch.tensor([0.0]))
    (0, 0)
    >>> product_exponent(torch.tensor([1e-200, -3e-200], dtype=torch.float64))
    -662
    """
    top = _largest_entry(w, reduce)
    # float32's squares overflow from 2**64: its window 2**+-21 (a sixth of its exponent range)
    window = SAFE_EXPONENT
    dtype = w.dtype if dtype is None else dtype
    if dtype.is_floating_point:
        window = min(window, math.frexp(torch.finfo(dtype).max)[1] // 6)
    if not math.isfinite(top) or top == 0 or 2.0 ** -window <= top < 2.0 ** window:
        return 0
    # 2**-e a normal number of the dtype: float16's 2**18 was inf (batched_lanczos: nan) or refused as a
    # Half alpha (lean: RuntimeError) for products of top ~2**-19; 2**-+14 leaves such a top within 2**-5
    # (w's dtype, which 2**-e multiplies: a float64 init 2**-529 for a float32 start takes 2**529)
    bound = 1000 if not w.is_floating_point() else min(1000, math.frexp(torch.finfo(w.dtype).max)[1] - 2)
    return max(-bound, min(bound, math.frexp(top)[1]))


def _largest_entry(w: torch.Tensor, reduce=None) -> float:
    """``max |w_i|`` (0 for no entries), the ranks' parts' summed with ``reduce``."""
    top = w.detach().abs().amax().reshape(1) if w.numel() else w.new_zeros(1)
    return float(top if reduce is None else reduce(top))


def scaled_back(value: float, exponent: int) -> float:
    """``2**exponent * value``: the eigenvalue of ``A`` from a solve on ``2**-exponent A``
    (:func:`product_exponent`); past float64's range, an infinity of ``value``'s sign.

    >>> scaled_back(0.75, -662) == 0.75 * 2.0 ** -662, scaled_back(-0.5, 1030)
    (True, -inf)
    """
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)


def scaled_norm(a: torch.Tensor, reduce=None) -> float:
    """``||a||`` as a float, also where the sum of squares overflows (an operator scaled by ~1e160:
    ``inf``) or underflows (~1e-160: 0, or digits lost to subnormal squares): there it is
    ``2**e ||2**-e a||`` with ``2**-e a``'s largest entry in ``[0.5, 1)`` (exact: a power of two). A norm
    whose square lies well inside the dtype's range (``tiny**0.25 .. max**0.25``) is
    :func:`vector_norm`'s own, bit for bit, at no extra cost; ``nan`` and ``inf`` entries give
    :func:`vector_norm`'s ``nan`` / ``inf``. With ``reduce``, over every rank's part (every rank
    takes the same branch: the norm is the ranks' sum).

    >>> a = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> scaled_norm(a), float(vector_norm(a * 2.0 ** 600)), float(vector_norm(a * 2.0 ** -600))
    (5.0, inf, 0.0)
    >>> scaled_norm(a * 2.0 ** 600) == 5 * 2.0 ** 600, scaled_norm(a * 2.0 ** -600) == 5 * 2.0 ** -600
    (True, True)
    """
    norm = float(vector_norm(a, reduce))
    info = torch.finfo(a.dtype) if a.dtype.is_floating_point else torch.finfo(torch.float64)
    if info.tiny ** 0.25 <= norm <= info.max ** 0.25:
        return norm
    top = _largest_entry(a, reduce)   # (not product_exponent's window: 2**100 squared overflows float32)
    if not math.isfinite(top) or top == 0:
        return norm
    limit = math.frexp(info.max)[1] - 2   # 2**-e a number of the dtype (a subnormal top: 2**limit times)
    exponent = max(-limit, min(limit, math.frexp(top)[1]))
    return scaled_back(float(vector_norm(a * math.ldexp(1.0, -exponent), reduce)), exponent)


class KrylovBasis:
    """Orthonormal rows q_0..q_{m-1} kept on the vectors' device in blocks of ``block`` rows.

    Blocks (rather than one pre-allocated matrix) keep memory proportional to the vectors
    actually used, without the copy a growing single matrix would need.

    >>> basis = KrylovBasis(torch.zeros(3, dtype=torch.float64))
    >>> basis.append(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    >>> w = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    >>> h, norm = basis.orthogonalize(w)   # the coefficient, and w without q_0
    >>> h.tolist(), norm, w.tolist()
    ([2.0], 1.0, [0.0, 0.0, 1.0])
    """

    def __init__(self, like: torch.Tensor, block: int = 4, capacity: int | None = None, reduce=None):
        self.like = like
        self.reduce = reduce  # vectors split over ranks: inner products are summed over them
        # block=2.5 or capacity=2.5 failed at the first append (divmod, new_empty), True was a block of 1
        self.block = check_integer("KrylovBasis", "block", block)
        # the last block holds only the rows up to it (lean memory)
        self.capacity = check_integer("KrylovBasis", "capacity", capacity, optional=True)
        self.blocks: list[torch.Tensor] = []
        self.size = 0

    def _views(self) -> Iterator[torch.Tensor]:
        left = self.size
        for b in self.blocks:
            rows = min(left, b.shape[0])
            if rows <= 0:
                return
            yield b[:rows]
            left -= rows

    def append(self, q: torch.Tensor) -> None:
        i, r = divmod(self.size, self.block)
        if i == len(self.blocks):
            rows = self.block
            if self.capacity is not None:
                rows = max(1, min(rows, self.capacity - i * self.block))
            self.blocks.append(self.like.new_empty((rows, self.like.numel())))
        self.blocks[i][r].copy_(q)
        self.size += 1

    def row(self, index: int) -> torch.Tensor:
        i, r = divmod(index, self.block)
        return self.blocks[i][r]

    def last(self) -> torch.Tensor:
        return self.row(self.size - 1)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """Q w (one coefficient per basis vector), in :func:`_dot`'s chunks of columns on the CPU:
        one-pass float32 sums over 4e6 entries left a Lanczos value 3.2e-6 .. 3.7e-6 off (with
        the norms and ``alpha`` chunked already), up to its whole ``error_bound``; chunked,
        3e-7 .. 8e-7, the same as coefficients summed in float64."""
        h = torch.cat([rows_inner_products(b, w) for b in self._views()])
        return h if self.reduce is None else self.reduce(h)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> None:
        """w <- w - Q^T h, in place."""
        start = 0
        for b in self._views():
            w.addmv_(b.T, h[start:start + b.shape[0]], alpha=-1.0)
            start += b.shape[0]

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Q^T c for coefficients c of shape (m,), returns (n,); or Q^T C for C of shape (m, k),
        returns (k, n) (rows = the combinations), reading the basis once."""
        out, start = None, 0
        for b in self._views():
            c = coeffs[start:start + b.shape[0]]
            part = c @ b if c.dim() == 1 else c.T @ b
            out = part if out is None else out.add_(part)
            start += b.shape[0]
        return out

    def orthogonalize(self, w: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``Q^T w`` removed from ``w`` in place: classical Gram-Schmidt, and a second pass where
        the first removed most of ``w`` (``||w|| < ||w_before|| / sqrt 2``, the
        Daniel-Gragg-Kaufman-Stewart test): the basis stays orthogonal to rounding, which ``k``
        eigenpairs need. Returns the coefficients, summed over the passes, and ``||w||`` after
        (one host sync per pass)."""
        before = float(vector_norm(w, self.reduce))
        total = None
        for _ in range(2):
            h = self.coefficients(w)
            self.subtract(w, h)
            total = h if total is None else total + h
            after = float(vector_norm(w, self.reduce))
            if not after < before / math.sqrt(2):
                break
            before = after
        return total, after

    def fresh_direction(self, seed: int) -> torch.Tensor:
        """A seeded random unit vector orthogonal to the basis (:meth:`orthogonalize`), drawn
        on the CPU so every device and every rank of a process group draws the same one: where
        the Krylov space has become invariant, the direction to go on from.

        >>> basis = KrylovBasis(torch.zeros(3, dtype=torch.float64))
        >>> basis.append(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        >>> v = basis.fresh_direction(0)
        >>> abs(float(v[0])) < 1e-12, round(float(torch.linalg.vector_norm(v)), 12)
        (True, 1.0)
        """
        gen = torch.Generator().manual_seed(seed)
        floor = math.sqrt(torch.finfo(self.like.dtype).eps)
        for _ in range(FRESH_DRAWS):
            w = torch.randn(self.like.numel(), generator=gen, dtype=torch.float64)
            w = w.to(device=self.like.device, dtype=self.like.dtype)
            before = float(vector_norm(w, self.reduce))
            after = self.orthogonalize(w)[1]
            # a draw (numerically) in the basis' span leaves only rounding, which is not
            # orthogonal to the basis: e.g. the solver's own start vector, when it was drawn
            # from the same seed (seed 0 on the CPU); draw again from the same generator
            if after > floor * before:
                return w.div_(after)
        raise RuntimeError(f"no direction orthogonal to the {self.size} basis vectors in "
                           f"{FRESH_DRAWS} draws: the basis spans the space")

    def restart(self, coeffs: torch.Tensor, columns: int = 1 << 16) -> None:
        """Replace the basis by its ``k`` combinations ``Q^T C`` (``C`` of shape (m, k), k < m)
        in place, a slice of ``columns`` entries at a time, so a thick restart needs no second
        basis (only an ``m x columns`` scratch); blocks no longer needed are freed."""
        k = coeffs.shape[1]
        n = self.like.numel()
        rows = [self.row(i) for i in range(self.size)]
        for start in range(0, n, columns):
            stop = min(n, start + columns)
            block = torch.stack([r[start:stop] for r in rows])     # (m, w): read all first ...
            combined = coeffs.T @ block                            # (k, w)
            for i in range(k):                                     # ... then overwrite rows < k
                rows[i][start:stop].copy_(combined[i])
        del rows
        self.size = k
        self.blocks = self.blocks[: max(1, math.ceil((k + 1) / self.block))]
