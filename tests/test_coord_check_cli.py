"""``catapult coord-check CONFIG``: validation before work, the files it writes, and the
SμPar-flat / SP-shrinking result end to end through the real command."""
from __future__ import annotations

import csv

import pytest
import yaml

from catapult.cli import main
from catapult.coord_check import coord_slopes

TEXT = "".join(chr(97 + (i * 7 + i // 5) % 26) + (" " if i % 6 == 0 else "") for i in range(4000))


pytestmark = pytest.mark.usefixtures("single_thread")


def _config(tmp_path, **coord):
    (tmp_path / "corpus.txt").write_text(TEXT)
    config = {
        "name": "cc",
        "data": {"name": "text", "root": str(tmp_path / "corpus.txt"), "context": 16, "n_train": 64, "n_test": 4},
        "model": {"name": "gpt", "width": 64, "depth": 1, "n_heads": 2, "activation": "gelu"},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 1e-3},
        "train": {"batch_size": 8},
        "coord_check": {"densities": [0.125, 0.5, 1.0], "parametrizations": ["sp", "supar"], "seeds": [0],
                        "steps": 2, **coord},
    }
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _csv_rows(out):
    """coord_check.csv's rows, numbers read as numbers."""
    with open(out / "coord_check.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row.update(value=float(row["value"]), mean_abs=float(row["mean_abs"]), seed=int(row["seed"]),
                   step=int(row["step"]))
    return rows


def _assert_supar_flat_sp_rising(rows):
    """SμPar's attention and MLP updates are flat over density; SP's grow with it."""
    slopes = {p: coord_slopes([r for r in rows if r["parametrization"] == p]) for p in ("sp", "supar")}
    for block in ("attention", "mlp"):
        assert abs(slopes["supar"][(block, 0)]) < 0.15
        assert slopes["sp"][(block, 0)] > 0.6

def test_coord_check_command_writes_csv_figures_and_shows_supar_flat(tmp_path, capsys):
    path = _config(tmp_path)
    out = tmp_path / "out"
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"coord_check.csv", "config.yaml", "coord_check_table.md", "coord_check_density_sp.png",
            "coord_check_density_supar.png"} <= names
    table = (out / "coord_check_table.md").read_text()
    assert "| block | step | 0.125 | 0.5 | 1 |" in table and "| attention | 1 |" in table
    rows = _csv_rows(out)
    assert set(rows[0]) == {"parametrization", "axis", "value", "seed", "step", "block", "module", "mean_abs", "loss"}
    assert len(rows) == 2 * 3 * 2 * 4  # parametrizations x densities x steps x blocks (emb, attn, mlp, logits)
    _assert_supar_flat_sp_rising(rows)
    printed = capsys.readouterr().out
    assert "| supar | density | attention |" in printed


def test_coord_check_over_width_and_overrides(tmp_path):
    path = _config(tmp_path, densities=None)
    out = tmp_path / "w"
    assert main(["coord-check", str(path), "coord_check.widths=[32,64]", "coord_check.parametrizations=[mup]",
                 "model.base_width=32", "--out", str(out), "--progress", "none", "--panels", "step"]) == 0
    assert (out / "coord_check_width_mup.png").exists()
    with open(out / "coord_check.csv") as fh:
        widths = {float(r["value"]) for r in csv.DictReader(fh)}
    assert widths == {32.0, 64.0}


@pytest.mark.parametrize("override, key", [
    (["coord_check.densities=[0, 0.5]"], "coord_check.densities"),
    # an entry is named by its place ("entry 2: 2 is out of range" read as either)
    (["coord_check.densities=[0.5, 2]"], "coord_check.densities: entry 2 of 2: 2 is out of range"),
    (["coord_check.widths=[3, 64, 32, 64]"], "coord_check.widths: entry 4 of 4: 64 repeats entry 2"),
    (["coord_check.colour=1"], "coord_check.colour"),
    (["coord_check.parametrizations=[xp]"], "coord_check.parametrizations"),
    (["coord_check.widths=[31, 64]"], "model.n_heads"),       # a model the check would build is invalid
    (["optimizer.lr=2/lambda0"], "optimizer.lr"),
    (["coord_check.densities=null"], "coord_check"),
    (["coord_check=1"], "coord_check: expected a mapping"),   # not "unknown key"
    (["coord_check=1", "coord_check.widths=[32]"], "coord_check: expected a mapping"),
    (["coord_check.widths=[64, 4000000]"], "model (coord_check.widths=4000000, sp): model.width=4000000, model.depth=1 and data.context=16 make"),
    (["coord_check.widths=[64, 99999999998]"], "cannot be built here (a tensor size overflows int64)"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, override, key):
    path = _config(tmp_path)
    out = tmp_path / "never"
    assert main(["coord-check", str(path), *override, "--out", str(out)]) == 2
    assert key in capsys.readouterr().err
    assert not out.exists()


def test_an_axis_of_one_value_is_refused_with_the_way_to_say_it(tmp_path, capsys):
    # coord_check.widths=[64] measured one width: its slopes printed "+nan" and a width figure of
    # one point per line was drawn, exit 0
    path = _config(tmp_path)
    out = tmp_path / "cc_out"
    assert main(["coord-check", str(path), "coord_check.widths=[32]", "coord_check.densities=[0.5]",
                 "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert ("coord_check.widths: a slope needs two values or more, got one (32); for that one value set "
            "model.width=32 and coord_check.widths=null") in err
    assert "coord_check.densities: a slope needs two values or more, got one (0.5)" in err and not out.exists()
    assert main(["coord-check", str(path), "model.width=32", "coord_check.widths=null", "coord_check.steps=1",
                 "coord_check.parametrizations=[sp]", "--out", str(out), "--progress", "none"]) == 0
    assert "nan" not in capsys.readouterr().out


def test_train_ignores_the_coord_check_section(tmp_path):
    path = _config(tmp_path)
    assert main(["train", str(path), "train.steps=1", "--out", str(tmp_path / "run"), "--progress", "none"]) == 0


def test_coord_check_applies_data_augment_as_training_does(tmp_path):
    # with data.augment, the recorded step-t loss is the model's loss on catapult train's
    # (augmented) batch t; the same every time (per seed), and not the un-augmented batch's
    import torch

    from catapult import engine

    base = {"name": "aug", "data": {"name": "digits", "n_train": 64, "n_test": 8,
                                    "augment": {"flip": True, "crop": 1, "mixup": 0.4}},
            "model": {"width": 16, "depth": 3}, "optimizer": {"name": "sgd", "lr": 0.05},
            "train": {"batch_size": 16}}
    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump({**base, "coord_check": {"widths": [8, 16], "seeds": [0], "steps": 2}}))

    def rows(name, *overrides):
        assert main(["coord-check", str(path), *overrides, "--out", str(tmp_path / name), "--progress", "none"]) == 0
        with open(tmp_path / name / "coord_check.csv") as fh:
            return [(int(r["step"]), float(r["value"]), r["module"], float(r["loss"]), float(r["mean_abs"]))
                    for r in csv.DictReader(fh)]

    augmented, again = rows("a"), rows("b")
    assert augmented == again
    plain = rows("c", "data.augment.flip=false", "data.augment.crop=0", "data.augment.mixup=0")
    assert [r[3] for r in augmented] != [r[3] for r in plain]
    for width in (8, 16):
        setup = engine.build_run({**base, "model": {**base["model"], "width": width}})
        x, y = setup.batches.batch(0)
        with torch.no_grad():
            loss0 = float(setup.loss_fn(setup.model(x), y))
        recorded = {r[3] for r in augmented if r[0] == 0 and r[1] == width}
        assert len(recorded) == 1 and recorded.pop() == pytest.approx(loss0, rel=1e-6)


MLP_CHECK = """\
name: mlp_cc
data: {name: digits, n_train: 32, n_test: 8}
model: {name: mlp, width: 8, depth: 2}
optimizer: {name: sgd, lr: 0.1}
train: {batch_size: 8}
coord_check: {widths: [4, 8], parametrizations: [mup], seeds: [0], steps: 1}
"""


def test_coord_check_never_writes_through_a_link_in_its_output(tmp_path, capsys):
    # an earlier output with config.yaml linked to the user's config: the rerun wrote through the link
    user = tmp_path / "my.yaml"
    user.write_text("# my config\n" + MLP_CHECK)
    out = tmp_path / "out"
    out.mkdir()
    (out / "coord_check.csv").write_text("parametrization,axis,value,seed,step,block,module,mean_abs,loss\n")
    (out / "config.yaml").symlink_to(user)
    assert main(["coord-check", str(user), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "out is not a directory `catapult coord-check` wrote (it holds config.yaml)" in err
    assert user.read_text() == "# my config\n" + MLP_CHECK and (out / "config.yaml").is_symlink()


def test_coord_check_writes_over_its_own_output_only(tmp_path, capsys):
    # a folder it did not write (the config's own, as config.yaml; a train run) had its files replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my config\n" + MLP_CHECK)
    before = (mine / "config.yaml").read_text()
    assert main(["coord-check", str(mine / "config.yaml"), "--out", str(mine), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "mine is not a directory `catapult coord-check` wrote (it holds config.yaml)" in err
    assert (mine / "config.yaml").read_text() == before and [p.name for p in mine.iterdir()] == ["config.yaml"]
    run = tmp_path / "run"
    assert main(["train", str(mine / "config.yaml"), "train.steps=1", "--out", str(run), "--progress", "none"]) == 0
    written = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["coord-check", str(mine / "config.yaml"), "--out", str(run), "--progress", "none"]) == 2
    assert "metrics.csv" in capsys.readouterr().err and {p.name: p.read_bytes() for p in run.iterdir()} == written
    out = tmp_path / "cc"
    for _ in range(2):  # its own directory: a rerun replaces what the first wrote
        assert main(["coord-check", str(mine / "config.yaml"), "--out", str(out), "--progress", "none"]) == 0
    assert {p.name for p in out.iterdir()} == {"coord_check.csv", "coord_check_table.md", "config.yaml",
                                               "coord_check_width_mup.png"}


def test_a_rerun_leaves_no_figure_of_the_earlier_check(tmp_path):
    # rerun with fewer parametrizations: the earlier run's supar figure stayed beside a CSV without supar rows
    path = _config(tmp_path, densities=[0.5, 1.0], steps=1)
    out = tmp_path / "out"
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none"]) == 0
    assert (out / "coord_check_density_supar.png").is_file()
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none",
                 "coord_check.parametrizations=[sp]"]) == 0
    with open(out / "coord_check.csv") as fh:
        groups = {(r["axis"], r["parametrization"]) for r in csv.DictReader(fh)}
    assert groups == {("density", "sp")}
    assert {p.name for p in out.glob("*.png")} == {f"coord_check_{a}_{p}.png" for a, p in groups}


def test_coord_check_judges_its_earlier_files_by_their_contents(tmp_path, capsys):
    # by name alone, a folder with any coord_check.csv had its config.yaml and table replaced
    mine = {"coord_check.csv": "parametrization,axis\n", "config.yaml": "my: own config\n",
            "coord_check_table.md": "# my notes\n"}   # a user's files under coord-check's names
    out = tmp_path / "out"
    out.mkdir()
    for name, text in mine.items():
        (out / name).write_text(text)
    config = tmp_path / "cc.yaml"
    config.write_text(MLP_CHECK)
    assert main(["coord-check", str(config), "--out", str(out), "--progress", "none"]) == 2
    assert "is not a directory `catapult coord-check` wrote" in capsys.readouterr().err
    assert {name: (out / name).read_text() for name in mine} == mine
    fresh = tmp_path / "fresh"
    assert main(["coord-check", str(config), "--out", str(fresh), "--progress", "none"]) == 0
    assert main(["coord-check", str(config), "--out", str(fresh), "--progress", "none"]) == 0  # its own: rerun


def test_a_rerun_takes_the_partial_files_of_a_stopped_check_as_its_own(tmp_path, capsys):
    # a check stopped mid-write leaves .partial- files (catapult.writing.write_whole); by name
    # they were not its own, so the rerun was refused
    from catapult.engine.coord_check_study import CSV_COLUMNS
    from catapult.files import PNG_START

    path = _config(tmp_path, densities=[0.5, 1.0], steps=1)
    out = tmp_path / "out"
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none"]) == 0
    leftovers = {".partial-coord_check.csv": ",".join(CSV_COLUMNS[:3]).encode(),      # cut off in the header
                 ".partial-coord_check_density_muP.png": PNG_START[:5],               # in the signature
                 ".partial-coord_check_table.md": b"",
                 ".partial-config.yaml": (out / "config.yaml").read_bytes()[:300]}   # no YAML as it stands
    for name, data in leftovers.items():
        (out / name).write_bytes(data)
    from catapult.cli.coord_check import _cut_off_config
    written, probe = (out / "config.yaml").read_bytes(), tmp_path / ".partial-config.yaml"
    for cut in range(len(written) + 1):   # a write stopped after any byte
        probe.write_bytes(written[:cut])
        assert _cut_off_config(probe), written[:cut]
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none"]) == 0
    assert not list(out.glob(".partial-*"))
    (out / ".partial-notes.md").write_text("my notes\n")          # no name it writes: a user's file
    (out / ".partial-coord_check_table.md").write_text("# my table\n")   # its name, not its content
    (out / ".partial-config.yaml").write_text("name: mine\nnotes: [a, b]\n")  # not a key it writes
    assert main(["coord-check", str(path), "--out", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert ".partial-config.yaml, .partial-coord_check_table.md, .partial-notes.md" in err
    assert (out / ".partial-notes.md").read_text() == "my notes\n"


def test_a_gmp_config_is_checked_at_the_densities_not_dense(tmp_path):
    # gmp builds all-ones masks (it prunes from dense during training), so every density was
    # measured dense: SP's attention and MLP were flat over density and SμPar's slope was -1.0,
    # the reverse of the result (SμPar flat, SP shrinking ~ density), written as a valid table.
    path = _config(tmp_path, densities=[0.125, 0.5])
    out = tmp_path / "gmp"
    assert main(["coord-check", str(path), "model.density=0.5", "model.sparsity.method=gmp", "train.steps=20",
                 "--out", str(out), "--progress", "none"]) == 0
    _assert_supar_flat_sp_rising(_csv_rows(out))


def test_a_width_axis_under_mup_without_a_base_width_is_refused(tmp_path, capsys):
    # Without model.base_width every GPT width was its own base (m_d = 1: no multiplier, init or
    # lr scaling), so "mup" was measured as SP (attention slope +2.1 at the last step, as SP's)
    # and read as muP failing.
    path = _config(tmp_path, densities=None, widths=[32, 64], parametrizations=["sp", "mup"])
    out = tmp_path / "never"
    assert main(["coord-check", str(path), "--out", str(out)]) == 2
    assert "model.base_width: a coordinate check over coord_check.widths under mup needs" in capsys.readouterr().err
    assert not out.exists()
    assert main(["coord-check", str(path), "coord_check.parametrizations=[sp]", "--out", str(out),
                 "--progress", "none"]) == 0                             # SP has no base width to miss


def test_a_rigl_config_is_checked_at_every_density_dense_included(tmp_path, capsys):
    # the check updates no mask, yet a rigl config was refused for its density-1.0 models
    # ("model.sparsity.method (coord_check.densities=1.0, sp): rigl changes masks: set model.density
    # < 1"), so configs/supar/dynamic_sparsity_small.yaml could not be checked over [.., 1.0]
    path = _config(tmp_path)   # densities 0.125, 0.5, 1.0
    out = tmp_path / "rigl"
    code = main(["coord-check", str(path), "model.density=0.5", "model.sparsity.method=rigl", "train.steps=20",
                 "model.sparsity.update_every=5", "--out", str(out), "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    rows = _csv_rows(out)
    assert {row["value"] for row in rows} == {0.125, 0.5, 1.0}
    _assert_supar_flat_sp_rising(rows)


@pytest.mark.parametrize("text", ["a: !!bool maybe\n", "a: !!timestamp x\n", "[" * 3000 + "]" * 3000 + "\n"])
def test_a_config_yaml_of_yours_it_cannot_read_is_judged_not_its_own(tmp_path, capsys, text):
    # judging the --out folder's config.yaml raised PyYAML's KeyError / AttributeError, or a
    # RecursionError for one nested 3,000 deep: a traceback, where the folder is refused as not its own
    user = tmp_path / "my.yaml"
    user.write_text(MLP_CHECK)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(text)
    assert main(["coord-check", str(user), "--out", str(out), "--progress", "none"]) == 2
    assert "out is not a directory `catapult coord-check` wrote (it holds config.yaml)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["config.yaml"] and (out / "config.yaml").read_text() == text
