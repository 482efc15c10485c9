"""A problem's key cut to fit its line keeps the dotted key it names: a cell of a grid with many
swept keys is ``cell N (<every swept value>) <key>``, and the cut at its end dropped the key."""
from __future__ import annotations

from catapult import cli
from catapult.config import ConfigError


def test_a_long_cell_key_keeps_the_dotted_key_at_its_end():
    where = ", ".join(f"model.sparsity.drop_fraction{i}=0.{i}" for i in range(8))
    text = str(ConfigError([(f"cell 3 ({where}) model.sparsity.update_every", "a problem")]))
    assert text.startswith("cell 3 (model.sparsity.drop_fraction0=0.0") and len(text.split(": ")[0]) <= 120
    assert text.endswith(" ... model.sparsity.update_every: a problem"), text


def test_the_cli_names_the_key_of_each_bad_cell_of_a_five_axis_grid(capsys):
    # "cell 0 (model.sparsity.method=rigl, ..., optimizer.lr=0.0009765625, model.sp ...: 1000 >= T_end"
    code = cli.main(["sweep", "configs/supar/dynamic_sparsity_small.yaml",
                     "sweep.grid.model.sparsity.update_every=[1000]", "--dry-run"])
    lines = capsys.readouterr().err.splitlines()[1:]
    assert code == 2 and lines
    assert all(" model.sparsity.update_every: 1000 >= T_end" in line for line in lines[:-1]), lines[:3]
