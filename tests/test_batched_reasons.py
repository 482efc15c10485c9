"""Which validated configs the batched engine takes (mutation pass 23): a persistent warmup and a
static mask are its own; a mask that changes (rigl) is sent to the local engine, named."""
from __future__ import annotations

from catapult import config as cfg
from catapult.sweep.batched import batched_unsupported_reason

_BASE = {"data": {"name": "digits"}, "model": {"name": "mlp", "width": 8, "depth": 3},
         "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"steps": 20}}


def test_a_persistent_warmup_and_a_static_mask_are_batched():
    assert batched_unsupported_reason(cfg.validate({**_BASE, "schedule": {"warmup": "persistent"}})) is None
    static = {**_BASE, "model": {**_BASE["model"], "density": 0.5}}
    assert batched_unsupported_reason(cfg.validate(static)) is None


def test_a_changing_mask_is_sent_to_the_local_engine_by_name():
    rigl = {**_BASE, "model": {**_BASE["model"], "density": 0.5, "sparsity": {"method": "rigl", "update_every": 5}}}
    assert batched_unsupported_reason(cfg.validate(rigl)) == "model.sparsity.method='rigl' (batched: static masks only)"


def test_a_trace_or_spectrum_logged_each_evaluation_is_sent_to_the_local_engine():
    # the batched engine computes each member's top eigenvalue only
    for key, value in (("trace_matvecs", 30), ("spectrum_top_k", 2)):
        config = cfg.validate({**_BASE, "eval": {key: value}})
        assert batched_unsupported_reason(config) == f"eval.{key}={value} (batched: the top eigenvalue only)"


def test_run_group_refuses_cells_that_differ_beyond_the_per_member_keys():
    # two cells of another loss are two groups: one stack would train both with the first's loss
    import pytest

    from catapult.sweep.batched import run_group
    from catapult.sweep.executors import Cell

    base = {"data": {"name": "digits", "n_train": 16, "n_test": 8}, "model": {"name": "mlp", "width": 8, "depth": 3},
            "dtype": "float64", "train": {"steps": 2}, "eval": {"sharpness_every": 0}}
    cells = [Cell(0, cfg.validate({**base, "name": "a"})), Cell(1, cfg.validate({**base, "name": "b", "loss": "cross_entropy"}))]
    with pytest.raises(ValueError, match=r"run_group: the cells differ beyond the per-member keys"):
        list(run_group(cells))
