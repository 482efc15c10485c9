"""The run config as typed pydantic models: one model per section, :class:`RunConfig` on top.

Each field declares, in one place, its type (``Literal[...]`` lists a choice's values,
``X | None`` makes it nullable), its check (an :class:`~catapult.config.options.Option` in
``Annotated``, giving the error messages and numeric leniencies), its default, its doc
(``description``) and, with ``json_schema_extra={"per_member": True}``, whether it may differ
between the members of one batched group (:func:`catapult.config.per_member_keys`).
Unknown keys are errors (``extra="forbid"``).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catapult.config.errors import describe, short_repr
from catapult.config.options import MAX_LAMBDA0_BATCHES, MAX_PRODUCTS, MAX_STEPS, NUMBER_TEXT, Option, as_float, boolean, choice, integer, number, numbers, string
from catapult.config.lr import learning_rate

__all__ = ["Section", "AugmentConfig", "DataConfig", "SparsityConfig", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
           "EvalConfig", "RunConfig", "TEXT_DATASETS", "BPE_VOCAB_SIZES", "MAX_TOKEN_IDS", "PRECONDITIONED_OPTIMIZERS", "RUN_NAME", "added_defaults", "drop_added_defaults"]

#: Datasets of tokens (trained by the gpt); the others are images (the mlp). Equals
#: ``catapult.data.TEXT_DATASETS``, which a test checks: config may not import the data layer.
TEXT_DATASETS = ("shakespeare", "text")

#: Optimizers whose curvature is the pre-conditioned sharpness (Adam, AdamW, GI-Adam).
PRECONDITIONED_OPTIMIZERS = ("adam", "adamw", "gi-adam")

#: ``data.vocab_size``'s bounds with ``data.tokenizer`` char or bpe: a byte-level BPE's sizes (256
#: byte symbols and at least one merge).
BPE_VOCAB_SIZES = (257, 1 << 20)
#: The most token ids ``data.vocab_size`` may say with ``data.tokenizer: none``: as many as a
#: ``vocab_size.json`` beside uint32 shards may state (:func:`catapult.data.text_shards.stated_vocab_size`),
#: so that a run's recorded size always validates again.
MAX_TOKEN_IDS = 1 << 32

#: A run name: a directory name of letters, digits and ``_ . + = -``.
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+=-]*"

DataName = Literal["digits", "cifar10", "cifar100", "shakespeare", "text"]
ModelName = Literal["mlp", "gpt", "wrn"]
Parametrization = Literal["sp", "mup", "supar", "supar_init", "supar_lr"]
Activation = Literal["relu", "tanh", "gelu", "linear"]
OptimizerName = Literal["sgd", "adam", "adamw", "radam", "gi-adam"]
Dtype = Literal["float32", "float64"]


def _per_member() -> dict[str, Any]:
    return {"per_member": True}


def _added(**extra: Any) -> dict[str, Any]:
    """Schema extra of a key added after sweeps were first stored: at its default it is left out of
    a sweep's identity (:func:`drop_added_defaults`), so stores written before it still resume."""
    return {"added": True, **extra}


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    """Training-time augmentation of image batches (:class:`catapult.data.Augment`): per sample,
    on the device, from the run's data seed; minibatch training only."""

    flip: Annotated[bool, boolean()] = Field(
        False, description="random horizontal flip of each training image (probability 1/2)")
    crop: Annotated[int, integer(low=0)] = Field(
        0, description="pad each side with this many zero pixels and crop a random window of the original "
                       "size (0 = off; below the image side; CIFAR: 4; 8x8 digits: 1, the same 1/8 of the side)")
    mixup: Annotated[float, number(low=0.0)] = Field(
        0.0, description="mixup: each sample mixes with a random partner at weight lam ~ Beta(a, a), labels "
                         "too (0 = off)")


