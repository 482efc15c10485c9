"""A lone member of a convolutional model rounds as in a chunk of more (the torch.func engine,
:attr:`catapult.sweep.batched_model.StackedModel.pad_lone`).

Under ``vmap`` one member's convolution runs on the member's own memory layout, two or more
members' as one grouped convolution on a contiguous copy, which rounds otherwise; a resumed
ensemble sweep's last cell, a chunk's survivor and a Lanczos member left iterating ran alone.
Independent truth: the same cells trained or measured together with others, bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from catapult import config as cfg
from catapult.losses import get_loss
from catapult.sweep.batched_model import StackedModel
from catapult.sweep.ensemble import EnsembleExecutor
from catapult.sweep.executors import Cell

pytestmark = pytest.mark.usefixtures("single_thread")

WRN = {"data": {"name": "digits", "n_train": 32, "n_test": 16},
       "model": {"name": "wrn", "depth": 10, "widen": 1, "init": "trunc_normal"},
       "loss": "cross_entropy", "train": {"steps": 2, "batch_size": 16},
       "eval": {"sharpness_every": 2, "test_every": 2, "sharpness_max_iter": 3, "lambda0_batches": 1}}


def _wrn_cells(lrs):
    return [Cell(i, cfg.validate({**WRN, "name": f"c{i}", "optimizer": {"name": "adam", "lr": lr}}))
            for i, lr in enumerate(lrs)]


def _same(a, b):
    assert a.status == b.status
    assert a.metrics == b.metrics   # every row, bit for bit
    timeless = lambda s: {k: v for k, v in s.items() if "time" not in k and "per_second" not in k}
    assert timeless(a.summary) == timeless(b.summary)


def test_a_resumed_wrn_sweeps_last_cell_gets_the_bits_it_got_in_the_whole_sweep():
    # before: the cell alone (what a resume runs) differed from step 0 on (~2e-7 relative)
    cells = _wrn_cells([0.001, 0.004])
    whole = dict(EnsembleExecutor(kernels=False, threads=1).run(cells))
    resumed = dict(EnsembleExecutor(kernels=False, threads=1).run(cells[1:]))
    _same(whole[1], resumed[1])


@pytest.fixture(scope="module")
def three_wrns():
    from catapult.models.wrn import WRN

    torch.manual_seed(0)
    stacked = StackedModel([WRN(1, 10, depth=10, widen=1, init="trunc_normal") for _ in range(3)],
                           get_loss("cross_entropy"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    V = torch.randn(3, stacked.numel, generator=g)
    return stacked, x, y, V


@pytest.mark.parametrize("hvp", ["double_backprop", "forward_over_reverse"])
def test_a_wrn_members_hessian_products_do_not_depend_on_who_else_is_asked(three_wrns, hvp):
    # before: a member measured alone, or left alone in the product (the others' Lanczos
    # stopped: the gradient graph was rebuilt for it), got other bits than beside the others
    stacked, x, y, V = three_wrns
    together = stacked.hessian([0, 1, 2], x, y, hvp=hvp)
    products = together.matvec([0, 1, 2], V)
    left_iterating = together.matvec([2], V[2:])
    alone = stacked.hessian([2], x, y, hvp=hvp)
    assert torch.equal(left_iterating[0], products[2])
    assert torch.equal(alone.matvec([0], V[2:])[0], products[2])
    assert torch.equal(alone.gradient[0], together.gradient[2])
    if hvp == "double_backprop":  # micro-batched gradients too (forward-over-reverse's always are)
        assert torch.equal(stacked.hessian([2], x, y, hvp=hvp, chunk_size=2).gradient[0],
                           stacked.hessian([0, 1, 2], x, y, hvp=hvp, chunk_size=2).gradient[2])


def test_a_lone_wrn_members_loss_gradient_test_numbers_and_outputs_are_the_chunks(three_wrns):
    stacked, x, y, _ = three_wrns
    losses, accs, grads = stacked.loss_and_grads(x, y, True)
    outs = stacked.outputs([0, 1, 2], x, y)
    tests = stacked.evaluate([0, 1, 2], x, y)
    lone = StackedModel([stacked.module], stacked.loss_fn)
    lone.params = {n: p[2:].clone() for n, p in stacked.params.items()}
    lone.buffers = {n: b[2:].clone() for n, b in stacked.buffers.items()}
    l1, a1, g1 = lone.loss_and_grads(x, y, True)
    assert torch.equal(l1[0], losses[2]) and a1 == accs[2:]
    assert all(torch.equal(g1[n][0], grads[n][2]) for n in grads)
    assert torch.equal(lone.outputs([0], x, y)[0], outs[2])
    assert lone.evaluate([0], x, y) == tests[2:]
    assert stacked.evaluate([2], x, y) == tests[2:]     # the last of a pass's member groups
    assert stacked.pad_lone


def test_only_convolutional_models_pad_a_lone_member():
    from catapult.models.mlp import MLP

    mse = get_loss("mse")
    assert not StackedModel([MLP(4, 3, width=8, depth=2)], mse).pad_lone
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    assert StackedModel([conv], mse).pad_lone
    assert not StackedModel([conv], mse, pad_lone=False).pad_lone


def test_the_executor_pads_only_where_a_chunk_may_hold_two_members(monkeypatch):
    # a copy beside a lone member costs a member's memory: not where the budget, or
    # max_members, holds one member per chunk (there every member runs alone, alike)
    from catapult.sweep import batched, ensemble

    asked = []
    monkeypatch.setattr(batched, "run_group", lambda chunk, data=None, pad_lone=True: asked.append(pad_lone) or iter(()))
    cells = [Cell(0, cfg.validate({"data": {"name": "digits", "n_train": 16, "n_test": 8},
                                   "model": {"name": "mlp", "width": 4, "depth": 2}}))]
    for executor in (EnsembleExecutor(kernels=False), EnsembleExecutor(kernels=False, max_members=1),
                     EnsembleExecutor(kernels=False, max_members=2)):
        list(executor.run(cells))
    monkeypatch.setattr(ensemble, "memory_budget", lambda device, fraction: 1)
    list(EnsembleExecutor(kernels=False).run(cells))
    assert asked == [True, False, True, False]


def test_a_lone_batchnorm_members_running_statistics_come_back_from_the_copy(monkeypatch):
    # the copy trains on copies of the member's buffers: BatchNorm's running statistics (read by
    # the test pass in eval mode) are written back to the member, so the test loss is local's
    from catapult import engine
    from catapult.sweep.batched import run_group

    class ConvBN(torch.nn.Module):
        def __init__(self, out_features):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4 * 4 * 4, out_features)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x.reshape(-1, 1, 8, 8))))
            return self.head(torch.nn.functional.avg_pool2d(h, 2).flatten(1))

    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: ConvBN(n_out))
    cell = Cell(0, cfg.validate({"data": {"name": "digits", "n_train": 32, "n_test": 16}, "dtype": "float64",
                                 "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"steps": 3, "batch_size": 16},
                                 "eval": {"sharpness_every": 0, "test_every": 3}}))
    alone = dict(run_group([cell]))[0]
    local = engine.run(cell.config, progress="none")
    assert alone.metrics[-1]["test_loss"] == pytest.approx(local.metrics[-1]["test_loss"], rel=1e-9)


class _FunctionalConv(torch.nn.Module):
    """A user's model with no ``torch.nn`` conv layer: ``F.conv2d`` on its own weights, a
    LayerNorm over channels between (the channels-last strides of the WRN's)."""

    def __init__(self, out_features):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(4, 1, 3, 3) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(4, 4, 3, 3) / 6)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4 * 8 * 8, out_features)

    def forward(self, x):
        h = torch.nn.functional.conv2d(x.reshape(-1, 1, 8, 8), self.w1, padding=1)
        h = self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = torch.nn.functional.conv2d(torch.relu(h), self.w2, padding=1)
        return self.head(h.flatten(1))


