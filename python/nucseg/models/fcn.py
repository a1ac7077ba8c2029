"""FCN-8s (Long et al. 2015) on a VGG16 encoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .vgg import vgg16_stages

__all__ = ["FCN8s", "bilinear_kernel"]


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Weights making a ``ConvTranspose2d`` a per-channel bilinear up-sampler (FCN's init)."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    k2 = filt[:, None] * filt[None, :]
    w = torch.zeros(channels, channels, kernel, kernel)
    for c in range(channels):
        w[c, c] = k2
    return w


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


class FCN8s(nn.Module):
    """FCN-8s: VGG16 encoder, fc6/fc7 as convolutions, skip fusion of pool3/pool4.

    'Same' padding replaces the original 100-pixel input pad and crops, so the
    logits come out at input resolution. Input height and width must be
    multiples of 32 (``stride``).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logit channels.
    fc_channels : int
        Width of fc6/fc7 (4096 in the paper).
    fc_kernel : int
        Kernel of fc6 (7 in the paper).
    width_div : int
        Divide every encoder width (1 = real VGG16, needed for ImageNet weights).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        *,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        width_div: int = 1,
    ) -> None:
        super().__init__()
        self.stride = 32
        self.stages = vgg16_stages(in_channels, width_div=width_div)
        c3, c4, c5 = 256 // width_div, 512 // width_div, 512 // width_div
        self.fc = nn.Sequential(
            nn.Conv2d(c5, fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
        )
        self.score_fr = nn.Conv2d(fc_channels, out_channels, 1)
        self.score_pool4 = nn.Conv2d(c4, out_channels, 1)
        self.score_pool3 = nn.Conv2d(c3, out_channels, 1)
        # FCN initialises the skip scorers at zero so training starts as FCN-32s.
        for m in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.up2a = _upsampler(out_channels, 2)
        self.up2b = _upsampler(out_channels, 2)
        self.up8 = _upsampler(out_channels, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = F.max_pool2d(stage(x), 2)
            feats.append(x)
        pool3, pool4, pool5 = feats[2], feats[3], feats[4]
        s = self.up2a(self.score_fr(self.fc(pool5)))
        s = self.up2b(s + self.score_pool4(pool4))
        return self.up8(s + self.score_pool3(pool3))
