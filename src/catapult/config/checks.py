"""Cross-key checks: rules between keys that each validated on their own.

Each check is ``check(config) -> iterable of (dotted_key, message)`` on the completed plain
dict; :data:`CHECKS` lists them in the order :func:`catapult.config.validate` runs them.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

from catapult.config.lr import parse_lr
from catapult.config.sections import (BPE_VOCAB_SIZES, PRECONDITIONED_OPTIMIZERS, TEXT_DATASETS, AugmentConfig, DataConfig,
                                      ModelConfig, EvalConfig, OptimizerConfig, ScheduleConfig, SparsityConfig)

__all__ = ["CHECKS", "kink_problems", "step_size_factor", "sparsity_steps"]

Problems = Iterable[tuple[str, str]]


#: The fixed image side of each image dataset (``catapult.data``: digits ``(N, 1, 8, 8)``, CIFAR
#: ``(N, 3, 32, 32)``; a test checks them against the loaders): ``data.augment.crop`` must stay below it.
IMAGE_SIDES = {"digits": 8, "cifar10": 32, "cifar100": 32}


def _default(section, key: str):
    return section.model_fields[key].get_default(call_default_factory=True)


def _remove(section, key: str, dotted: str) -> str:
    """"remove it", with the way to do so from the command line, where a key the file sets
    cannot be taken out: the key at its default (``null`` is refused for most keys).

    >>> _remove(DataConfig, "vocab_size", "data.vocab_size")
    'remove it (on the command line: data.vocab_size=4096)'
    """
    return f"remove it (on the command line: {_override(section, key, dotted)})"


def _override(section, key: str, dotted: str) -> str:
    """The override that puts ``dotted`` at its default, as one shell word (``null``, ``false``,
    ``[0.9,0.999]``).

    >>> _override(OptimizerConfig, "betas", "optimizer.betas")
    'optimizer.betas=[0.9,0.999]'
    """
    value = _default(section, key)
    if isinstance(value, (list, tuple)):
        word = "[" + ",".join(str(v) for v in value) + "]"
    else:
        word = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{dotted}={word}"


def _remove_key(section, key: str, dotted: str) -> str:
    """"remove ``dotted``", with the override that does it on the command line."""
    return f"remove {dotted} (on the command line: {_override(section, key, dotted)})"


def _check_decay(config: dict) -> Problems:
    """A decay needs room after warmup; lr_final only means something with a decay."""
    sched, steps = config["schedule"], config["train"]["steps"]
    if sched["decay"] == "constant" and sched["lr_final"] is not None:
        yield ("schedule.lr_final", "is only used with schedule.decay cosine or linear; set it to null "
                                    "or choose a decay")
    try:
        lr = parse_lr(config["optimizer"]["lr"])
    except ValueError:
        lr = None
    final = sched["lr_final"]
    if sched["decay"] != "constant" and final is not None and lr is not None and not lr.relative \
            and final > lr.value:  # a c/lambda0 lr: checked once lambda_0 is known (engine.build)
        yield ("schedule.lr_final", f"{final:g} exceeds optimizer.lr ({lr.value:g}); the {sched['decay']} decay "
                                    f"falls from optimizer.lr to schedule.lr_final")
    warm = sched["warmup_steps"]
    if sched["decay"] != "constant" and sched["warmup"] == "catapult" and steps <= warm + 1:
        # checked before lambda_0 and the search, so against the latest peak the search can give: the
        # ramp lr_c + lr_trgt t / T reaches lr_trgt at ceil(T (1 - lr_c / lr_trgt)), from step 0 up to
        # T itself (lr_c < lr_trgt / T), one step after a linear warmup's T - 1; with train.steps T + 1
        # such a run's decay reached no update (steps 0..T all warmup, the last at the peak)
        yield ("schedule.decay", f"{sched['decay']} decay needs train.steps ({steps}) > schedule.warmup_steps + 1 "
                                 f"({warm + 1}) with schedule.warmup: catapult: the step-0 critical-lr search "
                                 f"puts the peak at step ceil(warmup_steps x (1 - lr_c / lr_trgt)), as late as "
                                 f"step {warm} itself, and the decay needs an update after it")
    elif sched["decay"] != "constant" and steps <= warm:
        yield ("schedule.decay", f"{sched['decay']} decay needs train.steps ({steps}) > "
                                 f"schedule.warmup_steps ({warm})")


def _check_lr_init(config: dict) -> Problems:
    """The linear warmup rises from ``schedule.lr_init`` to ``optimizer.lr``: an ``lr_init`` above an
    absolute lr made a "warmup" that fell (``warmup(1.0, 4, lr_init=2.0)``: 1.75, 1.5, 1.25, 1.0); a
    ``c/lambda0`` lr is checked once lambda_0 is known (:func:`catapult.engine.build.check_lr_init`). An
    ``lr_init`` beyond the dtype's range is :func:`_check_dtype_range`'s to name."""
    sched = config["schedule"]
    if sched["warmup"] != "linear":  # lr_init is refused there (_check_catapult_warmup)
        return
    try:
        lr = parse_lr(config["optimizer"]["lr"])
    except ValueError:
        return
    top = DTYPE_MAX[config["dtype"]] / step_size_factor(config["optimizer"])
    if not lr.relative and lr.value < sched["lr_init"] <= top:
        yield ("schedule.lr_init", f"{sched['lr_init']:g} exceeds optimizer.lr ({lr.value:g}); the linear warmup "
                                   f"rises from schedule.lr_init to optimizer.lr")


def _check_data_root(config: dict) -> Problems:
    if config["data"]["name"] == "digits" and config["data"]["root"] is not None:
        yield ("data.root", "digits ship with scikit-learn and take no root; set data.root to null")


def _check_model_data(config: dict) -> Problems:
    """Text data go with the gpt, images with the mlp; model options only where they apply."""
    data, model = config["data"], config["model"]
    text = data["name"] in TEXT_DATASETS
    if text and model["name"] != "gpt":
        yield ("model.name", f"data.name {data['name']!r} is text; it trains model.name: gpt")
    if not text and model["name"] == "gpt":
        yield ("data.name", f"model.name gpt trains on text: data.name one of {', '.join(TEXT_DATASETS)}")
    if data["name"] == "text" and data["root"] is None:
        yield ("data.root", "data.name text reads your files: set data.root to a text file or a directory "
                            "with wiki.train.raw / wiki.valid.raw or *.txt")
    if data["name"] == "shakespeare" and data["root"] is not None:
        yield ("data.root", "shakespeare is embedded and takes no root; set data.root to null "
                            "(or data.name: text for your own files)")
    if text and config["train"]["accuracy_failure"] == "on":  # was taken and never applied
        yield ("train.accuracy_failure", f"on applies the paper's 1.5 x chance rule to image data; data.name "
                                         f"{data['name']!r} is text (no class chance): use auto or off")
    if not text:
        for key in ("context", "val_fraction"):
            if data[key] != _default(DataConfig, key):
                yield (f"data.{key}", f"is a text-data option (data.name is {data['name']!r}); "
                                      f"{_remove(DataConfig, key, f'data.{key}')}")
    table_form = model["parametrization"].startswith("supar") or (
        model["parametrization"] == "mup" and (model["base_width"] is not None or model["name"] == "gpt"))
    # Under sp the multipliers are not used (so one study config can sweep sp, mup and supar);
    # the mlp's muP without base_width is the warmup paper's form, which has none either.
    if model["parametrization"] != "sp" and not table_form:
        for key in ("alpha_in", "alpha_out"):
            if model[key] != 1.0:
                yield (f"model.{key}", "is a multiplier of the SμPar-table form: use parametrization "
                                       "supar (or its ablations), or mup with model.base_width, or "
                                       + _remove(ModelConfig, key, f"model.{key}"))
    if model["name"] == "gpt":
        if model["width"] % model["n_heads"]:
            yield ("model.n_heads", f"{model['n_heads']} does not divide model.width ({model['width']})")
        if model["activation"] not in ("relu", "gelu"):
            yield ("model.activation", f"{model['activation']!r} is not a gpt activation; allowed: relu, gelu")
        if model["init"] != "normal":
            yield ("model.init", "the gpt initializes from a normal distribution; "
                                 f"{_remove(ModelConfig, 'init', 'model.init')}")
    else:
        for key in ("init_std", "n_heads", "positions", "tie_embeddings"):
            if model[key] != _default(ModelConfig, key):
                yield (f"model.{key}", f"is a gpt option (model.name is {model['name']!r}); "
                                       f"{_remove(ModelConfig, key, f'model.{key}')}")


def _check_adam_family(config: dict) -> Problems:
    """GI-Adam options only with gi-adam, SGD's momentum only with sgd and the Adam family's betas
    and eps only with it (each was accepted and ignored: a sweep over it gave identical cells);
    pre-conditioned sharpness only where it is defined."""
    opt = config["optimizer"]
    if opt["name"] != "sgd" and opt["momentum"] != _default(OptimizerConfig, "momentum"):
        yield ("optimizer.momentum", f"is sgd's heavy-ball momentum; the {opt['name']} optimizer takes "
                                     f"optimizer.betas instead: "
                                     + _remove_key(OptimizerConfig, "momentum", "optimizer.momentum"))
    if opt["name"] == "sgd" and opt["betas"] != _default(OptimizerConfig, "betas"):
        yield ("optimizer.betas", "are the Adam family's; optimizer.name is 'sgd' (its momentum is "
                                  "optimizer.momentum): " + _remove_key(OptimizerConfig, "betas", "optimizer.betas"))
    if opt["name"] == "sgd" and opt["eps"] != _default(OptimizerConfig, "eps"):
        yield ("optimizer.eps", "is the Adam family's epsilon; optimizer.name is 'sgd', which has none: "
                                + _remove_key(OptimizerConfig, "eps", "optimizer.eps"))
    if opt["name"] != "gi-adam":
        for key in ("v0", "v_bias_correction"):
            if opt[key] != _default(OptimizerConfig, key):
                yield (f"optimizer.{key}", f"is a GI-Adam option (optimizer.name is {opt['name']!r}); set "
                                           f"optimizer.name: gi-adam or "
                                           + _remove_key(OptimizerConfig, key, f"optimizer.{key}"))
    if config["eval"]["sharpness_kind"] == "preconditioned" and opt["name"] not in PRECONDITIONED_OPTIMIZERS:
        yield ("eval.sharpness_kind", f"preconditioned needs optimizer.name one of: "
                                      f"{', '.join(PRECONDITIONED_OPTIMIZERS)} (got {opt['name']!r}); "
                                      f"use auto or hessian")
    if config["eval"]["sharpness_kind"] == "lr_scaled" and opt["name"] != "sgd":
        yield ("eval.sharpness_kind", f"lr_scaled is the (S)GD sharpness for per-group learning rates; it needs "
                                      f"optimizer.name: sgd (got {opt['name']!r}); use auto or preconditioned")


def _check_catapult_warmup(config: dict) -> Problems:
    """Options that only one warmup rule reads must not be set for another."""
    sched = config["schedule"]
    rule = sched["warmup"]
    if rule != "linear":
        for key in ("lr_init", "power"):
            if sched[key] != _default(ScheduleConfig, key):
                yield (f"schedule.{key}", f"is only used by schedule.warmup: linear (warmup is {rule!r}, "
                                          f"which starts at the critical lr); "
                                          f"{_remove(ScheduleConfig, key, f'schedule.{key}')}")
    if rule == "persistent" and sched["decay"] != "constant":
        yield ("schedule.decay", "persistent warmup ends at lr_trgt and keeps it; use decay: constant")
    # (warmup: linear runs no search: a linear cell of a grid over schedule.warmup failed on the lr_start its
    # catapult cells read, once the sweep resolved its c/lambda0, where `catapult train` of that cell ran)
    if rule != "linear" and sched["lr_start"] is not None:
        try:
            lr = parse_lr(config["optimizer"]["lr"])
        except ValueError:
            return
        if not lr.relative and sched["lr_start"] > lr.value:
            yield ("schedule.lr_start", f"{sched['lr_start']:g} exceeds optimizer.lr ({lr.value:g}); "
                                        "the search starts below lr_trgt: set a smaller one, or "
                                        + _remove(ScheduleConfig, "lr_start", "schedule.lr_start")
                                        + " for min(1e-4, lr_trgt)")


#: The largest finite value of each run dtype (``torch.finfo(dtype).max``; config imports no torch).
DTYPE_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}
#: The spacing of each run dtype's floats at 1 (``torch.finfo(dtype).eps``: 2**-23 and 2**-52).
DTYPE_EPS = {"float32": 2.0 ** -23, "float64": 2.0 ** -52}
#: The largest std whose square (a variance) is a finite float.
VARIANCE_STD_MAX = math.sqrt(DTYPE_MAX["float64"])


def step_size_factor(optimizer: dict) -> float:
    """The most an lr is multiplied by in the step size an optimizer hands torch as one scalar
    of the parameters' dtype: Adam's, AdamW's and GI-Adam's bias correction ``1 / (1 - beta1^t)``
    (``addcdiv(..., value=-lr / (1 - beta1^t))``), largest at ``t = 1``: ``1 / (1 - beta1)``; 1
    for SGD and RAdam (whose correction multiplies a tensor). ``optimizer``: the validated
    ``optimizer`` section.

    >>> step_size_factor({"name": "adam", "betas": [0.5, 0.999]}), step_size_factor({"name": "radam", "betas": [0.5, 0.999]})
    (2.0, 1.0)
    """
    if optimizer["name"] not in ("adam", "adamw", "gi-adam"):
        return 1.0
    return 1.0 / (1.0 - float(optimizer["betas"][0]))


def _check_dtype_range(config: dict) -> Problems:
    """Learning rates, the weight decay, Adam's ``eps`` and the gpt's ``model.init_std`` (whose square is its
    init variance) must be representable in the run's dtype: ``lr <= finfo(dtype).max``, and for Adam, AdamW and GI-Adam the first step size
    ``lr / (1 - beta1)`` too (:func:`step_size_factor`).

    torch converts the lr (Adam's step size; the L2 coefficient,
    ``grad.add(param, alpha=weight_decay)``) to the parameters' dtype in every update, so ``1e39``
    under float32 would fail (or turn into inf) at the first step, after the run directory was
    written. A ``c/lambda0`` lr is checked here on ``c`` and, once lambda_0 is measured, on
    ``c/lambda_0`` (:attr:`catapult.engine.build.Run.lr_target`).
    """
    dtype = config["dtype"]
    top = DTYPE_MAX[dtype]
    opt = config["optimizer"]
    try:
        lr = parse_lr(opt["lr"])
    except ValueError:
        lr = None
    values = [("optimizer.lr", None if lr is None else lr.value)]
    values += [(f"schedule.{key}", config["schedule"][key]) for key in ("lr_init", "lr_final", "lr_start")]
    values.append(("optimizer.weight_decay", opt["weight_decay"]))  # torch's add(alpha=wd)
    values.append(("optimizer.eps", opt["eps"]))  # an inf eps divided every step to 0: a run that never moved
    std = config["model"]["init_std"]
    if std is not None and std > min(top, VARIANCE_STD_MAX):  # the gpt's std**2 raised OverflowError
        why = (f"the range of {dtype} (max {top:.4g})" if top < VARIANCE_STD_MAX else
               f"{VARIANCE_STD_MAX:.4g}, whose square (the init variance) is the largest finite float")
        yield ("model.init_std", f"{std:g} is beyond {why}; use a smaller value")
    rtol, eps = config["schedule"]["rtol"], DTYPE_EPS[dtype]
    if rtol is not None and rtol < eps:   # was only a warning of critical_lr, once the run had started
        yield ("schedule.rtol", f"{rtol:g} is below the resolution of {dtype} (eps {eps!r}): the critical-lr "
                                f"search's trial steps that close to lr_c round to the same parameters and loss, "
                                f"and its bracket can miss lr_c by about eps; use rtol >= {eps!r}"
                                + (" or dtype: float64" if dtype != "float64" else ""))
    for key, value in values:
        if value is not None and abs(value) > top:
            yield (key, f"{value:g} is beyond the range of {dtype} (max {top:.4g}); use a smaller value "
                        f"or dtype: float64")
            continue
        stepped = key in ("schedule.lr_init", "schedule.lr_final") or (key == "optimizer.lr" and lr is not None
                                                                       and not lr.relative)
        factor = step_size_factor(opt)
        if stepped and value is not None and value * factor > top:  # Adam's step size: was a RuntimeError
            yield (key, f"{value:g} makes {opt['name']}'s first step size lr / (1 - beta1) = {value * factor:g} "
                        f"(optimizer.betas[0] = {opt['betas'][0]:g}), beyond the range of {dtype} (max "
                        f"{top:.4g}); use a smaller value or dtype: float64")


def _check_wrn_and_augment(config: dict) -> Problems:
    """The wrn's own keys (depth 6n+4, dense, relu, widen and channels instead of width); augmentation only
    for minibatch training of images (full-batch GD studies run on the fixed data: refused, not
    ignored, so a config never claims augmentation it did not get)."""
    data, model = config["data"], config["model"]
    if model["name"] == "wrn":
        depth = model["depth"]
        if depth < 10 or (depth - 4) % 6:
            yield ("model.depth", f"wrn depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); got {depth}")
        if model["density"] != 1.0 or model["base_density"] != 1.0:
            yield ("model.density", "the wrn's convolutions are dense: density and base_density must be 1")
        if model["channels"] < 2:
            yield ("model.channels", f"must be >= 2 for the wrn: with {model['channels']}, each pixel's LayerNorm "
                                     "after the stem normalises one channel to 0 and the output ignores the input")
        if model["activation"] != "relu":
            yield ("model.activation", f"the wrn uses relu; got {model['activation']!r}: set model.activation: relu")
        if model["width"] != _default(ModelConfig, "width"):
            yield ("model.width", "is not a wrn option: the wrn's widths are 16k, 32k, 64k with k = model.widen; "
                                  + _remove(ModelConfig, "width", "model.width"))
    else:
        for key in ("widen", "channels"):
            if model[key] != _default(ModelConfig, key):
                yield (f"model.{key}", f"is a wrn option (model.name is {model['name']!r}); "
                                       f"{_remove(ModelConfig, key, f'model.{key}')}")
    if model["name"] == "mlp" and model["depth"] < 3 and (model["density"] != 1.0 or model["base_density"] != 1.0):
        # the masks (and SμPar's density factor) are the hidden layers': a 0.25 run trained the dense network
        yield ("model.density", f"the mlp masks its hidden (width x width) layers and depth {model['depth']} has "
                                "none (input and readout stay dense): density and base_density must be 1, or "
                                "use model.depth >= 3")
    if (model["name"] == "mlp" and model["depth"] == 1 and model["base_width"] is not None
            and model["base_width"] != model["width"]):
        # its one layer has no width-sized dimension: m_d scaled its readout multiplier and SGD lr silently
        yield ("model.base_width", f"an mlp of depth 1 maps the inputs straight to the outputs, with no dimension "
                                   f"that grows with model.width, so base_width {model['base_width']} (m_d = "
                                   f"width / base_width) would scale a layer that does not grow; remove "
                                   "model.base_width or use model.depth >= 2")
    hidden = model["width"] if model["name"] in ("mlp", "gpt") and (model["name"] == "gpt" or model["depth"] >= 3) else 0
    # sparsity.static.keeps_no_entry's rule (this package imports no other of catapult's)
    if hidden and model["density"] < 1.0 and model["density"] * hidden * hidden < 0.5:
        # its exact mask kept 1 weight (density 1/width^2) while the run, SμPar's factor and the summary said density
        yield ("model.density", f"{model['density']:g} keeps round({model['density']:g} * {hidden}^2) = 0 weights of a "
                                f"{hidden}x{hidden} hidden matrix (the mask would keep 1: density {1 / hidden**2:.3g}); "
                                f"use model.density >= {0.5 / hidden**2:.3g} or a larger model.width")
    augment = data.get("augment") or {}
    on = [k for k in ("flip", "crop", "mixup") if augment.get(k)]
    off = " ".join(_override(AugmentConfig, k, f"data.augment.{k}") for k in on)
    if on and data["name"] in TEXT_DATASETS:
        yield ("data.augment", f"augments images; data.name {data['name']!r} is text: remove data.augment "
                               f"(on the command line: {off})")
    elif on and config["train"]["batch_size"] is None:
        yield ("data.augment", f"{', '.join(on)} set with full-batch GD (train.batch_size null): augmentation "
                               f"is for minibatch training; remove data.augment (on the command line: {off}) "
                               "or set train.batch_size")
    side = IMAGE_SIDES.get(data["name"])
    if side is not None and augment.get("crop") and augment["crop"] >= side:
        # the images' side is fixed by the dataset: known before the data is loaded (engine.run_data
        # found it only then, after the other problems of the config had been reported alone)
        yield ("data.augment.crop", f"{augment['crop']} is not below the {side}x{side} image side of "
                                    f"data.name {data['name']}: the largest shifts leave no pixel "
                                    f"(CIFAR: 4; 8x8 digits: 1)")


def _check_text_tokens(config: dict) -> Problems:
    """Tokenizer keys (issue 15) only for text data; mask dynamics only where there are masks."""
    data, model = config["data"], config["model"]
    low, high = BPE_VOCAB_SIZES
    unsized = data["vocab_size"] is None and data["tokenizer"] != "none"  # null: the shards' size, none only
    if unsized:
        # "remove it (on the command line: data.vocab_size=4096)" for both: bpe needs a size, char reads none
        default = _override(DataConfig, "vocab_size", "data.vocab_size")
        yield ("data.vocab_size", "null (the size pre-tokenised shards state) is for data.tokenizer none; " + (
            f"with bpe give the vocabulary's size, {low} to {high} (the key left out: {default.split('=')[1]}; "
            f"on the command line: {default})" if data["tokenizer"] == "bpe" else
            f"with {data['tokenizer']} the vocabulary is the text's characters and reads no size: leave the key "
            f"out (on the command line: {default}, its default, which {data['tokenizer']} does not read)"))
    sized = not unsized and (data["tokenizer"] == "none" or low <= data["vocab_size"] <= high)
    if not sized and not unsized:  # a tokenizer's size (as the key's own bound said before sizes below 257 were taken)
        yield ("data.vocab_size", f"expected an integer >= {low} and <= {high} with data.tokenizer "
                                  f"{data['tokenizer']}, got {data['vocab_size']}" + (
                                      " (fewer ids: pre-tokenised *.npy shards, data.tokenizer: none)"
                                      if data["vocab_size"] < low else ""))
    if data["name"] not in TEXT_DATASETS:
        for key in ("tokenizer", "vocab_size", "cache_dir"):
            if data[key] != _default(DataConfig, key) and (sized or key != "vocab_size") and data[key] is not None:
                yield (f"data.{key}", f"is a text-data option (data.name is {data['name']!r}); "
                                      f"{_remove(DataConfig, key, f'data.{key}')}")
    elif sized:
        yield from _check_token_ids(data)
    method = model["sparsity"]["method"]
    maskless = {"wrn": "the wrn's convolutions have none (dense); use static",
                "mlp": f"an mlp of depth {model['depth']} has no hidden layer to mask; use static or model.depth >= 3"}
    if method != "static" and (model["name"] == "wrn" or (model["name"] == "mlp" and model["depth"] < 3)):
        # "set model.density < 1" here, and the model's own check then asked for density 1
        yield ("model.sparsity.method", f"{method} changes masks, and {maskless[model['name']]}")
    elif method != "static" and model["density"] >= 1.0:
        yield ("model.sparsity.method", f"{method} changes masks: set model.density < 1 (the density kept, or "
                                        "for gmp reached), or model.sparsity.method: static for the dense model (a "
                                        "sweep's model.density axis may include 1: its cells run dense)")
    if method == "gmp" and model["name"] == "mlp" and model["depth"] >= 3:
        yield ("model.sparsity.method", "gmp prunes from dense and is available for model.name: gpt; use rigl")
    if method != "static" and model["density"] < 1.0 and config["train"]["steps"] >= 1:
        yield from _check_mask_updates(model["sparsity"], config["train"]["steps"])
    yield from _check_sparsity_options(model["sparsity"])
    if (model["sparsity"]["supar_density"] != _default(SparsityConfig, "supar_density")
            and model["sparsity"]["method"] == "gmp" and model["parametrization"] not in DENSITY_CORRECTED):
        yield ("model.sparsity.supar_density", f"is read by model.parametrization {', '.join(DENSITY_CORRECTED)} only "
                                               f"(sp and mup do not correct for the density; it is "
                                               f"{model['parametrization']!r}); "
                                               f"{_remove(SparsityConfig, 'supar_density', 'model.sparsity.supar_density')}")
    if model["name"] != "gpt" and not model["final_norm"]:
        yield ("model.final_norm", f"is a gpt option (model.name is {model['name']!r}); "
                                   f"{_remove(ModelConfig, 'final_norm', 'model.final_norm')}")


#: The ``model.sparsity`` keys each method reads (the others were accepted and ignored).
SPARSITY_OPTIONS = {"static": (), "rigl": ("update_every", "drop_fraction", "end_fraction"),
                    "gmp": ("update_every", "start_fraction", "end_fraction", "supar_density")}
#: The parameterizations whose init or lrs correct for the density (``model.sparsity.supar_density``).
DENSITY_CORRECTED = ("supar", "supar_init", "supar_lr")


def _check_token_ids(data: dict) -> Problems:
    """The tokenizer keys of text data: ``char`` takes neither ``data.vocab_size`` nor
    ``data.cache_dir``; ``none`` (pre-tokenised ``*.npy`` shards, whose vocabulary ``data.vocab_size``
    is at any size from 1, as ``train-ddp`` records it) reads ``data.root`` of ``data.name: text``
    and has no tokenizer's cache.

    >>> list(_check_token_ids({"name": "text", "root": "s", "tokenizer": "none", "vocab_size": 65, "cache_dir": None}))
    []
    >>> [key for key, _ in _check_token_ids({"name": "shakespeare", "root": None, "tokenizer": "none",
    ...                                      "vocab_size": 65, "cache_dir": "c"})]
    ['data.tokenizer', 'data.cache_dir']
    """
    if data["tokenizer"] == "none":
        if data["name"] != "text":  # (data.name text without a root is refused naming data.root)
            yield ("data.tokenizer", f"none reads pre-tokenised *.npy token shards at data.root (data.name: text), "
                                     f"and data.name is {data['name']!r}: use char or bpe")
        if data["cache_dir"] is not None:
            yield ("data.cache_dir", f"is a BPE option (the tokenizer's cache), and data.tokenizer is none: "
                                     f"{_remove(DataConfig, 'cache_dir', 'data.cache_dir')}")
    elif data["tokenizer"] == "char":
        for key in ("vocab_size", "cache_dir"):
            if data[key] != _default(DataConfig, key):
                yield (f"data.{key}", f"is a BPE option; set data.tokenizer: bpe or "
                                      f"{_remove(DataConfig, key, f'data.{key}')}")


def _check_sparsity_options(sparsity: dict) -> Problems:
    """A ``model.sparsity`` key its method does not read, set to another value than its default:
    static masks read none, rigl no ``start_fraction``, gmp no ``drop_fraction`` (a run or a sweep
    over one changed nothing, under the value asked for)."""
    method = sparsity["method"]
    for key in ("update_every", "drop_fraction", "start_fraction", "end_fraction", "supar_density"):
        if key not in SPARSITY_OPTIONS[method] and sparsity[key] != _default(SparsityConfig, key):
            users = " and ".join(m for m, keys in SPARSITY_OPTIONS.items() if key in keys)
            yield (f"model.sparsity.{key}", f"is read by model.sparsity.method {users} only (method is {method!r}); "
                                            f"{_remove(SparsityConfig, key, f'model.sparsity.{key}')}")


def sparsity_steps(sparsity: dict, steps: int) -> tuple[int, int]:
    """``(t_0, T_end)`` of a ``model.sparsity`` section over ``train.steps``: the steps nearest to
    ``start_fraction * steps`` and ``end_fraction * steps`` (GMP prunes from ``t_0`` through
    ``T_end``; RigL updates strictly before ``T_end``). The last mask update follows the optimizer
    step of ``t = steps - 1``, so GMP's ``T_end`` (the prune to the final density) is at most
    that step, and its ``t_0`` at most its ``T_end``.

    >>> sparsity_steps({"start_fraction": 0.29, "end_fraction": 0.75}, 100)
    (29, 75)
    >>> sparsity_steps({"method": "gmp", "start_fraction": 1.0, "end_fraction": 1.0}, 100)
    (99, 99)
    """
    start, end = int(round(sparsity["start_fraction"] * steps)), int(round(sparsity["end_fraction"] * steps))
    if sparsity.get("method") == "gmp" and steps >= 1:
        # T_end = steps was after the last update: the run ended above model.density (0.2617 for 0.25)
        end = min(end, steps - 1)
        start = min(start, end)
    return start, end


def _check_mask_updates(sparsity: dict, steps: int) -> Problems:
    """A dynamic-sparsity run whose masks would never change: it ran as a static (rigl) or a dense
    (gmp, whose masks start all ones) run, recorded under the method and density asked for."""
    start, end = sparsity_steps(sparsity, steps)
    if sparsity["method"] == "gmp":
        if sparsity["start_fraction"] > sparsity["end_fraction"]:
            yield ("model.sparsity.start_fraction", f"{sparsity['start_fraction']:g} is after end_fraction "
                   f"({sparsity['end_fraction']:g}): gmp would never prune and the model would stay dense; "
                   "set start_fraction <= end_fraction")
        elif end < 1:
            yield ("model.sparsity.end_fraction", f"{sparsity['end_fraction']:g} of train.steps ({steps}) is step 0 "
                   "(masks change after the steps t = 1 .. train.steps - 1): gmp would never prune and the model "
                   "would stay dense; raise end_fraction or train.steps")
    elif sparsity["update_every"] >= end:
        fix = f"set update_every < {end}" if end >= 2 else "raise end_fraction or train.steps"
        yield ("model.sparsity.update_every", f"{sparsity['update_every']} >= T_end = end_fraction * train.steps "
               f"= {end}: rigl updates masks at multiples of update_every before T_end, so it would never "
               f"change a mask (a static-mask run); {fix}")


def _check_spectrum(config: dict) -> Problems:
    """``eval.spectrum_block_size`` is the top-k solve's block: it needs that solve, and a block
    of ``k`` already finds ``k`` copies of an eigenvalue (a larger one only costs products and
    parameter-sized vectors)."""
    ev = config["eval"]
    block, k = ev["spectrum_block_size"], ev["spectrum_top_k"]
    if block != 1 and not k:
        yield ("eval.spectrum_block_size", "sets the block of the top-k solve: set eval.spectrum_top_k or "
                                           + _remove(EvalConfig, "spectrum_block_size", "eval.spectrum_block_size"))
    elif k and block > k:
        yield ("eval.spectrum_block_size", f"at most eval.spectrum_top_k = {k} (a block of k finds k copies "
                                           f"of an eigenvalue); got {block}")


def kink_problems(config: dict, dtype: str, source: str) -> Problems:
    """The keys in the way of finite-difference Hessian-vector products of ``config``'s model in
    ``dtype``, from ``source`` (the key that makes them): below float64 their steps cross ReLU
    kinks, and :mod:`catapult.curvature.difference` refuses them (a wrn is ReLU throughout)."""
    if dtype == "float64":
        return
    model = config["model"]
    why = f"its Hessian-vector products are finite differences ({source}), and in {dtype} their steps cross ReLU kinks"
    # the measurement's own ways out: exact products, or differences in float64 for it alone
    exact = (", or eval.sharpness_hvp: auto (exact products) or eval.sharpness_dtype: float64"
             if source == "eval.sharpness_hvp" else "")
    if model["name"] == "wrn":
        yield (source, f"a wrn is measured by double backprop (or in dtype: float64{exact}): {why}")
    elif model["activation"] == "relu":
        yield ("model.activation", f"use {'gelu' if model['name'] == 'gpt' else 'gelu or tanh'} (or dtype: "
                                   f"float64{exact}) to measure sharpness: {why}")


def _check_difference_products(config: dict) -> Problems:
    """``eval.sharpness_hvp: finite_difference`` where :func:`kink_problems` says its products
    are refused: before any work rather than at the first product, whichever command measures
    (``train``'s sharpness or ``c/lambda0``, ``spectrum``, ``critical-lr``'s ``2 / lambda_0``).
    (``train.fsdp``, whose products are always differences, names this with the other keys a
    sharded run refuses: :func:`catapult.engine.fsdp.check_fsdp`.)"""
    ev = config["eval"]
    if ev["sharpness_hvp"] == "finite_difference" and not config["train"]["fsdp"]:
        yield from kink_problems(config, ev["sharpness_dtype"] or config["dtype"], "eval.sharpness_hvp")


#: The cross-key checks, run in this order on a config whose keys validated individually.
CHECKS: list[Callable[[dict], Problems]] = [
    _check_decay, _check_lr_init, _check_data_root, _check_model_data, _check_adam_family, _check_catapult_warmup,
    _check_dtype_range, _check_wrn_and_augment, _check_text_tokens, _check_spectrum, _check_difference_products,
]
