"""Models: the warmup paper's FCN (MLP) and, later, a Pre-LN GPT."""
from catapult.models.mlp import MLP

__all__ = ["MLP"]
