"""U-Net (Ronneberger et al. 2015) with batch norm and 'same' padding.

The shipped default model is a narrow U-Net (``width=16, depth=3``) with two
output channels: nucleus logit and normalised-distance logit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "conv_block"]


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net encoder-decoder with skip connections.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels (3 for RGB) and output logit channels.
    width : int
        Feature maps at full resolution; doubled at each level (64 in the paper).
    depth : int
        Number of 2x down-samplings (4 in the paper). Input height and width
        must be multiples of ``2**depth`` (the model's ``stride``).

    Examples
    --------
    >>> net = UNet(3, 2, width=8, depth=2)
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, *, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        ch = [width * 2**i for i in range(depth + 1)]
        self.stride = 2**depth
        self.enc = nn.ModuleList([conv_block(in_channels, ch[0])] + [conv_block(ch[i], ch[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(depth)])
        self.dec = nn.ModuleList([conv_block(2 * ch[i], ch[i]) for i in range(depth)])
        self.head = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)
