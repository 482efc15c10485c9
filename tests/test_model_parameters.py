"""``catapult.engine.model_size``: a model's size from its config without building it (meta-device
probes at two depths, extrapolated), checked against the count of the model actually built; a depth
or width no machine holds is refused by ``build_model`` in milliseconds, naming the keys; and
``check_model_fits`` refuses it from the config alone, before ``build_run`` loads data and before
``run_sweep`` writes its store (except on machines elsewhere)."""
from pathlib import Path

import pytest
import torch

from catapult.config import ConfigError, validate
from catapult.engine import MODELS, build, build_model
from catapult.engine import model_size
from catapult.engine.model_size import model_parameters

CASES = [
    # (model section, in_features, out_features): in = flattened input (mlp, wrn) or context (gpt)
    ({"name": "mlp", "width": 12, "depth": 1}, 20, 3),
    ({"name": "mlp", "width": 12, "depth": 2, "bias": True}, 20, 3),
    ({"name": "mlp", "width": 12, "depth": 7, "bias": True}, 20, 3),
    ({"name": "mlp", "width": 16, "depth": 5, "parametrization": "supar", "density": 0.25}, 64, 10),
    ({"name": "gpt", "width": 16, "depth": 1, "n_heads": 2}, 8, 30),
    ({"name": "gpt", "width": 16, "depth": 5, "n_heads": 4, "tie_embeddings": True}, 8, 30),
    ({"name": "gpt", "width": 16, "depth": 4, "n_heads": 2, "positions": "sinusoidal", "bias": False}, 8, 30),
    ({"name": "gpt", "width": 16, "depth": 3, "n_heads": 2, "parametrization": "supar", "density": 0.5}, 8, 30),
    ({"name": "wrn", "depth": 10, "widen": 1}, 64, 10),
    ({"name": "wrn", "depth": 28, "widen": 2}, 3 * 32 * 32, 10),
]


def _config(model: dict) -> dict:
    """A validated config around ``model`` (a gpt trains on text)."""
    return validate({"model": model, **({"data": {"name": "shakespeare"}} if model["name"] == "gpt" else {})})


@pytest.mark.parametrize("model, n_in, n_out", CASES, ids=lambda c: str(c) if isinstance(c, int) else
                         "-".join(f"{k}={v}" for k, v in c.items()))
def test_the_count_from_probes_is_the_built_models_count(model, n_in, n_out):
    config = _config(model)
    built = build_model(config, n_in, n_out)
    assert model_parameters(config, n_in, n_out) == sum(p.numel() for p in built.parameters())