class DataConfig(Section):
    name: Annotated[DataName, choice()] = Field(
        "digits", description="dataset: digits/cifar10/cifar100 (images, model mlp); shakespeare "
                              "(embedded) or text (your files at data.root) for the gpt")
    root: Annotated[str | None, string(what="a path (directory or archive)")] = Field(
        None, description="where the dataset files are (cifar: a directory or the .tar.gz; text: a "
                          "file or a directory with wiki.train.raw / wiki.valid.raw or *.txt)")
    n_train: Annotated[int | None, integer(low=1)] = Field(
        None, description="first N training samples (text: N windows of data.context tokens; null = all)")
    n_test: Annotated[int | None, integer(low=1)] = Field(
        None, description="first N test samples (text: N validation windows; null = all)")
    context: Annotated[int, integer(low=1)] = Field(
        64, description="text only: tokens per window (the gpt's context)")
    val_fraction: Annotated[float, number(low=0.0, high=1.0, low_open=True, high_open=True)] = Field(
        0.1, description="text only: tail of the characters held out for validation "
                         "(unless the files have their own split)")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="images, minibatch training only: flip, crop, mixup",
        json_schema_extra=_added())
    # -- tokens (issue 15) --
    tokenizer: Annotated[Literal["char", "bpe", "none"], choice()] = Field(
        "char", description="text only: char = one id per character; bpe = byte-level BPE trained on the "
                            "training split (Hugging Face tokenizers), saved as JSON and reused; none = the "
                            "*.npy shards at data.root are token ids already (what train-ddp records for them)",
        json_schema_extra=_added())
    vocab_size: Annotated[int | None, integer(low=1, high=MAX_TOKEN_IDS)] = Field(
        4096, description="text with tokenizer bpe: vocabulary size (256 byte symbols + merges, 257 to 1048576; "
                          "the papers: 4096); with tokenizer none: the shards' vocabulary, any size from 1 "
                          "(not set, or null: the size their vocab_size.json states, else 4096)",
        json_schema_extra=_added())
    cache_dir: Annotated[str | None, string(what="a directory path")] = Field(
        None, description="text with tokenizer bpe: where the tokenizer JSON and the uint16 token arrays go "
                          "(null = beside data.root if writable, else $CATAPULT_CACHE or ~/.cache/catapult/tokens)",
        json_schema_extra=_added())
    text_key: Annotated[str, string(pattern=r".+", what="a non-empty JSON field / parquet column name")] = Field(
        "text", description="train-ddp text shards: the JSON field (*.jsonl, one object a line) or the "
                            "string column (*.parquet) that holds each document's text",
        json_schema_extra=_added())

    @model_validator(mode="before")
    @classmethod
    def _unstated_vocabulary(cls, value: Any) -> Any:
        """With ``tokenizer: none`` and no ``vocab_size`` given, the size is the shards' to state
        (their ``vocab_size.json``): None, not the default 4096, which was then checked against the
        file as if the user had written it (what pydantic's ``model_fields_set`` would say of it).

        >>> DataConfig(name="text", tokenizer="none").vocab_size is None
        True
        >>> DataConfig(name="text", tokenizer="none", vocab_size=65).vocab_size, DataConfig().vocab_size
        (65, 4096)
        """
        if isinstance(value, dict) and value.get("tokenizer") == "none" and "vocab_size" not in value:
            value = dict(value, vocab_size=None)
        return value


