"""``model_parameters``: a model's size from its config without building it (meta-device probes at
two depths, extrapolated), checked against the count of the model actually built; and a depth or
width no machine holds is refused by ``build_model`` in milliseconds, naming the keys."""
import pytest
import torch

from catapult.config import ConfigError, validate
from catapult.engine import MODELS, build, build_model
from catapult.engine.build import model_parameters

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
    with pytest.raises(ConfigError, match=r"model\.(width|widen)=\d+ and model\.depth=\d+ make a model of .* GiB, "
                                          r"more than this machine's .* GiB of memory; reduce model\.(width|widen)"):
        build_model(_config(model), 64, 10)


@pytest.mark.parametrize("dtype, refused", [(torch.float32, False), (torch.float64, True)])
def test_the_memory_check_counts_the_dtype_it_casts_to(dtype, refused, monkeypatch):
    # a machine with room for the float32 weights and one byte more: float64 weights do not fit
    config = _config({"name": "mlp", "width": 8, "depth": 3})
    weights = 4 * sum(p.numel() for p in build_model(config, 4, 2).parameters())
    monkeypatch.setattr(build, "_memory_bytes", lambda device: weights + 1)
    if refused:
        with pytest.raises(ConfigError, match="more than this machine's"):
            build_model(config, 4, 2, dtype=dtype)
    else:
        assert build_model(config, 4, 2, dtype=dtype).layers[0].weight.dtype == dtype


def test_a_model_too_large_for_the_gpu_names_the_gpu(monkeypatch):
    # the CPU builds it (plenty of RAM), the GPU cannot hold it in float64; no CUDA needed here
    config = _config({"name": "mlp", "width": 8, "depth": 3})
    weights = 4 * sum(p.numel() for p in build_model(config, 4, 2).parameters())
    monkeypatch.setattr(build, "_memory_bytes", lambda device: 10**12 if device.type == "cpu" else weights + 1)
    build._check_fits(config, 4, 2, torch.device("cuda:0"), torch.float32)  # fits
    with pytest.raises(ConfigError, match="more than cuda:0's"):
        build._check_fits(config, 4, 2, torch.device("cuda:0"), torch.float64)