def test_probing_leaves_the_global_random_stream_alone():
    config = validate({"model": {"name": "mlp", "width": 8, "depth": 9, "density": 0.5}})
    torch.manual_seed(3)
    model_parameters(config, 4, 2)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_probing_imports_no_torch_compile_machinery():
    # normal_ on a meta tensor runs torch's Python reference, whose first call imported torch._dynamo
    # (3-11 s on a loaded 2-core host): every sweep driver paid it in its impossible-cell check, a Ray
    # driver (which trains nothing) before Ray started. The counts are the built models' (CASES)
    import subprocess
    import sys

    probe = ("import sys\n"
             "from catapult.engine.model_size import model_parameters\n"
             "from test_model_parameters import CASES, _config\n"
             "print([model_parameters(_config(m), n_in, n_out) for m, n_in, n_out in CASES],\n"
             "      sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    built = [sum(p.numel() for p in build_model(_config(m), n_in, n_out).parameters()) for m, n_in, n_out in CASES]
    from torch_features import meta_factories_import_sympy   # here: its FSDP2 probe imports sympy with the file

    if out.stdout.strip() == f"{built} ['sympy']" and meta_factories_import_sympy():
        pytest.skip("this torch's meta tensor factories import sympy themselves (torch 2.2: torch.ones(2, "
                    "device='meta') runs a Python reference whose size check imports it): no model builds without")
    assert out.stdout.strip() == f"{built} []"


@pytest.mark.parametrize("model", [{"name": "mlp", "width": 256, "depth": 10**6},
                                   {"name": "gpt", "width": 64, "depth": 10**7, "n_heads": 4},
                                   {"name": "wrn", "depth": 6 * 10**6 + 4}])
def test_a_depth_no_machine_holds_is_refused_before_building(model, monkeypatch):
    # building 10**6 layers one by one took minutes before the first allocation failed: the
    # builder must only ever be called at the probes' small depths
    builder = MODELS[model["name"]]

    def only_small(model_cfg, *args):
        assert model_cfg["depth"] <= 16, "the model was built at its full depth"
        return builder(model_cfg, *args)

    monkeypatch.setitem(MODELS, model["name"], only_small)
    keys = (r"model\.width=\d+, model\.depth=\d+ and data\.context=64 make a model of .* GiB, more than this "
            r"machine's .* GiB of memory; reduce one of them" if model["name"] == "gpt" else
            r"model\.(width|widen)=\d+ and model\.depth=\d+ make a model of .* GiB, "
            r"more than this machine's .* GiB of memory; reduce model\.(width|widen)")
    with pytest.raises(ConfigError, match=keys):
        build_model(_config(model), 64, 10)


def test_a_gpt_too_large_for_its_context_names_the_context():
    # the position table grows with data.context: a context of 10**11 was blamed on model.width=8
    # and model.depth=1 ("reduce model.width or model.depth")
    with pytest.raises(ConfigError, match=r"model\.width=8, model\.depth=1 and data\.context=100000000000 make a "
                                          r"model of .* GiB, more than this machine's .* GiB of memory; reduce one of them"):
        build_model(_config({"name": "gpt", "width": 8, "depth": 1, "n_heads": 2}), 10 ** 11, 65)


def test_a_gpt_too_large_for_its_vocabulary_names_the_vocabulary():
    # data.tokenizer: none takes up to 2^32 ids: a 512 GiB embedding was blamed on model.width=16,
    # model.depth=1 and data.context=16 alone (the same model with one id is 0.0002 GiB)
    config = validate({"model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2},
                       "data": {"name": "text", "root": "shards", "context": 16, "tokenizer": "none",
                                "vocab_size": 2 ** 32}})
    with pytest.raises(ConfigError, match=r"model\.width=16, model\.depth=1, data\.context=16 and a vocabulary of "
                                          r"4,294,967,296 ids \(data\.vocab_size\) make a model of .* GiB, more than "
                                          r"this machine's .* GiB of memory; reduce one of them"):
        build_model(config, 16, 2 ** 32)
    # the width is what makes it too large: the vocabulary is not named
    with pytest.raises(ConfigError, match=r"model\.width=4000000, model\.depth=1 and data\.context=16 make"):
        build_model(validate({"model": {"name": "gpt", "width": 4 * 10 ** 6, "depth": 1, "n_heads": 2},
                              "data": {"name": "shakespeare", "context": 16}}), 16, 65)


def test_a_vocabulary_the_shards_state_is_named_as_theirs_not_as_data_vocab_size(tmp_path):
    """data.tokenizer none without data.vocab_size (null: the size the shards' vocab_size.json states)
    and a file stating 2^32 ids: the refusal named data.vocab_size, which the config leaves unset, and
    setting it lower is refused against the file; it names the file."""
    import numpy as np

    np.save(tmp_path / "part0.npy", np.arange(100, dtype=np.uint16))
    (tmp_path / "vocab_size.json").write_text('{"vocab_size": 4294967296}')
    config = validate({"model": {"name": "gpt", "width": 16, "depth": 1, "n_heads": 2},
                       "data": {"name": "text", "root": str(tmp_path), "context": 16, "tokenizer": "none"}})
    assert config["data"]["vocab_size"] is None
    with pytest.raises(ConfigError, match=r"data\.context=16 and a vocabulary of 4,294,967,296 ids \(the "
                                          r"vocab_size\.json of data\.root\) make a model of") as err:
        build_model(config, 16, 2 ** 32)
    assert "(data.vocab_size)" not in str(err.value)


@pytest.mark.parametrize("dtype, refused", [(torch.float32, False), (torch.float64, True)])
def test_the_memory_check_counts_the_dtype_it_casts_to(dtype, refused, monkeypatch):
    # a machine with room for the float32 weights (and their tensors' TENSOR_BYTES each) and one byte more:
    # float64 weights do not fit
    config = _config({"name": "mlp", "width": 8, "depth": 3})
    params = list(build_model(config, 4, 2).parameters())
    weights = 4 * sum(p.numel() for p in params) + model_size.TENSOR_BYTES * len(params)
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: weights + 1)
    if refused:
        with pytest.raises(ConfigError, match="more than this machine's"):
            build_model(config, 4, 2, dtype=dtype)
    else:
        assert build_model(config, 4, 2, dtype=dtype).layers[0].weight.dtype == dtype


