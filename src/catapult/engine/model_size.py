"""A model's size from its config, without building it, and the checks that refuse a model this
machine cannot hold before anything is allocated or any data loaded.

:func:`model_parameters` builds the config's model on the ``meta`` device at two small depths and
extrapolates in depth; :func:`check_model_fits` compares a lower bound of that count (the least
shapes the config's data can have, known without reading it) with the memory of the CPU or the
device. Torch's own size errors (out of memory, a shape past int64) become :func:`size_error`'s
:class:`~catapult.config.ConfigError` naming the width and depth keys. :data:`MODELS` is the
registry of builders both the count and :func:`catapult.engine.build.build_model` use.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from catapult import config as cfg
from catapult.arguments import MAX_PRODUCTS
from catapult.engine.run_data import data_shape_bounds
from catapult.models import GPT, MLP, WRN

__all__ = ["MODELS", "model_parameters", "check_fits", "check_model_fits", "optimizer_copies", "training_copies", "training_fit",
           "check_spectrum_fits", "check_labels", "check_token_outputs", "shipped_model", "size_error", "gpt_context"]


#: model.name -> builder(model_config, in_features, out_features) -> nn.Module. For the mlp
#: ``in_features`` is a flattened sample's size (the wrn reads its channels from it: 64 = 1x8x8,
#: 3072 = 3x32x32); for the gpt it is the context (tokens per window) and ``out_features`` the
#: vocabulary size.
MODELS: dict[str, Callable[[Mapping[str, Any], int, int], nn.Module]] = {
    "mlp": MLP.from_config, "gpt": GPT.from_config, "wrn": WRN.from_config}

#: The builders catapult ships: each gives ``out_features`` outputs (:func:`check_labels` trusts them).
_OWN_BUILDERS = dict(MODELS)


#: Two depths per model family between which, and beyond, each extra unit of depth adds the same
#: tensors (mlp: a hidden layer from depth 2; gpt: a block; wrn: one block per group, 6 depths).
_PROBE_DEPTHS = {"mlp": (2, 3), "gpt": (1, 2), "wrn": (10, 16)}


class _NoMetaDraws(torch.overrides.TorchFunctionMode):
    """Normal draws into ``meta`` tensors are skipped: such a tensor holds no values, and torch runs
    ``normal_`` on ``meta`` through its Python reference, whose first call imports ``torch._dynamo``
    (3-11 s on a loaded 2-core host), which every sweep driver paid in its impossible-cell check, a
    Ray driver (which trains nothing) before Ray started."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.normal_, nn.init.normal_):
            tensor = args[0] if args else kwargs.get("tensor")   # nn.init.normal_ passes it by name
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def model_parameters(config: Mapping[str, Any], in_features: int, out_features: int) -> int:
    """How many parameters the config's model has, found without building it: the model is built
    dense on the ``meta`` device (no storage) at the two depths of ``_PROBE_DEPTHS`` and the count
    extrapolated linearly in depth, which is exact since each extra layer or block is the same. So a
    mistyped ``model.depth=1000000`` is measured in milliseconds, not built for minutes.

    Example:
        >>> from catapult.config import validate
        >>> config = validate({"model": {"name": "mlp", "width": 10, "depth": 30, "bias": False}})
        >>> model_parameters(config, 4, 2) == 4 * 10 + 28 * 10 * 10 + 10 * 2
        True
    """
    return _model_counts(config, in_features, out_features)[0]


#: Bytes each parameter tensor of a built model holds on the CPU beside its values, at least: the
#: tensor and its Parameter, its storage, its module's share. Measured on torch 2.13 (a model's peak
#: RSS over its tensors, built on the CPU): 2.1 KiB (an MLP of width 1, depth 20,000), 3.5 KiB (the same
#: without biases; a GPT of width 2, 2,000 blocks), 3.6 KiB (a WRN of 700 blocks a group); half the least.
#: A step adds as much for each gradient and each tensor of the optimizer's state (an MLP of width 8,
#: depth 10,000: 2.9 KiB a gradient beside its values after backward; the first step 3.2 KiB a
#: parameter tensor for sgd, 3.5 with momentum, 4.5 for adam's three state tensors and their values).
TENSOR_BYTES = 1024


