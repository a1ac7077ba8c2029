"""Ensemble of networks: probabilities averaged, returned as logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Average the sigmoid probabilities of several single-output networks.

    The output is ``logit(mean_i sigmoid(net_i(x)))`` so that it is a drop-in
    replacement for one network. The stride is the least common multiple of the
    members' strides. Used for the paper's PangNet + FCN + DeconvNet ensemble.

    Parameters
    ----------
    members : sequence of torch.nn.Module
        Networks with the same output channels and a ``stride`` attribute.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an Ensemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.stride = math.lcm(*(int(getattr(m, "stride", 1)) for m in members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-6)
