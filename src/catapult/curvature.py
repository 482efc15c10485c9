"""Curvature: top Hessian eigenvalue (sharpness), pre-conditioned sharpness, instability thresholds.

Everything here is matrix-free: the Hessian ``H`` of ``loss_fn(model(x), y)`` with respect to all
trainable parameters is only touched through Hessian-vector products (HVPs), and its top eigenpair
is found by a Lanczos solver written on torch tensors (:func:`lanczos_top_eigenpair`), so it runs
wherever the model runs (CPU or CUDA) and keeps its Krylov basis on that device.

Nothing in this module changes a model's parameters, gradients, buffers or train/eval mode, an
optimizer's state, or the global random number generators.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from catapult.optim import registry, rules

__all__ = [
    "EigenEstimate",
    "HessianOperator",
    "lanczos_top_eigenpair",
    "sharpness",
    "preconditioned_sharpness",
    "instability_threshold",
    "HVP_MODES",
]

#: Accepted values of ``hvp=``. ``"auto"`` picks the mode measured fastest (see
#: ``bench/bench_sharpness.py`` and the "Sharpness (issue 2)" section of ``bench/RESULTS.md``).
HVP_MODES = ("auto", "double_backprop", "forward_over_reverse")

# What "auto" resolves to, per device type. Measured by bench/bench_sharpness.py on the Fig. 1
# FCN (4 Linear layers, width 512, 5000 x 3072 batch) on a 2-core CPU: double backprop, which
# builds the gradient graph once and re-uses it for every HVP, beat forward-over-reverse, which
# re-runs forward + backward with dual numbers for every HVP. No GPU measurement exists yet, so
# CUDA uses the same choice.
_AUTO_HVP = {"cpu": "double_backprop", "cuda": "double_backprop"}


@dataclass
class EigenEstimate:
    """An estimate of the top eigenpair of a symmetric operator.

    Attributes:
        value: the eigenvalue estimate ``theta`` (largest algebraic Ritz value).
        vector: unit-norm flat eigenvector estimate ``v`` (over all trainable parameters, in
            ``model.parameters()`` order); pass it as ``init=`` to warm-start the next solve.
        matvecs: operator applications (Hessian-vector products) spent.
        converged: whether ``residual <= tol`` was reached within ``max_iter`` matvecs.
        residual: relative eigen-residual ``||A v - theta v|| / |theta|`` (from the Lanczos
            recurrence), ``nan`` if the operator produced non-finite numbers.
    """

    value: float
    vector: torch.Tensor
    matvecs: int
    converged: bool
    residual: float = float("nan")


# --------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------


class _KrylovBasis:
    """Orthonormal rows q_0..q_{m-1} kept on the vectors' device in blocks of ``block`` rows.

    Blocks (rather than one pre-allocated matrix) keep memory proportional to the vectors
    actually used, without the copy a growing single matrix would need.
    """

    def __init__(self, like: torch.Tensor, block: int = 4):
        self.like = like
        self.block = block
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
            self.blocks.append(self.like.new_empty((self.block, self.like.numel())))
        self.blocks[i][r].copy_(q)
        self.size += 1

    def row(self, index: int) -> torch.Tensor:
        i, r = divmod(index, self.block)
        return self.blocks[i][r]

    def last(self) -> torch.Tensor:
        return self.row(self.size - 1)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """Q w (one coefficient per basis vector)."""
        return torch.cat([b @ w for b in self._views()])

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> None:
        """w <- w - Q^T h, in place."""
        start = 0
        for b in self._views():
            w.addmv_(b.T, h[start:start + b.shape[0]], alpha=-1.0)
            start += b.shape[0]

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Q^T c for coefficients c of shape (m,); returns (n,)."""
        out, start = None, 0
        for b in self._views():
            part = coeffs[start:start + b.shape[0]] @ b
            out = part if out is None else out.add_(part)
            start += b.shape[0]
        return out

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


