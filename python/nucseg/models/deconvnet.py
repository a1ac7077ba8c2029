"""DeconvNet (Noh et al. 2015): VGG16 encoder and a mirrored unpooling decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .vgg import VGG16_CFG, vgg16_stages

__all__ = ["DeconvNet"]


class DeconvNet(nn.Module):
    """VGG16 encoder with batch norm, a 'fully connected' bridge and a mirror decoder.

    The decoder un-pools with the encoder's max-pooling switches and uses
    (de)convolutions of the mirrored widths, each with batch norm, as in Noh et
    al. The fc6/fc7 bridge is a ``fc_kernel`` 'same' convolution so any multiple
    of 32 (``stride``) is a valid input size (the paper fixes 224x224).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logit channels.
    fc_channels : int
        Bridge width (4096 in the paper).
    fc_kernel : int
        Bridge kernel (7 'valid' in the paper; 'same' here).
    width_div : int
        Divide every width (1 = real VGG16).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        *,
        fc_channels: int = 4096,
        fc_kernel: int = 3,
        width_div: int = 1,
    ) -> None:
        super().__init__()
        self.stride = 32
        self.stages = vgg16_stages(in_channels, batch_norm=True, width_div=width_div)
        c5 = 512 // width_div
        self.bridge = nn.Sequential(
            nn.Conv2d(c5, fc_channels, fc_kernel, padding=fc_kernel // 2, bias=False),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fc_channels, fc_channels, 1, bias=False),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(fc_channels, c5, fc_kernel, padding=fc_kernel // 2, bias=False),
            nn.BatchNorm2d(c5),
            nn.ReLU(inplace=True),
        )
        dec = []
        widths = [c // width_div for cfg in VGG16_CFG for c in cfg]
        # The first stage's decoder ends at its own width (the head maps it to logits).
        ins = [widths[0]] + widths[:-1]
        # Mirror: stage k's decoder maps its out widths back to its in widths.
        k = 0
        for cfg in VGG16_CFG:
            n = len(cfg)
            stage_in, stage_out = ins[k : k + n], widths[k : k + n]
            k += n
            layers: list[nn.Module] = []
            for ci, co in zip(reversed(stage_out), reversed(stage_in)):
                layers += [nn.ConvTranspose2d(ci, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]
            dec.append(nn.Sequential(*layers))
        self.dec = nn.ModuleList(dec)
        self.head = nn.Conv2d(64 // width_div, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches = []
        for stage in self.stages:
            x, idx = F.max_pool2d(stage(x), 2, return_indices=True)
            switches.append(idx)
        x = self.bridge(x)
        for stage in reversed(range(len(self.dec))):
            x = F.max_unpool2d(x, switches[stage], 2)
            x = self.dec[stage](x)
        return self.head(x)
