"""Models: the warmup paper's FCN (:class:`MLP`), its WideResNet with LayerNorm (:class:`WRN`)
and a Pre-LN GPT (:class:`GPT`), in SP, muP and SμPar (see :mod:`catapult.parametrize`)."""
from catapult.models.gpt import GPT
from catapult.models.mlp import MLP
from catapult.models.wrn import WRN

__all__ = ["MLP", "GPT", "WRN"]
