"""Mutation pass 11 on ``BatchStream`` and ``catapult.lazy``: a stream asked first for a step
epochs ahead gives that epoch's own permutation (each skipped epoch still draws its own), and a
lazy package's ``dir()`` lists its module attributes as well as its lazy names. Truth: the
documented batch order (epoch ``e``'s ``randperm`` is the generator's ``e``-th) and ``vars()``."""
from __future__ import annotations

import torch

import catapult
from catapult.engine import BatchStream


def test_a_step_epochs_ahead_is_the_slice_of_that_epochs_own_permutation():
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    g = torch.Generator().manual_seed(5)
    perms = [torch.randperm(20, generator=g) for _ in range(4)]
    stream = BatchStream(x, y, batch_size=6, seed=5)  # 3 batches an epoch
    for t in (7, 8, 10):  # epoch 2 first, then epoch 3: the draws of epochs 0 and 1 are skipped, not lost
        _, yb = stream.batch(t)
        assert torch.equal(yb, perms[t // 3][(t % 3) * 6:(t % 3 + 1) * 6]), t


def test_dir_of_a_lazy_package_lists_its_attributes_and_its_lazy_names():
    names = dir(catapult)
    assert {"__name__", "__doc__", "__path__"} <= set(names)
    assert set(vars(catapult)) <= set(names) and set(catapult.__all__) <= set(names)


def test_an_optimum_without_a_grid_label_is_written_as_its_shortest_exact_text():
    """Curves built without the grid's labels: ``%g`` where it reads back to the same float, else
    ``repr`` (1/3 as 0.333333 selected no cell of ``--where``), with ``/λ0`` for relative lrs."""
    from catapult.plots.transfer import TransferCurves, _x_text

    def curves(relative):
        return TransferCurves("test_loss", "optimizer.lr", None, None, {}, x_relative=relative)

    assert _x_text(curves(False), 0.03125) == "0.03125"
    assert _x_text(curves(False), 1 / 3) == "0.3333333333333333" and float(_x_text(curves(False), 1 / 3)) == 1 / 3
    assert _x_text(curves(True), 2.0 ** -5) == "0.03125/λ0"
    assert _x_text(curves(True), 0.1 + 0.2) == "0.30000000000000004/λ0"
