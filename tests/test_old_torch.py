"""``torch>=2.2`` (pyproject): the torch names catapult uses that came later each fall back or
fail gracefully. Found by resolving every ``torch.*`` name in src/ against torch 2.2.2's own
Python sources (its wheel); each test removes one name, as torch 2.2 lacks it, and checks the
fallback against the newer torch's answer or a closed form.

* ``torch.OutOfMemoryError`` (2.5): ``size_error`` named it for every error it judged;
* ``torch.compiler.is_compiling`` (2.3): a RigL layer's ``capture_dense_grad``;
* ``torch._inductor.runtime.cache_dir_utils``: the compiled products' error triage;
* ``torch.nn.attention`` (2.3): ``math_attention`` was a no-op (fused kernels, no double backward);
* ``torch.uint16`` / ``torch.uint32`` (2.3): the BPE token cache's ``from_numpy``;
* FSDP2's ``torch.distributed.fsdp.fully_shard`` (2.6): ``train.fsdp`` failed mid-setup.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from catapult import config as cfg
from torch_features import has_fsdp2


def test_size_errors_are_judged_without_torch_OutOfMemoryError(monkeypatch):
    # before: AttributeError: module 'torch' has no attribute 'OutOfMemoryError', for every error
    from catapult.engine.model_size import size_error

    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    model = {"name": "mlp", "width": 10**9, "depth": 3}
    assert "out of memory" in str(size_error(model, torch.cuda.OutOfMemoryError("CUDA out of memory")))
    assert "GiB" in str(size_error(model, RuntimeError("DefaultCPUAllocator: can't allocate memory: "
                                                       "you tried to allocate 8000000000 bytes")))
    with pytest.raises(ValueError, match="unrelated"):
        size_error(model, ValueError("unrelated"))


def test_a_rigl_layer_captures_its_dense_gradient_without_torch_compiler_is_compiling(monkeypatch):
    # before: AttributeError at capture_dense_grad = True (RigL's first mask update)
    from catapult.sparsity.static import MaskedLinear

    monkeypatch.delattr(torch.compiler, "is_compiling", raising=False)
    asked = []   # torch 2.2's torch._utils.is_compiling: False outside dynamo (newer torch's calls the removed one)
    monkeypatch.setattr(torch._utils, "is_compiling", lambda: asked.append(1) or False)
    gen = torch.Generator().manual_seed(0)
    layer = MaskedLinear(5, 4, density=0.5, generator=gen)
    layer.capture_dense_grad = True
    x = torch.randn(3, 5, generator=gen)
    (layer(x) ** 2).sum().backward()
    leaf = (layer.weight * layer.mask).detach().requires_grad_()   # truth: d/d(W ⊙ M)
    ((torch.nn.functional.linear(x, leaf, layer.bias.detach())) ** 2).sum().backward()
    assert torch.allclose(layer.dense_grad, leaf.grad) and asked


def test_inductors_cache_folder_is_found_without_cache_dir_utils(monkeypatch):
    # before: ModuleNotFoundError from the triage of a compiled product's error
    import getpass
    import os
    import tempfile

    from catapult.curvature import compiled

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        truth = default_cache_dir()
    except ImportError:   # torch 2.2: inductor's documented default, tmp/torchinductor_<user>
        truth = os.path.join(tempfile.gettempdir(), "torchinductor_" + getpass.getuser().replace("\\", "_"))
    monkeypatch.setitem(sys.modules, "torch._inductor.runtime.cache_dir_utils", None)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compiled._inductor_default_cache_dir() == truth
    err = RuntimeError("raised in the user's loss")
    try:
        raise err
    except RuntimeError:
        pass
    assert compiled._raised_by_user_code(err)   # this file is user code


def test_math_attention_turns_the_fused_kernels_off_without_torch_nn_attention(monkeypatch):
    # before: a no-op (nullcontext): flash and memory-efficient stayed on inside
    from catapult.curvature.hessian import math_attention

    cuda = torch.backends.cuda
    monkeypatch.setitem(sys.modules, "torch.nn.attention", None)
    before = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
    assert before[0] and before[1]   # torch's defaults
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    with math_attention():
        assert (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()) == (False, False, True)
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()) == before
    scores = torch.softmax(q @ q.transpose(-1, -2) / 2.0, dim=-1)   # truth: softmax(q k^T / sqrt(4)) v
    assert torch.allclose(out, scores @ q)


def test_token_ids_load_without_torch_uint16(monkeypatch):
    # before: torch.from_numpy(uint16) -- TypeError on torch < 2.3 (here: a uint16 tensor)
    from catapult.data.text import windows
    from catapult.data.token_cache import as_tensor

    ids = np.array([3, 65535, 0, 7, 9], dtype=np.uint16)
    monkeypatch.delattr(torch, "uint16", raising=False)
    t = as_tensor(ids)
    assert t.dtype == torch.int32 and t.tolist() == ids.tolist()
    x, y = windows(t, 2)
    assert x.dtype == torch.int64 and x.tolist() == [[3, 65535], [0, 7]] and y.tolist() == [[65535, 0], [7, 9]]
    monkeypatch.delattr(torch, "uint32", raising=False)
    big = as_tensor(np.array([2**32 - 1, 1], dtype=np.uint32))
    assert big.dtype == torch.int64 and big.tolist() == [2**32 - 1, 1]


def test_train_fsdp_without_fsdp2_is_a_config_error(monkeypatch):
    # before: check_fsdp passed, and shard_model's ImportError came mid-setup in every rank
    import torch.distributed.fsdp as fsdp

    from catapult.engine.fsdp import check_fsdp

    config = cfg.validate({"data": {"name": "shakespeare"}, "model": {"name": "gpt"}, "train": {"fsdp": True},
                           "eval": {"sharpness_every": 0}})
    if has_fsdp2():
        check_fsdp(config, distributed=True)   # this torch has FSDP2
    monkeypatch.delattr(fsdp, "fully_shard", raising=False)
    with pytest.raises(cfg.ConfigError, match=r"train.fsdp: needs FSDP2 .* this torch is"):
        check_fsdp(config, distributed=True)


def test_models_carry_and_check_their_parametrization_without_the_public_state_dict_hooks(monkeypatch):
    # before: AttributeError: 'MLP' object has no attribute 'register_state_dict_post_hook' at every
    # MLP / GPT / WRN built (torch 2.2 has only the private _register_state_dict_hook and
    # _register_load_state_dict_pre_hook(with_module=True))
    import io

    from catapult.models import MLP
    from catapult.parametrize_state import ParametrizationMismatch

    monkeypatch.delattr(torch.nn.Module, "register_state_dict_post_hook", raising=False)
    monkeypatch.delattr(torch.nn.Module, "register_load_state_dict_pre_hook", raising=False)
    # torch marks a hook function registered through the public name (_from_public_api), and its
    # private registration then refuses it: an earlier test in this process built a model; torch
    # 2.2 has no public name, so no mark
    from catapult import parametrize_state

    monkeypatch.delattr(parametrize_state._save_hook, "_from_public_api", raising=False)

    def mlp(parametrization, seed):
        torch.manual_seed(seed)
        return MLP(12, 3, width=32, depth=3, parametrization=parametrization, base_width=16, density=0.5)

    buffer = io.BytesIO()
    torch.save(mlp("supar", 0).state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    same = mlp("supar", 1)
    same.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), saved.values()))
    with pytest.raises(ParametrizationMismatch, match=r"parametrization 'supar'.*has parametrization 'mup'"):
        mlp("mup", 2).load_state_dict(saved)
