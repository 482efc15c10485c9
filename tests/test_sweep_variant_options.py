"""A grid that sweeps the key deciding which options apply (``optimizer.name``,
``schedule.warmup``) with an option of one variant set in the base: the cells of the other variants
run without it (their stored config at its default), as a user means by such a grid; a single
run, or a grid that also sweeps the option, is still refused."""
from __future__ import annotations

import pytest

from catapult import cli
from catapult import config as cfg
from catapult.sweep.spec import expand, get_dotted, load_sweep

BASE = ("name: opt\nseed: 0\ndata: {name: digits, n_train: 64, n_test: 32}\n"
        "model: {name: mlp, width: 8, depth: 3, activation: tanh}\nloss: mse\n"
        "optimizer: {name: sgd, lr: 0.05}\nschedule: {warmup: linear, warmup_steps: 2}\n"
        "train: {steps: 4}\neval: {sharpness_every: 0, test_every: 0}\n")


def _write(tmp_path, grid: str):
    path = tmp_path / "opt.yaml"
    path.write_text(BASE + "sweep:\n  grid:\n" + grid)
    return path


@pytest.mark.parametrize("grid, override, option, wanted", [
    # (cells' optimizer or warmup -> the option's value there)
    ("    optimizer.name: [sgd, adam]\n", "optimizer.momentum=0.9", "optimizer.momentum", {"sgd": 0.9, "adam": 0.0}),
    ("    optimizer.name: [sgd, adam, radam]\n", "optimizer.betas=[0.9,0.95]", "optimizer.betas",
     {"sgd": [0.9, 0.999], "adam": [0.9, 0.95], "radam": [0.9, 0.95]}),
    ("    optimizer.name: [adam, gi-adam]\n", "optimizer.v_bias_correction=false", "optimizer.v_bias_correction",
     {"adam": True, "gi-adam": False}),
    ("    optimizer.name: [adam, gi-adam]\n", "optimizer.v0=random", "optimizer.v0",
     {"adam": "grad", "gi-adam": "random"}),
    ("    schedule.warmup: [linear, catapult]\n", "schedule.lr_init=0.001", "schedule.lr_init",
     {"linear": 0.001, "catapult": 0.0}),
    ("    schedule.warmup: [linear, catapult]\n", "schedule.power=2", "schedule.power",
     {"linear": 2.0, "catapult": 1.0}),
    # persistent warmup ends at lr_trgt and keeps it: its cells run without the decay
    ("    schedule.warmup: [linear, persistent]\n", "schedule.decay=cosine", "schedule.decay",
     {"linear": "cosine", "persistent": "constant"}),
    ("    schedule.decay: [constant, linear]\n", "schedule.lr_final=0.001", "schedule.lr_final",
     {"constant": None, "linear": 0.001}),
    # its lr_final goes with the decay (mutation pass 22, VA2); catapult warmup reads the decay (VA3)
    ("    schedule.warmup: [linear, persistent]\n", "schedule.decay=cosine schedule.lr_final=0.001",
     "schedule.lr_final", {"linear": 0.001, "persistent": None}),
    ("    schedule.warmup: [linear, catapult, persistent]\n", "schedule.decay=cosine", "schedule.decay",
     {"linear": "cosine", "catapult": "cosine", "persistent": "constant"}),
    # augmentation is for minibatch training; the spectrum is taken on the sharpness cadence
    ("    train.batch_size: [null, 16]\n", "data.augment.crop=1 data.augment.flip=true", "data.augment.crop",
     {None: 0, 16: 1}),
    ("    eval.sharpness_every: [0, 1, 2]\n", "eval.spectrum_top_k=2 eval.trace_matvecs=3", "eval.trace_matvecs",
     {0: 0, 1: 3, 2: 3}),
    ("    eval.spectrum_top_k: [0, 3]\n", "eval.spectrum_block_size=2 eval.sharpness_every=2",
     "eval.spectrum_block_size", {0: 1, 3: 2}),
])
def test_an_option_of_one_variant_applies_to_its_cells_only(tmp_path, capsys, grid, override, option, wanted):
    # e.g. 'sweep.grid.optimizer.name=[sgd, adam]' optimizer.momentum=0.9 refused every adam cell:
    # "optimizer.momentum: is sgd's heavy-ball momentum; the adam optimizer takes optimizer.betas instead"
    decider = grid.split(":")[0].strip()
    base, spec = load_sweep(_write(tmp_path, grid), override.split())
    cells = expand(base, spec)
    assert {c.swept[decider]: get_dotted(c.config, option) for c in cells} == wanted
    for c in cells:  # each stored config is one catapult train accepts as it is
        assert cfg.validate(c.config) == c.config
    assert cli.main(["sweep", str(_write(tmp_path, grid)), *override.split(), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"note: {option} (" in err and "run without it" in err, err


def test_the_cell_without_the_option_trains_as_the_plain_run(tmp_path, capsys):
    from catapult.engine import run
    from catapult.sweep.store import Store

    store = tmp_path / "s.db"
    path = _write(tmp_path, "    optimizer.name: [sgd, adam]\n")
    assert cli.main(["sweep", str(path), "optimizer.momentum=0.9", "--store", str(store), "--progress", "none",
                     "--threads", "1"]) == 0
    assert "2 cells: 2 finished" in capsys.readouterr().out
    with Store(store, create=False, readonly=True) as s:
        sgd, adam = s.cells()
    for cell, options in ((sgd, {"name": "sgd", "momentum": 0.9}), (adam, {"name": "adam"})):
        plain = cfg.read_mapping(path)
        plain.pop("sweep")
        plain["optimizer"] = {**plain["optimizer"], **options}
        result = run(plain, progress="none")
        assert cell["train_loss"] == result.metrics[-1]["train_loss"]


def test_the_refusals_stay_where_the_option_is_the_runs_own(tmp_path, capsys):
    config = cfg.read_mapping(_write(tmp_path, "    optimizer.name: [sgd]\n"))
    config.pop("sweep")
    config["optimizer"] = {**config["optimizer"], "name": "adam", "momentum": 0.9}
    with pytest.raises(cfg.ConfigError) as refused:  # one run: momentum would be ignored
        cfg.validate(config)
    assert refused.value.keys == ["optimizer.momentum"]
    # the grid sweeps the option too: the adam cells at 0.9 would repeat those at 0.0
    path = _write(tmp_path, "    optimizer.name: [sgd, adam]\n    optimizer.momentum: [0.0, 0.9]\n")
    assert cli.main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cell 3 (optimizer.name=adam, optimizer.momentum=0.9) optimizer.momentum: is sgd's" in err, err
    # the grid does not sweep the deciding key: every cell would ignore it
    path = _write(tmp_path, "    optimizer.lr: [0.01, 0.02]\n")
    assert cli.main(["sweep", str(path), "optimizer.name=adam", "optimizer.momentum=0.9", "--dry-run"]) == 2
    assert "optimizer.momentum: is sgd's" in capsys.readouterr().err


def test_a_bpe_vocabulary_applies_to_the_bpe_cells_of_a_tokenizer_grid(tmp_path):
    path = tmp_path / "tok.yaml"
    path.write_text("name: tok\ndata: {name: shakespeare, context: 8, n_train: 32, n_test: 8, vocab_size: 512}\n"
                    "model: {name: gpt, width: 8, depth: 1, n_heads: 2}\nloss: cross_entropy\n"
                    "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 2, batch_size: 4}\n"
                    "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {data.tokenizer: [char, bpe]}}\n")
    char, bpe = expand(*load_sweep(path))
    assert (char.config["data"]["tokenizer"], char.config["data"]["vocab_size"]) == ("char", 4096)
    assert (bpe.config["data"]["tokenizer"], bpe.config["data"]["vocab_size"]) == ("bpe", 512)
    # and the BPE cache directory, which the char tokenizer does not read either
    char, bpe = expand(*load_sweep(path, [f"data.cache_dir={tmp_path / 'bpe_cache'}"]))
    assert (char.config["data"]["tokenizer"], char.config["data"]["cache_dir"]) == ("char", None)
    assert (bpe.config["data"]["tokenizer"], bpe.config["data"]["cache_dir"]) == ("bpe", str(tmp_path / "bpe_cache"))


def test_a_root_applies_to_the_cells_of_the_data_that_reads_one(tmp_path, capsys):
    # 'sweep.grid.data.name=[shakespeare, text]' data.root=corpus.txt refused every shakespeare cell:
    # "data.root: shakespeare is embedded and takes no root"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    path = tmp_path / "text.yaml"
    path.write_text("name: text\ndata: {name: shakespeare, context: 8, n_train: 16, n_test: 4}\n"
                    "model: {name: gpt, width: 8, depth: 1, n_heads: 2}\nloss: cross_entropy\n"
                    "optimizer: {name: adam, lr: 0.01}\ntrain: {steps: 1, batch_size: 4}\n"
                    "eval: {sharpness_every: 0, test_every: 0}\nsweep: {grid: {data.name: [shakespeare, text]}}\n")
    embedded, own = expand(*load_sweep(path, [f"data.root={corpus}"]))
    assert (embedded.config["data"]["name"], embedded.config["data"]["root"]) == ("shakespeare", None)
    assert (own.config["data"]["name"], own.config["data"]["root"]) == ("text", str(corpus))
    assert cli.main(["sweep", str(path), f"data.root={corpus}", "--store", str(tmp_path / "s.db"),
                     "--progress", "none", "--threads", "1"]) == 0
    assert "2 cells: 2 finished" in capsys.readouterr().out


def test_a_spectrum_block_above_a_swept_k_is_capped_at_that_k(tmp_path, capsys):
    # 'sweep.grid.eval.spectrum_top_k=[1, 2, 5]' eval.spectrum_block_size=3 refused the cells at
    # k 1 and 2: "eval.spectrum_block_size: at most eval.spectrum_top_k = 1 ... got 3"; a block of k
    # finds k copies of an eigenvalue, as many as k eigenvalues can hold
    path = _write(tmp_path, "    eval.spectrum_top_k: [1, 2, 5]\n")
    overrides = ["eval.spectrum_block_size=3", "eval.sharpness_every=2"]
    cells = expand(*load_sweep(path, overrides))
    assert [c.config["eval"]["spectrum_block_size"] for c in cells] == [1, 2, 3]
    assert cli.main(["sweep", str(path), *overrides, "--dry-run"]) == 0
    assert "the cells with eval.spectrum_top_k 1, 2 run with a block of their k" in capsys.readouterr().err
    # swept together, the block stays the cell's own: refused where it exceeds k
    path = _write(tmp_path, "    eval.spectrum_top_k: [1, 5]\n    eval.spectrum_block_size: [3]\n")
    with pytest.raises(cfg.ConfigError, match="at most eval.spectrum_top_k = 1"):
        expand(*load_sweep(path, ["eval.sharpness_every=2"]))


def test_the_notes_write_values_as_yaml_does():
    # a note names the option's value, the other cells' deciding values and the default as a config
    # file writes them (false, true, null), which is what a user types back
    from catapult.sweep.variants import grid_notes

    base = cfg.validate({"optimizer": {"name": "gi-adam", "v_bias_correction": False}})
    note, = grid_notes(base, {"optimizer.name": ("gi-adam", "adam")})
    assert note == ("optimizer.v_bias_correction (false) is read by optimizer.name gi-adam only: the cells with "
                    "optimizer.name adam run without it (their stored config has its default, true)")
    base = cfg.validate({"data": {"augment": {"flip": True}}, "train": {"batch_size": 16}})
    note, = grid_notes(base, {"train.batch_size": (None, 16)})
    assert note.startswith("data.augment.flip (true) is read by train.batch_size not null (minibatch training) "
                           "only: the cells with train.batch_size null run without it")


def test_no_note_for_a_swept_option_and_one_for_a_swept_dynamic_method_at_density_1():
    from catapult.sweep.variants import grid_notes

    # the option swept too: its cells are refused (expand), none runs without it, so no note says one does
    base = cfg.validate({"optimizer": {"name": "sgd", "momentum": 0.9}})
    assert grid_notes(base, {"optimizer.name": ("sgd", "adam"), "optimizer.momentum": (0.0, 0.9)}) == []
    # a static base under a method axis [static, rigl] and a density axis with 1: the rigl cells at 1 run dense
    base = cfg.validate({"model": {"density": 0.5}})
    note, = grid_notes(base, {"model.density": (1.0, 0.5), "model.sparsity.method": ("static", "rigl")})
    assert note.startswith("the cells at model.density 1 run the dense model, which has no mask for rigl to change")
    # one dynamic method: no other grid position shares its dense run, so no word of running it once;
    # two: the two dense cells are one run (CellSpec.same_as), which the note says
    assert "runs once" not in note
    two, = grid_notes(base, {"model.density": (1.0, 0.5), "model.sparsity.method": ("rigl", "gmp")})
    assert two.endswith("with gmp and rigl both swept, that dense run runs once and is recorded at both grid positions")


def test_the_notes_name_only_the_valid_values_that_do_not_read_the_option():
    # Mutation pass 22 (VA6, VA8): a swept k of 1 reads the block (capped at 1); an invalid optimizer
    # name is the cell's own validation's to name, not a cell that runs without momentum
    from catapult.sweep.variants import grid_notes

    base = cfg.validate({"eval": {"sharpness_every": 2, "spectrum_top_k": 2, "spectrum_block_size": 2},
                         "optimizer": {"name": "sgd", "momentum": 0.9}})
    notes = grid_notes(base, {"eval.spectrum_top_k": (0, 1, 3)})
    assert [n.split(":")[0] for n in notes] == ["eval.spectrum_block_size (2) is read by eval.spectrum_top_k "
                                                "values >= 1 only", "eval.spectrum_block_size (2) is at most "
                                                "eval.spectrum_top_k"]
    assert "the cells with eval.spectrum_top_k 0 run without it" in notes[0]
    assert grid_notes(base, {"optimizer.name": ("sgd", "adamx")}) == []
