"""Start-up: ``catapult --help``, a subcommand's ``--help`` and a store reader (``export``)
import no torch (1.6 s of each call on an idle core); the packages whose names are
imported at first use (:mod:`catapult.lazy`) give the same objects as eager imports did."""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import types

import pytest

import catapult

from test_store_identity import _store

LAZY = ("catapult", "catapult.engine", "catapult.sweep", "catapult.plots")


def _defined(target: str):
    """The object ``"module:attr"`` (or ``"module"``) names, read from that module's own namespace."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return vars(module)[attribute] if attribute else module


@pytest.mark.parametrize("name", LAZY)
def test_every_public_name_resolves_and_the_map_is_all(name):
    package = importlib.import_module(name)
    assert package.__all__ == list(package._EXPORTS)  # one list: they cannot drift apart
    assert len(set(package.__all__)) == len(package.__all__)
    for public, target in package._EXPORTS.items():
        obj = getattr(package, public)
        assert obj is _defined(target), (name, public)
        if isinstance(obj, types.ModuleType):
            assert obj.__name__ == target
        elif isinstance(obj, (type, types.FunctionType)):
            # pickled by reference (Ray / multiprocessing workers): the object's own module path
            assert pickle.loads(pickle.dumps(obj)) is obj
            assert getattr(importlib.import_module(obj.__module__), obj.__qualname__) is obj
    assert set(package.__all__) <= set(dir(package))
    namespace: dict = {}
    exec(f"from {name} import *", namespace)
    assert all(namespace[public] is getattr(package, public) for public in package.__all__)


@pytest.mark.parametrize("package, public", [("catapult", "critical_lr"), ("catapult", "parametrize"),
                                             ("catapult.engine", "seeds"), ("catapult.engine", "sharpness_rule"),
                                             ("catapult.sweep", "spec_document")])
def test_a_public_name_that_is_also_a_submodule_stays_the_public_object(package, public):
    # ``import catapult.critical_lr`` (the engine does) sets the package's attribute to the module;
    # the eager __init__ overwrote it with the function afterwards, and users call catapult.critical_lr(...)
    submodule = importlib.import_module(f"{package}.{public}")
    pkg = importlib.import_module(package)
    obj = getattr(pkg, public)
    assert callable(obj) and not isinstance(obj, types.ModuleType)
    assert obj.__name__ == public and obj.__module__.startswith(package)
    assert obj is not submodule


def test_monkeypatching_a_shadowed_public_name_is_kept_and_undone(monkeypatch):
    original = catapult.critical_lr

    def fake(*args, **kwargs):
        return "fake"

    monkeypatch.setattr(catapult, "critical_lr", fake)
    importlib.import_module("catapult.critical_lr")
    assert catapult.critical_lr() == "fake"
    monkeypatch.undo()
    assert catapult.critical_lr is original


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        catapult.no_such_name  # noqa: B018
    assert not hasattr(catapult, "__main__")  # a submodule that runs the command line is never imported so


PROBE = """
import sys
from catapult.cli import main
codes = []
for argv in (["--help"], ["export", "--help"], ["transfer", "--help"], ["train", "--help"],
             ["export", sys.argv[1], "--out", sys.argv[2]]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
print(codes, sorted(m for m in ("torch", "catapult.curvature", "catapult.engine.build") if m in sys.modules),
      file=sys.stderr)
"""


def test_help_and_store_readers_leave_torch_unimported(tmp_path):
    store = _store(tmp_path / "s.db")
    out = tmp_path / "cells.csv"
    done = subprocess.run([sys.executable, "-c", PROBE, str(store), str(out)],
                          capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert last == "[0, 0, 0, 0, 0] []", done.stderr[-2000:]
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert lines[0].startswith("cell_id,") and len(lines) == 1 + 4  # the 2 x 2 grid's cells


READERS = """
import sys
from catapult.cli import main
store, tmp = sys.argv[1:3]
codes = [main(["plot", store, "--out", tmp + "/heat.png", "--trajectories-out", tmp + "/traj.png"]),
         main(["report", store, "--out", tmp + "/page.html"])]
print(codes, sorted(m for m in ("torch", "catapult.engine.sharpness_rule") if m in sys.modules), file=sys.stderr)
"""


def test_plot_and_report_of_a_store_leave_torch_unimported(tmp_path):
    # the trajectories figure took the RAdam kinds' names from engine.sharpness_rule, which imports
    # torch: 2.7 s of a 3 s `catapult plot` / `catapult report` (engine.records holds the names)
    store = _store(tmp_path / "s.db")
    done = subprocess.run([sys.executable, "-c", READERS, str(store), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[0, 0] []", done.stderr[-2000:]
    assert (tmp_path / "traj.png").stat().st_size > 0 and "<img" in (tmp_path / "page.html").read_text()


MISSING_STORE = """
import sys
from catapult.cli import main
missing, out = sys.argv[1:3]
codes = [main(["export", missing, "--out", out]), main(["plot", missing]), main(["transfer", missing]),
         main(["report", missing])]
print(codes, sorted(m for m in ("matplotlib", "numpy", "pydantic", "yaml", "catapult.plots.phase", "catapult.report")
                    if m in sys.modules), file=sys.stderr)
"""


def test_a_missing_store_is_refused_before_the_figures_are_imported(tmp_path):
    # plot's --metric (its default too) was checked by catapult.plots.phase (numpy, the config through
    # sweep.spec: pydantic, YAML), and plot and transfer checked their default figure names (matplotlib)
    # and report imported its page's module (numpy) before the store was opened: 0.7 s of CPU of
    # `catapult plot missing.db`'s refusal against 0.2 s of `catapult export missing.db`'s
    missing = tmp_path / "runs" / "missing.db"
    done = subprocess.run([sys.executable, "-c", MISSING_STORE, str(missing), str(tmp_path / "cells.csv")],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "[2, 2, 2, 2] []", done.stderr[-2000:]
    assert lines[:-1] == [f"catapult {command}: error: store not found: {missing}"
                          for command in ("export", "plot", "transfer", "report")]
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # no folder made, no file written


FOREIGN_STORE = """
import sys
from catapult.cli import main
codes = []
for foreign in sys.argv[1:3]:
    codes += [main(["plot", foreign]), main(["transfer", foreign]), main(["report", foreign]),
              main(["export", foreign, "--out", foreign + ".csv"])]
print(codes, sorted(m for m in ("matplotlib", "numpy", "pydantic", "yaml", "catapult.plots.phase", "catapult.report")
                    if m in sys.modules), file=sys.stderr)
"""


def test_a_foreign_store_is_refused_before_the_figures_are_imported(tmp_path):
    # a file that exists but is no store (another program's SQLite file, a text file) was refused by
    # Store only after plot and transfer had checked their default figure names (matplotlib)
    import sqlite3

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 20)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    done = subprocess.run([sys.executable, "-c", FOREIGN_STORE, str(other), str(text)],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"{[2] * 8} []", done.stderr[-2000:]
    words = ("is not a catapult sweep store (no catapult application_id 0x43745074 in its SQLite header, and not "
             "a store of catapult 0.1.0); it was left unchanged. Give the path of a sweep store.")
    assert lines[:-1] == [f"catapult {command}: error: {path} {words}" for path in (other, text)
                          for command in ("plot", "transfer", "report", "export")]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # unchanged, nothing written


HELP = """
import sys
from catapult.cli import main
codes = []
for argv in (["--help"], ["train", "--help"], ["coord-check", "--help"], ["sweep", "--help"]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
import catapult.config
print(codes, sorted(m for m in ("pydantic", "yaml", "torch") if m in sys.modules), file=sys.stderr)
catapult.config.ConfigError, catapult.config.MissingDependency
print(sorted(m for m in ("pydantic", "yaml") if m in sys.modules), file=sys.stderr)
catapult.config.SCHEMA
print(sorted(m for m in ("pydantic", "yaml") if m in sys.modules), file=sys.stderr)
"""


def test_help_imports_neither_pydantic_nor_yaml():
    # the parser's build imported the whole config package (pydantic, YAML): 0.15 s of `catapult
    # --help`'s 0.22; the config's names are now imported at their first use (the errors: at once)
    done = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-3:] == ["[0, 0, 0, 0] []", "[]", "['pydantic']"], done.stderr[-2000:]


def test_the_config_packages_names_are_its_modules_objects():
    # what the eager package imported from each module (its __init__ before the names were lazy)
    import importlib

    import catapult.config as C

    homes = {"checks": "CHECKS", "errors": "ConfigError InvalidValue MissingDependency",
             "io": "STUDY_SECTIONS apply_overrides dump_config key_positions load_config parse_override read_mapping "
                   "read_yaml",
             "lr": "LR LR_GRAMMAR learning_rate lr_needs_lambda0 parse_lr resolve_lr",
             "options": "Option as_float boolean choice integer number numbers string",
             "validation": "defaults get known_keys leaf_keys parse per_member_keys schema validate",
             "sections": "PRECONDITIONED_OPTIMIZERS TEXT_DATASETS DataConfig EvalConfig ModelConfig OptimizerConfig "
                         "RunConfig ScheduleConfig Section TrainConfig"}
    names = {name: module for module, listed in homes.items() for name in listed.split()}
    assert set(C.__all__) == set(names) | {"SCHEMA"}
    for name, module in names.items():
        assert getattr(C, name) is getattr(importlib.import_module(f"catapult.config.{module}"), name), name
    assert C.SCHEMA == C.schema() and callable(C.schema)   # the function, not a submodule of that name
    assert set(C.__all__) <= set(dir(C)) and C.io.MAX_YAML_DEPTH == 50
    namespace: dict = {}
    exec("from catapult.config import *", namespace)
    assert all(namespace[name] is getattr(C, name) for name in C.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        C.no_such_name  # noqa: B018


REFUSALS = """
import sys
from catapult.cli import main
bad, grid, folder, store, run_file, good, new_store = sys.argv[1:8]
codes = []
for argv in (["train", bad], ["spectrum", bad], ["critical-lr", bad], ["train-ddp", bad], ["coord-check", bad],
             ["sweep", grid, "--dry-run"], ["demo", "--out", folder], ["export", store, "--out", run_file],
             ["train", good, "--out", folder], ["train-ddp", good],
             ["spectrum", good, "--weights", folder + "/no.pt"], ["sweep", grid, "--store", new_store]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
print(codes, "torch" in sys.modules, file=sys.stderr)
"""


def test_bad_input_is_refused_before_torch_is_imported(tmp_path):
    # each refusal (exit 2) came after `import torch` (1.6 s): sweep (--dry-run or not) imported the
    # driver before expanding the grid, coord-check took the parametrizations from catapult.parametrize,
    # demo's folder check and export's --out check the run-directory rules from the training loop,
    # train-ddp torch.distributed (and its distributed-only keys the engine), train --out (a user's
    # folder) the engine
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptimizer:\n  lr: -1\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: x\nsweep:\n  grid:\n    optimizer.lr: [-1, 0.1]\n")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's file")
    run = tmp_path / "run"  # a `catapult train` run's folder: export --out onto its metrics.csv is refused
    run.mkdir()
    (run / "metrics.csv").write_text("step,lr,threshold,train_loss,train_accuracy,sharpness,sharpness_matvecs,"
                                     "test_loss,test_accuracy\n0,0.1,,1.0,,,,,\n")
    (run / "summary.json").write_text('{"status": "finished", "final_train_loss": 1.0}')
    store = _store(tmp_path / "s.db")
    good = tmp_path / "good.yaml"
    good.write_text("name: good\ntrain:\n  steps: 1\n")
    done = subprocess.run([sys.executable, "-c", REFUSALS, str(bad), str(grid), str(folder), str(store),
                           str(run / "metrics.csv"), str(good), str(tmp_path / "new.db")],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2] False", done.stderr[-3000:]
    assert "optimizer.lr" in lines[0] and "Traceback" not in done.stderr
    assert "notes.txt" in lines[-7] and "is a file of the `catapult train` run" in lines[-6]
    assert lines[-5].startswith("catapult train: error: ") and "not empty" in lines[-5]
    assert lines[-4] == ("catapult train-ddp: error: invalid config: model.name: distributed training trains "
                         "the gpt with loss cross_entropy")
    assert lines[-3] == f"catapult spectrum: error: --weights: {folder}/no.pt: no such file"
    assert lines[-2].startswith("catapult sweep: error: invalid config: cell 0 (optimizer.lr=-1)")
    assert not (tmp_path / "new.db").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_missing_weights_file_is_refused_before_the_run_is_built(tmp_path, monkeypatch):
    # measure_spectrum built the run (data loaded, model made) and only then found no file to load
    from catapult import config as cfg
    from catapult.engine.spectrum_study import measure_spectrum

    monkeypatch.setattr("catapult.engine.build.build_run", lambda *a, **k: pytest.fail("the run was built"))
    with pytest.raises(cfg.ConfigError) as info:
        measure_spectrum(cfg.validate({"train": {"steps": 1}}), weights=tmp_path / "no.pt")
    assert info.value.problems == [("--weights", f"{tmp_path}/no.pt: no such file")]


UNUSED = """
import sys
from catapult.cli import main
codes = []
for argv in (["--help"], ["train", sys.argv[1]]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
print(codes, sorted(m for m in ("torch", "matplotlib", "scipy", "multiprocessing", "concurrent.futures.process",
                                "catapult.engine.records", "catapult.analysis") if m in sys.modules), file=sys.stderr)
"""


def test_help_and_a_refusal_leave_the_other_commands_modules_unimported(tmp_path):
    # a refusal should be fast: the demo's process pool (multiprocessing, concurrent.futures.process)
    # and critical-lr's / spectrum's records (catapult.analysis) were imported by every catapult call
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus_key: 1\n")
    done = subprocess.run([sys.executable, "-c", UNUSED, str(bad)], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[0, 2] []", done.stderr[-2000:]
    assert "bogus_key: unknown key" in done.stderr
