"""Segmentation networks (PyTorch): the paper's three, their ensemble, U-Net.

Every network maps ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``
at input resolution, for any ``H, W`` that are multiples of its ``stride``
attribute (PangNet 1, U-Net ``2**depth``, FCN-8s and DeconvNet 32).

``build_model(arch, in_channels, out_channels, **arch_kwargs)`` builds one by
name; names are listed in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .deconvnet import DeconvNet
from .ensemble import Ensemble
from .fcn import FCN8s
from .pangnet import PangNet
from .unet import UNet
from .vgg import load_vgg16_encoder

__all__ = [
    "ARCHITECTURES",
    "DeconvNet",
    "Ensemble",
    "FCN8s",
    "PangNet",
    "UNet",
    "build_model",
    "count_parameters",
    "load_vgg16_encoder",
]

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "pangnet": PangNet,
    "fcn8s": FCN8s,
    "deconvnet": DeconvNet,
    "unet": UNet,
}


def build_model(arch: str, in_channels: int = 3, out_channels: int = 1, **arch_kwargs: Any) -> nn.Module:
    """Build a network by architecture name.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES` or ``"ensemble"``. An ensemble takes
        ``members=[{"arch": ..., "arch_kwargs": {...}}, ...]``.
    in_channels, out_channels : int
        Input channels and output logit channels.
    **arch_kwargs
        Passed to the constructor.

    Returns
    -------
    torch.nn.Module
        With a ``stride`` attribute.
    """
    if arch == "ensemble":
        members = arch_kwargs.get("members")
        if not members:
            raise ValueError("arch 'ensemble' needs arch_kwargs members=[{'arch': ..., 'arch_kwargs': {...}}, ...]")
        return Ensemble([build_model(m["arch"], in_channels, out_channels, **m.get("arch_kwargs", {})) for m in members])
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES) + ['ensemble']}")
    return ARCHITECTURES[arch](in_channels, out_channels, **arch_kwargs)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
