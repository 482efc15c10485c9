"""The members' optimizers as one update on stacked parameters.

Each member's own torch optimizer (built by :func:`catapult.train.build_optimizer` on its own
model) is read once for its hyper-parameters, parameter by parameter (its param group's
``lr_mult``, ``weight_decay``, ``momentum``, ``betas``, ``eps``, ...), and they become columns
``[N, 1, ...]`` that broadcast over the stacked parameter ``[N, *shape]``. The state uses
torch's keys (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``) with a leading member dim; all
members step together, so the step count ``t`` is one integer.

Update ``t`` (``lr`` = the member's ``lr_t * lr_mult`` of the parameter's group; torch's
single-tensor formulas):

* SGD: ``d = g + wd p``; ``buf = d`` (first step) else ``b buf + (1 - dampening) d``;
  ``d = d + b buf`` (nesterov) or ``buf``; ``p -= lr d``.
* Adam (coupled L2 ``g += wd p``) / AdamW (``p *= 1 - lr wd``): ``m = lerp(m, g, 1 - b1)``,
  ``v = b2 v + (1 - b2) g^2``; ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

The pre-conditioner for the pre-conditioned sharpness is that of
:func:`catapult.curvature.preconditioned_sharpness` with ``scale_by_group_lr=True``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["StackedOptimizer", "SUPPORTED"]

#: optimizer.name values this module updates
SUPPORTED = ("sgd", "adam", "adamw")


def _col(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-member scalars (Python floats) as ``[M, 1, ...]`` broadcasting over ``like``."""
    shape = (len(values),) + (1,) * (like.dim() - 1)
    return torch.tensor([float(v) for v in values], device=like.device, dtype=like.dtype).view(shape)