def test_a_model_too_large_for_the_gpu_names_the_gpu(monkeypatch):
    # the CPU builds it (plenty of RAM), the GPU cannot hold it in float64; no CUDA needed here
    config = _config({"name": "mlp", "width": 8, "depth": 3})
    weights = 4 * sum(p.numel() for p in build_model(config, 4, 2).parameters())
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 10**12 if device.type == "cpu" else weights + 1)
    model_size.check_fits(config, 4, 2, torch.device("cuda:0"), torch.float32)  # fits
    with pytest.raises(ConfigError, match="more than cuda:0's"):
        model_size.check_fits(config, 4, 2, torch.device("cuda:0"), torch.float64)


# ---- check_model_fits: refused from the config alone, before any data is loaded


@pytest.mark.parametrize("model, n_in, n_out", CASES, ids=lambda c: str(c) if isinstance(c, int) else
                         "-".join(f"{k}={v}" for k, v in c.items()))
def test_one_feature_and_one_class_give_a_lower_bound_on_the_count(model, n_in, n_out):
    # what makes a refusal by check_model_fits never wrong, whatever data the model trains on
    config = _config(model)
    assert 0 < model_parameters(config, 1, 1) <= model_parameters(config, n_in, n_out)


def test_a_run_with_a_model_too_large_is_refused_before_its_data_is_loaded(monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(build, "load_data", no_data)
    with pytest.raises(ConfigError, match=r"model\.width=1000000 and model\.depth=1000 make a model of"):
        build.build_run({"model": {"name": "mlp", "width": 10**6, "depth": 1000}})


def _grid(tmp_path, depths):
    from catapult.sweep.spec import load_sweep

    path = tmp_path / "grid.yaml"
    path.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                    "model: {name: mlp, width: 100000, depth: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
                    f"train: {{steps: 1}}\neval: {{sharpness_every: 0}}\nsweep: {{grid: {{model.depth: {depths}}}}}\n")
    return load_sweep(path)


def test_a_sweep_refuses_every_cell_too_large_before_writing_its_store(tmp_path):
    from catapult.sweep import run_sweep
    from sweep_fakes import FakeRun

    base, spec = _grid(tmp_path, [2, 10**6, 10**7])
    fake = FakeRun()
    with pytest.raises(ConfigError) as refused:
        run_sweep(base, spec, tmp_path / "s.db", run_fn=fake, progress="none")
    keys = [key for key, _ in refused.value.problems]
    assert keys == ["cell 1 (model.depth=1000000) model", "cell 2 (model.depth=10000000) model"]
    assert not (tmp_path / "s.db").exists() and fake.calls == []