class SparsityConfig(Section):
    """``model.sparsity``: how the masks of the hidden matrices evolve (``model.density`` is the
    density they have, or for gmp reach; see :mod:`catapult.sparsity.dynamic`)."""

    method: Annotated[Literal["static", "rigl", "gmp"], choice()] = Field(
        "static", description="static = masks fixed at init; rigl = drop by |W|, regrow by |grad| (density kept); "
                              "gmp = gradual magnitude pruning from dense to model.density (cubic schedule)")
    update_every: Annotated[int, integer(low=1, high=MAX_STEPS)] = Field(
        100, description="rigl/gmp: steps between mask updates")
    drop_fraction: Annotated[float, number(low=0.0, high=1.0, low_open=True)] = Field(
        0.3, description="rigl: initial drop fraction alpha (cosine-decayed to 0 at end_fraction)")
    start_fraction: Annotated[float, number(low=0.0, high=1.0)] = Field(
        0.0, description="gmp: pruning starts at this fraction of train.steps")
    end_fraction: Annotated[float, number(low=0.0, high=1.0, low_open=True)] = Field(
        0.75, description="rigl/gmp: no mask updates after this fraction of train.steps")
    supar_density: Annotated[Literal["final", "dense"], choice()] = Field(
        "final", description="gmp under SμPar (supar, supar_init, supar_lr): the density its init and lrs are "
                             "corrected for from step 0: final = model.density's count (the masks start all "
                             "ones), dense = the dense start (m_rho = 1 / base_density: SμPar under gmp is muP)",
        json_schema_extra=_added())


class ModelConfig(Section):
    name: Annotated[ModelName, choice()] = Field(
        "mlp", description="architecture: mlp (the warmup paper's FCN), wrn (WideResNet-depth-widen with "
                           "LayerNorm) or gpt (Pre-LN Transformer LM, text data)")
    width: Annotated[int, integer(low=1)] = Field(512, description="hidden width (gpt: d_model)")
    depth: Annotated[int, integer(low=1)] = Field(
        4, description="number of Linear layers (gpt: number of blocks; wrn: 6n+4, e.g. 16)")
    widen: Annotated[int, integer(low=1)] = Field(
        4, description="wrn only: widen factor k (group widths 16k, 32k, 64k)", json_schema_extra=_added())
    channels: Annotated[int, integer(low=1)] = Field(
        16, description="wrn only: base channels c, the stem's output (the paper's WRN: 16; group widths "
                        "c k, 2 c k, 4 c k; smaller values give small test networks, down to 2: a LayerNorm over one channel "
                        "ignores the input)", json_schema_extra=_added())
    parametrization: Annotated[Parametrization, choice()] = Field(
        "mup", description="init and multiplier rules; supar_init / supar_lr are the SμPar "
                           "ablations (SμPar init + muP lr / muP init + SμPar lr)")
    activation: Annotated[Activation, choice()] = Field(
        "relu", description="hidden nonlinearity (gpt: relu or gelu)")
    bias: Annotated[bool, boolean()] = Field(
        True, description="layers have (zero-initialized) biases; the paper's reference FCN has none")
    init: Annotated[Literal["normal", "trunc_normal"], choice()] = Field(
        "normal", description="weight init distribution")
    base_width: Annotated[int | None, integer(low=1)] = Field(
        None, description="muP base width (null = the model's default; wrn: the base widen factor)")
    density: Annotated[float, number(low=0.0, high=1.0, low_open=True)] = Field(
        1.0, description="fraction of hidden weights kept")
    base_density: Annotated[float, number(low=0.0, high=1.0, low_open=True)] = Field(
        1.0, description="density of the tuned proxy")
    mask_method: Annotated[Literal["exact", "bernoulli"], choice()] = Field(
        "exact", description="sparsity masks: exactly round(density * n) nonzeros per matrix, or Bernoulli")
    alpha_in: Annotated[float, number(low=0.0, low_open=True)] = Field(
        1.0, description="muP/SμPar input multiplier (mlp: table form, i.e. supar* or mup with "
                         "base_width; not used under sp)")
    alpha_out: Annotated[float, number(low=0.0, low_open=True)] = Field(
        1.0, description="muP/SμPar output multiplier, applied as alpha_out / m_d (not used under sp)")
    init_std: Annotated[float | None, number(low=0.0, low_open=True)] = Field(
        None, description="gpt only: base init std sigma (null = 0.02)")
    n_heads: Annotated[int, integer(low=1)] = Field(
        4, description="gpt only: attention heads (width must be divisible by it)")
    positions: Annotated[Literal["learned", "sinusoidal"], choice()] = Field(
        "learned", description="gpt only: position encoding")
    tie_embeddings: Annotated[bool, boolean()] = Field(
        False, description="gpt only: unembedding = token embedding")
    sparsity: SparsityConfig = Field(
        default_factory=SparsityConfig, description="mask dynamics (static, rigl, gmp); model.density is the "
                                                    "(final) density", json_schema_extra=_added())
    final_norm: Annotated[bool, boolean()] = Field(
        True, description="gpt only: a final LayerNorm before the unembedding (false: none, the warmup "
                          "paper's variant with a ~100x larger initial sharpness)", json_schema_extra=_added())



