"""Fakes shared by the sweep tests (not collected by pytest): a deterministic, instant
stand-in for ``catapult.engine.run`` that counts its calls."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from catapult.config import resolve_lr


@dataclass
class FakeResult:
    status: str
    metrics: list
    summary: dict


@dataclass
class FakeRun:
    """``run_fn`` stand-in: diverges iff ``lr * 8 / min(T_wrm, 8) > diverge_above``; fails
    (raises) for cells whose ``schedule.lr_init`` equals ``fail_lr_init``; test accuracy is a
    closed-form function of lr and warmup so tests can check what is stored."""

    diverge_above: float = 1.0
    fail_lr_init: float | None = None
    calls: list = field(default_factory=list)

    def __call__(self, config, progress=None):
        self.calls.append(config)
        lr = resolve_lr(config["optimizer"]["lr"])
        warm = config["schedule"]["warmup_steps"]
        if self.fail_lr_init is not None and config["schedule"]["lr_init"] == self.fail_lr_init:
            raise RuntimeError("boom: injected failure")
        steps = config["train"]["steps"]
        effective = lr * 8 / min(warm, 8)
        rows = []
        for t in range(steps + 1):
            row = dict(step=t, lr=lr, threshold=2 / lr, train_loss=1.0 / (1 + t * lr), train_accuracy=0.5,
                       sharpness=None, sharpness_matvecs=None, test_loss=None, test_accuracy=None)
            if effective > self.diverge_above and t == 2:
                row["train_loss"] = math.inf
                rows.append(row)
                return FakeResult("diverged", rows, {"lr_target": lr, "diverged_at": t, "steps_completed": t,
                                                     "wall_time_s": 0.01})
            if t == steps:
                row["test_loss"] = 0.1 + lr
                row["test_accuracy"] = fake_accuracy(lr, warm, config["seed"])
            rows.append(row)
        return FakeResult("finished", rows, {"lr_target": lr, "diverged_at": None, "steps_completed": steps,
                                             "wall_time_s": 0.01})


def fake_accuracy(lr: float, warm: int, seed: int) -> float:
    return round(0.5 + 0.1 * math.log2(1 + lr) + 0.01 * math.log2(warm) + 0.001 * seed, 6)


@dataclass
class FakeLambda0:
    """``lambda0_fn`` stand-in: lambda_0 = 2 + seed, counting calls."""

    calls: list = field(default_factory=list)

    def __call__(self, config):
        self.calls.append(config["seed"])
        return 2.0 + config["seed"]
