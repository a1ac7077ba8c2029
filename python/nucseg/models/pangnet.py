"""PangNet: the small fully convolutional network of Pang et al. (2010).

As used by Naylor et al. (2017): four convolutional layers of 8 feature maps,
here with 'same' padding and a 1x1 classifier so it outputs logits at input
resolution (stride 1: any input size works).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PangNet"]


class PangNet(nn.Module):
    """Four 5x5 convolutions of ``width`` maps with ReLU, then a 1x1 classifier.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logit channels.
    width : int
        Feature maps per layer (8 in the paper).
    kernel : int
        Odd convolution kernel size.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, *, width: int = 8, kernel: int = 5) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.stride = 1
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(4):
            layers += [nn.Conv2d(c, width, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