_V0_KIND = "one of: grad, random, or a finite number a >= 0"


def _check_v0(value: Any) -> str | float:
    """GI-Adam's ``optimizer.v0``: ``"grad"``, ``"random"`` or a finite number ``a >= 0``
    (v_0 = a g^2), the range :class:`catapult.optim.GIAdam` accepts (a test holds them equal):
    ``a = 0`` is AdamW, the paper's variants use ``a >= 1``."""
    if isinstance(value, str) and value.strip().lower() in ("grad", "random"):
        return value.strip().lower()
    if isinstance(value, str) and not NUMBER_TEXT.match(value):
        raise ValueError(f"{short_repr(value)} is not allowed; expected {_V0_KIND}")
    x = as_float(value, _V0_KIND)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{short_repr(value)} is out of range; expected grad, random, or a finite number "
                         "a >= 0 (v_0 = a * g^2; a = 0 is AdamW, the paper studies a >= 1)")
    return x


class OptimizerConfig(Section):
    name: Annotated[OptimizerName, choice(aliases={"giadam": "gi-adam", "gi_adam": "gi-adam"})] = Field(
        "sgd", description="sgd = GD/SGD with optional heavy-ball momentum; radam = torch.optim.RAdam; "
                           "gi-adam = catapult.optim.GIAdam (v_0 = g^2; also spelled giadam)")
    lr: Annotated[float | str, learning_rate()] = Field(
        0.125, description='lr_trgt: a number or "<c>/lambda0"', json_schema_extra=_per_member())
    momentum: Annotated[float, number(low=0.0, high=1.0, high_open=True)] = Field(
        0.0, description="heavy-ball momentum (sgd)", json_schema_extra=_per_member())
    betas: Annotated[list[float], numbers(length=2, low=0.0, high=1.0, high_open=True)] = Field(
        default_factory=lambda: [0.9, 0.999], description="Adam betas", json_schema_extra=_per_member())
    eps: Annotated[float, number(low=0.0)] = Field(
        1e-8, description="Adam epsilon", json_schema_extra=_per_member())
    weight_decay: Annotated[float, number(low=0.0)] = Field(
        0.0, description="L2 (sgd, adam, radam) or decoupled (adamw, gi-adam) weight decay",
        json_schema_extra=_per_member())
    v0: Annotated[Literal["grad", "random"] | float, Option(None, _check_v0, _V0_KIND)] = Field(
        "grad", description='gi-adam only: v_0 = g^2 ("grad"), a random positive v_0 with the norm of '
                            'g^2 ("random", the paper\'s control) or a * g^2')
    v_bias_correction: Annotated[bool, boolean()] = Field(
        True, description="gi-adam only: divide v by 1 - b2^t (true: the paper's code, an implicit "
                          "warmup; false: the paper's text)")


