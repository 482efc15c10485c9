"""``catapult.arguments.check_integer``: the one rule of the library's integer arguments (counts,
sizes, steps), and the sites that use it: ``True`` is no count anywhere, ``np.int64(3)`` and a 0-d
integer tensor are counts everywhere, ``3.0``, ``3.5``, ``"3"``, nan and inf are refused with a
ValueError naming the owner, the argument and the value."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from catapult.arguments import check_integer

NOT_INTEGERS = [True, False, 3.0, 3.5, "3", float("nan"), float("inf"), None, [3], np.float64(3.0),
                torch.tensor(3.0), torch.tensor([3])]
INTEGERS = [(3, 3), (np.int64(3), 3), (np.int8(3), 3), (torch.tensor(3), 3), (np.array(3), 3), (2 ** 70, 2 ** 70)]


@pytest.mark.parametrize("value, expected", INTEGERS)
def test_integers_of_every_kind_come_back_as_python_ints(value, expected):
    out = check_integer("f", "n", value, low=None)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", NOT_INTEGERS)
def test_what_is_no_integer_is_refused_naming_owner_label_and_value(value):
    with pytest.raises(ValueError, match=r"^f n must be an integer >= 1; got ") as err:
        check_integer("f", "n", value)
    plain = value.item() if getattr(value, "ndim", None) == 0 else value  # a 0-d tensor or NumPy scalar
    assert str(err.value).endswith(f"; got {plain!r}")


@pytest.mark.parametrize("value, low, high, words", [
    (0, 1, None, "f n must be an integer >= 1; got 0"),
    (-1, 0, None, "f n must be an integer >= 0; got -1"),
    (6, 1, 5, r"f n must be an integer in \[1, 5\]; got 6"),
    (6, None, 5, "f n must be an integer <= 5; got 6"),
    (np.int64(1), 2, None, "f n must be an integer >= 2; got 1"),
])
def test_bounds_are_inclusive_and_named(value, low, high, words):
    with pytest.raises(ValueError, match=f"^{words}$"):
        check_integer("f", "n", value, low=low, high=high)
    for edge in (low, high):
        if edge is not None:
            assert check_integer("f", "n", edge, low=low, high=high) == edge


def test_optional_takes_none_and_says_so_when_refusing():
    assert check_integer("f", "n", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^f n must be None or an integer >= 1; got 0$"):
        check_integer("f", "n", 0, optional=True)


def test_ensemble_executor_counts_follow_the_rule():
    # workers=True ran one worker (isinstance(True, int)); np.int64(2) was refused
    from catapult.sweep.ensemble import EnsembleExecutor

    with pytest.raises(ValueError, match=r"^EnsembleExecutor workers must be an integer in \[1, \d+\]; got True$"):
        EnsembleExecutor(workers=True)
    assert EnsembleExecutor(workers=np.int64(1)).workers == 1
    executor = EnsembleExecutor(max_members=torch.tensor(3))
    assert executor.max_members == 3 and type(executor.max_members) is int


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_iter=True), r"max_iter must be an integer in \[1, 100000\]; got True"),      # ran one product
    (dict(max_iter=3.0), r"max_iter must be an integer in \[1, 100000\]; got 3.0"),
    (dict(max_iter=float("inf")), r"max_iter must be an integer in \[1, 100000\]; got inf"),  # OverflowError
    (dict(max_basis=3.5), "max_basis must be an integer >= 2; got 3.5"),      # a basis of 3
    (dict(max_basis="3"), "max_basis must be an integer >= 2; got '3'"),      # '<' not supported
    (dict(tol=float("inf")), "tol must be a finite number > 0; got inf"),     # the start called converged
])
def test_the_public_eigen_solvers_take_integers_by_the_rule(kwargs, words):
    from catapult.curvature import lanczos_top_eigenpair
    from catapult.curvature.lean import lean_top_eigenpair

    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    v0 = torch.ones(10, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"^lanczos_top_eigenpair {words}$"):
        lanczos_top_eigenpair(lambda v: A @ v, v0, **kwargs)
    if "max_basis" not in kwargs:   # the lean solver keeps no basis, and needs two products
        lean_words = words.replace(r"\[1,", r"\[2,")
        with pytest.raises(ValueError, match=f"^lean_top_eigenpair {lean_words}$"):
            lean_top_eigenpair(lambda v: A @ v, v0, **kwargs)
    assert lanczos_top_eigenpair(lambda v: A @ v, v0, max_iter=np.int64(40), max_basis=torch.tensor(4),
                                 tol=1e-10).value == pytest.approx(10.0, rel=1e-9)


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_iter=[0, 10]), r"max_iter\[0\] must be an integer in \[1, 100000\]; got 0"),      # ran to convergence
    (dict(max_iter=[10, 3.5]), r"max_iter\[1\] must be an integer in \[1, 100000\]; got 3.5"),
    (dict(max_iter=[True, 10]), r"max_iter\[0\] must be an integer in \[1, 100000\]; got True"),  # one product
    (dict(tol=[-1.0, 1e-8]), r"tol\[0\] must be a finite number > 0; got -1.0"),      # ran out max_iter
    (dict(tol=[float("nan"), 1e-8]), r"tol\[0\] must be a finite number > 0; got nan"),
    (dict(max_basis=True), "max_basis must be an integer >= 2; got True"),            # an IndexError
    (dict(max_basis=3.5), "max_basis must be an integer >= 2; got 3.5"),
    (dict(tol=[1e-8]), r"tol and max_iter need one entry per row of v0 \(2\); got 1 and 2"),
])
def test_batched_lanczos_checks_its_counts_and_tolerances(kwargs, words):
    from catapult.curvature import batched_lanczos

    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    options = dict(tol=[1e-8, 1e-8], max_iter=[10, 10]) | kwargs
    with pytest.raises(ValueError, match=f"^batched_lanczos:? {words}$"):
        batched_lanczos(lambda active, V: V @ A, torch.ones(2, 10, dtype=torch.float64), **options)
    ests = batched_lanczos(lambda active, V: V @ A, torch.ones(2, 10, dtype=torch.float64), tol=[1e-10, 1e-10],
                           max_iter=[np.int64(40), torch.tensor(2)], max_basis=np.int64(20))
    assert ests[0].value == pytest.approx(10.0, rel=1e-9) and ests[1].matvecs == 2


@pytest.mark.parametrize("steps", [True, 3.5, "3", 0, -1, float("inf")])
def test_lanczos_quadrature_takes_an_integer_number_of_steps(steps):
    # int(steps) made True one step and 3.5 / "3" three; 0 and -1 failed inside with an IndexError
    from catapult.curvature.spectrum import lanczos_quadrature

    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    v = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^lanczos_quadrature steps must be an integer in \[1, 100000\]; got "):
        lanczos_quadrature(lambda u: A @ u, v, steps)
    nodes, weights = lanczos_quadrature(lambda u: A @ u, v, np.int64(3))   # the eigenvalues, a third each
    assert nodes.tolist() == pytest.approx([1.0, 2.0, 3.0]) and weights.tolist() == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("seed", [3.5, "3", True, float("nan"), 2 ** 64, None])
def test_hutch_plus_plus_takes_a_generator_seed(seed):
    # int(seed) made 3.5 and "3" the seed 3 and True the seed 1, silently; nan and 2**64 failed in torch's words
    from catapult.curvature.spectrum import hutch_plus_plus

    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^hutch_plus_plus seed must be an integer in \[-2\*\*63, 2\*\*64\); got "):
        hutch_plus_plus(lambda v: A @ v, 10, 3, seed=seed)
    assert hutch_plus_plus(lambda v: A @ v, 10, 3, seed=np.int64(3)) == hutch_plus_plus(lambda v: A @ v, 10, 3, seed=3)


@pytest.mark.parametrize("seed, words", [(2 ** 64, "18446744073709551616"), (-2 ** 63 - 1, "-9223372036854775809"),
                                         (2.0, "2.0"), (True, "True")])
def test_the_curvature_operator_names_a_seed_beyond_the_generators_range(seed, words):
    # 2**64 failed at the first product in torch's "Overflow when unpacking long long"
    import catapult

    model, batch = torch.nn.Linear(3, 2), (torch.ones(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=rf"^HessianOperator seed must be an integer in \[-2\*\*63, 2\*\*64\); got {words}$"):
        catapult.hessian_trace(model, torch.nn.MSELoss(), batch, seed=seed, matvecs=3)
    # a 0-d tensor is the seed it holds (it was refused)
    assert catapult.hessian_trace(model, torch.nn.MSELoss(), batch, seed=torch.tensor(3), matvecs=3) == \
        catapult.hessian_trace(model, torch.nn.MSELoss(), batch, seed=3, matvecs=3)


@pytest.mark.parametrize("vocab_size", [300.5, "300", 300.0, True, 256])
def test_a_bpe_vocabulary_size_is_an_integer_before_any_training(vocab_size, tmp_path):
    # int(vocab_size) on the way to the cache key made 300.5 and "300" a trained vocabulary of 300 ids
    from catapult.data import load_dataset
    from catapult.data.text import load_bpe_corpus
    from catapult.data.tokenize import train_bpe

    with pytest.raises(ValueError, match=r"^load_dataset vocab_size must be an integer >= 257; got "):
        load_dataset("shakespeare", tokenizer="bpe", vocab_size=vocab_size, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^load_bpe_corpus vocab_size must be an integer >= 257; got "):
        load_bpe_corpus("shakespeare", vocab_size=vocab_size, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^train_bpe vocab_size must be an integer >= 257; got "):
        train_bpe(["abc"], vocab_size)
    assert not any(tmp_path.iterdir())   # refused before anything was trained or written


@pytest.mark.parametrize("key, value", [("steps", 2.5), ("searches", "7"), ("forward_passes", -3), ("steps", True)])
def test_persistent_warmup_restores_integer_counters_only(key, value):
    # int() restored steps=2.5 as 2 and searches="7" as 7; forward_passes=-3 came back as it was
    from catapult.schedules import PersistentCatapultWarmup

    model = torch.nn.Linear(2, 1)
    warmup = PersistentCatapultWarmup(torch.optim.SGD(model.parameters(), lr=0.0), model, torch.nn.MSELoss(), 1.0)
    state = warmup.state_dict() | {key: value}
    with pytest.raises(ValueError, match=rf"^PersistentCatapultWarmup state_dict {key} must be an integer >= 0; got "):
        warmup.load_state_dict(state)
    warmup.load_state_dict(warmup.state_dict() | {key: np.int64(4)})
    assert getattr(warmup, key) == 4 and type(getattr(warmup, key)) is int


@pytest.mark.parametrize("workers", [0, -3, True, 2.5, "2"])
def test_run_demo_refuses_a_worker_count_before_any_work(workers, tmp_path):
    # workers=0 ran the default 2 processes and -3 / True one, silently; 2.5 failed in the pool
    from catapult.demo import run_demo

    with pytest.raises(ValueError, match=r"^run_demo workers must be None or an integer >= 1; got "):
        run_demo(tmp_path / "demo", workers=workers)
    assert not (tmp_path / "demo").exists()


def test_the_ray_executor_keeps_its_counts_as_ints():
    from catapult.sweep.ray_executor import _check_counts

    counts = _check_counts(chunk_size=(np.int64(2), 1), max_retries=(-1, -1), num_cpus=(None, 1))
    assert counts == {"chunk_size": 2, "max_retries": -1, "num_cpus": None} and type(counts["chunk_size"]) is int
    with pytest.raises(ValueError, match=r"^RayExecutor num_cpus must be None or an integer >= 1; got True$"):
        _check_counts(num_cpus=(True, 1))


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_iter=0), r"max_iter must be an integer in \[1, 100000\]; got 0"),            # one value for k=2
    (dict(max_iter=True), r"max_iter must be an integer in \[1, 100000\]; got True"),
    (dict(max_iter=3.5), r"max_iter must be an integer in \[1, 100000\]; got 3.5"),
    (dict(tol=float("inf")), r"tol must be a finite number in \(0, 1\); got inf"),     # a wrong pair, "converged"
    (dict(max_basis=8.0), "max_basis must be None or an integer >= 2; got 8.0"),
    (dict(seed=3.5, block_size=2), r"seed must be an integer in \[-2\*\*63, 2\*\*64\); got 3.5"),
    (dict(dimension="30"), "dimension must be an integer >= 1; got '30'"),
])
def test_lanczos_top_k_checks_its_solver_arguments(kwargs, words):
    from catapult.curvature.spectrum import lanczos_top_k

    A = torch.diag(torch.arange(1.0, 31.0, dtype=torch.float64))
    v0 = torch.ones(30, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"^lanczos_top_k {words}$"):
        lanczos_top_k(lambda v: A @ v, v0, 2, **kwargs)
    eig = lanczos_top_k(lambda v: A @ v, v0, np.int64(2), max_iter=np.int64(300), tol=1e-10)
    assert eig.values == pytest.approx([30.0, 29.0], rel=1e-9) and eig.converged


def test_gi_adam_seeds_follow_the_seed_rule_in_groups_too():
    from catapult.optim import GIAdam

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert GIAdam(params, v0="random", seed=torch.tensor(3)).defaults["seed"] == 3   # it was refused
    with pytest.raises(ValueError, match=r"^GIAdam seed must be an integer in \[-2\*\*63, 2\*\*64\); got True$"):
        GIAdam(params, seed=True)
    opt = GIAdam(params)
    with pytest.raises(ValueError, match=r"^GIAdam param group 1: seed must be an integer in \[-2\*\*63, 2\*\*64\); got 1.5$"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "seed": 1.5})


@pytest.mark.parametrize("in_features, words", [
    ("3072", "a positive integer or a sample shape \\(C, H, W\\); got '3072'"),   # read as the shape ("3", "0", "7", "2"): 3 channels
    (True, "a positive integer or a sample shape \\(C, H, W\\); got True"),       # one flat feature: 1 channel
    (0, "an integer >= 1; got 0"),
    ((3, 0, 32), "a positive integer; got 0"),
])
def test_wrn_from_config_reads_in_features_by_the_rule(in_features, words):
    from catapult.config import ModelConfig
    from catapult.models.wrn import WRN

    config = ModelConfig(name="wrn", depth=10, widen=1)
    with pytest.raises(ValueError, match=f"^WRN in_features must be {words}$"):
        WRN.from_config(config, in_features, 10)
    # a NumPy integer or a 0-d tensor is the size it holds (np.int64 failed: "not iterable"): 3 x 32 x 32
    assert WRN.from_config(config, np.int64(3072), 10).in_channels == 3
    assert WRN.from_config(config, torch.tensor(64), 10).in_channels == 1


@pytest.mark.parametrize("depth", [float("inf"), float("nan"), None])
def test_a_wrn_depth_that_is_no_number_is_named(depth):
    # int(depth): OverflowError at inf, "cannot convert float NaN to integer" and int()'s TypeError
    from catapult.models.wrn import WRN

    with pytest.raises(ValueError, match=rf"^WRN depth must be a positive integer; got {depth!r}$"):
        WRN(3, 10, depth=depth)


@pytest.mark.parametrize("kwargs, words", [
    (dict(probe=2.5), "probe must be an integer >= 1; got 2.5"),   # a probe of 2 samples
    (dict(probe=0), "probe must be an integer >= 1; got 0"),       # one sample
    (dict(probe="3"), "probe must be an integer >= 1; got '3'"),
    (dict(seed=1.5), r"seed must be an integer in \[-2\*\*63, 2\*\*64\); got 1.5"),
])
def test_activation_bytes_takes_an_integer_probe(kwargs, words):
    from catapult.curvature.lean import activation_bytes

    model, batch = torch.nn.Linear(2, 1, bias=False), (torch.zeros(10, 2), torch.zeros(10, 1))
    with pytest.raises(ValueError, match=f"^activation_bytes {words}$"):
        activation_bytes(model, torch.nn.MSELoss(), batch, **kwargs)
    # MSE saves the (10, 1) float32 output: 40 bytes, from a probe of any size
    assert activation_bytes(model, torch.nn.MSELoss(), batch, probe=np.int64(3)) == (40, 40)


@pytest.mark.parametrize("dimension", ["10", 10.5, True, 0])
def test_the_split_vectors_dimension_is_an_integer(dimension):
    # int(dimension) took "10" and 10.5 as 10 (lanczos_quadrature: a TypeError from min())
    from catapult.curvature import lanczos_top_eigenpair
    from catapult.curvature.lean import lean_top_eigenpair
    from catapult.curvature.spectrum import lanczos_quadrature

    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    v0 = torch.ones(10, dtype=torch.float64)
    for solve in (lanczos_top_eigenpair, lean_top_eigenpair):
        with pytest.raises(ValueError, match=rf"^{solve.__name__} dimension must be an integer >= 1; got "):
            solve(lambda v: A @ v, v0, dimension=dimension)
    with pytest.raises(ValueError, match=r"^lanczos_quadrature dimension must be an integer >= 1; got "):
        lanczos_quadrature(lambda v: A @ v, v0, 3, dimension=dimension)


def test_the_ensemble_memory_fraction_is_a_number_in_its_range():
    # func_memory_fraction=True was the fraction 1.0 (isinstance(True, int)); np.float32(0.5) was refused
    from catapult.sweep.ensemble import EnsembleExecutor

    for bad in (True, 0, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"^EnsembleExecutor func_memory_fraction must be a finite number in \(0, 1\]; got "):
            EnsembleExecutor(func_memory_fraction=bad)
    assert EnsembleExecutor(func_memory_fraction=np.float32(0.5)).func_memory_fraction == 0.5
    with pytest.raises(ValueError, match=r"^EnsembleExecutor memory_mb must be a finite number > 0; got '100'$"):
        EnsembleExecutor(memory_mb="100")


@pytest.mark.parametrize("seed", [3.5, "3", True])
def test_the_sharded_operator_takes_its_seed_by_the_rule(seed):
    # int(seed): sharpness(distributed=True, seed=3.5) on an FSDP2 model used the seed 3, silently
    from catapult.curvature.sharded import ShardedHessianOperator

    batch = (torch.ones(4, 2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"^ShardedHessianOperator seed must be an integer in \[-2\*\*63, 2\*\*64\); got "):
        ShardedHessianOperator(torch.nn.Linear(2, 1), torch.nn.MSELoss(), batch, 1.0, seed=seed)


def test_executors_refuse_more_threads_than_openmp_can_make():
    # threads=10**6 passed and every cell failed in OpenMP (a segfault, or libgomp's exit), 2**31 in torch's words
    import os

    from catapult.sweep.executors import LocalExecutor

    most = max(64, 4 * (os.cpu_count() or 1))   # the CLI's --threads bound
    assert LocalExecutor(threads=most).threads == most
    for bad in (most + 1, 10 ** 6, 2 ** 31):
        with pytest.raises(ValueError, match=rf"^LocalExecutor threads must be None or an integer in \[1, {most}\]; got {bad}$"):
            LocalExecutor(threads=bad)


@pytest.mark.parametrize("kwargs, words", [(dict(vocab_size=300), "vocab_size is a BPE option"),
                                           (dict(vocab_size=300, cache_dir="c"), "vocab_size, cache_dir are BPE options")])
def test_load_dataset_refuses_bpe_options_under_the_char_tokenizer(kwargs, words):
    # vocab_size=300 with tokenizer="char" was dropped silently (the config refuses it: data.vocab_size)
    from catapult.data import load_dataset

    with pytest.raises(TypeError, match=f"^load_dataset: {words} and tokenizer is 'char'; set tokenizer='bpe' or leave"):
        load_dataset("shakespeare", context=8, n_train=2, n_test=2, **kwargs)
    assert load_dataset("shakespeare", context=8, n_train=2, n_test=2, vocab_size=4096).x_train.shape == (2, 8)


@pytest.mark.parametrize("seed", [3.5, "3", True])
def test_start_vectors_take_a_seed_by_the_rule(seed):
    # int(seed): start_vector(None, ..., seed=3.5) drew the seed-3 vector, silently
    from catapult.curvature.start import start_vector

    with pytest.raises(ValueError, match=r"^seeded_normal seed must be an integer in \[-2\*\*63, 2\*\*64\); got "):
        start_vector(None, 4, torch.float64, torch.device("cpu"), seed, tol=1e-3)
    assert torch.equal(start_vector(None, 4, torch.float64, torch.device("cpu"), np.int64(3), tol=1e-3),
                       start_vector(None, 4, torch.float64, torch.device("cpu"), 3, tol=1e-3))


@pytest.mark.parametrize("kwargs, words", [(dict(block=2.5), "block must be an integer >= 1; got 2.5"),
                                           (dict(block=True), "block must be an integer >= 1; got True"),
                                           (dict(capacity=2.5), "capacity must be None or an integer >= 1; got 2.5"),
                                           (dict(capacity=0), "capacity must be None or an integer >= 1; got 0")])
def test_a_krylov_basis_takes_integer_sizes(kwargs, words):
    # block=2.5 or capacity=2.5 failed at the first append (divmod, new_empty); True was a block of 1
    from catapult.curvature import KrylovBasis

    with pytest.raises(ValueError, match=f"^KrylovBasis {words}$"):
        KrylovBasis(torch.zeros(3, dtype=torch.float64), **kwargs)
    basis = KrylovBasis(torch.zeros(3, dtype=torch.float64), block=np.int64(2), capacity=torch.tensor(3))
    for row in torch.eye(3, dtype=torch.float64):
        basis.append(row)
    assert basis.size == 3 and [b.shape[0] for b in basis.blocks] == [2, 1]


@pytest.mark.parametrize("seed", [3.5, "3", True])
def test_a_random_second_moment_takes_an_integer_seed(seed):
    # int(seed): initial_second_moment(g, "random", seed=3.5) drew the seed-3 v0, silently
    from catapult.optim.rules import initial_second_moment

    g = torch.tensor([1.0, -2.0])
    with pytest.raises(ValueError, match=r"^initial_second_moment seed must be an integer; got "):
        initial_second_moment(g, "random", seed=seed)
    assert torch.equal(initial_second_moment(g, "random", seed=np.int64(3)), initial_second_moment(g, "random", seed=3))


@pytest.mark.parametrize("threads", [1.5, True, 0, 10 ** 6])
def test_torch_threads_takes_a_thread_count_by_the_rule(threads):
    # int(threads) made 1.5 and True one thread, silently; 0 failed in torch, 10**6 in OpenMP
    from catapult.sweep.executors import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match=r"^torch_threads threads must be None or an integer in \[1, \d+\]; got "):
        with torch_threads(threads):
            pass
    with torch_threads(np.int64(1)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_measure_spectrum_counts_follow_the_rule_and_name_the_flag():
    # np.int64(2) was refused ("--top-k must be an integer >= 0, got np.int64(2)"), unlike every other count
    from catapult.config import ConfigError, validate
    from catapult.engine.spectrum_study import measure_spectrum

    with pytest.raises(ConfigError) as info:
        measure_spectrum(validate({}), top_k=np.int64(2), trace_matvecs=2.5, density_runs=True, density_steps=0)
    assert info.value.problems == [("--trace-matvecs", "must be an integer >= 0; got 2.5"),
                                   ("--density-runs", "must be an integer in [0, 100000]; got True"),
                                   ("--density-steps", "must be an integer in [1, 100000]; got 0")]
    with pytest.raises(ConfigError) as info:
        measure_spectrum(validate({}), trace_matvecs=np.int64(2))
    assert info.value.problems == [("--trace-matvecs", "must be 0 (skip) or an integer >= 3; got 2")]


def test_worker_counts_are_bounded_as_the_cli_bounds_them():
    # EnsembleExecutor(workers=10**6) and StreamPool(10**6) were taken (a spawned process per chunk); the CLI's
    # --workers stopped at max_workers() (4 per CPU) already
    from catapult.arguments import max_workers
    from catapult.sweep.ensemble import EnsembleExecutor
    from catapult.sweep.workers import StreamPool

    most = max_workers()
    with pytest.raises(ValueError, match=rf"^EnsembleExecutor workers must be an integer in \[1, {most}\]; got {most + 1}$"):
        EnsembleExecutor(workers=most + 1)
    with pytest.raises(ValueError, match=rf"^StreamPool workers must be an integer in \[1, {most}\]; got {10 ** 6}$"):
        StreamPool(10 ** 6)
    pool = StreamPool(np.int64(most))
    assert pool.size == most
    pool.close()


def test_bpe_encode_array_chunk_chars_is_a_count():
    # chunk_chars=2.5 failed in str.find's words ("slice indices must be integers") at the first newline past it
    pytest.importorskip("tokenizers")
    from catapult.data.tokenize import train_bpe

    text = "a b\nc d\ne f\n" * 20
    vocab = train_bpe([text], vocab_size=300)
    for bad in (2.5, True, 0, "4"):
        with pytest.raises(ValueError, match=r"^BPEVocab.encode_array chunk_chars must be an integer >= 1; got "):
            vocab.encode_array(text, chunk_chars=bad)
    assert np.array_equal(vocab.encode_array(text, chunk_chars=np.int64(5)), vocab.encode_array(text))