def test_a_sweep_on_other_machines_leaves_the_check_to_them(tmp_path):
    # a cluster's machines may hold what this one cannot: the cell runs (here, a fake) and is recorded
    from catapult.sweep import run_sweep
    from catapult.sweep.executors import LocalExecutor
    from sweep_fakes import FakeRun

    base, spec = _grid(tmp_path, [10**6])
    fake = FakeRun()
    elsewhere = LocalExecutor(fake)
    elsewhere.runs_here = False
    outcome = run_sweep(base, spec, tmp_path / "s.db", executor=elsewhere, progress="none")
    assert outcome.counts.get("finished") == 1 and len(fake.calls) == 1



def test_a_sweep_refuses_more_eigenvalues_than_parameters_before_writing_its_store(tmp_path, capsys):
    # the digits MLP of width 8, depth 2 has 610 parameters (64*8 + 8*10 + 8 + 10); with one input
    # feature and one class it has 25, so spectrum_top_k = 100 and 700 need the data's shapes:
    # 100 passes, 700 is refused, before the store exists or a cell runs (it used to fail each cell)
    from catapult.cli import main
    from catapult.sweep import run_sweep
    from catapult.sweep.spec import load_sweep
    from sweep_fakes import FakeRun

    path = tmp_path / "grid.yaml"
    path.write_text("name: grid\ndata: {name: digits, n_train: 32, n_test: 16}\n"
                    "model: {name: mlp, width: 8, depth: 2}\noptimizer: {name: sgd, lr: 0.1}\n"
                    "train: {steps: 1}\neval: {sharpness_every: 1}\n"
                    "sweep: {grid: {eval.spectrum_top_k: [2, 100, 610, 611, 700]}}\n")
    base, spec = load_sweep(path)
    assert model_parameters(base, 1, 1) == 25 < 100
    fake = FakeRun()
    with pytest.raises(ConfigError) as refused:
        run_sweep(base, spec, tmp_path / "s.db", run_fn=fake, progress="none")
    assert refused.value.problems == [
        ("cell 3 (eval.spectrum_top_k=611) eval.spectrum_top_k",
         "611 eigenvalues asked of a model with 610 trainable parameters; at most 610"),
        ("cell 4 (eval.spectrum_top_k=700) eval.spectrum_top_k",
         "700 eigenvalues asked of a model with 610 trainable parameters; at most 610")]
    assert not (tmp_path / "s.db").exists() and fake.calls == []
    assert main(["sweep", str(path), "--store", str(tmp_path / "cli.db")]) == 2
    err = capsys.readouterr().err
    assert "cell 3 (eval.spectrum_top_k=611) eval.spectrum_top_k" in err and "Traceback" not in err
    assert not (tmp_path / "cli.db").exists()


# ---- a sweep sizes each model with its data's shapes (a lower bound alone let cells fail one by one)


def _sweep_file(tmp_path, data: str, model: str, grid: str = "{seed: [0, 1]}"):
    path = tmp_path / "grid.yaml"
    path.write_text(f"name: grid\ndata: {data}\nmodel: {model}\noptimizer: {{name: sgd, lr: 0.1}}\n"
                    f"train: {{steps: 1}}\neval: {{sharpness_every: 0}}\nsweep: {{grid: {grid}}}\n")
    return path


def _no_data(*args, **kwargs):
    raise AssertionError("the data was loaded")