class ScheduleConfig(Section):
    warmup: Annotated[Literal["linear", "catapult", "persistent"], choice()] = Field(
        "linear", description="linear = polynomial warmup from lr_init; catapult = linear warmup started at "
                              "lr_c = critical_lr at step 0; persistent = PersistentCatapultWarmup (no T_wrm)")
    delta: Annotated[float | None, number(low=0.0, high=1.0, low_open=True)] = Field(
        None, description="catapult/persistent: loss rise accepted at lr_c, relative to the loss, at most 1 (a "
                          "doubled loss: beyond it the bisection stops at the doubling's bracket) (null = 0.1 "
                          "for sgd, 0.01 for Adam-family)")
    lr_start: Annotated[float | None, number(low=0.0, low_open=True)] = Field(
        None, description="catapult/persistent: first lr of the critical-lr search (null = min(1e-4, lr_trgt))")
    rtol: Annotated[float | None, number(low=0.0, high=1.0, low_open=True, high_open=True)] = Field(
        None, description="critical-lr search (catapult/persistent warmup, catapult critical-lr): bisect until "
                          "upper - lower <= rtol * lower as well, so lr_c is within rtol above the one-step "
                          "critical lr (null = the paper's delta stop only)", json_schema_extra=_added())
    warmup_steps: Annotated[int, integer(low=1, high=MAX_STEPS)] = Field(1, description="T_wrm; 1 = no warmup")
    lr_init: Annotated[float, number(low=0.0)] = Field(0.0, description="lr at the start of warmup, <= optimizer.lr")
    power: Annotated[float, number(low=0.0, low_open=True)] = Field(
        1.0, description="warmup exponent (1 = linear)")
    decay: Annotated[Literal["constant", "cosine", "linear"], choice()] = Field(
        "constant", description="after warmup, until train.steps")
    lr_final: Annotated[float | None, number(low=0.0)] = Field(
        None, description="lr at the end of the decay, <= optimizer.lr (null = the schedule's default, lr_trgt / 10)")


class TrainConfig(Section):
    steps: Annotated[int, integer(low=0, high=MAX_STEPS)] = Field(
        2000, description="optimizer steps", json_schema_extra=_per_member())
    batch_size: Annotated[int | None, integer(low=1)] = Field(None, description="null = full-batch GD")
    divergence_factor: Annotated[float, number(low=1.0, low_open=True, allow_inf=True)] = Field(
        math.inf, description="diverged if the loss is non-finite or > factor * initial loss (.inf, the "
                              "default: only a non-finite loss, the paper's rule; 1000: the 1000 x L0 rule "
                              "of catapult <= 0.3)",
        json_schema_extra=_per_member())
    accuracy_failure: Annotated[Literal["auto", "on", "off"], choice()] = Field(
        "auto", description="the paper's second failure rule: a run whose final training accuracy is below "
                            "1.5 x chance (image data) is 'diverged'; auto = on for Adam-family "
                            "optimizers (adam, adamw, radam, gi-adam), off for sgd")
    compile: Annotated[bool, boolean()] = Field(
        False, description="run the training forward/backward through torch.compile (the local engine; "
                           "curvature and test evaluation use the plain model)", json_schema_extra=_added())
    fsdp: Annotated[bool, boolean()] = Field(
        False, description="catapult train-ddp: shard the parameters, gradients and optimizer state over the "
                           "processes (FSDP2 fully_shard, per transformer block), for a model bigger than "
                           "one device; its sharpness comes from finite differences of FSDP's gradient "
                           "(a ReLU GPT in float64 only); static masks, no train.compile",
        json_schema_extra=_added())


#: The largest ``eval.trace_matvecs`` a config holds: a 64-bit integer (the run stores' columns). The
#: products that run are ``min(trace_matvecs, n)`` for a model of ``n`` trainable parameters (a count
#: >= n is the exact trace from n products), bounded by ``MAX_PRODUCTS`` once the model is built.
MAX_TRACE_MATVECS = 2 ** 63 - 1
_TRACE_MATVECS_KIND = f"0 (off) or an integer >= 3 (min(it, the model's trainable parameters) products run: at most {MAX_PRODUCTS})"
_count = integer(low=0).check