def lanczos_top_eigenpair(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    max_basis: int = 20,
    _fresh_output: bool = False,
) -> EigenEstimate:
    """Largest (algebraic) eigenvalue and its eigenvector of a symmetric operator ``A``.

    Lanczos with full re-orthogonalisation (the three-term step, then one classical
    Gram-Schmidt pass against the whole basis) and thick restarts: from the unit start vector
    ``q_0 = v0/||v0||`` it builds an orthonormal Krylov basis ``Q_m`` with
    ``A Q_m = Q_m T_m + beta_m q_m e_m^T``, ``T_m = Q_m^T A Q_m`` (tridiagonal, or
    arrow-plus-tridiagonal after a restart). The Ritz pair ``(theta, v = Q_m s)`` from the top
    eigenpair ``(theta, s)`` of ``T_m`` has eigen-residual ``||A v - theta v|| = |beta_m s_m|``,
    read off the recurrence at no extra matvec. It stops when
    ``|beta_m s_m| / |theta| <= tol`` (``converged=True``), when the Krylov space becomes
    invariant (``beta_m`` at rounding level: ``theta`` is then exact), or after ``max_iter``
    matvecs (``converged=False``). When the basis reaches ``max_basis`` vectors it keeps the
    top ``max_basis // 2`` Ritz vectors plus ``q_m`` and continues (thick restart), so memory
    stays at ``max_basis`` vectors of ``v0``'s size however many iterations run.

    The basis lives on ``v0``'s device and dtype; per iteration only the two scalars
    ``alpha = q^T A q`` and ``beta`` are copied to the host (the convergence test needs them).

    Args:
        matvec: ``v -> A v`` on flat tensors shaped like ``v0``; ``A`` must be symmetric.
        v0: non-zero start vector (random, or the previous eigenvector for a warm start).
        tol: relative eigen-residual to reach.
        max_iter: maximum number of matvecs.
        max_basis: maximum number of basis vectors kept (>= 2).

    Returns:
        :class:`EigenEstimate` (``residual`` is the relative residual above). If ``matvec``
        returns non-finite numbers the estimate has ``value = nan`` and ``converged = False``
        (a diverged model is a result, not a crash).
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if max_basis < 2:
        raise ValueError(f"max_basis must be >= 2, got {max_basis!r}")
    if v0.dim() != 1 or v0.numel() == 0:
        raise ValueError(f"v0 must be a non-empty 1-D tensor, got shape {tuple(v0.shape)}")
    if not v0.is_floating_point():
        raise ValueError(f"v0 must be a floating-point tensor, got {v0.dtype}")
    n = v0.numel()
    norm0 = torch.linalg.vector_norm(v0)
    norm0_host = float(norm0)
    if not (math.isfinite(norm0_host) and norm0_host > 0):
        raise ValueError("v0 must be finite and non-zero")

    capacity = min(int(max_basis), n)
    keep = max(1, capacity // 2)
    eps = torch.finfo(v0.dtype).eps

    basis = _KrylovBasis(v0)
    basis.append(v0 / norm0)
    T = np.zeros((capacity, capacity))  # projected matrix Q^T A Q on the host (tiny)
    matvecs = 0
    theta, s, rel = float("nan"), None, float("inf")
    converged = False
    while matvecs < max_iter:
        j = basis.size - 1
        q = basis.last()
        w = matvec(q)
        matvecs += 1
        if w.shape != q.shape:
            raise ValueError(f"matvec returned shape {tuple(w.shape)}, expected {tuple(q.shape)}")
        # The step below works on w in place: copy it unless matvec is known to return a new
        # tensor (the HVP operators here do; a user's matvec may return internal state).
        w = w.to(q.dtype)
        if not _fresh_output:
            w = w.clone()
        # Lanczos step: subtract the known couplings T[i, j] (beta_{j-1} q_{j-1}, or after a
        # restart the kept Ritz vectors), then alpha_j q_j ...
        for i in np.flatnonzero(T[:j, j]):
            w.add_(basis.row(int(i)), alpha=-float(T[i, j]))
        alpha_t = torch.dot(q, w)
        w.add_(q, alpha=-alpha_t)
        # ... then one classical Gram-Schmidt pass against the whole basis (full
        # re-orthogonalisation; w is already nearly orthogonal, so one pass suffices and each
        # iteration reads the basis only twice -- at ~20 vectors that costs about one HVP).
        h = basis.coefficients(w)
        basis.subtract(w, h)
        alpha_t = alpha_t + h[j]
        beta_t = torch.linalg.vector_norm(w)
        alpha, beta = torch.stack([alpha_t, beta_t.to(alpha_t.dtype)]).tolist()  # one sync
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            theta, rel, converged, s = float("nan"), float("nan"), False, None
            break
        T[j, j] = alpha
        ritz_values, ritz_vectors = np.linalg.eigh(T[: j + 1, : j + 1])
        theta, s = float(ritz_values[-1]), ritz_vectors[:, -1]
        scale = max(abs(ritz_values[0]), abs(ritz_values[-1]))
        residual = abs(beta * float(s[-1]))
        rel = residual / abs(theta) if theta != 0 else (0.0 if residual == 0 else float("inf"))
        invariant = beta <= 10 * eps * max(scale, eps) * math.sqrt(n) or j + 1 == n
        if rel <= tol or invariant:
            converged = True
            break
        if matvecs == max_iter:
            break
        q_next = w.div_(beta)
        if basis.size == capacity:
            # Thick restart: keep the top `keep` Ritz vectors Y = Q S_k; then
            # A Y = Y diag(theta_k) + beta q_next S_k[-1]^T: q_next couples to Y via beta S_k[-1].
            order = np.argsort(ritz_values)[::-1][:keep]
            S_k = torch.as_tensor(np.ascontiguousarray(ritz_vectors[:, order]), dtype=q.dtype,
                                  device=q.device)
            basis.restart(S_k)
            basis.append(q_next)
            T[:] = 0.0
            T[np.arange(keep), np.arange(keep)] = ritz_values[order]
            T[keep, :keep] = T[:keep, keep] = beta * ritz_vectors[-1, order]
        else:
            basis.append(q_next)
            T[j + 1, j] = T[j, j + 1] = beta

    if s is None:  # the operator produced non-finite numbers
        return EigenEstimate(float("nan"), v0 / norm0, matvecs, False, float("nan"))
    vector = basis.combine(torch.as_tensor(s, dtype=v0.dtype, device=v0.device))
    vector /= torch.linalg.vector_norm(vector)
    return EigenEstimate(theta, vector, matvecs, converged, rel)


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    named = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str):
        if dtype not in named:
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
        return named[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be None, torch.float32 or torch.float64, got {dtype!r}")
    return dtype


@contextlib.contextmanager
def _fixed_rng(seed: int, device: torch.device):
    """Seed the generator(s) a forward pass on ``device`` may draw from (dropout) and restore
    the global RNG state afterwards, so every forward in one solve sees the same dropout mask
    and the caller's random stream is untouched."""
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(cuda_devices[0]):
                torch.cuda.manual_seed(seed)
        yield


