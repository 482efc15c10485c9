"""The warmup paper's fully connected network. (stub)"""
from __future__ import annotations

import torch.nn as nn


class MLP(nn.Module):
    pass
