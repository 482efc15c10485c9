"""The hand-derived fast path of the ensemble engine: ``N`` MLPs' weights stacked into tensors
``W_l`` of shape ``[N, out, in]``, with the forward pass, the gradient and the Hessian-vector
product derived by hand on the stacked weights (ReLU and identity activations; others through
autograd), in sub-batches of members sized to the core's L2 cache. :class:`MLPStack` holds the
stacked weights and these kernels; :mod:`catapult.sweep.ensemble_run` adds the optimizer update
and the sharpness behind the batched loop's stack interface.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MLPStack", "even_ranges", "LOSSES"]


def _l2_cache_bytes(default: int = 2**20, root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Size of one core's level-2 cache, from Linux's sysfs (``default`` where it is not known)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        for index in sorted(Path(root).glob("index*")):
            if (index / "level").read_text().strip() == "2" and \
                    (index / "type").read_text().strip() in ("Unified", "Data"):
                size = (index / "size").read_text().strip()
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return default


# Bytes of the largest activation of one sub-batch in the hand-derived passes
# (MLPStack.group_size): 3/4 of a core's L2 cache, so the sub-batch's few live activations stay
# close to it. Measured on a 1 MiB-L2 EPYC (bench/RESULTS.md): sub-batches of 1-2 members of
# the width-64 MLP (0.3-0.8 MiB) ran 1.6x faster than 4-5 members (1.5-4 MiB), which fall out
# of L2; within 0.3-0.8 MiB the size made no difference, and larger means fewer ops.
_GROUP_BYTES = 3 * _l2_cache_bytes() // 4
# Layers with fewer outputs run their forward GEMM transposed (see MLPStack.forward).
_NARROW = 32
LOSSES = ("mse", "cross_entropy")




def even_ranges(n: int, size: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``[(start, end)]`` covering ``range(n)`` in ``ceil(n / size)`` ranges of at most ``size``,
    as even as the count allows (10 in ranges of at most 4: 4 + 3 + 3). With ``multiple`` > 1
    (and ``size >= multiple``) ``size`` is first rounded down to a multiple of it and every
    range but the last holds a multiple of it (10 by 4 in multiples of 2: 4 + 4 + 2)."""
    if n == 0:
        return []
    size, multiple = max(1, size), max(1, multiple)
    if size < multiple:
        multiple = 1
    size -= size % multiple
    count = -(-n // size)
    units, rest = divmod(n, multiple)
    base, extra = divmod(units, count)
    sizes = [(base + (i < extra)) * multiple for i in range(count)]
    sizes[-1] += rest
    bounds = np.cumsum([0] + sizes).tolist()
    return list(zip(bounds[:-1], bounds[1:]))



class MLPStack:
    """The stacked state of the members still training (rows in the order of ``members``)."""

    def __init__(self, members: list, models: list[torch.nn.Module], kind: str, loss: str,
                 max_basis: int = 20):
        self.members = members
        self.max_basis = max_basis  # Krylov vectors of the batched Lanczos (eval.sharpness_max_basis)
        self.kind = kind
        self.loss_name = loss
        layers0 = models[0].layers
        self.activation = models[0].activation
        self.relu = type(self.activation) is torch.nn.ReLU
        # ReLU and identity nets get the hand-derived gradient and Hessian-vector product (their
        # activation's second derivative is zero, as autograd treats it); others use autograd
        self.hand = self.relu or type(self.activation) is torch.nn.Identity
        self.group_bytes = _GROUP_BYTES
        # torch's CPU threads: a batched GEMM splits its batch over them, so sub-batches hold a
        # multiple of this many members (3 members on 2 threads ran at ~2/3 of the speed of 2)
        self.threads = torch.get_num_threads()
        self.mults = [(float(l.multiplier), float(l.bias_multiplier)) for l in layers0]
        self.has_bias = layers0[0].bias is not None
        self.params: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []  # one per parameter (None for biases / dense)
        for i, layer in enumerate(layers0):
            self.params.append(torch.stack([m.layers[i].weight.detach() for m in models]).contiguous())
            mask = layer.mask if getattr(layer, "mask", None) is not None else None
            self.masks.append(torch.stack([m.layers[i].mask for m in models]).contiguous() if mask is not None else None)
            if self.has_bias:
                self.params.append(torch.stack([m.layers[i].bias.detach() for m in models]).contiguous())
                self.masks.append(None)
        self.shapes = [p.shape[1:] for p in self.params]
        self.numels = [int(np.prod(s)) for s in self.shapes]
        self.n_params = sum(self.numels)

    # ---- forward / loss
    def forward(self, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                x: torch.Tensor, hidden: list | None = None) -> torch.Tensor:
        """Outputs ``[M, B, C]`` of the stacked MLPs on a shared input ``x`` ``[B, ...]``;
        ``hidden`` (a list), if given, receives every hidden layer's activation ``[M, B, w]``."""
        h = x.flatten(1)
        shared = True
        per_layer = 2 if self.has_bias else 1
        n_layers = len(self.params) // per_layer
        for i in range(n_layers):
            W = params[i * per_layer]
            if masks[i * per_layer] is not None:
                W = W * masks[i * per_layer]
            M, out_f, in_f = W.shape
            # layer 0 reads the shared input (expanded, not copied); bias and multipliers are
            # fused into the batched GEMM: out = bias_scale * b + scale * h W^T
            hb = h.expand(M, *h.shape) if shared else h
            shared = False
            scale, bias_scale = self.mults[i]
            b = params[i * per_layer + 1] if self.has_bias else None
            if out_f < _NARROW:
                # a narrow layer (the readout) as (W h^T)^T: the [B, in] x [in, out] batched GEMM
                # with a small ``out`` runs at ~1/5 of the matmul peak on the CPU, this ~3x faster
                # (made contiguous again: cheap at this width, and argmax/softmax need it)
                if b is None:
                    out = torch.bmm(W, hb.transpose(1, 2)).transpose(1, 2).contiguous()
                    if scale != 1.0:
                        out = out * scale
                else:
                    out = torch.baddbmm(b[:, :, None], W, hb.transpose(1, 2), beta=bias_scale,
                                        alpha=scale).transpose(1, 2).contiguous()
            elif b is None:
                out = torch.bmm(hb, W.transpose(1, 2))
                if scale != 1.0:
                    out = out * scale
            else:
                out = torch.baddbmm(b[:, None, :], hb, W.transpose(1, 2), beta=bias_scale, alpha=scale)
            if i == n_layers - 1:
                h = out
            elif self.relu:
                h = torch.relu_(out)  # the GEMM's output is not saved for backward: in place is safe
            else:
                h = self.activation(out)
            if hidden is not None and i < n_layers - 1:
                hidden.append(h)
        return h

    @staticmethod
    def mse_target(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
        """The MSE target ``[B, C]`` of labels (one-hot) or targets ``y``."""
        if y.is_floating_point() or y.is_complex():
            return y.to(dtype)
        return F.one_hot(y.long(), n_classes).to(dtype)

    def losses(self, out: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-member loss ``[M]`` (the formulas of :mod:`catapult.losses`); ``target``: the
        :meth:`mse_target` of ``y``, if the caller has it."""
        M, B, C = out.shape
        labels = not (y.is_floating_point() or y.is_complex())
        if self.loss_name == "mse":
            target = self.mse_target(y, C, out.dtype) if target is None else target
            return 0.5 * (out - target).pow(2).mean(dim=(1, 2))
        flat = out.reshape(M * B, C)
        if labels:
            per = F.cross_entropy(flat, y.reshape(-1).long().repeat(M), reduction="none")
        else:
            per = F.cross_entropy(flat, y.reshape(-1, C).to(out.dtype).repeat(M, 1), reduction="none")
        return per.view(M, B).mean(dim=1)

    @staticmethod
    def accuracies(out: torch.Tensor, y: torch.Tensor) -> list[float]:
        if out.shape[1] == 0:
            return [float("nan")] * out.shape[0]
        # max(...).indices is argmax (the first maximal index; nan counts as maximal), ~4x faster
        # than argmax over a last dimension of ~10 classes on the CPU
        predicted = out.max(dim=-1).indices
        labels = y if not (y.is_floating_point() or y.is_complex()) else y.max(dim=-1).indices
        return (predicted == labels.reshape(1, -1)).double().mean(dim=1).tolist()

    def flat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(flat, self.numels, dim=1)
        return [p.reshape((flat.shape[0],) + tuple(s)) for p, s in zip(parts, self.shapes)]

    # ---- hand-derived gradient and Hessian-vector product (ReLU / identity MLPs)
    def group_size(self, n_batch: int) -> int:
        """Members per sub-batch of the hand-derived passes. On the CPU the largest activation of
        a sub-batch (``[S, n_batch, max width]``) stays within ``group_bytes``, so the working
        set stays in cache and large temporaries are not mapped and faulted in afresh at every
        op (at N = 128, full batch, that costs more than the GEMMs). On an accelerator all
        members form one sub-batch: there the cost is the number of kernel launches."""
        if self.params[0].device.type != "cpu":
            return max(1, self.params[0].shape[0])
        width = max(s[0] for s in self.shapes[:: 2 if self.has_bias else 1])
        per = max(1, n_batch * width * self.params[0].element_size())
        return max(1, int(self.group_bytes // per))

    def sub_batches(self, n_members: int, n_batch: int) -> list[tuple[int, int]]:
        """``[(start, end)]`` member ranges of the hand-derived passes: at most
        :meth:`group_size` members each, in as even ranges as the count allows, each a
        multiple of the CPU thread count where the size allows (see :func:`even_ranges`)."""
        cpu = self.params[0].device.type == "cpu"
        return even_ranges(n_members, self.group_size(n_batch), self.threads if cpu else 1)

    def _layers(self, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None]):
        """``[(W_hat, b)]`` per layer: masked weights and biases (``None`` without bias)."""
        per_layer = 2 if self.has_bias else 1
        layers = []
        for i in range(len(params) // per_layer):
            W, mask = params[i * per_layer], masks[i * per_layer]
            layers.append((W * mask if mask is not None else W, params[i * per_layer + 1] if self.has_bias else None))
        return layers

    def _act_grad(self, grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``act'(z) * grad`` from the activation's output ``h`` (ReLU: ``h > 0``, as autograd),
        in place: ``grad`` is a temporary of the caller."""
        if not self.relu:
            return grad
        return torch.ops.aten.threshold_backward.grad_input(grad, h, 0, grad_input=grad)

    def dloss(self, out: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """``(dL_m/dout, curvature)``: the per-member loss gradient ``[M, B, C]`` and what
        :meth:`dloss_hvp` needs for the output Hessian (``None`` for MSE; softmax and the
        target mass for cross-entropy). ``target``: as in :meth:`losses`."""
        M, B, C = out.shape
        labels = not (y.is_floating_point() or y.is_complex())
        if self.loss_name == "mse":
            target = self.mse_target(y, C, out.dtype) if target is None else target
            return (out - target) * (1.0 / (B * C)), None
        p = torch.softmax(out, dim=-1)
        if labels:
            g = p.clone()
            g.view(M * B, C)[torch.arange(M * B, device=out.device), y.reshape(-1).long().repeat(M)] -= 1.0
            mass = None
        else:
            target = y.reshape(B, C).to(out.dtype)
            mass = target.sum(dim=-1, keepdim=True)
            g = p * mass - target
        return g * (1.0 / B), (p, mass)

    def dloss_hvp(self, R: torch.Tensor, curvature: Any) -> torch.Tensor:
        """The output Hessian of the per-member loss applied to ``R`` ``[M, B, C]``."""
        M, B, C = R.shape
        if curvature is None:
            return R * (1.0 / (B * C))
        p, mass = curvature
        out = p * (R - (p * R).sum(dim=-1, keepdim=True))
        if mass is not None:
            out = out * mass
        return out * (1.0 / B)

    def _layer_grads(self, i: int, gW: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
        """Layer ``i``'s parameter gradients ``[gb, gW]`` (``[gW]`` without bias) from the raw
        weight product ``gW = g^T h_{i-1}`` and the output delta ``g``: both carry the layer's
        multipliers (``out = c b + a h W^T``), in place on ``gW``."""
        scale, bias_scale = self.mults[i]
        if scale != 1.0:
            gW.mul_(scale)
        if not self.has_bias:
            return [gW]
        gb = g.sum(dim=1)
        if bias_scale != 1.0:
            gb.mul_(bias_scale)
        return [gb, gW]

    def _backprop(self, g: torch.Tensor, weights: Sequence[torch.Tensor],
                  hidden: list) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields ``(i, g_i)``, the delta ``dL/dz_i`` of every layer of one sub-batch (masked
        ``weights`` ``W_i``) from the last (``g``, the output gradient) to the first:
        ``g_{i-1} = act'(z_{i-1}) * a_i g_i W_i``, computed once the caller has used ``g_i``
        (so it is still in cache)."""
        for i in reversed(range(len(weights))):
            yield i, g
            if i > 0:
                dh = torch.bmm(g, weights[i])
                scale = self.mults[i][0]
                if scale != 1.0:
                    dh.mul_(scale)
                g = self._act_grad(dh, hidden[i - 1])

    def _backward(self, g: torch.Tensor, weights: Sequence[torch.Tensor], hidden: list,
                  x: torch.Tensor) -> list[torch.Tensor]:
        """The parameter gradients of one sub-batch (each ``[S, ...]``, in the order of
        ``params``) from its output gradient ``g``."""
        grads = []
        for i, g_i in self._backprop(g, weights, hidden):
            prev = x.expand(g.shape[0], *x.shape) if i == 0 else hidden[i - 1]
            grads += self._layer_grads(i, torch.bmm(g_i.transpose(1, 2), prev), g_i)
        return grads[::-1]

    def hand_loss_grads(self, x: torch.Tensor, y: torch.Tensor, need_grads: bool,
                        update: Callable[[list, int, int], None] | None = None):
        """``(losses [M], accuracies, grads)`` of all members on ``(x, y)`` by the hand-derived
        backward pass, sub-batch by sub-batch (:meth:`group_size`); ``grads`` (as
        ``torch.autograd.grad`` of ``sum_m L_m``, masks applied) is ``None`` unless
        ``need_grads``.

        With ``update`` each sub-batch's gradients go to ``update(grads, start, end)`` (an
        optimizer step of members ``start:end``) as soon as they are computed, while they are
        in cache, and are not returned (``grads`` is ``None``): the same arithmetic as an
        update after this call, for steps where nothing else needs the parameters before it."""
        M = len(self.members)
        xf = x.flatten(1)
        fused = update is not None
        n_classes = self.params[-2 if self.has_bias else -1].shape[1]
        target = self.mse_target(y, n_classes, self.params[0].dtype) if self.loss_name == "mse" else None
        grads = [torch.empty_like(p) for p in self.params] if need_grads and not fused else None

        def one(s: int, e: int):
            params = [p[s:e] for p in self.params]
            masks = [m[s:e] if m is not None else None for m in self.masks]
            hidden: list = []
            out = self.forward(params, masks, xf, hidden)
            if need_grads or fused:
                weights = [W for W, _ in self._layers(params, masks)]
                parts = self._backward(self.dloss(out, y, target)[0], weights, hidden, xf)
                parts = [part * masks[k] if masks[k] is not None else part for k, part in enumerate(parts)]
                if fused:
                    update(parts, s, e)
                else:
                    for k, part in enumerate(parts):
                        grads[k][s:e] = part
            return self.losses(out, y, target), self.accuracies(out, y)

        done = [one(s, e) for s, e in self.sub_batches(M, xf.shape[0])]
        return torch.cat([loss for loss, _ in done]), [a for _, accs in done for a in accs], grads

    def hvp_state(self, rows: list[int], x: torch.Tensor, y: torch.Tensor) -> dict:
        """What :meth:`hvp` needs at the current parameters of members ``rows`` on ``(x, y)``:
        masked weights, hidden activations, backprop deltas and the output curvature. The
        activations, deltas and curvature are built sub-batch by sub-batch (see
        :meth:`group_size`) and kept per sub-batch (``parts``, with ``locate[position] =
        (part, offset)``): joining them into full-size tensors cost ~10% of a sharpness cell."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        params = [p[idx] for p in self.params]
        masks = [m[idx] if m is not None else None for m in self.masks]
        layers = self._layers(params, masks)
        xf = x.flatten(1)

        def one(s: int, e: int):
            hidden: list = []
            out = self.forward([p[s:e] for p in params], [m[s:e] if m is not None else None for m in masks],
                               xf, hidden)
            g, curvature = self.dloss(out, y)
            deltas = [g_i for _, g_i in self._backprop(g, [W[s:e] for W, _ in layers], hidden)][::-1]
            return hidden, deltas, curvature

        spans = self.sub_batches(len(rows), xf.shape[0])
        parts = [one(s, e) for s, e in spans]
        locate = [(k, r - s) for k, (s, e) in enumerate(spans) for r in range(s, e)]
        return dict(W=[W for W, _ in layers], masks=masks, parts=parts, locate=locate, x=xf)

    def hvp(self, state: dict, V: torch.Tensor, where: Sequence[int] | None = None) -> torch.Tensor:
        """Hessian-vector products ``H_m v_m`` (``[A, P]``) of the members of ``state`` at
        positions ``where`` (all, in order, by default; row ``a`` of ``V`` is member
        ``where[a]``): the R-operator of the forward and backward pass, sub-batch by sub-batch,
        equal to the double backprop of ``sum_m L_m`` to rounding. A sub-batch reads its
        members' state as a view where they are adjacent and gathers only its own slice
        otherwise, so members dropping out of a Lanczos run cost no copy of the whole state."""
        x = state["x"]
        per_layer = 2 if self.has_bias else 1
        n_layers = len(state["W"])
        out = V.new_empty(V.shape)
        positions = list(range(V.shape[0])) if where is None else [int(w) for w in where]
        if len(positions) != V.shape[0]:
            raise ValueError(f"hvp: {V.shape[0]} vectors for {len(positions)} members")

        def one(s: int, e: int) -> None:
            pos = positions[s:e]
            if pos[-1] - pos[0] == e - s - 1 and pos == sorted(pos):
                rows = slice(pos[0], pos[-1] + 1)
            else:
                rows = torch.as_tensor(pos, dtype=torch.long, device=x.device)
            pick = (lambda t: t[rows] if t is not None else None)
            # runs of members adjacent within one state part: one view each, joined if several
            runs: list[list[int]] = []
            for r in pos:
                k, off = state["locate"][r]
                if runs and runs[-1][0] == k and runs[-1][2] == off:
                    runs[-1][2] += 1
                else:
                    runs.append([k, off, off + 1])

            def part(field: int, i: int | None = None) -> torch.Tensor:
                pieces = [(state["parts"][k][field] if i is None else state["parts"][k][field][i])[a:b]
                          for k, a, b in runs]
                return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

            vs = self.split(V[s:e])
            VW, Vb = [], []
            for i in range(n_layers):
                v, mask = vs[i * per_layer], pick(state["masks"][i * per_layer])
                VW.append(v * mask if mask is not None else v)
                Vb.append(vs[i * per_layer + 1] if self.has_bias else None)
            W = [pick(w) for w in state["W"]]
            hidden = [part(0, i) for i in range(n_layers - 1)]
            deltas = [part(1, i) for i in range(n_layers)]
            n = e - s
            xb = x.expand(n, *x.shape)
            # R-forward: Rz_i = a_i (h_{i-1} VW_i^T + Rh_{i-1} W_i^T) + c_i Vb_i
            Rh: list = []
            R = None
            for i in range(n_layers):
                scale, bias_scale = self.mults[i]
                prev = xb if i == 0 else hidden[i - 1]
                if W[i].shape[1] < _NARROW:  # transposed, as in forward
                    Rz = torch.bmm(VW[i], prev.transpose(1, 2))
                    if i > 0:
                        Rz.baddbmm_(W[i], Rh[-1].transpose(1, 2))
                    Rz = Rz.transpose(1, 2)
                else:
                    Rz = torch.bmm(prev, VW[i].transpose(1, 2))
                    if i > 0:
                        Rz.baddbmm_(Rh[-1], W[i].transpose(1, 2))
                if scale != 1.0:
                    Rz.mul_(scale)
                if Vb[i] is not None:
                    Rz.add_(Vb[i][:, None, :], alpha=bias_scale)
                if i < n_layers - 1:
                    Rh.append(self._act_grad(Rz, hidden[i]))
                else:
                    R = Rz
            curvature = state["parts"][0][2]
            if curvature is not None:  # (softmax, target mass): the mass is shared
                curvature = (part(2, 0), curvature[1])
            Rg = self.dloss_hvp(R, curvature)
            # R-backward: R(dW_i) = a_i (Rg_i^T h_{i-1} + g_i^T Rh_{i-1}), R(db_i) = c_i sum Rg_i,
            # R(dh_{i-1}) = a_i (Rg_i W_i + g_i VW_i), Rg_{i-1} = act'(z_{i-1}) R(dh_{i-1})
            parts = []
            for i in reversed(range(n_layers)):
                scale = self.mults[i][0]
                prev = xb if i == 0 else hidden[i - 1]
                g = deltas[i]
                RW = torch.bmm(Rg.transpose(1, 2), prev)
                if i > 0:
                    RW.baddbmm_(g.transpose(1, 2), Rh[i - 1])
                mask = state["masks"][i * per_layer]
                if mask is not None:
                    RW.mul_(pick(mask))
                parts += self._layer_grads(i, RW, Rg)
                if i > 0:
                    Rdh = torch.bmm(Rg, W[i])
                    Rdh.baddbmm_(g, VW[i])
                    if scale != 1.0:
                        Rdh.mul_(scale)
                    Rg = self._act_grad(Rdh, hidden[i - 1])
            torch.cat([t.reshape(n, -1) for t in reversed(parts)], dim=1, out=out[s:e])

        for s, e in self.sub_batches(V.shape[0], x.shape[0]):
            one(s, e)
        return out

    # ---- compaction
    def keep(self, rows: list[int]) -> None:
        """Keep only members ``rows`` (positions), in that order."""
        if len(rows) == len(self.members):
            return
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.members = [self.members[r] for r in rows]
        self.params = [p[idx].contiguous() for p in self.params]
        self.masks = [m[idx].contiguous() if m is not None else None for m in self.masks]