def test_a_sweep_refuses_a_model_that_fits_one_feature_but_not_its_datas_shapes(tmp_path, monkeypatch, capsys):
    # digits are 8x8 (64 inputs), 10 classes: the bias-free width-10^7 MLP has 64e7 + 10e8 weights,
    # 2.96e9 bytes = 2.8 GiB in float32; at one input and one class it has 2e7 (0.07 GiB). On a
    # machine of 1 GiB the lower bound passes and every cell used to fail after the store was made
    from catapult.cli import main
    from catapult.sweep import cell_refusals

    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 2**30)
    monkeypatch.setattr(cell_refusals, "load_data", _no_data)  # digits' shapes are known without reading them
    path = _sweep_file(tmp_path, "{name: digits, n_train: 32, n_test: 16}",
                       "{name: mlp, width: 10000000, depth: 2, bias: false}")
    # (trained: with its gradients, 2 x 2.96e9 bytes = 5.5 GiB, as catapult train counts it)
    said = ("model.width=10000000 and model.depth=2 make a model of 5.5 GiB with 1 more copy of its weights (its "
            "gradients), more than this machine's 1.0 GiB of memory; reduce model.width "
            "or model.depth")
    for extra in ([], ["--dry-run"], ["--executor", "ensemble"]):
        assert main(["sweep", str(path), "--store", str(tmp_path / "s.db"), *extra]) == 2
        err = capsys.readouterr().err
        assert f"cell 0 (seed=0) model: {said}" in err and f"cell 1 (seed=1) model: {said}" in err
        assert "Traceback" not in err and not (tmp_path / "s.db").exists()
    monkeypatch.setattr(build, "load_data", _no_data)  # train refuses it before reading the data too
    with pytest.raises(ConfigError) as train:  # catapult train's words for the same model
        build.build_run({"data": {"name": "digits", "n_train": 32, "n_test": 16},
                         "model": {"name": "mlp", "width": 10**7, "depth": 2, "bias": False}}, trains=True)
    assert str(train.value) == f"model: {said}"


def test_a_sweep_loads_text_data_once_where_only_its_vocabulary_decides(tmp_path, monkeypatch):
    # a character vocabulary is the text's own: the gpt fits at one token id but not at the
    # file's 201 (200 characters + 1), nor surely at one per code point, so the data is read,
    # once for both cells, and both refused
    from catapult.engine import run_data
    from catapult.sweep import cell_refusals, run_sweep
    from catapult.sweep.spec import load_sweep
    from sweep_fakes import FakeRun

    text = tmp_path / "corpus.txt"
    text.write_text("".join(chr(0x100 + i) for i in range(200)) * 40, encoding="utf-8")
    model = "{name: gpt, width: 64, depth: 1, n_heads: 2}"
    base, spec = load_sweep(_sweep_file(tmp_path, f"{{name: text, root: '{text}', context: 8}}", model))
    small, large = model_parameters(base, 8, 1), model_parameters(base, 8, 201)
    # between the two, trained (float32 weights and their gradients: 8 bytes a parameter)
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 4 * small + 4 * large)
    loads = []
    monkeypatch.setattr(cell_refusals, "load_data", lambda config: loads.append(1) or run_data.load_data(config))
    fake = FakeRun()
    with pytest.raises(ConfigError) as refused:
        run_sweep(base, spec, tmp_path / "s.db", run_fn=fake, progress="none")
    assert [key for key, _ in refused.value.problems] == ["cell 0 (seed=0) model", "cell 1 (seed=1) model"]
    assert len(loads) == 1 and fake.calls == [] and not (tmp_path / "s.db").exists()
    with pytest.raises(ConfigError) as train:  # the same words as catapult train's
        build.build_run(base, trains=True)
    assert refused.value.problems[0][1] == train.value.problems[0][1]


def test_a_sweep_reads_no_data_where_the_model_fits_its_largest_shapes(tmp_path, monkeypatch):
    # bpe ids number at most data.vocab_size, char ids one per Unicode code point and the unknown
    # one: a model that fits at that many needs no reading
    from catapult.sweep import cell_refusals
    from catapult.sweep.driver import refuse_impossible_cells
    from catapult.sweep.spec import expand, load_sweep

    monkeypatch.setattr(cell_refusals, "load_data", _no_data)
    for data in ("{name: digits}", "{name: shakespeare, tokenizer: bpe, vocab_size: 512, context: 8}",
                 "{name: shakespeare, context: 8}"):
        model = "{name: gpt, width: 16, depth: 1, n_heads: 2}" if "shakespeare" in data else "{name: mlp, width: 16}"
        base, spec = load_sweep(_sweep_file(tmp_path, data, model))
        refuse_impossible_cells(expand(base, spec))  # fits: nothing loaded, nothing refused


