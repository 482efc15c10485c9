"""The symmetric operator the spectrum functions work on (:mod:`~catapult.curvature.spectrum`'s top-k
eigenpairs, :mod:`~catapult.curvature.trace`'s trace, :mod:`~catapult.curvature.density`'s spectral
density): the Hessian or the Gauss-Newton matrix, pre-conditioned by an Adam-family optimizer's
next step (``P^-1/2 A P^-1/2``) or scaled by SGD's per-group learning rates (``M^1/2 A M^1/2``).
"""
from __future__ import annotations

from catapult.curvature import distributed as dist_ops
from catapult.curvature.preconditioner import PreconditionedOperator, check_step_optimizer, step_preconditioner
from catapult.curvature.sharpness import build_operator

__all__ = ["curvature_operator"]


def curvature_operator(model, loss_fn, batch, *, curvature: str = "hessian", optimizer=None,
                       dtype=None, hvp: str = "auto", seed: int = 0, chunk_size=None,
                       distributed: bool = False, scale_by_group_lr: bool = False,
                       sharded_vectors: str = "full"):
    """The symmetric operator the spectrum functions work on: the Hessian
    (:func:`~catapult.curvature.sharpness.build_operator`) or the Gauss-Newton matrix
    (:class:`~catapult.curvature.ggn.GaussNewtonOperator`), pre-conditioned as ``P^-1/2 A P^-1/2`` when an
    ``optimizer`` is given (:func:`~catapult.curvature.preconditioner.step_preconditioner`: Adam's
    next step; for SGD, and RAdam before rectification, with ``scale_by_group_lr`` ``P^-1 = M = diag(lr_i / lr_0)``, the
    ``lr_scaled`` operator ``M^1/2 A M^1/2``). ``sharded_vectors``: as in
    :func:`~catapult.curvature.sharpness.build_operator` (a model sharded by FSDP2).

    Example (a linear model: Gauss-Newton matrix = Hessian = ``diag(4, 1)``):
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [0.0]]))
        >>> curvature_operator(model, torch.nn.MSELoss(), batch, curvature="ggn")(torch.ones(2))
        tensor([4., 1.])
    """
    if scale_by_group_lr and optimizer is None:  # it was ignored: the plain operator came back
        raise ValueError("scale_by_group_lr=True scales by the optimizer's per-group lrs: pass optimizer=")
    if optimizer is not None:
        check_step_optimizer(optimizer, "curvature_operator")
    op = build_operator(model, loss_fn, batch, curvature=curvature, dtype=dtype, hvp=hvp,
                        seed=seed, chunk_size=chunk_size, distributed=distributed,
                        sharded_vectors=sharded_vectors)
    if optimizer is not None:
        d, l2 = step_preconditioner(dist_ops.unwrap_ddp(model), optimizer, op, scale_by_group_lr)
        op = PreconditionedOperator(op, d, l2)
    return op
