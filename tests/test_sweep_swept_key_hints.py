"""A grid cell refused for an option its variant does not read, where the grid sweeps that option:
the hint said "remove it (on the command line: model.sparsity.drop_fraction=0.3)", an override that
``catapult sweep`` refuses beside the axis ("override the axis instead") and that would not take the
axis out. The hint now says what the grid can do (checked by doing it): leave density 1 out of the
axis and run the dense reference as a sweep of its own; split a grid whose swept variant does not
read the option; take the axis out where no cell's variant reads it."""
from __future__ import annotations

import pytest

from catapult import cli

BASE = ("name: hints\ndata: {name: shakespeare, context: 8, n_train: 64, n_test: 16}\nloss: cross_entropy\n"
        "model: {name: gpt, width: 8, depth: 1, n_heads: 2, density: 0.25, sparsity: {method: rigl, update_every: 1}}\n"
        "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 4}\n"
        "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {optimizer.lr: [0.01, 0.02]}}\n")


def _sweep(tmp_path, capsys, *overrides, text: str = BASE):
    """``catapult sweep --dry-run`` of the grid ``text`` (with ``overrides``): (exit code, stderr)."""
    config = tmp_path / "grid.yaml"
    config.write_text(text)
    code = cli.main(["sweep", str(config), "--store", str(tmp_path / "s.db"), "--dry-run", *overrides])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and not (tmp_path / "s.db").exists()
    return code, captured.err


DROP = "sweep.grid.model.sparsity.drop_fraction=[0.1,0.3]"

# (the grid's overrides, what the hint says, the grid(s) doing what it says: each valid)
CASES = {
    "dense_reference": (
        [DROP, "sweep.grid.model.density=[1.0,0.25]"],
        "leave 1.0 out of sweep.grid.model.density and run the dense reference as a sweep of its own",
        [[DROP, "sweep.grid.model.density=[0.25]"],
         ["sweep.grid.model.density=[1.0]", "model.sparsity.method=static", "model.sparsity.update_every=100"]]),
    "swept_method": (
        [DROP, "sweep.grid.model.sparsity.method=[rigl,gmp]"],
        "sweep.grid.model.sparsity.method holds gmp, which does not read it: sweep it over the values that "
        "read it only, and run the others as a sweep of their own",
        [[DROP, "sweep.grid.model.sparsity.method=[rigl]"], ["sweep.grid.model.sparsity.method=[gmp]"]]),
    "unswept_variant": (
        ["sweep.grid.optimizer.momentum=[0.0,0.9]"],
        "the grid sweeps it: take sweep.grid.optimizer.momentum out of the grid",
        [[]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_swept_option_is_told_what_the_grid_can_do(tmp_path, capsys, case):
    grid, says, fixes = CASES[case]
    code, err = _sweep(tmp_path, capsys, *grid)
    assert code == 2, err
    assert says in err, err
    assert "(on the command line:" not in err, err   # the override of a swept key, refused beside its axis
    for fix in fixes:
        code, err = _sweep(tmp_path, capsys, *fix)
        assert code == 0, (fix, err)


def test_the_old_hint_was_refused_beside_its_axis(tmp_path, capsys):
    # what "remove it (on the command line: optimizer.momentum=0.0)" led to
    code, err = _sweep(tmp_path, capsys, "sweep.grid.optimizer.momentum=[0.0,0.9]", "optimizer.momentum=0.0")
    assert code == 2 and "override the axis instead" in err, err


def test_a_hint_over_several_keys_keeps_the_unswept_ones(tmp_path, capsys):
    # full-batch GD with augmentation: flip swept, crop set by the base; crop's override stays
    code, err = _sweep(tmp_path, capsys, text="name: aug\ndata: {augment: {crop: 2}}\ntrain: {steps: 2}\n"
                       "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {data.augment.flip: [false, true]}}\n")
    assert code == 2, err
    assert ("the grid sweeps it: take sweep.grid.data.augment.flip out of the grid (the rest on the command line: "
            "data.augment.crop=0)") in err, err


def test_a_base_that_every_cell_refuses_is_told_the_same(tmp_path, capsys):
    # the base sets the option the grid sweeps too: one problem, the base's, with the same hint
    code, err = _sweep(tmp_path, capsys, text="name: base\noptimizer: {name: adam, lr: 0.01, momentum: 0.9}\n"
                       "train: {steps: 2}\neval: {sharpness_every: 0, test_every: 0}\n"
                       "sweep: {grid: {optimizer.momentum: [0.5, 0.9]}}\n")
    assert code == 2 and "the grid sweeps it: take sweep.grid.optimizer.momentum out of the grid" in err, err
    assert "(on the command line:" not in err and "Traceback" not in err, err


def test_a_dense_reference_cell_refused_for_a_key_that_is_no_sparsity_key_is_told_to_take_that_axis_out(
        tmp_path, capsys):
    # the density axis makes the cell at 1 the dense model, but momentum (which adam does not read) is no
    # sparsity key: leaving 1 out of the density axis would not help there; taking the momentum axis out does
    code, err = _sweep(tmp_path, capsys, "sweep.grid.model.density=[1.0,0.25]", "sweep.grid.optimizer.momentum=[0.0,0.9]")
    assert code == 2 and "take sweep.grid.optimizer.momentum out of the grid" in err, err
    assert "leave 1.0 out of sweep.grid.model.density" not in err, err
    assert _sweep(tmp_path, capsys, "sweep.grid.model.density=[1.0,0.25]")[0] == 0