def _math_attention():
    """Context that restricts ``F.scaled_dot_product_attention`` to its math kernel (twice
    differentiable); a no-op on torch builds without ``torch.nn.attention``."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _jvp(fn, primals: dict, tangents: dict):
    """``torch.func.jvp(fn, (primals,), (tangents,))`` with grad mode on."""
    with torch.enable_grad(), warnings.catch_warnings():
        # torch's forward-AD decompositions call the deprecated torch.jit.script on first use.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                category=DeprecationWarning)
        return torch.func.jvp(fn, (primals,), (tangents,))


class HessianOperator:
    """``v -> H v``: the Hessian of ``loss_fn(model(x), y)`` at the model's current parameters.

    ``H`` is taken with respect to all parameters with ``requires_grad`` (flattened in
    ``model.parameters()`` order), on one fixed batch, in the mode (train/eval) the model is in.
    The model is evaluated through :func:`torch.func.functional_call` on detached copies of its
    parameters and on clones of its buffers, cast to ``dtype`` when given (together with the
    floating-point inputs and targets), so the model's parameters, ``.grad``, buffers (e.g.
    BatchNorm running statistics) and mode are never changed. Every forward pass runs with the
    CPU/CUDA generator seeded with ``seed`` inside :func:`torch.random.fork_rng`: in train mode
    with dropout ``H`` is the Hessian for one dropout mask, the same mask in every product, and
    the global RNG state is left as it was.

    Modes (``hvp=``):
      * ``"double_backprop"``: ``g = autograd.grad(L, theta, create_graph=True)`` once, then
        ``H v = autograd.grad(g, theta, grad_outputs=v)`` re-using that graph (one backward each).
      * ``"forward_over_reverse"``: ``H v = jvp(grad(L), (theta,), (v,))`` with
        :mod:`torch.func` (a forward + backward with dual numbers per product; no graph kept).
      * ``"auto"``: the one measured faster (``_AUTO_HVP``; double backprop on CPU).

    Micro-batches (``chunk_size``): with ``chunk_size=c`` smaller than the batch, the batch is cut
    along dim 0 into chunks ``B_1..B_K`` of at most ``c`` samples and every product is summed
    over them, ``H v = sum_k w_k H_k v`` (``H_k`` the Hessian of the chunk's loss), so at most
    one chunk's graph is alive at a time: the HVP's working memory (activations and the
    backward's saved tensors) shrinks by ``~K``, at the price of re-running the chunk's forward
    and gradient in every product (double backprop then costs about a gradient more per
    product). This is exact when the loss is a per-sample mean (``w_k = |B_k| / |B|``: MSE,
    cross-entropy, token-mean LM losses) or a per-sample sum (``w_k = 1``); which one is
    detected once, by comparing the full batch's loss with both combinations of the chunks'
    losses, and any other loss is refused with a ``ValueError``. Train-mode BatchNorm and
    dropout couple or re-draw samples per chunk, so they are refused too (call
    ``model.eval()`` first).

    Attributes: ``numel``, ``dtype``, ``device``, ``mode`` (resolved hvp mode), ``loss`` (float),
    ``gradient()`` (flat gradient at the current parameters, computed once), ``matvecs``,
    ``chunks`` (number of micro-batches, 1 without ``chunk_size``).
    """

    def __init__(self, model: torch.nn.Module, loss_fn, batch, *, dtype=None, hvp: str = "auto",
                 seed: int = 0, chunk_size: int | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("batch must be a pair (inputs, targets)")
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
        dtype = _resolve_dtype(dtype)
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("model has no parameters with requires_grad=True")
        first = next(iter(trainable.values()))
        self.device = first.device
        self.dtype = dtype if dtype is not None else first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"parameters must be floating point, got {self.dtype}")
        if hvp == "auto":
            hvp = _AUTO_HVP.get(self.device.type, "double_backprop")
        self.mode = hvp
        self.seed = int(seed)
        self.names = list(trainable)
        self.shapes = [p.shape for p in trainable.values()]
        self.sizes = [p.numel() for p in trainable.values()]
        self.numel = sum(self.sizes)
        self.matvecs = 0

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return t.to(self.dtype) if dtype is not None and t.is_floating_point() else t

        # Detached (storage-sharing) leaves for the trainable parameters, frozen parameters as
        # constants; buffers are cloned inside every forward (_loss), because train-mode
        # BatchNorm updates them in place and torch.func forbids mutating captured tensors.
        self._params = {n: cast(p) for n, p in trainable.items()}
        self._frozen = {n: cast(p) for n, p in model.named_parameters() if not p.requires_grad}
        self._buffers = {n: cast(b) for n, b in model.named_buffers()}
        inputs, targets = batch
        self._inputs = cast(inputs) if torch.is_tensor(inputs) else inputs
        self._targets = cast(targets) if torch.is_tensor(targets) else targets
        self._model, self._loss_fn = model, loss_fn
        self._grad_flat: torch.Tensor | None = None
        self.loss = float("nan")
        # [(inputs, targets, weight)]; one entry = the whole batch, weight 1.
        self._chunks = self._split_batch(chunk_size)
        self.chunks = len(self._chunks)

        # With chunks, every product and the gradient are built chunk by chunk (_chunked_product,
        # gradient); on the whole batch double backprop keeps one gradient graph for all products.
        if self.chunks == 1 and self.mode == "double_backprop":
            self._leaves, loss, grads = self._gradient_graph(self._inputs, self._targets,
                                                             create_graph=True)
            self.loss = float(loss.detach())
            self._grads = grads  # the flat gradient is made from these only when asked for
            self._diff = [i for i, g in enumerate(grads) if g.requires_grad]
        elif self.chunks == 1:
            self._grad_fn = torch.func.grad_and_value(self._loss)

    def _split_batch(self, chunk_size):
        """The micro-batches ``[(inputs, targets, weight)]`` (see the class docstring)."""
        whole = [(self._inputs, self._targets, 1.0)]
        if chunk_size is None:
            return whole
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
        x, y = self._inputs, self._targets
        if not (torch.is_tensor(x) and torch.is_tensor(y) and x.dim() >= 1 and y.dim() >= 1):
            raise ValueError("chunk_size needs the batch's inputs and targets to be tensors with a "
                             "sample dimension (dim 0)")
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"chunk_size: inputs have {n} samples (dim 0) but targets have "
                             f"{y.shape[0]}")
        if chunk_size >= n:
            return whole
        for name, module in self._model.named_modules():
            if not module.training:
                continue
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                raise ValueError(f"chunk_size: module {name!r} is a BatchNorm in train mode, whose "
                                 f"batch statistics differ per chunk; call model.eval() or use "
                                 f"chunk_size=None")
            if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
                raise ValueError(f"chunk_size: module {name!r} is a Dropout in train mode, whose mask "
                                 f"would differ per chunk; call model.eval() or use chunk_size=None")
        pieces = [(x[i:i + chunk_size], y[i:i + chunk_size]) for i in range(0, n, chunk_size)]
        with torch.no_grad():
            full = float(self._loss(self._params))
            losses = [float(self._loss(self._params, xc, yc)) for xc, yc in pieces]
        mean_w = [xc.shape[0] / n for xc, _ in pieces]
        as_mean = sum(w * l for w, l in zip(mean_w, losses))
        as_sum = sum(losses)
        # well above the rounding of a float32/float64 batch sum, well below what a loss that is
        # not additive over samples (e.g. a root-mean-square) typically shows between chunks
        rtol = 5e-5 if self.dtype == torch.float32 else 1e-9

        def close(a, b):
            return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)

        if not math.isfinite(full) or close(full, as_mean):
            weights = mean_w
        elif close(full, as_sum):
            weights = [1.0] * len(pieces)
        else:
            raise ValueError(f"chunk_size: loss_fn is neither a mean nor a sum over samples (full "
                             f"batch {full:.6g}, chunks' mean {as_mean:.6g}, sum {as_sum:.6g}); "
                             f"use chunk_size=None")
        self.loss = full
        return [(xc, yc, w) for (xc, yc), w in zip(pieces, weights)]

    def _gradient_graph(self, inputs, targets, create_graph: bool):
        """``(leaves, loss, grads)``: the loss on ``(inputs, targets)`` at fresh leaves (detached
        aliases of the parameters, so ``requires_grad_`` leaves the model's tensors alone) and
        its gradient, differentiable again when ``create_graph``."""
        leaves = [self._params[n].detach().requires_grad_(True) for n in self.names]
        with torch.enable_grad():
            loss = self._loss(dict(zip(self.names, leaves)), inputs, targets)
            grads = torch.autograd.grad(loss, leaves, create_graph=create_graph,
                                        allow_unused=True, materialize_grads=True)
        return leaves, loss, grads

    def _loss(self, params: dict, inputs=None, targets=None) -> torch.Tensor:
        inputs = self._inputs if inputs is None else inputs
        targets = self._targets if targets is None else targets
        # Second derivatives need the math kernel of scaled_dot_product_attention: the fused
        # (flash / memory-efficient) kernels have no double backward.
        with _fixed_rng(self.seed, self.device), _math_attention():
            buffers = {n: b.clone() for n, b in self._buffers.items()}
            out = functional_call(self._model, {**self._frozen, **buffers, **params}, (inputs,))
            loss = self._loss_fn(out, targets)
        if not (torch.is_tensor(loss) and loss.numel() == 1):
            raise ValueError("loss_fn must return a scalar tensor")
        return loss.reshape(())

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Flat vector -> list of views shaped like the trainable parameters."""
        if v.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} elements (one per trainable "
                             f"parameter entry), got shape {tuple(v.shape)}")
        return [c.view(s) for c, s in zip(torch.split(v, self.sizes), self.shapes)]

    def gradient(self) -> torch.Tensor:
        """Flat gradient of the loss at the current parameters (computed once, cached)."""
        if self._grad_flat is None and self.chunks > 1:
            flat = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
            for x, y, w in self._chunks:
                _, _, grads = self._gradient_graph(x, y, create_graph=False)
                for out, g in zip(self.split(flat), grads):
                    out.add_(g, alpha=w)
            self._grad_flat = flat
        elif self._grad_flat is None and self.mode == "double_backprop":
            self._grad_flat = torch.cat([g.detach().reshape(-1) for g in self._grads])
        elif self._grad_flat is None:
            with torch.enable_grad():
                grads, loss = self._grad_fn(self._params)
            self.loss = float(loss)
            self._grad_flat = torch.cat([grads[n].reshape(-1) for n in self.names])
        return self._grad_flat

    def _chunked_product(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``sum_k w_k H_k v`` over the micro-batches, one chunk's graph alive at a time."""
        out = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        views = self.split(out)
        tangents = dict(zip(self.names, parts))
        for x, y, w in self._chunks:
            if self.mode == "double_backprop":
                leaves, _, grads = self._gradient_graph(x, y, create_graph=True)
                diff = [i for i, g in enumerate(grads) if g.requires_grad]
                if not diff:
                    continue
                with torch.enable_grad():
                    pieces = torch.autograd.grad([grads[i] for i in diff], leaves,
                                                 grad_outputs=[parts[i] for i in diff],
                                                 allow_unused=True, materialize_grads=True)
                del grads  # frees this chunk's graph before the next one is built
            else:
                _, hv = _jvp(torch.func.grad(lambda p, x=x, y=y: self._loss(p, x, y)),
                             self._params, tangents)
                pieces = [hv[n] for n in self.names]
            for o, h in zip(views, pieces):
                o.add_(h, alpha=w)
            del pieces
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``H v`` for a flat vector ``v`` (cast to the operator's dtype/device)."""
        v = v.to(device=self.device, dtype=self.dtype)
        parts = self.split(v)
        self.matvecs += 1
        if self.chunks > 1:
            return self._chunked_product(parts)
        if self.mode == "double_backprop":
            if not self._diff:
                return torch.zeros_like(v)
            with torch.enable_grad():
                hv = torch.autograd.grad([self._grads[i] for i in self._diff], self._leaves,
                                         grad_outputs=[parts[i] for i in self._diff],
                                         retain_graph=True, allow_unused=True,
                                         materialize_grads=True)
            return torch.cat([h.reshape(-1) for h in hv])
        (grads, _), (hv, _) = _jvp(self._grad_fn, self._params, dict(zip(self.names, parts)))
        if self._grad_flat is None:  # the primal output is the gradient: keep it for free
            self._grad_flat = torch.cat([grads[n].reshape(-1) for n in self.names])
        return torch.cat([hv[n].reshape(-1) for n in self.names])


def _start_vector(init, n: int, dtype: torch.dtype, device: torch.device, seed: int):
    if init is None:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return torch.randn(n, generator=gen, dtype=dtype, device=device)
    if not torch.is_tensor(init):
        raise TypeError(f"init must be a flat tensor (e.g. a previous est.vector), got "
                        f"{type(init).__name__}")
    if init.numel() != n:
        raise ValueError(f"init has {init.numel()} elements but the model has {n} trainable "
                         f"parameter entries")
    v0 = init.detach().reshape(-1).to(device=device, dtype=dtype)
    norm = float(torch.linalg.vector_norm(v0))
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError("init must be finite and non-zero")
    return v0


def _check_solver_args(tol, max_iter):
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")


def sharpness(model: torch.nn.Module, loss_fn, batch, *, tol: float = 1e-3, max_iter: int = 100,
              dtype=None, init: torch.Tensor | None = None, hvp: str = "auto", seed: int = 0,
              max_basis: int = 20, chunk_size: int | None = None) -> EigenEstimate:
    """Sharpness ``lambda_max(H)``: the top eigenvalue of the Hessian of the loss on one batch.

    ``H = d^2 L / d theta^2`` with ``L = loss_fn(model(inputs), targets)``, ``batch = (inputs,
    targets)``, ``theta`` = all parameters with ``requires_grad``. Found matrix-free by
    :func:`lanczos_top_eigenpair` on Hessian-vector products (:class:`HessianOperator`), stopping
    when the relative eigen-residual ``||H v - theta v|| / |theta| <= tol``. ``lambda_max`` is
    the largest *algebraic* eigenvalue (not the largest in magnitude, which power iteration
    finds when the Hessian has a large negative eigenvalue).

    Train/eval mode: the Hessian is taken in whatever mode the caller left the model in, and
    the mode is never changed. The loss whose stability matters is the one the optimizer
    descends, i.e. the train-mode loss (BatchNorm with batch statistics); call ``model.eval()``
    first for the curvature of the inference-mode loss. With dropout active, ``H`` is random
    (it depends on the dropout mask): every forward pass of one call uses the same mask, drawn
    from a generator seeded with ``seed`` (the global RNG is left untouched), so the solver sees
    one fixed symmetric operator; another ``seed`` gives another mask.

    Args:
        model, loss_fn, batch: the loss ``loss_fn(model(inputs), targets)``.
        tol: relative eigen-residual to reach (the eigenvalue itself is typically far more
            accurate, ~ tol^2 * theta / gap).
        max_iter: maximum Hessian-vector products.
        dtype: ``None`` (the parameters' dtype), ``torch.float32`` or ``torch.float64``
            (parameters, buffers and floating inputs/targets are cast for the computation only).
        init: flat start vector, e.g. the previous ``est.vector`` (warm start); default a
            standard normal vector from a private generator seeded with ``seed``.
        hvp: ``"auto"``, ``"double_backprop"`` or ``"forward_over_reverse"`` (see
            :class:`HessianOperator`).
        seed: seeds the random start vector and the dropout mask.
        max_basis: Krylov vectors kept in memory (thick restart beyond that); each costs one
            parameter-sized vector.
        chunk_size: evaluate each HVP over micro-batches of at most this many samples (see
            :class:`HessianOperator`): exact for per-sample mean or sum losses, less memory
            (the HVP's working memory scales with the chunk, not the batch), about a gradient
            more compute per HVP. ``None`` (default) = the whole batch in one graph.

    Memory: the peak is about ``max_basis + 4`` parameter-sized vectors plus the HVP's working
    memory (~2.6x a training step's activations on the whole batch, or on one chunk with
    ``chunk_size``). ``max_basis=10, chunk_size=n/4`` keeps the Fig. 1 FCN's solve within 3x a
    training step's peak (``bench/RESULTS.md``).

    Returns:
        :class:`EigenEstimate` with ``value`` (float), ``vector`` (flat, on the model's device,
        in the computation dtype), ``matvecs``, ``converged``, ``residual``. A non-finite loss
        gives ``value = nan``, ``converged = False`` instead of an error.
    """
    _check_solver_args(tol, max_iter)
    op = HessianOperator(model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed,
                         chunk_size=chunk_size)
    v0 = _start_vector(init, op.numel, op.dtype, op.device, seed)
    return lanczos_top_eigenpair(op, v0, tol=tol, max_iter=max_iter, max_basis=max_basis,
                                 _fresh_output=True)


# --------------------------------------------------------------------------------------------
# Thresholds and pre-conditioned sharpness
# --------------------------------------------------------------------------------------------


def _preconditioned_spec(optimizer):
    """The registry entry of an optimizer with a pre-conditioned sharpness, else TypeError."""
    try:
        spec = registry.spec_for(optimizer)
    except NotImplementedError:
        spec = None
    if spec is None or not spec.preconditioned:
        raise TypeError(f"preconditioned_sharpness supports torch.optim.Adam, torch.optim.AdamW "
                        f"and catapult.optim.GIAdam, got {type(optimizer).__name__}")
    return spec


def instability_threshold(optimizer: torch.optim.Optimizer, lr: float | None = None) -> float:
    """The sharpness above which the optimizer's next steps become unstable, for learning rate lr.

    From the linear stability of each update rule on a quadratic with curvature ``lambda``:

    * SGD without momentum (gradient descent): ``2 / lr``.
    * SGD with heavy-ball momentum ``b`` (torch's ``buf = b*buf + (1-d)*g``, dampening ``d``,
      usually 0): ``(2 + 2b) / ((1 - d) lr)``; with ``nesterov=True``:
      ``(2 + 2b) / ((1 + 2b) lr)``.
    * Adam family (any optimizer whose param groups have ``"betas"``: Adam, AdamW, GIAdam,
      RAdam, NAdam, ...), compared with the *pre-conditioned* sharpness:
      ``(2 + 2 b1) / ((1 - b1) lr)`` (= 38/lr for b1 = 0.9).

    ``lr`` defaults to the first param group's current ``lr`` (and ``momentum``/``betas`` are
    read from the first group too). With per-group multipliers (``group["lr_mult"]``, as set by
    :func:`catapult.param_groups`) the groups have different lrs: pass the lr you mean, or use
    ``preconditioned_sharpness(..., scale_by_group_lr=True)``, which folds each group's
    ``lr / lr_first_group`` into the operator so it is compared with this threshold directly.

    Raises:
        TypeError: for an optimizer of another kind (the message names it).
        ValueError: for a non-positive lr.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not optimizer.param_groups:
        raise ValueError("optimizer has no param groups")
    group = optimizer.param_groups[0]
    lr = float(group["lr"] if lr is None else lr)
    if not lr > 0:
        raise ValueError(f"lr must be > 0 for an instability threshold, got {lr}")
    if "betas" in group:
        return float(rules.threshold("adam", {"lr": lr, "betas": [float(b) for b in group["betas"]]}))
    if isinstance(optimizer, torch.optim.SGD):
        return float(rules.threshold("sgd", {
            "lr": lr, "momentum": float(group.get("momentum", 0.0)),
            "dampening": float(group.get("dampening", 0.0)), "nesterov": group.get("nesterov", False)}))
    raise TypeError(f"instability_threshold: unsupported optimizer {type(optimizer).__name__}; "
                    "supported: torch.optim.SGD (with or without momentum) and Adam-family "
                    "optimizers (param groups with 'betas')")


def _adam_preconditioner(optimizer, grad_flat: torch.Tensor, names, params,
                         scale_by_group_lr: bool):
    """Flat inverse square root of the next step's Adam preconditioner (0 off-optimizer), and
    the coupled-L2 rows ``P^-1 wd`` (None without coupled L2); ``P`` from
    :func:`catapult.optim.rules.preconditioner`."""
    _preconditioned_spec(optimizer)
    where = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            where[id(p)] = group
    lr_ref = float(optimizer.param_groups[0]["lr"])
    dtype, device = grad_flat.dtype, grad_flat.device
    pieces, l2_pieces = [], []
    has_l2 = False
    offset = 0
    for name, p in zip(names, params):
        n = p.numel()
        g = grad_flat[offset:offset + n].view(p.shape)
        offset += n
        group = where.get(id(p))
        if group is None:  # not optimized: the step does not move it -> P^-1 = 0 there
            pieces.append(torch.zeros(n, dtype=dtype, device=device))
            l2_pieces.append(torch.zeros(n, dtype=dtype, device=device))
            continue
        rule = registry.rule_for(optimizer, group)
        hp = registry.hyperparameters(group, optimizer=optimizer, param=p)
        wd = float(rules.l2_coefficient(rule, hp))
        coupled_l2 = wd != 0.0  # torch Adam feeds g + wd * theta into v and descends L + wd/2 |theta|^2
        has_l2 = has_l2 or coupled_l2
        state = optimizer.state.get(p, {})
        rule_state = None
        if "exp_avg_sq" in state:
            v_max = state.get("max_exp_avg_sq")
            rule_state = rules.State(
                step=int(float(state["step"])), exp_avg_sq=[state["exp_avg_sq"].detach().to(dtype)],
                max_exp_avg_sq=[None if v_max is None else v_max.detach().to(dtype)])
        (P,) = rules.preconditioner(rule, [g], rule_state, hp, params=[p.detach().to(dtype)])
        inv = 1.0 / P
        if scale_by_group_lr:
            inv = inv * (float(group["lr"]) / lr_ref)
        pieces.append(torch.sqrt(inv).reshape(-1))
        l2_pieces.append((inv * wd).reshape(-1) if coupled_l2 else torch.zeros(n, dtype=dtype,
                                                                              device=device))
    return torch.cat(pieces), (torch.cat(l2_pieces) if has_l2 else None)


def preconditioned_sharpness(model: torch.nn.Module, loss_fn, batch,
                             optimizer: torch.optim.Optimizer, *, tol: float = 1e-3,
                             max_iter: int = 100, dtype=None, init: torch.Tensor | None = None,
                             hvp: str = "auto", seed: int = 0, max_basis: int = 20,
                             scale_by_group_lr: bool = False,
                             chunk_size: int | None = None) -> EigenEstimate:
    """Pre-conditioned sharpness ``lambda_max(P^-1 H)`` for Adam, AdamW and GI-Adam.

    ``P`` is the diagonal preconditioner the optimizer's *next* step will apply, rebuilt from
    its state without changing it: with ``g`` the gradient of the loss on ``batch``, ``t =
    state["step"]`` (0 with no state yet), ``v = state["exp_avg_sq"]`` (0 with no state; for
    GI-Adam with no state the ``v_0`` its first step would create from ``g``, via
    ``optimizer.initial_exp_avg_sq``: ``v_0 = g^2`` by default, so ``v' = g^2``)::

        v' = b2 * v + (1 - b2) * g^2
        P  = (1 - b1^(t+1)) * (sqrt(v' / (1 - b2^(t+1))) + eps)

    (GI-Adam groups with ``v_bias_correction=False`` skip the ``1 - b2^(t+1)`` division; with
    ``amsgrad`` the running maximum of ``v`` is used.) ``P^-1 H`` is not symmetric; its
    eigenvalues are those of the symmetric ``P^-1/2 H P^-1/2``, whose top eigenpair the Lanczos
    solver finds (``est.vector`` is in those coordinates: ``P^1/2`` times a ``P^-1 H``
    eigenvector). Compare with ``instability_threshold(optimizer)`` = ``(2+2 b1)/((1-b1) lr)``.

    torch Adam with ``weight_decay`` (coupled L2) feeds ``g + wd * theta`` into ``v`` and descends
    ``L + wd/2 ||theta||^2``; both are included (the operator becomes
    ``P^-1/2 (H + wd I) P^-1/2``). Decoupled weight decay (AdamW, GI-Adam) is not curvature and is
    left out. Parameters with ``requires_grad`` that belong to no param group are not moved by
    the step and get ``P^-1 = 0``. ``scale_by_group_lr=True`` multiplies each group's block of
    ``P^-1`` by ``group["lr"] / param_groups[0]["lr"]`` (per-group lr multipliers, e.g. muP).

    Keyword arguments are those of :func:`sharpness`. Mode, dtype and RNG are handled the same
    way; neither the model nor the optimizer state is changed.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _preconditioned_spec(optimizer)
    _check_solver_args(tol, max_iter)
    op = HessianOperator(model, loss_fn, batch, dtype=dtype, hvp=hvp, seed=seed,
                         chunk_size=chunk_size)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        d, l2 = _adam_preconditioner(optimizer, op.gradient(), op.names, params,
                                     scale_by_group_lr)

    def matvec(u: torch.Tensor) -> torch.Tensor:
        out = op(d * u).mul_(d)
        if l2 is not None:
            out.addcmul_(l2, u)
        return out

    v0 = _start_vector(init, op.numel, op.dtype, op.device, seed)
    return lanczos_top_eigenpair(matvec, v0, tol=tol, max_iter=max_iter, max_basis=max_basis,
                                 _fresh_output=True)