def _check_trace_matvecs(value: Any) -> int:
    """``eval.trace_matvecs``: 0 (off), or Hutch++'s product count, at least 3 (a third each for
    the sketch, its projection and the Hutchinson rest), as :func:`catapult.hessian_trace` needs.
    Its bound is on the products that run, ``min(it, n)``, checked once the model is built
    (:func:`catapult.engine.model_size.check_spectrum_fits`): 10**6 on a model of 5,000
    parameters is its exact trace, and was refused here as above ``MAX_PRODUCTS``."""
    try:
        n = _count(value)
    except ValueError:
        n = None
    if n is None or n in (1, 2) or n > MAX_TRACE_MATVECS:
        raise ValueError(f"expected {_TRACE_MATVECS_KIND} (Hutch++ splits its products in three), got {describe(value)}")
    return n


class EvalConfig(Section):
    sharpness_every: Annotated[int, integer(low=0, high=MAX_STEPS)] = Field(
        10, description="measure sharpness every k steps (0 = never)", json_schema_extra=_per_member())
    sharpness_tol: Annotated[float, number(low=0.0, high=1.0, low_open=True, high_open=True)] = Field(
        1e-3, description="relative tolerance of the eigen-solver", json_schema_extra=_per_member())
    sharpness_max_iter: Annotated[int, integer(low=1, high=MAX_PRODUCTS)] = Field(
        100, description="most Hessian-vector products per measurement", json_schema_extra=_per_member())
    sharpness_kind: Annotated[Literal["auto", "hessian", "preconditioned", "lr_scaled"], choice()] = Field(
        "auto", description="auto = pre-conditioned for adam/adamw/gi-adam; radam: the Hessian's while its update "
                            "is un-rectified, then pre-conditioned (rows say which); sgd: lr_scaled when the "
                            "param groups' lrs differ (muP with base_width, SμPar; before issue 14's wiring auto "
                            "gave the Hessian's there), else the Hessian's. lr_scaled (sgd) = "
                            "lambda_max(M^1/2 H M^1/2), M = the groups' lr multipliers relative to the first "
                            "group's: the sharpness that 2/lr of the first group bounds")
    sharpness_hvp: Annotated[Literal["auto", "double_backprop", "forward_over_reverse",
                                     "finite_difference", "compiled"], choice()] = Field(
        "auto", description="how Hessian-vector products are computed (finite_difference: two "
                            "gradients per product, no double backward; refused across ReLU kinks. "
                            "compiled: exact products through torch.compile, faster per call on "
                            "small transformers, a 15-50 s compile on the first)")
    sharpness_dtype: Annotated[Dtype | None, choice()] = Field(
        None, description="solver precision (null = the run's dtype)")
    sharpness_max_basis: Annotated[int, integer(low=2)] = Field(
        20, description="Krylov vectors kept (memory: one parameter-sized vector each; thick restart beyond), "
                        "by the sharpness and the top-k (spectrum_top_k = k) solves; the top-k solve keeps at "
                        "least 3 k + spectrum_block_size, or its own max(2 k + 10, 32) + block - 1 where "
                        "that is less (fewer restart too often)")
    sharpness_chunk_size: Annotated[int | None, integer(low=1)] = Field(
        None, description="HVPs over micro-batches of at most this many samples "
                          "(less memory, ~a gradient more per HVP; null = whole batch)")
    lambda0_batches: Annotated[int | None, integer(low=1, high=MAX_LAMBDA0_BATCHES)] = Field(
        None, description="lambda_0 = mean sharpness at init over the first k training batches (the paper: "
                          "10); null = 10 for minibatch runs, 1 for full batch")
    # issue 16: named memory setting and spectrum logging on the sharpness cadence
    sharpness_memory: Annotated[Literal["fast", "lean"], choice()] = Field(
        "fast", description="fast = speed first; lean = micro-batches sized from the model and "
                            "batch and a solver without a Krylov basis (sharpness_max_basis unused), "
                            "peak memory <= 3x a training step (measured 1.0-2.8x), ~2-3x the time",
        json_schema_extra=_added())
    # stop 47: cold starts for operators whose top eigenvalues are nearly uncoupled
    sharpness_start: Annotated[Literal["warm", "cold"], choice()] = Field(
        "warm", description="warm = each measurement starts from the previous one's eigenvector (with a "
                            "seeded random part); cold = from the run's start vector every time, 2-5x the "
                            "products, for a spectrum whose top is made of nearly uncoupled eigenvalues that "
                            "overtake one another (Adam with coupled weight decay: bench/RESULTS.md, issue 16, 2b)",
        json_schema_extra=_added(per_member=True))
    spectrum_top_k: Annotated[int, integer(low=0, high=MAX_PRODUCTS // 3)] = Field(
        0, description="log the top-k eigenvalues (eig_1..eig_k, same kind as sharpness) at every "
                       "sharpness measurement (0 = off)", json_schema_extra=_added())
    spectrum_block_size: Annotated[int, integer(low=1)] = Field(
        1, description="start vectors of the top-k solve: every copy of an eigenvalue of multiplicity "
                       "up to this is found, at most spectrum_top_k (1 = one copy; a linear model with d "
                       "outputs under MSE has "
                       "each eigenvalue d times), for 1.1-1.3x the products at 2, 1.3-1.6x at 3", json_schema_extra=_added())
    trace_matvecs: Annotated[int, Option(None, _check_trace_matvecs, _TRACE_MATVECS_KIND)] = Field(
        0, description="log the trace (hessian_trace, Hutch++ with this many products, same kind "
                       "as sharpness) at every sharpness measurement (0 = off; else >= 3)", json_schema_extra=_added())
    test_every: Annotated[int, integer(low=0, high=MAX_STEPS)] = Field(
        100, description="test loss/accuracy every m steps (0 = only at the end)", json_schema_extra=_per_member())


class RunConfig(Section):
    """A whole run config. ``name`` is ``None`` only before :func:`catapult.config.parse`
    completes it (to ``"run"``, or the config file's stem in :func:`~catapult.config.load_config`)."""

    name: Annotated[str | None, string(pattern=RUN_NAME, what="a run name of letters, digits and _ . + = - "
                                                              "(used as a directory name)")] = Field(
        None, description="run name -> runs/<name>/ (default: the config file's stem)",
        json_schema_extra=_per_member())
    seed: Annotated[int, integer(low=0)] = Field(
        0, description="seeds model init, batch order and the sharpness start vector",
        json_schema_extra=_per_member())
    device: Annotated[str, string(pattern=r"cpu|cuda|auto|cuda:\d+", what="one of: cpu, cuda, cuda:<n>, auto")] \
        = Field("cpu", description="auto = cuda if available else cpu")
    dtype: Annotated[Dtype, choice()] = Field("float32", description="parameters, data and training arithmetic")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: Annotated[Literal["mse", "cross_entropy"], choice()] = Field(
        "mse", description="mse = 0.5 * mean over (batch x outputs)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, json_schema_extra=_per_member())
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _null_sections_are_empty(cls, value: Any) -> Any:
        """``model: null`` (an empty YAML section) means every default of the section."""
        if isinstance(value, dict):
            sections = [k for k, f in cls.model_fields.items()
                        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
            if any(value.get(k, 0) is None for k in sections):
                value = {k: ({} if k in sections and v is None else v) for k, v in value.items()}
        return value


def added_defaults(section: type[BaseModel] | None = None, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: default}`` of every key marked added (``json_schema_extra={"added": True}``);
    a marked section's default is its whole default mapping.

    >>> added_defaults()["data.tokenizer"], added_defaults()["model.sparsity"]["method"]
    ('char', 'static')
    """
    section = RunConfig if section is None else section
    out: dict[str, Any] = {}
    for key, f in section.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        default = f.get_default(call_default_factory=True)
        if extra.get("added"):
            out[prefix + key] = default.model_dump() if isinstance(default, BaseModel) else default
        elif isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out.update(added_defaults(f.annotation, f"{prefix}{key}."))
    return out


def drop_added_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a plain config dict without the :func:`added_defaults` keys that hold their
    default (a sweep's identity: a store written before those keys existed stays the same sweep)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for dotted, default in added_defaults().items():
        *path, leaf = dotted.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    return out
