"""One cell of a batched group, shared by both batched engines (the hand-derived MLP kernels in
:mod:`catapult.sweep.ensemble_run` and the torch.func engine in :mod:`catapult.sweep.batched`,
trained by the one loop of :mod:`catapult.sweep.batched_loop`):
its settings, its record while it trains, and its result, built as
:func:`catapult.engine.run` builds it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from catapult import config as cfg
from catapult.engine import seeds, summarize, threshold, warmup_summary
from catapult.engine.step import evaluates_test, measures_sharpness
from catapult.sweep.executors import Cell, CellResult

__all__ = ["Member"]


@dataclass
class Member:
    """One cell's settings and its record while it trains in a batched group."""

    cell: Cell
    config: dict
    steps: int
    sharpness_every: int
    test_every: int
    divergence_factor: float
    tol: float
    max_iter: int
    lr_spec: Any
    sharpness_seed: int
    optimizer: Any = None       # its torch optimizer (thresholds, hyper-parameters), or a one-parameter copy
    warmup: Any = None          # engine.Warmup: its lr schedule (and persistent search, if any)
    lr_mult0: float = 1.0
    lr_trgt: float | None = None
    lambda_0: float | None = None
    lambda0_estimate: Any = None
    warm: torch.Tensor | None = None
    metrics: list = field(default_factory=list)
    loss_0: float | None = None
    status: str = "finished"
    diverged_at: int | None = None
    failure: str | None = None  # why it diverged, as the loop saw it (engine.step.failure_of)
    collapsed: bool = False     # the collapse rule at its final step (engine.step.output_collapsed)
    matvecs_total: int = 0
    measurements: int = 0
    unconverged: int = 0
    below_budget: int = 0  # unconverged solves that stopped below max_iter (summary: unconverged_below_budget)
    lambda0_converged: bool | None = None  # every solve its lambda_0 averages converged (summary: lambda_0_converged)
    vocabulary: dict = field(default_factory=dict)  # its model's engine.records.vocabulary_record

    @classmethod
    def of(cls, cell: Cell, config: Mapping[str, Any]) -> "Member":
        """The member of ``cell`` with its validated ``config``."""
        ev, tr = config["eval"], config["train"]
        return cls(cell=cell, config=dict(config), steps=tr["steps"], sharpness_every=ev["sharpness_every"],
                   test_every=ev["test_every"], divergence_factor=tr["divergence_factor"],
                   tol=ev["sharpness_tol"], max_iter=ev["sharpness_max_iter"],
                   lr_spec=cfg.parse_lr(config["optimizer"]["lr"]), sharpness_seed=seeds(config["seed"])[2])

    @property
    def needs_lambda0(self) -> bool:
        """It tracks sharpness or its lr is ``c/lambda0`` (as :attr:`catapult.engine.Run.needs_lambda0`)."""
        return self.sharpness_every > 0 or self.lr_spec.relative

    def start_vector(self, n_params: int, device, dtype) -> torch.Tensor:
        """``randn(P)`` from its sharpness seed: the eigen-solver's first start, as ``run``'s."""
        v = torch.randn(n_params, generator=torch.Generator().manual_seed(self.sharpness_seed))
        return v.to(device=device, dtype=dtype)

    def resolve_lr_target(self) -> bool:
        """Set ``lr_trgt`` from its lr and lambda_0 (as ``run``); on a ``c/lambda0`` that cannot
        resolve, mark it failed (``lr_trgt`` 1.0 keeps its optimizer buildable) and return False."""
        try:
            self.lr_trgt = self.lr_spec.resolve(self.lambda_0)
            return True
        except ValueError as err:
            self.status, self.lr_trgt = "failed", 1.0
            self.metrics = [{"error": f"ValueError: optimizer.lr={self.config['optimizer']['lr']!r}: {err}"}]
            return False

    def failed_result(self, worker: str | None) -> CellResult:
        """The result of a member that could not start (see :meth:`resolve_lr_target`)."""
        return CellResult("failed", [], {}, error=self.metrics[0]["error"], worker=worker)

    @staticmethod
    def measure_lambda0(members: list["Member"], n_params: int, device, dtype, solve, solve_on=None) -> None:
        """lambda_0 of the members that need it, as ``run`` measures it: each from its own
        :meth:`start_vector`, by ``solve(rows, inits) -> [EigenEstimate]`` (the engine's batched
        Hessian sharpness); the estimate is kept for reuse at ``t = 0`` and its matvecs counted."""
        need = [i for i, mb in enumerate(members) if mb.needs_lambda0]
        for i in need:
            members[i].warm = members[i].start_vector(n_params, device, dtype)
        if not need:
            return
        Member._measure(members, need, solve, solve_on)
        # a cell whose lr the driver resolved from its cached lambda_0 records that value, as the
        # local engine's run does (it measures the same number): the batched solve's own rounds
        # differently, and lr * lambda_0 read 15.999998 for "2^4/lambda0"
        for i in need:
            if members[i].cell.lambda_0 is not None:
                members[i].lambda_0 = float(members[i].cell.lambda_0)

    @staticmethod
    def _measure(members: list["Member"], need: list[int], solve, solve_on) -> None:
        for i, est in zip(need, solve(need, torch.stack([members[i].warm for i in need]))):
            mb = members[i]
            mb.lambda0_estimate, mb.lambda_0, mb.lambda0_converged = est, float(est.value), bool(est.converged)
            mb.matvecs_total += int(est.matvecs)
            mb.unconverged += int(not est.converged)
            mb.below_budget += int(not est.converged and est.matvecs < mb.max_iter)
        # lambda_0 averaged over batches 0 .. k-1 (eval.lambda0_batches), as Run.lambda_0:
        # ``solve_on(t)`` solves on batch t, each member warm-started from its batch-0 vector
        if solve_on is None:
            return
        from catapult.engine.step import lambda0_batch_count

        counts = {i: (1 if members[i].config["train"]["batch_size"] is None
                      else lambda0_batch_count(members[i].config)) for i in need}
        values = {i: [members[i].lambda_0] for i in need}
        for t in range(1, max(counts.values())):
            rows = [i for i in need if counts[i] > t]
            inits = torch.stack([members[i].lambda0_estimate.vector for i in rows])
            for i, est in zip(rows, solve_on(t)(rows, inits)):
                values[i].append(float(est.value))
                members[i].matvecs_total += int(est.matvecs)
                members[i].unconverged += int(not est.converged)
                members[i].lambda0_converged = members[i].lambda0_converged and bool(est.converged)
                members[i].below_budget += int(not est.converged and est.matvecs < members[i].max_iter)
        for i in need:
            members[i].lambda_0 = float(sum(values[i]) / len(values[i]))

    def sharpness_at(self, t: int) -> bool:
        return measures_sharpness(t, self.sharpness_every, self.steps)

    def test_at(self, t: int) -> bool:
        return evaluates_test(t, self.test_every, self.steps)

    def threshold_at(self, lr_t: float, step: int | None = None) -> float:
        """The instability threshold of its optimizer at ``lr_t`` (its first group's multiplier);
        with ``step`` the row's own (RAdam: :func:`catapult.engine.threshold`)."""
        return threshold(self.optimizer, lr_t * self.lr_mult0, step)

    def _lambda0_batches(self) -> int | None:
        """How many batches its lambda_0 averages (as ``run`` records it), ``None`` if not measured."""
        from catapult.engine.step import lambda0_batch_count

        if not self.needs_lambda0:
            return None
        return 1 if self.config["train"]["batch_size"] is None else lambda0_batch_count(self.config)

    def result(self, *, n_params: int, device, sharpness_kind: str, wall_time: float,
               worker: str | None) -> CellResult:
        """Its :class:`~catapult.sweep.executors.CellResult`, the summary built as ``run`` builds it."""
        summary = summarize(
            self.config, self.metrics, status=self.status, diverged_at=self.diverged_at, lambda_0=self.lambda_0,
            lr_trgt=self.lr_trgt, threshold_target=self.threshold_at(self.lr_trgt), n_params=n_params,
            device=device, sharpness_kind=sharpness_kind, matvecs_total=self.matvecs_total,
            measurements=self.measurements, unconverged=self.unconverged, wall_time=wall_time,
            unconverged_below_budget=self.below_budget,
            collapsed=self.collapsed, lambda0_batches=self._lambda0_batches(), failure=self.failure,
            lambda_0_converged=self.lambda0_converged if self.needs_lambda0 else None)
        if self.warmup is not None:
            summary.update(warmup_summary(self.config, self.metrics, self.lr_trgt, self.warmup))
        summary.update(self.vocabulary)
        return CellResult(summary["status"], self.metrics, summary, worker=worker)  # the paper's accuracy rule
