"""The rules of the SP / muP / SμPar table, as small pure functions: which parameterization
uses which init and lr rule, a weight's init variance and a tensor's lr multiplier, and the
``ParamSpec`` a parameterized model carries. :mod:`catapult.parametrize` applies them to
modules and optimizers; its docstring holds the table.
"""
from __future__ import annotations

from dataclasses import dataclass

from catapult.arguments import check_real

__all__ = ["PARAMETRIZATIONS", "ROLES", "TENSOR_KINDS", "OPTIMIZER_FAMILIES", "ParamSpec", "check_parametrization",
           "init_rule", "lr_rule", "init_variance", "optimizer_family", "lr_multiplier"]

PARAMETRIZATIONS = ("sp", "mup", "supar", "supar_init", "supar_lr")
#: The SμPar paper's ablations (Figs. 13-14) combine one half of SμPar with muP's other half:
#: ``supar_init`` = SμPar init variances with muP learning rates, ``supar_lr`` = muP init with
#: SμPar learning rates. Both keep muP's forward multipliers and attention scale.
_INIT_RULE = {"sp": "sp", "mup": "mup", "supar": "supar", "supar_init": "supar", "supar_lr": "mup"}
_LR_RULE = {"sp": "sp", "mup": "mup", "supar": "supar", "supar_init": "mup", "supar_lr": "supar"}
ROLES = ("input", "hidden", "output")
# Kinds of tensors for the learning-rate table: the three roles for weights, plus vectors, plus
# "fixed": tensors none of whose dimensions grows with the width (a stem before the widened
# body; microsoft/mup's finite-shape tensors), whose lr no rule scales.
TENSOR_KINDS = ("input", "hidden", "output", "vector", "output_bias", "fixed")
OPTIMIZER_FAMILIES = {"adam": "adam", "adamw": "adam", "gi-adam": "adam", "giadam": "adam",
                      "gi_adam": "adam", "radam": "adam", "sgd": "sgd"}


def check_parametrization(name: str) -> str:
    """Validate a parameterization name; returns it.

    Example:
        >>> check_parametrization("supar")
        'supar'
    """
    if name not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}; got {name!r}")
    return name


def init_rule(parametrization: str) -> str:
    """Which column of the init table applies: ``"sp" | "mup" | "supar"``.

    ``supar_init`` (ablation) inits like SμPar, ``supar_lr`` like muP.

    Example:
        >>> init_rule("supar_init"), init_rule("supar_lr")
        ('supar', 'mup')
    """
    return _INIT_RULE[check_parametrization(parametrization)]


def lr_rule(parametrization: str) -> str:
    """Which column of the learning-rate table applies: ``"sp" | "mup" | "supar"``.

    ``supar_init`` (ablation) takes muP's learning rates, ``supar_lr`` SμPar's.

    Example:
        >>> lr_rule("supar_init"), lr_rule("supar_lr")
        ('mup', 'supar')
    """
    return _LR_RULE[check_parametrization(parametrization)]


@dataclass(frozen=True)
class ParamSpec:
    """How a model is parameterized (stored as the root attribute ``catapult_spec``).

    ``lr_rule="table"``: per-layer learning rates from :func:`lr_multiplier`.
    ``lr_rule="global"``: every tensor uses the global learning rate (``lr_mult = 1``); used by
    the warmup paper's FCN muP, whose forward multipliers already encode the width scaling for
    SGD (and which the paper also runs with Adam as "simple muP").

    Example:
        >>> ParamSpec("mup", width_mult=4.0)
        ParamSpec(parametrization='mup', width_mult=4.0, density_mult=1.0, lr_rule='table')
    """

    parametrization: str = "sp"
    width_mult: float = 1.0
    density_mult: float = 1.0
    lr_rule: str = "table"


