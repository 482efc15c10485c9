"""The engine's persistent catapult warmup (``schedule.warmup: persistent``)."""
from __future__ import annotations

from catapult.critical_lr import NonFiniteLossError
from catapult.parametrize import group_lr_mult
from catapult.schedules import PersistentCatapultWarmup
from catapult.schedules.scheduler import separate_lr_tensors, set_group_lr

__all__ = ["RunPersistentWarmup"]


class RunPersistentWarmup(PersistentCatapultWarmup):
    """:class:`~catapult.schedules.PersistentCatapultWarmup` as a run uses it: a search that has
    no lr to measure (:class:`~catapult.critical_lr.NonFiniteStepError`: the optimizer's step
    direction is not finite, e.g. Adam with ``eps = 0`` and a gradient entry of 0) keeps the
    current lr (``lr_start`` before the first search), so the run takes that step and diverges at
    the next one, a result, as it does under the linear and catapult warmups (it raised before).

    Example (a zero gradient entry under ``eps = 0``):
        >>> import torch
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> opt = torch.optim.Adam(model.parameters(), eps=0.0)
        >>> pcw = RunPersistentWarmup(opt, model, torch.nn.MSELoss(), lr_target=0.1, delta=0.01)
        >>> pcw.step((torch.tensor([[1.0, 0.0]]), torch.ones(1, 1))), pcw.searches
        (0.0001, 0)
    """

    def step(self, batch, loss=None) -> float:
        try:
            return super().step(batch, loss=loss)
        except NonFiniteLossError:
            lr = self.lr if self.lr is not None else self.lr_start
            separate_lr_tensors(self.optimizer.param_groups)
            for index, group in enumerate(self.optimizer.param_groups):
                set_group_lr(group, lr * group_lr_mult(group, index))
            self.steps += 1
            return lr
