"""Models: the warmup paper's FCN (:class:`MLP`) and a Pre-LN GPT (:class:`GPT`), in SP, muP
and SμPar (see :mod:`catapult.parametrize`)."""
from catapult.models.gpt import GPT
from catapult.models.mlp import MLP

__all__ = ["MLP", "GPT"]