def test_a_wrn_too_large_names_its_widen_key_not_a_width(monkeypatch):
    # the wrn's width key is model.widen (it has no model.width): the message names the key to change
    config = _config({"name": "wrn", "depth": 10, "widen": 1})
    weights = 4 * sum(p.numel() for p in build_model(config, 64, 10).parameters())
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: weights - 1)
    with pytest.raises(ConfigError, match=r"model\.widen=1 and model\.depth=10 make a model of .*; "
                                          r"reduce model\.widen or model\.depth"):
        build_model(config, 64, 10)


def test_an_allocation_error_is_reported_in_gib_of_the_bytes_it_asked_for():
    err = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                       "you tried to allocate 3221225472 bytes.")
    err = RuntimeError(f"{err}; can't allocate memory")
    message = str(model_size.size_error({"name": "mlp", "width": 10**5, "depth": 3}, err))
    assert "one tensor needs 3.0 GiB" in message  # 3221225472 = 3 * 2**30
    assert "model.width=100000 and model.depth=3 cannot be built here" in message


def test_a_sweep_over_the_dtype_judges_each_dtypes_size(tmp_path, monkeypatch):
    # mutation pass 21 (CR3): room for the trained float32 weights (and tensors) and one byte more (digits: 64 features, 10 classes): the
    # float64 cell is refused and the float32 one not (the verdict was kept by model and data alone: neither refused)
    from catapult.sweep import cell_refusals
    from catapult.sweep.driver import refuse_impossible_cells
    from catapult.sweep.spec import expand, load_sweep

    base, spec = load_sweep(_sweep_file(tmp_path, "{name: digits}", "{name: mlp, width: 8, depth: 3}",
                                        grid="{dtype: [float32, float64]}"))
    # trained (sgd): the weights and their gradients, 2 copies, each of 6 tensors (3 layers) of TENSOR_BYTES beside their values
    weights = 4 * model_parameters(base, 64, 10) + model_size.TENSOR_BYTES * 6
    monkeypatch.setattr(model_size, "_memory_bytes", lambda device: 2 * weights + 1)
    monkeypatch.setattr(cell_refusals, "load_data", _no_data)
    with pytest.raises(ConfigError, match="more than this machine's") as err:
        refuse_impossible_cells(expand(base, spec))
    assert "dtype=float64" in str(err.value) and "dtype=float32" not in str(err.value), str(err.value)


def test_a_sweep_refuses_a_trace_of_more_products_than_the_bound_on_a_large_model(tmp_path, monkeypatch):
    # mutation pass 21 (CR8): eval.trace_matvecs = 10^6 on an MLP of 64*400 + 400 + 400*400 + 400 + 400*10 + 10 =
    # 190,410 parameters runs min(10^6, 190,410) > MAX_PRODUCTS products: refused (the mutant let any trace pass
    # when spectrum_top_k fit)
    from catapult.sweep import cell_refusals
    from catapult.sweep.driver import refuse_impossible_cells
    from catapult.sweep.spec import expand, load_sweep

    path = tmp_path / "grid.yaml"
    path.write_text("name: grid\ndata: {name: digits}\nmodel: {name: mlp, width: 400, depth: 3}\n"
                    "optimizer: {name: sgd, lr: 0.1}\ntrain: {steps: 1}\n"
                    "eval: {sharpness_every: 1, trace_matvecs: 1000000}\nsweep: {grid: {seed: [0, 1]}}\n")
    base, spec = load_sweep(path)
    assert model_parameters(base, 64, 10) == 190_410
    monkeypatch.setattr(cell_refusals, "load_data", _no_data)
    with pytest.raises(ConfigError, match=r"eval.trace_matvecs: 1000000 products asked of a model with 190410"):
        refuse_impossible_cells(expand(base, spec))
