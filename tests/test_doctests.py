"""The docstring examples (``>>>`` lines) of the public API run and print what they claim.

Every public function and class (``__all__``) of the modules below carries a short example with
a checked, deterministic result (closed forms: a quadratic model whose Hessian is known, SGD's
``2 / lr`` threshold, warmup fractions); this runs them with :mod:`doctest` and fails on any
mismatch, and also fails when a module or a public name has no example at all. The examples of
every other module of the package run too.
"""
from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest
import torch

from torch_features import FSDP2

MODULES = (
    "catapult.arguments",
    "catapult.compiled_state",
    "catapult.run_root",
    "catapult.schedules.functions",
    "catapult.schedules.scheduler",
    "catapult.schedules.persistent",
    "catapult.curvature.hessian",
    "catapult.curvature.modes",
    "catapult.curvature.sharded",
    "catapult.curvature.sharded_reach",
    "catapult.curvature.forward_ad",
    "catapult.curvature.difference",
    "catapult.curvature.difference_products",
    "catapult.curvature.compiled",
    "catapult.curvature.microbatch",
    "catapult.curvature.batch_tree",
    "catapult.curvature.samples",
    "catapult.curvature.coupling",
    "catapult.curvature.krylov",
    "catapult.curvature.lanczos",
    "catapult.curvature.stopping",
    "catapult.curvature.top_k",
    "catapult.curvature.sharpness",
    "catapult.curvature.instability",
    "catapult.curvature.preconditioner",
    "catapult.curvature.start",
    "catapult.curvature.spectrum",
    "catapult.curvature.spectral_operator",
    "catapult.curvature.trace",
    "catapult.curvature.density",
    "catapult.curvature.ggn",
    "catapult.curvature.coarse",
    "catapult.curvature.coarse_ranks",
    "catapult.curvature.shard_reduction",
    "catapult.curvature.lean",
    "catapult.curvature.distributed",
    "catapult.curvature.rank_agreement",
    "catapult.curvature.rank_errors",
    "catapult.curvature.stateless",
    "catapult.curvature.twice",
    "catapult.curvature.torch_errors",
    "catapult.curvature.torchscript",
    "catapult.curvature.certify",
    "catapult.curvature.grads_into",
    "catapult.curvature.tracker",
    "catapult.critical_lr",
    "catapult.critical_lr_passes",
    "catapult.parametrize",
    "catapult.parametrize_checks",
    "catapult.param_rules",
    "catapult.optim.gi_adam",
    "catapult.optim.step_count",
    "catapult.optim.registry",
    "catapult.optim.rules",
    "catapult.engine.step",
    "catapult.engine.seeds",
    "catapult.engine.fsdp",
    "catapult.engine.model_size",
    "catapult.engine.persistent_warmup",
    "catapult.engine.ddp_config",
    "catapult.engine.step_lr",
    "catapult.engine.step_accuracy",
    "catapult.engine.gather_json",
    "catapult.engine.every_rank",
    "catapult.models.options",
    "catapult.sweep.store_file",
    "catapult.sweep.store_raw",
    "catapult.sweep.store_rows",
    "catapult.sweep.variants",
    "catapult.sweep.dotted",
    "catapult.lazy",
)

# Public names without an example, and why.
NO_EXAMPLE: set[str] = set()

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE


def _tests(module_name: str) -> dict[str, doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return {t.name: t for t in finder.find(module, module_name) if t.examples}


def _public_callables(module_name: str) -> list[str]:
    """``__all__`` entries that are functions or classes defined in the module itself (not
    aliases such as ``GIAdamW = GIAdam``, whose example is the original's)."""
    module = importlib.import_module(module_name)
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        if ((inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module_name
                and obj.__name__ == name):

            out.append(name)
    return out


def _modules_with_examples() -> list[str]:
    """Every module of the package whose docstrings hold an example (``__main__`` modules are
    skipped: importing one runs the command line)."""
    import catapult

    names = [m.name for m in pkgutil.walk_packages(catapult.__path__, "catapult.")
             if not m.name.endswith("__main__")]
    return [name for name in names if _tests(name)]


# every example anywhere in the package runs, not only those of MODULES (whose public names must
# all have one): an example nobody runs drifts from the code
# the examples of FSDP2 (fully_shard: torch 2.6+) skip on an older torch, which refuses train.fsdp by name
NEEDS_FSDP2 = {"catapult.curvature.sharded", "catapult.engine.fsdp"}


@pytest.mark.parametrize("module_name", [pytest.param(m, marks=FSDP2) if m in NEEDS_FSDP2 else m
                                         for m in sorted(set(MODULES) | set(_modules_with_examples()))])
def test_docstring_examples_pass(module_name):
    tests = _tests(module_name)
    assert tests, f"{module_name} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    # the examples seed the global RNG and may set threads: leave the session as it was
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        for test in sorted(tests.values(), key=lambda t: t.name):
            runner.run(test)
    torch.set_num_threads(threads)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module_name} failed"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_an_example(module_name):
    tests = _tests(module_name)
    missing = [name for name in _public_callables(module_name)
               if f"{module_name}.{name}" not in tests
               and f"{module_name}.{name}" not in NO_EXAMPLE]
    assert not missing, f"{module_name}: public names without a docstring example: {missing}"


def test_a_wrong_example_is_caught():
    """The runner really compares outputs (so the tests above can fail)."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(">>> 2 / 0.1\n21.0\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    runner.run(test, out=lambda text: None)
    assert runner.summarize(verbose=False).failed == 1