def init_variance(parametrization: str, role: str, sigma2: float, *, width_mult: float = 1.0,
                  density_mult: float = 1.0) -> float:
    """Init variance of a weight with base variance ``sigma2`` (the SμPar table).

    hidden: SP ``sigma2``, muP ``sigma2 / m_d``, SμPar ``sigma2 / (m_d * m_rho)``;
    input and output: ``sigma2`` under every parameterization. The ablations use
    :func:`init_rule` (``supar_init``: SμPar's, ``supar_lr``: muP's).

    Example (width 4x the base, half the base density):
        >>> init_variance("mup", "hidden", 1.0, width_mult=4.0, density_mult=0.5)
        0.25
        >>> init_variance("supar", "hidden", 1.0, width_mult=4.0, density_mult=0.5)
        0.5
        >>> init_variance("supar", "output", 1.0, width_mult=4.0, density_mult=0.5)
        1.0
    """
    parametrization = init_rule(parametrization)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}; got {role!r}")
    sigma2 = check_real("init_variance", "sigma2", sigma2, low=0.0)
    width_mult, density_mult = _multipliers("init_variance", width_mult, density_mult)
    if role != "hidden" or parametrization == "sp":
        return sigma2
    if parametrization == "mup":
        return sigma2 / width_mult
    return sigma2 / (width_mult * density_mult)


def optimizer_family(optimizer: str) -> str:
    """``"adam"`` or ``"sgd"`` for an optimizer name (adam, adamw, gi-adam, radam, sgd).

    Example:
        >>> optimizer_family("gi-adam"), optimizer_family("SGD")
        ('adam', 'sgd')
    """
    key = str(optimizer).lower()
    if key not in OPTIMIZER_FAMILIES:
        raise ValueError(
            f"optimizer must be one of {sorted(OPTIMIZER_FAMILIES)}; got {optimizer!r}"
        )
    return OPTIMIZER_FAMILIES[key]


def lr_multiplier(parametrization: str, kind: str, optimizer: str = "adam", *,
                  width_mult: float = 1.0, density_mult: float = 1.0) -> float:
    """Learning-rate multiplier of one tensor kind (see the module docstring's table).

    ``kind`` is ``"input" | "hidden" | "output"`` (weights), ``"vector"`` (biases of input and
    hidden layers, LayerNorm parameters, any other parameter not owned by a role) or
    ``"output_bias"``. Adam family: muP hidden ``1/m_d``, SμPar hidden ``1/(m_d m_rho)``, all
    else 1. SGD: muP input/output/vector ``m_d``, hidden 1; SμPar hidden ``1/m_rho``; output
    bias 1. ``"fixed"`` (no dimension grows with the width): 1 everywhere. SP: 1 everywhere.
    The ablations use :func:`lr_rule` (``supar_init``: muP's,
    ``supar_lr``: SμPar's).

    Example (width 4x the base, half the base density):
        >>> lr_multiplier("mup", "hidden", "adam", width_mult=4.0)
        0.25
        >>> lr_multiplier("supar", "hidden", "adam", width_mult=4.0, density_mult=0.5)
        0.5
        >>> lr_multiplier("mup", "input", "sgd", width_mult=4.0)
        4.0
    """
    parametrization = lr_rule(parametrization)
    if kind not in TENSOR_KINDS:
        raise ValueError(f"tensor kind must be one of {TENSOR_KINDS}; got {kind!r}")
    family = optimizer_family(optimizer)
    width_mult, density_mult = _multipliers("lr_multiplier", width_mult, density_mult)
    if parametrization == "sp" or kind == "fixed":
        return 1.0
    if family == "adam":
        if kind != "hidden":
            return 1.0
        return 1.0 / width_mult if parametrization == "mup" else 1.0 / (width_mult * density_mult)
    # SGD
    if kind == "hidden":
        return 1.0 if parametrization == "mup" else 1.0 / density_mult
    if kind == "output_bias":
        return 1.0
    return float(width_mult)


def _multipliers(owner: str, width_mult, density_mult) -> tuple[float, float]:
    """Both multipliers as finite floats > 0, else a ValueError naming the one: 0 divided by zero,
    a negative one gave a negative variance or learning rate, nan a nan lr, all without a word."""
    return (check_real(owner, "width_mult", width_mult, low=0.0, low_open=True),
            check_real(owner, "density_mult", density_mult, low=0.0, low_open=True))
