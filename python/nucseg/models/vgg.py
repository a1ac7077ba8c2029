"""VGG16 encoder shared by FCN-8s and DeconvNet, and loading of local weights.

ImageNet weights are never downloaded: pass a local torchvision-format VGG16
state dict (``features.N.weight`` keys, ``.pth`` or ``.safetensors``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

__all__ = ["VGG16_CFG", "load_vgg16_encoder", "vgg16_stages"]

# Convolutions per stage of VGG16 (13 in total), each stage ends with a 2x pooling.
VGG16_CFG: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Indices of the conv layers inside torchvision's ``vgg16().features``.
_TV_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def vgg16_stages(in_channels: int = 3, *, batch_norm: bool = False, width_div: int = 1) -> nn.ModuleList:
    """The five VGG16 conv stages (without pooling), as a ``ModuleList`` of ``Sequential``.

    ``width_div`` divides every channel count (1 = the real VGG16; > 1 gives a
    thinner network that cannot use ImageNet weights).
    """
    stages = nn.ModuleList()
    c = in_channels
    for cfg in VGG16_CFG:
        layers: list[nn.Module] = []
        for out in cfg:
            out //= width_div
            layers.append(nn.Conv2d(c, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            c = out
        stages.append(nn.Sequential(*layers))
    return stages


def load_vgg16_encoder(stages: nn.ModuleList, path: str | os.PathLike) -> int:
    """Copy ImageNet VGG16 convolution weights from a local file into ``stages``.

    Parameters
    ----------
    stages : torch.nn.ModuleList
        As built by :func:`vgg16_stages` with ``width_div=1`` and 3 input channels.
    path : str or os.PathLike
        torchvision ``vgg16`` state dict: ``.safetensors`` (read with safetensors)
        or ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``, which
        refuses arbitrary pickled objects).

    Returns
    -------
    int
        Number of conv layers loaded (13).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file lacks VGG16 conv keys or shapes do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise ValueError(f"{path} is not a plain tensor state dict (refused by weights_only loading): {exc}") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    convs = [m for m in stages.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(_TV_CONV_IDX):
        raise ValueError(f"expected a 13-conv VGG16 encoder, got {len(convs)} convolutions")
    for conv, idx in zip(convs, _TV_CONV_IDX):
        w_key, b_key = f"features.{idx}.weight", f"features.{idx}.bias"
        if w_key not in state or b_key not in state:
            raise ValueError(f"{path} is not a torchvision VGG16 state dict: key {w_key!r} missing")
        w, b = state[w_key], state[b_key]
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ValueError(f"{w_key} has shape {tuple(w.shape)}, the encoder expects {tuple(conv.weight.shape)}")
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return len(convs)