def _model_counts(config: Mapping[str, Any], in_features: int, out_features: int) -> tuple[int, int]:
    """``(parameters, parameter tensors)`` of the config's model, counted as :func:`model_parameters` says."""
    # masks are buffers: no parameter count change (and the mlp probed at depth 2 has no hidden layer to mask)
    model_cfg = {**config["model"], "density": 1.0, "base_density": 1.0}
    name, depth = model_cfg["name"], int(model_cfg["depth"])
    low, high = _PROBE_DEPTHS.get(name, (depth, depth))

    def count(at_depth: int) -> tuple[int, int]:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), _NoMetaDraws():
            model = MODELS[name]({**model_cfg, "depth": at_depth}, in_features, out_features)
        params = list(model.parameters())
        return sum(p.numel() for p in params), len(params)

    if depth <= high:
        return count(depth)
    at_low, at_high = count(low), count(high)
    return tuple(h + (h - l) * (depth - high) // (high - low) for l, h in zip(at_low, at_high))


def _memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (the machine's RAM for the CPU), or None where unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def _too_large(model: Mapping[str, Any], why: str, context: int | None = None, vocab: str | None = None) -> cfg.ConfigError:
    """The error for a model no machine here holds, naming its width key (``widen`` for the wrn)
    and ``model.depth``, and for the gpt ``data.context`` (``context``: its position table and
    buffers grow with it; ``data.context=10**11`` was blamed on a width of 8 and a depth of 1) and,
    where it is what makes the model too large, the vocabulary (``vocab``, :func:`_vocabulary`: 2^32
    ids with ``data.tokenizer: none`` were blamed on a width of 16, a depth of 1 and a context of 16)."""
    across = "widen" if model["name"] == "wrn" else "width"
    if context is not None:
        keys = f"model.{across}={model[across]}, model.depth={model['depth']}" + (
            f", data.context={context} and {vocab}" if vocab else f" and data.context={context}")
        return cfg.ConfigError([("model", f"{keys} {why}; reduce one of them")])
    return cfg.ConfigError([("model", f"model.{across}={model[across]} and model.depth={model['depth']} {why}; "
                                      f"reduce model.{across} or model.depth")])


def _vocabulary(config: Mapping[str, Any], in_features: int, out_features: int, have: int) -> str | None:
    """The gpt's vocabulary (``out_features`` ids) as :func:`_too_large` names it, where the same model
    with one id fits in ``have`` bytes (the vocabulary is what does not): the key that sets it with
    ``data.tokenizer`` bpe or none (none with the key unset: the shards' ``vocab_size.json``). None
    otherwise, and for the other models."""
    if config["model"]["name"] != "gpt" or out_features <= 1:
        return None
    try:
        if 4 * model_parameters(config, in_features, 1) > have:
            return None
    except (NotImplementedError, RuntimeError, TypeError, OverflowError):
        return None
    data = config.get("data") or {}
    key = " (data.vocab_size)" if data.get("tokenizer") in ("bpe", "none") else ""
    if data.get("tokenizer") == "none" and data.get("vocab_size") is None:
        # unset: the size the shards state (data.vocab_size set lower is refused against their file)
        key = " (the vocab_size.json of data.root)"
    return f"a vocabulary of {out_features:,} ids{key}"


def gpt_context(config: Mapping[str, Any], in_features: int) -> int | None:
    """``in_features`` where it is the gpt's context (the key :func:`_too_large` names), else None.

    >>> from catapult.config import validate
    >>> gpt_context(validate({"data": {"name": "shakespeare"}, "model": {"name": "gpt"}}), 64), gpt_context(validate({}), 64)
    (64, None)
    """
    return in_features if config["model"]["name"] == "gpt" else None


def check_fits(config: Mapping[str, Any], in_features: int, out_features: int, device: torch.device,
               dtype: torch.dtype, *, state_copies: int = 0, shards: int = 1) -> None:
    """Raise :class:`~catapult.config.ConfigError` when the model's weights exceed the memory of the
    CPU, where it is built in float32, or of ``device`` in ``dtype``; with ``state_copies``
    (:func:`training_copies`: a run that trains) the weights and that many more copies of them (its
    gradients and the optimizer's state) on ``device``, divided among ``shards`` processes
    (``train.fsdp``: each rank holds ``1 / shards`` of them, and all of the weights while it builds
    the model, so it needs the larger of the two). Every copy is a tensor for each parameter tensor,
    and the CPU holds each such tensor's :data:`TENSOR_BYTES` beside its values, wherever its values
    are (an FSDP rank too: it shards each parameter): a narrow model of millions of layers holds more
    in its tensors than in its weights.

    Example:
        >>> from catapult.config import validate
        >>> config = validate({"model": {"name": "mlp", "width": 10, "depth": 3}})
        >>> check_fits(config, 4, 2, torch.device("cpu"), torch.float64)   # 192 parameters: fits
        >>> check_fits(validate({"model": {"name": "mlp", "width": 10**5, "depth": 10**3}}), 4, 2,
        ...            torch.device("cpu"), torch.float32)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: model: model.width=100000 and model.depth=1000 make a model of 37,178.8 GiB, ...
    """
    try:
        params, tensors = _model_counts(config, in_features, out_features)
    except NotImplementedError:  # a layer the meta device cannot build: no estimate, no check
        return
    except (RuntimeError, TypeError, OverflowError) as err:  # a shape past int64, even on meta
        raise size_error(config["model"], err, context=gpt_context(config, in_features)) from None
    needed = 4 * params  # float32
    # built on the CPU in float32, then cast and moved: the CPU holds the larger of the two, and every
    # tensor's own bytes (TENSOR_BYTES: a width-8 mlp of depth 10**7 has 2.9 GiB of weights, and its
    # 2 * 10**7 tensors took 11 GiB of RSS in 5 minutes of building, on their way to ~40), its
    # gradients' and its optimizer state's too once it trains
    final = needed * torch.finfo(dtype).bits // 32
    trained = max(final, -(-final * (1 + state_copies) // shards))
    built, held = TENSOR_BYTES * tensors, TENSOR_BYTES * tensors * (1 + state_copies)
    # (size, its values, its tensors' bytes): the CPU's larger of the build and of training
    cpu = max((needed + built, needed, built), ((trained if device.type == "cpu" else 0) + held,
                                                 trained if device.type == "cpu" else 0, held))
    needs = [(torch.device("cpu"), *cpu)]
    if device.type != "cpu":
        needs.append((device, trained, trained, 0))
    for where, size, values, overhead in needs:
        have = _memory_bytes(where)
        if have is not None and size > have:
            owner = "this machine's" if where.type == "cpu" else f"{where}'s"
            share = (f"; the {1 + state_copies} copies, weights included, split among {shards} processes"
                     if shards > 1 else "")
            state, notes = "", []   # one parenthesis: what the copies are, then the tensors' bytes
            if state_copies and values == trained and trained > final:
                state = f" with {state_copies} more {'copy' if state_copies == 1 else 'copies'} of its weights"
                # state_copies is training_copies: the gradients, then the optimizer's state (none for plain sgd)
                notes.append("its gradients" + (f" and the {config['optimizer']['name']} optimizer's state"
                                                if state_copies > 1 else "") + share)
            if overhead >= size // 2:   # its tensors, not its values, fill the memory
                more = overhead // TENSOR_BYTES - tensors
                whose = "their gradients" + (" and optimizer state" if state_copies > 1 else "")
                notes.append(f"{tensors:,} parameter tensors" + (f" and {more:,} more for {whose}" if more else "")
                             + f", of at least {TENSOR_BYTES} bytes each beside their values")
            state += f" ({'; '.join(notes)})" if notes else ""
            raise _too_large(config["model"], f"make a model of {size / 2**30:,.1f} GiB{state}, more than {owner} "
                                              f"{have / 2**30:,.1f} GiB of memory", gpt_context(config, in_features),
                             _vocabulary(config, in_features, out_features, have * needed // max(size, 1)))


def optimizer_copies(config: Mapping[str, Any]) -> int:
    """Copies of the weights the config's optimizer keeps in its state once it steps, as torch keeps
    them: 2 for the Adam family (``exp_avg`` and ``exp_avg_sq``: adam, adamw, radam, gi-adam), 1 for
    sgd with ``momentum`` above 0 (``momentum_buffer``), 0 for plain sgd (no state).

    >>> [optimizer_copies({"optimizer": {"name": n, "momentum": m}}) for n, m in (("adam", 0), ("sgd", 0), ("sgd", 0.9))]
    [2, 0, 1]
    """
    from catapult.optim import registry

    optimizer = config["optimizer"]
    name = optimizer["name"]
    if name not in registry.names():
        return 0
    if registry.get(name).family == "adam":
        return 2
    return 1 if optimizer.get("momentum", 0.0) > 0 else 0


def training_copies(config: Mapping[str, Any]) -> int:
    """Copies of the weights, beyond the weights, that a run training the config holds from its
    first step: the gradients (1) and the optimizer's state (:func:`optimizer_copies`). A lower
    bound: the activations and torch's temporaries during a step are not counted.

    >>> training_copies({"optimizer": {"name": "adam"}}), training_copies({"optimizer": {"name": "sgd", "momentum": 0.0}})
    (3, 1)
    """
    return 1 + optimizer_copies(config)


def training_fit(config: Mapping[str, Any], world: int = 1) -> dict[str, int]:
    """The keywords of :func:`check_fits` for a run that trains ``config`` on ``world`` processes:
    the rule ``catapult train``, ``catapult train-ddp`` and a sweep's up-front check all count by.
    ``state_copies`` is :func:`training_copies` (the gradients and the optimizer's state); each
    data-parallel rank holds all of them (``shards`` 1), a ``train.fsdp`` rank ``1 / world`` of them.

    >>> training_fit({"optimizer": {"name": "adam"}, "train": {"fsdp": False}}, world=4)
    {'state_copies': 3, 'shards': 1}
    >>> training_fit({"optimizer": {"name": "adam"}, "train": {"fsdp": True}}, world=4)
    {'state_copies': 3, 'shards': 4}
    """
    return {"state_copies": training_copies(config), "shards": world if (config.get("train") or {}).get("fsdp") else 1}


def check_model_fits(config: Mapping[str, Any], device: torch.device | str = "cpu", *, state_copies: int = 0,
                     shards: int = 1) -> None:
    """Raise :class:`~catapult.config.ConfigError` when the config's model cannot fit in the memory
    of the CPU (or ``device``) whatever its data holds, before any data is loaded: the model is
    counted with the least shapes the config's data can have
    (:func:`catapult.engine.run_data.data_shape_bounds`: exact for the image datasets, the context
    and one token id for text), so the count is a lower bound and a refusal here is never wrong.
    :func:`catapult.engine.build.build_model` checks again with the data's own shapes.

    Example:
        >>> from catapult.config import validate
        >>> huge = validate({"model": {"name": "mlp", "width": 10**6, "depth": 10**3}})
        >>> check_model_fits(huge)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: model: model.width=1000000 and model.depth=1000 make a model of ...
    """
    least = data_shape_bounds(config["data"])[0]
    check_fits(config, *least, torch.device(device), getattr(torch, config["dtype"]), state_copies=state_copies,
               shards=shards)


def check_spectrum_fits(config: Mapping[str, Any], n_params: int) -> None:
    """Raise :class:`~catapult.config.ConfigError` naming ``eval.spectrum_top_k`` when it asks
    more eigenvalues of the Hessian than the model's ``n_params`` (trainable) parameters give, or
    ``eval.trace_matvecs`` when the products that run, ``min(it, n_params)``, exceed
    :data:`~catapult.arguments.MAX_PRODUCTS`.

    Example:
        >>> from catapult.config import validate
        >>> check_spectrum_fits(validate({"eval": {"sharpness_every": 1, "spectrum_top_k": 5}}), 5)
        >>> check_spectrum_fits(validate({"eval": {"sharpness_every": 1, "spectrum_top_k": 6}}), 5)
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: eval.spectrum_top_k: 6 eigenvalues asked of a model with 5 trainable parameters; at most 5
        >>> check_spectrum_fits(validate({"eval": {"sharpness_every": 1, "trace_matvecs": 10 ** 6}}), 5000)  # exact
        >>> check_spectrum_fits(validate({"eval": {"sharpness_every": 1, "trace_matvecs": 10 ** 6}}), 10 ** 6)
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: eval.trace_matvecs: 1000000 products asked of a model with 1000000 trainable parameters: min(it, 1000000) must be at most 100000
    """
    top_k = config["eval"].get("spectrum_top_k") or 0
    if top_k > n_params:
        raise cfg.ConfigError(f"{top_k} eigenvalues asked of a model with {n_params} trainable "
                              f"parameters; at most {n_params}", key="eval.spectrum_top_k")
    trace = config["eval"].get("trace_matvecs") or 0
    if min(trace, n_params) > MAX_PRODUCTS:   # a count >= n_params is the exact trace from n_params products
        raise cfg.ConfigError(f"{trace} products asked of a model with {n_params} trainable parameters: "
                              f"min(it, {n_params}) must be at most {MAX_PRODUCTS}", key="eval.trace_matvecs")


def shipped_model(name: str) -> bool:
    """Whether ``model.name`` builds one of catapult's own models (its :data:`MODELS` entry not
    replaced): one with the data's class count of outputs, which :func:`check_labels` need not run.

    >>> shipped_model("wrn"), shipped_model("mine")
    (True, False)
    """
    own = _OWN_BUILDERS.get(name)
    return own is not None and MODELS.get(name) == own


def check_labels(config: Mapping[str, Any], model: nn.Module, data: Any) -> None:
    """Raise :class:`~catapult.config.ConfigError` naming ``model.name`` when the data's integer
    labels (``data``: a :class:`~catapult.engine.run_data.RunData`; token ids for text) reach past
    the outputs of ``model``: a label of ``K`` or more for ``K`` outputs was, at the first step, a
    CUDA device-side assert (the process unusable) or torch's IndexError on the CPU. Once per run,
    before any work: a model catapult builds has the data's class count of outputs by construction
    (no check); a model of yours (an :data:`MODELS` entry) is run once on one training sample (eval
    mode, no gradient, the generators untouched) and its last dimension compared with the labels.

    Example:
        >>> from types import SimpleNamespace
        >>> from catapult.config import validate
        >>> data = SimpleNamespace(x_train=torch.zeros(2, 4), y_train=torch.tensor([0, 4]), y_test=torch.tensor([1]),
        ...                        num_classes=5)
        >>> MODELS["four"] = lambda model, n_in, n_out: nn.Linear(n_in, 4)   # out_features ignored
        >>> config = validate({"model": {"name": "mlp"}})
        >>> check_labels({**config, "model": {**config["model"], "name": "four"}}, nn.Linear(4, 4), data)
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: model.name: model 'four' gives 4 outputs per sample, but the training labels of data 'digits' reach 4 (5 classes): its builder must return a model of out_features=5 outputs
        >>> del MODELS["four"]
    """
    name = config["model"]["name"]
    if shipped_model(name):
        return
    parts = [(what, y) for what, y in (("training", data.y_train), ("test", data.y_test))
             if torch.is_tensor(y) and y.numel() and not (y.is_floating_point() or y.is_complex())]
    if not parts or any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return   # soft targets or none: no label to index with; a lazy module's weights: the first step draws them
    width = _output_width(model, data.x_train[:1])
    if width is None:
        return   # not a tensor of scores: the loss judges it
    for what, y in parts:
        low, high = (int(v) for v in torch.aminmax(y))
        bad = high if high >= width else low if low < 0 else None
        if bad is not None:
            raise cfg.ConfigError(
                f"model {name!r} gives {width} outputs per sample, but the {what} labels of data "
                f"{config['data']['name']!r} reach {bad} ({data.num_classes} classes): its builder must return a "
                f"model of out_features={data.num_classes} outputs", key="model.name")


def _output_width(model: nn.Module, x: torch.Tensor) -> int | None:
    """The last dimension of ``model(x)`` (eval mode, no gradient, the generators untouched; ``x``
    moved to the model's device and float dtype), ``None`` where the output is no tensor of scores."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None:  # data loaded in another dtype (the caller casts its batches)
        x = x.to(weight.device, weight.dtype if x.is_floating_point() else x.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            out = model(x)
    finally:
        model.train(was_training)
    return out.shape[-1] if torch.is_tensor(out) and out.dim() else None


def check_token_outputs(config: Mapping[str, Any], model: nn.Module, vocab_size: int, context: int) -> None:
    """:func:`check_labels` for a token stream (``catapult train-ddp``'s shards): a
    :class:`~catapult.config.ConfigError` naming ``model.name`` when a model of yours (the ``gpt``
    entry of :data:`MODELS` replaced) gives fewer scores per token than ``vocab_size``. Every id of
    the shards lies in ``0 .. vocab_size - 1`` (checked as they are opened) and is a label, so a label
    past its outputs was, at the first step, a CUDA device-side assert or a late error on the CPU.
    The model runs once on one window of ``context`` ids 0 (valid for any vocabulary); catapult's
    GPT has ``vocab_size`` outputs by construction (no check).

    Example:
        >>> config = {"model": {"name": "gpt"}}   # only model.name is read
        >>> class Bigram(nn.Module):   # ids -> 200 scores each, whatever vocabulary it is asked for
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb, self.out = nn.Embedding(300, 4), nn.Linear(4, 200)
        ...     def forward(self, idx):
        ...         return self.out(self.emb(idx))
        >>> MODELS["gpt"] = lambda model, context, vocab: Bigram()
        >>> check_token_outputs(config, Bigram(), 300, 8)
        Traceback (most recent call last):
        ...
        catapult.config.errors.ConfigError: model.name: model 'gpt' gives 200 outputs per token, but the token ids of data.root may reach 299 (vocabulary of 300 ids, each a label): its builder must return a model of out_features=300 outputs
        >>> MODELS["gpt"] = _OWN_BUILDERS["gpt"]
    """
    name = config["model"]["name"]
    if shipped_model(name) or any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return   # a lazy module's weights: the first step draws them
    width = _output_width(model, torch.zeros((1, context), dtype=torch.long))
    if width is not None and width < vocab_size:
        raise cfg.ConfigError(
            f"model {name!r} gives {width} outputs per token, but the token ids of data.root may reach "
            f"{vocab_size - 1} (vocabulary of {vocab_size} ids, each a label): its builder must return a model "
            f"of out_features={vocab_size} outputs", key="model.name")


#: Words of torch's errors for a tensor size it cannot hold or even compute.
_SIZE_ERROR_WORDS = ("can't allocate memory", "out of memory", "Overflow when unpacking",
                     "Storage size calculation overflowed")


def size_error(model: Mapping[str, Any], err: BaseException, context: int | None = None) -> BaseException:
    """A width/depth no machine holds is bad input: the :class:`~catapult.config.ConfigError`
    naming the keys for torch's size error ``err`` (out of memory, or a size beyond int64, with
    the bytes it asked for where it says), not a traceback; any other error is re-raised.
    ``context``: the gpt's ``data.context``, named too.

    Example:
        >>> err = RuntimeError("Storage size calculation overflowed with sizes=[99999999999, 99999999999]")
        >>> print(size_error({"name": "mlp", "width": 99999999999, "depth": 3}, err))
        model: model.width=99999999999 and model.depth=3 cannot be built here (a tensor size overflows int64); reduce model.width or model.depth
    """
    text = str(err)
    # torch.OutOfMemoryError from torch 2.5, torch.cuda's before (on torch 2.2 - 2.4 the name alone
    # raised AttributeError over the error judged here)
    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if not (isinstance(err, (MemoryError, out_of_memory)) or any(w in text for w in _SIZE_ERROR_WORDS)):
        raise err
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        reason = f"one tensor needs {int(found.group(1)) / 2**30:,.1f} GiB"
    elif "verflow" in text:
        reason = "a tensor size overflows int64"
    else:
        reason = "out of memory"
    return _too_large(model, f"cannot be built here ({reason})", context)
