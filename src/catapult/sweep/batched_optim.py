"""The members' optimizers as one update of stacked parameters, through
:mod:`catapult.optim.rules`.

Each member's own torch optimizer (built by :func:`catapult.engine.build_optimizer` on its own
model) is read once for its hyper-parameters, parameter by parameter (the param group's
``lr_mult``, ``weight_decay``, ``momentum``, ``betas``, ``eps``, ...). A hyper-parameter equal
in every member stays a Python number (the rules then do torch.optim's exact arithmetic);
one that differs becomes a column ``[N, 1, ...]`` broadcasting over the stacked parameter
``[N, *shape]`` (the rules' tensor form). The state is one :class:`catapult.optim.rules.State`
whose tensors carry the member dim (all members step together).

Update ``t`` of member ``n``: ``rules.update(rule, ...)`` with ``lr = lr_t(n) * lr_mult`` of the
parameter's group, on the rows of any range of members at a time (:meth:`StackedOptimizer.begin_step`,
:meth:`~StackedOptimizer.apply` per range, :meth:`~StackedOptimizer.end_step`; the hand-derived
kernels apply each cache-sized sub-batch's update right after its gradient), written back in
place. Pre-conditioner (pre-conditioned sharpness): ``rules.preconditioner``,
``P^-1`` scaled by ``lr_mult / lr_mult_0`` as :func:`catapult.curvature.preconditioned_sharpness`
with ``scale_by_group_lr=True``, with ``wd P^-1`` for a coupled L2 term.

GI-Adam's ``v0="random"`` draws ``v_0`` from a seed per member and parameter (the member's
optimizer's :meth:`~catapult.optim.GIAdam.initial_exp_avg_sq`), so it is set member by member
at the first gradient and handed to the rules as state.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from catapult.optim import rules
from catapult.optim.gi_adam import STEP_DTYPE
from catapult.optim.registry import rule_for
from catapult.optim.step_count import count_in

__all__ = ["StackedOptimizer", "SUPPORTED"]

#: optimizer.name values this module updates
SUPPORTED = rules.RULES

# hyper-parameters read from a param group (beyond lr_mult), per rule
_KEYS = {
    "sgd": ("weight_decay", "momentum", "dampening", "nesterov", "maximize"),
    "adam": ("weight_decay", "beta1", "beta2", "eps", "amsgrad", "maximize", "decoupled_weight_decay"),
    "radam": ("weight_decay", "beta1", "beta2", "eps", "maximize", "decoupled_weight_decay"),
    "gi-adam": ("weight_decay", "beta1", "beta2", "eps", "maximize", "v_bias_correction", "v0"),
}
_KEYS["adamw"] = _KEYS["adam"]


def _group_value(group: dict, key: str) -> Any:
    if key in ("beta1", "beta2"):
        return float(group["betas"][0 if key == "beta1" else 1])
    return group.get(key, False if key in ("nesterov", "maximize", "amsgrad", "decoupled_weight_decay")
                     else 0.0)


def _rows_of(hp: dict[str, Any], rows: slice) -> dict[str, Any]:
    """``hp`` for members ``rows``: per-member columns (tensors, in lists) sliced, numbers kept."""
    def cut(v):
        if isinstance(v, list):
            return [cut(x) for x in v]
        return v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
    return {k: cut(v) for k, v in hp.items()}


def _col(values: Sequence[Any], like: torch.Tensor) -> torch.Tensor:
    """Per-member scalars as ``[M, 1, ...]`` broadcasting over ``like`` (bools stay bools)."""
    shape = (len(values),) + (1,) * (like.dim() - 1)
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, device=like.device).view(shape)
    return torch.tensor([float(v) for v in values], device=like.device, dtype=like.dtype).view(shape)


class StackedOptimizer:
    """The update of rule ``name`` for stacked parameters (name -> ``[N, *shape]``).

    ``optimizers[i]`` / ``models[i]``: member ``i``'s torch optimizer over its own model, read
    once for per-parameter hyper-parameters (parameters matched by identity, ``names`` order).
    """

    def __init__(self, name: str, optimizers: Sequence[torch.optim.Optimizer],
                 models: Sequence[torch.nn.Module], names: Sequence[str]):
        if name not in SUPPORTED:
            raise ValueError(f"the batched engine updates {SUPPORTED}, not {name!r}")
        self.names = list(names)
        self.optimizers = list(optimizers)
        self.member_params = [[dict(m.named_parameters())[n] for n in self.names] for m in models]
        groups = [[next(g for g in opt.param_groups if any(q is p for q in g["params"])) for p in ps]
                  for opt, ps in zip(optimizers, self.member_params)]
        rule_names = {rule_for(opt, g) for opt, gs in zip(optimizers, groups) for g in gs}
        if len(rule_names) != 1:
            raise ValueError(f"members follow different update rules: {sorted(rule_names)}")
        self.rule = rule_names.pop()
        # values[key][k] = [value of member n for parameter k]
        self.values: dict[str, list[list[Any]]] = {
            key: [[_group_value(gs[k], key) for gs in groups] for k in range(len(self.names))]
            for key in ("lr_mult",) + _KEYS[self.rule]}
        self.values["lr_mult"] = [[float(gs[k].get("lr_mult", 1.0)) for gs in groups]
                                  for k in range(len(self.names))]
        self.lr_mult0 = [float(opt.param_groups[0].get("lr_mult", 1.0)) for opt in optimizers]
        # the first group's weight_decay_shift: the threshold's (engine.threshold), whose difference
        # from each group's the operators hold (as curvature.preconditioner's)
        # (wd, beta1, decoupled): RAdam's decoupled_weight_decay (torch >= 2.0; the config builds it coupled)
        # shifts by wd (1 + b1) / (1 - b1), not by 0 as its coupled L2 does against the pre-conditioned operator
        self.decay0 = [(float(opt.param_groups[0].get("weight_decay", 0.0)),
                        _group_value(opt.param_groups[0], "beta1") if self.rule != "sgd" else 0.0,
                        bool(_group_value(opt.param_groups[0], "decoupled_weight_decay"))) for opt in optimizers]
        # the threshold's beta2, for RAdam's r_t (radam_reference_step's: the reference group's, which is the
        # first of the engine's groups: they hold no frozen parameter, and every lr_mult is > 0)
        self.beta2_0 = [_group_value(opt.param_groups[0], "beta2") if self.rule == "radam" else 0.0
                        for opt in optimizers]
        self.random_v0 = self.rule == "gi-adam" and any(
            v == "random" for row in self.values["v0"] for v in row)
        # the dtype of the count each member's torch optimizer keeps in state["step"] (torch.optim: float32,
        # float64 under a float64 default dtype; GI-Adam: float64; SGD: none): a float32 count stops at
        # 2**24, and torch's bias corrections and RAdam's r_t reuse it (catapult.optim.step_count)
        self.count_dtype: torch.dtype | None = (
            None if self.rule == "sgd" else STEP_DTYPE if self.rule == "gi-adam" or torch.get_default_dtype() == torch.float64
            else torch.float32)
        self.state: rules.State | None = None
        self._first: dict[str, list[bool]] = {}  # state fields the step in progress creates

    def forget_members(self) -> None:
        """Drop the references to the members' own optimizers and parameters (read already),
        so their modules can be freed; :meth:`materialize` and GI-Adam's ``v0="random"`` need
        them."""
        if self.random_v0:
            raise ValueError("GI-Adam with v0='random' reads each member's own optimizer at its first step")
        self.optimizers = [None] * len(self.optimizers)
        self.member_params = [None] * len(self.member_params)

    @property
    def steps(self) -> int:
        """The updates taken (exactly)."""
        return 0 if self.state is None else self.state.step

    def torch_step(self, t: int) -> int:
        """Update ``t``'s count (1-based) as the members' torch optimizers hold it
        (:func:`~catapult.optim.step_count.count_in` of :attr:`count_dtype`: a float32 count stops at ``2**24``)."""
        return count_in(self.count_dtype, t)

    def _rules_step(self) -> int:
        """The rules' ``step`` of the next update: its ``t = step + 1`` is torch's count of it."""
        return self.torch_step(self.steps + 1) - 1

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the members ``rows`` (indices of the current rows, in that order)."""
        rows = list(rows)
        if rows == list(range(len(self.lr_mult0))):
            return
        self.values = {key: [[row[r] for r in rows] for row in per_param] for key, per_param in self.values.items()}
        self.lr_mult0 = [self.lr_mult0[r] for r in rows]
        self.decay0 = [self.decay0[r] for r in rows]
        self.beta2_0 = [self.beta2_0[r] for r in rows]
        self.optimizers = [self.optimizers[r] for r in rows]
        self.member_params = [self.member_params[r] for r in rows]
        if self.state is not None:
            for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                tensors = getattr(self.state, field)
                if tensors is not None:
                    setattr(self.state, field, [None if x is None else x.index_select(
                        0, torch.as_tensor(rows, dtype=torch.long, device=x.device)) for x in tensors])

    def _hp(self, likes: Sequence[torch.Tensor], rows: Sequence[int] | None = None,
            lrs: Sequence[float] | None = None) -> dict[str, Any]:
        """The rules' ``hp``: per hyper-parameter one number (equal in ``rows``) or one list
        with a column per parameter; ``lr`` from the members' base ``lrs``."""
        rows = list(range(len(self.lr_mult0))) if rows is None else list(rows)
        hp: dict[str, Any] = {}
        for key, per_param in self.values.items():
            if key in ("lr_mult", "v0"):
                continue
            sub = [[row[r] for r in rows] for row in per_param]
            flat = {v for row in sub for v in row}
            hp[key] = flat.pop() if len(flat) == 1 else [_col(row, like) for row, like in zip(sub, likes)]
        if "v0" in self.values:  # a group key: equal in every member ("random" handled apart)
            hp["v0"] = self.values["v0"][0][0]
        if lrs is not None:
            hp["lr"] = [_col([lrs[i] * row[r] for i, r in enumerate(rows)], like)
                        for row, like in zip(self.values["lr_mult"], likes)]
        return hp

    def _random_v0(self, grads: Sequence[torch.Tensor], rows: Sequence[int]) -> list[torch.Tensor]:
        """GI-Adam ``v0="random"``: each member's own ``v_0`` from its optimizer."""
        out = []
        for k, g in enumerate(grads):
            out.append(torch.stack([
                self.optimizers[r].initial_exp_avg_sq(self.member_params[r][k], g[i]).to(g.dtype)
                for i, r in enumerate(rows)]))
        return out

    # ---- update
    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor] | Sequence[torch.Tensor],
             lrs: Sequence[float]) -> None:
        """One update of every member, in place on ``params`` (name -> ``[N, *shape]``);
        ``grads``: name -> ``[N, *shape]`` or a list in ``names`` order; ``lrs``: base ``lr_t``."""
        ps = [params[n] for n in self.names]
        gs = [grads[n] for n in self.names] if isinstance(grads, dict) else list(grads)
        hp = self.begin_step(ps, lrs)
        self.apply(hp, ps, gs, 0, len(self.lr_mult0))
        self.end_step()

    @torch.no_grad()
    def begin_step(self, params: Sequence[torch.Tensor], lrs: Sequence[float]) -> dict[str, Any]:
        """Start one update of every member (``params`` in ``names`` order): create the state
        the rule keeps (full size, so :meth:`apply` can fill it member range by member range)
        and return the step's ``hp`` for :meth:`apply`."""
        hp = self._hp(params, lrs=lrs)
        if self.state is None:
            self.state = rules.init(self.rule, params, hp)
        st = self.state
        # fields still None are created by the rule's first update; remember which, and give
        # them full-size storage for the member ranges to write into
        self._first = {}
        for field in ("momentum_buffer", "exp_avg_sq"):
            tensors = getattr(st, field)
            if tensors is not None:
                self._first[field] = [x is None for x in tensors]
                setattr(st, field, [torch.empty_like(p) if x is None else x for x, p in zip(tensors, params)])
        return hp

    @torch.no_grad()
    def apply(self, hp: dict[str, Any], params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              s: int, e: int) -> None:
        """The update begun by :meth:`begin_step` for members ``s:e``: ``rules.update`` on
        their rows of the parameters and state (``grads``: ``[e - s, ...]`` each), written back
        in place. Member ranges of one step may come in any order, each once."""
        st = self.state
        rows = slice(s, e)

        def part(field: str) -> list | None:
            tensors = getattr(st, field)
            if tensors is None:
                return None
            first = self._first.get(field, [False] * len(tensors))
            return [None if f else x[rows] for x, f in zip(tensors, first)]

        sub = rules.State(step=self._rules_step(), exp_avg=part("exp_avg"), exp_avg_sq=part("exp_avg_sq"),
                          max_exp_avg_sq=part("max_exp_avg_sq"), momentum_buffer=part("momentum_buffer"))
        if self.random_v0 and st.step == 0:
            sub.exp_avg_sq = self._random_v0(grads, range(s, e))
        new, sub = rules.update(self.rule, [p[rows] for p in params], list(grads), sub,
                                _rows_of(hp, rows))
        for p, q in zip(params, new):
            p[rows].copy_(q)
        for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            full, part_new = getattr(st, field), getattr(sub, field)
            if full is None or part_new is None:
                continue
            for k, (x, q) in enumerate(zip(full, part_new)):
                if q is not None:
                    x[rows].copy_(q)

    def end_step(self) -> None:
        """Finish the update begun by :meth:`begin_step` (every member range applied). State
        the rule did not create on its first update (SGD without momentum) is dropped again."""
        st = self.state
        for field, first in self._first.items():
            if all(first) and st.step == 0 and field == "momentum_buffer" and not self._momentum():
                setattr(st, field, [None] * len(first))
        st.step += 1
        self._first = {}

    def _momentum(self) -> bool:
        """Whether any member's SGD keeps a momentum buffer."""
        return any(float(v) != 0.0 for row in self.values.get("momentum", []) for v in row)

    # ---- pre-conditioner of the next step
    @torch.no_grad()
    def preconditioner(self, rows: Sequence[int], params: dict[str, torch.Tensor],
                       grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(d, l2)``, flat ``[len(rows), P]``: ``d = P^-1/2`` of the members' next step
        (``P^-1`` scaled by ``lr_mult / lr_mult_0``) and the coupled-L2 term ``wd P^-1``
        (``None`` without one), as :func:`catapult.curvature.preconditioned_sharpness` builds
        them for members ``rows`` whose gradients (in the operator's dtype) are ``grads``."""
        rows = list(rows)
        dtype = grads[0].dtype
        idx = torch.as_tensor(rows, dtype=torch.long, device=grads[0].device)
        ps = [params[n].index_select(0, idx).to(dtype) for n in self.names]
        hp = self._hp(grads, rows=rows)
        state = None
        if self.state is not None and self.state.step > 0:
            state = rules.State(step=self._rules_step(), exp_avg_sq=[
                None if v is None else v.index_select(0, idx).to(dtype) for v in self.state.exp_avg_sq],
                max_exp_avg_sq=None if self.state.max_exp_avg_sq is None else [
                    v.index_select(0, idx).to(dtype) for v in self.state.max_exp_avg_sq])
        if state is None and self.random_v0:
            # before the first step: v' = b2 v_0 + (1 - b2) g^2 with the members' own v_0
            v0 = self._random_v0(grads, rows)
            P = [self._gi_first_preconditioner(g, v, hp, k) for k, (g, v) in enumerate(zip(grads, v0))]
        else:
            P = rules.preconditioner(self.rule, grads, state, hp, params=ps)
        if P is None:
            raise ValueError(f"the pre-conditioned sharpness is not defined for {self.rule}")
        d_parts, l2_parts, has_l2 = [], [], False
        for k, (p_k, P_k) in enumerate(zip(ps, P)):
            ratio = _col([self.values["lr_mult"][k][r] / self.lr_mult0[r] for r in rows], P_k)
            inv = (1.0 / P_k) * ratio
            d_parts.append(torch.sqrt(inv).reshape(len(rows), -1))
            wd = rules.l2_coefficient(self.rule, hp, k)
            decay = self._decay_rows(rows, k, inv)
            if isinstance(wd, torch.Tensor) or wd != 0:
                has_l2 = True
                l2 = (inv * wd).reshape(len(rows), -1)
                l2_parts.append(l2 if decay is None else l2 + decay)
            else:
                l2_parts.append(torch.zeros_like(inv).reshape(len(rows), -1) if decay is None else decay)
            has_l2 = has_l2 or decay is not None
        return torch.cat(d_parts, dim=1), (torch.cat(l2_parts, dim=1) if has_l2 else None)

    def _decay_shift(self, wd: float, beta1: float, decoupled: bool, operator: str) -> float:
        """:func:`~catapult.optim.thresholds.weight_decay_shift` of a group of this rule compared with
        ``operator``: ``"hessian"`` for the lr-scaled one (SGD; RAdam before rectification, whose step
        is EMA-momentum SGD), ``"preconditioned"`` (which holds a coupled L2 itself: 0 for Adam's and
        RAdam's). ``decoupled``: the group's ``decoupled_weight_decay`` (RAdam's: ``wd (1 + b1) /
        (1 - b1)`` against either operator; it was taken as coupled, 0 against the pre-conditioned one)."""
        from catapult.optim.thresholds import weight_decay_shift

        if not wd:
            return 0.0
        hp = {"weight_decay": wd, "beta1": beta1, "decoupled_weight_decay": bool(decoupled)}
        return float(weight_decay_shift(self.rule, hp, operator=operator))

    def _rectification(self, row: int, operator: str) -> float:
        """The threshold's RAdam rectification ``r_t`` of member ``row``'s next step (its first group's
        beta2, :func:`~catapult.optim.thresholds.radam_threshold` divides by it), by which a decoupled
        decay's difference is divided on the pre-conditioned operator (the decay is not rectified,
        :func:`catapult.curvature.preconditioner.step_preconditioner`'s ``r_ref``); 1 otherwise."""
        if self.rule != "radam" or operator != "preconditioned":
            return 1.0
        from catapult.optim.thresholds import radam_rectification

        return float(radam_rectification(self.torch_step(self.steps + 1), self.beta2_0[row]))

    def _decay_rows(self, rows: Sequence[int], k: int, like: torch.Tensor,
                    operator: str = "preconditioned") -> torch.Tensor | None:
        """``[len(rows), numel]``: the decay of parameter ``k`` that the threshold's shift (the first
        group's, :attr:`decay0`) leaves out, ``s_k m_k - s_0`` where the step moves it, each shift that of
        ``operator`` (:func:`catapult.curvature.preconditioner.step_preconditioner`'s rows); None where it is 0."""
        extra = []
        for r in rows:
            m = self.values["lr_mult"][k][r] / self.lr_mult0[r]
            b1 = self.values["beta1"][k][r] if "beta1" in self.values else 0.0
            decoupled = bool(self.values["decoupled_weight_decay"][k][r]) if "decoupled_weight_decay" in self.values else False
            shift0 = self._decay_shift(*self.decay0[r], operator)
            own = self._decay_shift(float(self.values["weight_decay"][k][r]), b1, decoupled, operator)
            extra.append((own * m - shift0) / self._rectification(r, operator) if m else 0.0)
        if not any(extra):
            return None
        return (torch.zeros_like(like) + _col(extra, like)).reshape(len(rows), -1)

    def _gi_first_preconditioner(self, g: torch.Tensor, v0: torch.Tensor, hp: dict, k: int) -> torch.Tensor:
        """GI-Adam's ``P`` before its first step from a given ``v_0`` (``rules.preconditioner``'s
        formula at ``t = 0``): ``(1 - b1) (sqrt(v' / c) + eps)``, ``v' = b2 v_0 + (1 - b2) g^2``,
        ``c = 1 - b2`` (1 without ``v_bias_correction``)."""
        def value(key):
            v = hp[key]
            return v[k] if isinstance(v, list) else v

        b1, b2, eps = value("beta1"), value("beta2"), value("eps")
        v_next = b2 * v0 + (1.0 - b2) * g * g
        c = (1.0 - b2) if value("v_bias_correction") else 1.0  # a group key: one value
        return (1.0 - b1) * (torch.sqrt(v_next / c) + eps)

    def lr_scale(self, rows: Sequence[int], params: dict[str, torch.Tensor],
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(d, l2)``, ``d`` flat ``[len(rows), P]``: ``M^1/2`` of members ``rows``, each entry
        ``sqrt(lr_mult / lr_mult_0)`` of its parameter's group, so ``d * H(d * v) + l2 * v`` is the
        operator of :func:`catapult.optim.thresholds.lr_scaled_sharpness` (no pre-conditioner; ``l2``
        the weight decay the threshold's shift leaves out, :meth:`_decay_rows`, None where that is 0)."""
        rows = list(rows)
        parts = []
        for k, name in enumerate(self.names):
            p = params[name]
            ratio = torch.tensor([self.values["lr_mult"][k][r] / self.lr_mult0[r] for r in rows],
                                 dtype=dtype, device=p.device)
            parts.append(ratio.sqrt()[:, None].expand(len(rows), p[0].numel()))
        decays = [self._decay_rows(rows, k, torch.zeros((len(rows), params[name][0].numel()), dtype=dtype,
                                                        device=params[name].device), "hessian")
                  for k, name in enumerate(self.names)]
        if all(x is None for x in decays):
            return torch.cat(parts, dim=1), None
        l2 = [torch.zeros_like(part) if x is None else x for part, x in zip(parts, decays)]
        return torch.cat(parts, dim=1), torch.cat(l2, dim=1)

    # ---- one member as torch state (for rules that run on a member's own optimizer)
    def torch_state(self, row: int, k: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s torch optimizer state of parameter ``k`` (torch's keys)."""
        st = self.state
        if st is None or st.step == 0:
            return {}
        out: dict[str, Any] = {}
        if self.rule == "sgd":
            if st.momentum_buffer is not None and st.momentum_buffer[k] is not None:
                out["momentum_buffer"] = st.momentum_buffer[k][row].clone()
            return out
        # as torch holds it: float32 stops at 2**24 (it read 2**24 + 4 for 2**24 + 3 updates); GI-Adam float64
        out["step"] = torch.tensor(float(self.torch_step(st.step)), dtype=self.count_dtype)
        out["exp_avg"] = st.exp_avg[k][row].clone()
        out["exp_avg_sq"] = st.exp_avg_sq[k][row].clone()
        if st.max_exp_avg_sq is not None:
            out["max_exp_avg_sq"] = st.max_exp_avg_sq[k][row].clone()
        return out

    @torch.no_grad()
    def materialize(self, row: int, params: dict[str, torch.Tensor]) -> None:
        """Make member ``row``'s own model and torch optimizer hold its current stacked
        parameters and state (for code that runs on one member's module, e.g. a search)."""
        opt = self.optimizers[row]
        for k, (name, p) in enumerate(zip(self.names, self.member_params[row])):
            p.copy_(params[name][row])
            opt.state.pop(p, None)
            state = self.torch_state(row, k)
            if state:
                opt.state[p] = state