def test_a_model_calling_functional_conv_is_padded_and_its_cells_bits_do_not_depend_on_the_chunk(monkeypatch):
    # before: only torch.nn conv layers were looked for; this model's lone cell (a resumed
    # sweep's last) rounded otherwise than in the whole sweep (gradients from step 0)
    from catapult import engine

    monkeypatch.setitem(engine.MODELS, "mlp", lambda model, n_in, n_out: _FunctionalConv(n_out))
    cells = [Cell(i, cfg.validate({"name": f"c{i}", "data": {"name": "digits", "n_train": 32, "n_test": 16},
                                   "optimizer": {"name": "adam", "lr": lr}, "train": {"steps": 3, "batch_size": 16},
                                   "eval": {"sharpness_every": 3, "test_every": 3, "sharpness_max_iter": 3}}))
             for i, lr in enumerate([0.001, 0.004])]
    whole = dict(EnsembleExecutor(kernels=False, threads=1).run(cells))
    resumed = dict(EnsembleExecutor(kernels=False, threads=1).run(cells[1:]))
    _same(whole[1], resumed[1])


def test_the_probe_finds_functional_convolutions_once_and_leaves_other_models_and_the_generators_alone():
    from catapult.models.mlp import MLP

    mse = get_loss("mse")
    x, y = torch.randn(4, 64), torch.randn(4, 10)
    functional = StackedModel([_FunctionalConv(10)], mse)
    mlp = StackedModel([MLP(64, 10, width=8, depth=2)], mse)
    state = torch.get_rng_state()
    for stacked in (functional, mlp):
        stacked.loss_and_grads(x, y, False)
    assert functional.pad_lone and not mlp.pad_lone
    assert torch.equal(torch.get_rng_state(), state)

    class Transposed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1, 2, 3, 3))

        def forward(self, x):
            return torch.nn.functional.conv_transpose2d(x.reshape(-1, 1, 8, 8), self.w).flatten(1)

    stacked = StackedModel([Transposed()], mse)
    stacked.evaluate([0], x, torch.randn(4, 200))   # the test pass probes too
    assert stacked.pad_lone
    assert not StackedModel([_FunctionalConv(10)], mse, pad_lone=False).pad_lone