class StackedOptimizer:
    """The update of ``name`` for stacked parameters ``params`` (name -> ``[N, *shape]``).

    ``optimizers[i]`` / ``models[i]``: member ``i``'s torch optimizer over its own model, read
    once for per-parameter hyper-parameters (matched by identity, in ``names`` order).
    """

    def __init__(self, name: str, optimizers: Sequence[torch.optim.Optimizer],
                 models: Sequence[torch.nn.Module], names: Sequence[str]):
        if name not in SUPPORTED:
            raise ValueError(f"the batched engine updates {SUPPORTED}, not {name!r}")
        self.name = name
        self.names = list(names)
        # hp[k][key] = [value per member] for parameter names[k]
        self.hp: list[dict[str, list[float]]] = []
        for k, pname in enumerate(self.names):
            entry: dict[str, list[float]] = {}
            for opt, model in zip(optimizers, models):
                p = dict(model.named_parameters())[pname]
                group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
                values = {"lr_mult": float(group.get("lr_mult", 1.0)),
                          "weight_decay": float(group.get("weight_decay", 0.0))}
                if name == "sgd":
                    if group.get("maximize"):
                        raise ValueError("the batched engine reproduces SGD without maximize")
                    values.update(momentum=float(group.get("momentum", 0.0)),
                                  dampening=float(group.get("dampening", 0.0)),
                                  nesterov=float(bool(group.get("nesterov", False))))
                else:
                    if group.get("amsgrad") or group.get("maximize"):
                        raise ValueError("the batched engine reproduces Adam without amsgrad/maximize")
                    values.update(beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                                  eps=float(group["eps"]))
                for key, value in values.items():
                    entry.setdefault(key, []).append(value)
            self.hp.append(entry)
        self.lr_mult0 = [float(opt.param_groups[0].get("lr_mult", 1.0)) for opt in optimizers]
        self.state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.names}
        self.steps = 0  # updates taken (every member the same)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep the members ``rows`` (indices of the current rows, in that order)."""
        rows = list(rows)
        self.hp = [{key: [vals[r] for r in rows] for key, vals in entry.items()} for entry in self.hp]
        self.lr_mult0 = [self.lr_mult0[r] for r in rows]
        for st in self.state.values():
            for key, t in st.items():
                st[key] = t.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=t.device))

    # ---- update
    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             lrs: Sequence[float]) -> None:
        """One update of every member, in place; ``lrs``: the members' base lr ``lr_t``."""
        self.steps += 1
        t = self.steps
        for k, name in enumerate(self.names):
            p, g, hp, st = params[name], grads[name], self.hp[k], self.state[name]
            lr = _col([a * m for a, m in zip(lrs, hp["lr_mult"])], p)
            wd = _col(hp["weight_decay"], p)
            if self.name == "sgd":
                d = g + wd * p
                mom = _col(hp["momentum"], p)
                if any(hp["momentum"]):
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d.clone()
                    else:
                        st["momentum_buffer"] = st["momentum_buffer"] * mom + \
                            d * _col([1 - x for x in hp["dampening"]], p)
                    buf = st["momentum_buffer"]
                    nest = _col(hp["nesterov"], p)
                    d = torch.where(nest > 0, d + mom * buf, buf)
                    d = torch.where(mom != 0, d, g + wd * p)
                p.sub_(lr * d)
                continue
            b1, b2 = hp["beta1"], hp["beta2"]
            if self.name == "adamw":
                p.mul_(1 - lr * wd)
            else:
                g = g + wd * p
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(g, _col([1 - b for b in b1], p))
            v.mul_(_col(b2, p)).addcmul_(g, g * _col([1 - b for b in b2], p))
            step_size = _col([a * mu / (1 - b ** t) for a, mu, b in zip(lrs, hp["lr_mult"], b1)], p)
            denom = (v.sqrt() / _col([math.sqrt(1 - b ** t) for b in b2], p)).add_(_col(hp["eps"], p))
            p.sub_(step_size * m / denom)

    # ---- pre-conditioner of the next step
    @torch.no_grad()
    def preconditioner(self, rows: Sequence[int], params: dict[str, torch.Tensor],
                       grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(d, l2)``, flat ``[len(rows), P]``: ``d = P^-1/2`` of the members' next step and the
        coupled-L2 term ``wd P^-1`` (``None`` without one), as
        :func:`catapult.curvature.preconditioned_sharpness` builds them (``scale_by_group_lr``):

            v' = b2 v + (1 - b2) g^2     (g += wd p for Adam's coupled L2; v = 0 before step 1)
            P  = (1 - b1^(t+1)) (sqrt(v' / (1 - b2^(t+1))) + eps),  P^-1 scaled by lr_mult / lr_mult_0
        """
        if self.name == "sgd":
            raise ValueError("the pre-conditioned sharpness is defined for Adam-family optimizers")
        rows = list(rows)
        t = self.steps
        d_parts, l2_parts, has_l2 = [], [], False
        for k, name in enumerate(self.names):
            g = grads[k]
            hp = {key: [vals[r] for r in rows] for key, vals in self.hp[k].items()}
            idx = torch.as_tensor(rows, dtype=torch.long, device=g.device)
            p = params[name].index_select(0, idx).to(g.dtype)
            wd = _col(hp["weight_decay"], g)
            coupled = self.name == "adam" and any(hp["weight_decay"])
            if coupled:
                g = g + wd * p
                has_l2 = True
            b2 = _col(hp["beta2"], g)
            if "exp_avg_sq" in self.state[name]:
                v = self.state[name]["exp_avg_sq"].index_select(0, idx).to(g.dtype)
                v_next = b2 * v + (1 - b2) * g * g
            else:
                v_next = (1 - b2) * g * g
            vc = _col([1 - b ** (t + 1) for b in hp["beta2"]], g)
            bc1 = _col([1 - b ** (t + 1) for b in hp["beta1"]], g)
            P = bc1 * (torch.sqrt(v_next / vc) + _col(hp["eps"], g))
            inv = (1.0 / P) * _col([m / self.lr_mult0[r] for m, r in zip(hp["lr_mult"], rows)], g)
            d_parts.append(torch.sqrt(inv).reshape(len(rows), -1))
            l2_parts.append((inv * wd).reshape(len(rows), -1) if coupled else torch.zeros_like(g).reshape(len(rows), -1))
        return torch.cat(d_parts, dim=1), (torch.cat(l2_parts, dim=1) if has_l2 else None)
