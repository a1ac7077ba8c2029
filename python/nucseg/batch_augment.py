"""Augmentation of whole training batches with torch, on the training device.

The same transformations as :func:`nucseg.data.augment_sample` (flip, rotation by any
angle, scale jitter, elastic deformation, H&E stain jitter, brightness/contrast, blur, JPEG
artefacts), drawn with numpy from a generator the caller seeds (the stain and JPEG draws with
the very functions of the CPU path, :func:`~nucseg.data.draw_stain` and
:func:`~nucseg.data.draw_jpeg`), then rendered with
:func:`torch.nn.functional.grid_sample` for all crops and channels at once. On a GPU this
removes the CPU augmentation that otherwise bounds training speed (23 ms per 256 px crop
with scipy); on one CPU thread a batch of 4 crops takes 50 ms instead of 134 ms.

Differences from :func:`~nucseg.data.augment_sample`: the elastic field is white noise on
a grid 4x coarser, Gaussian-filtered with ``elastic_sigma / 4`` and upsampled bicubically,
instead of filtered at full resolution (the same amplitude and smoothness, 16x less
work); the random draws come in another order. So a recipe trains on the same distribution of
crops, not on the same crops, as with ``augment_on="cpu"``. JPEG artefacts are the one step
not rendered on the device: the crops that drew one go through Pillow's encoder on the CPU
(:func:`~nucseg.data.jpeg_roundtrip`, the same round trip as the CPU path) and back, about a
millisecond per 256 px crop; no device JPEG encoder would give the same artefacts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .data import AugmentConfig, draw_centre, draw_jpeg, draw_pose, draw_stain, jpeg_roundtrip

__all__ = ["CropDraw", "draw_crop", "render_batch", "stack_sources"]


@dataclass(frozen=True, eq=False)  # numpy fields: compare field by field
class CropDraw:
    """The random parameters of one augmented crop.

    Attributes
    ----------
    image : int
        Index of the source image.
    scale, theta : float
        Zoom (> 1 zooms in) and rotation (radians).
    flip : bool
        Mirror before rotating.
    cy, cx : float
        Crop centre in source pixel coordinates.
    field : numpy.ndarray
        ``(2, g, g)`` white noise on the coarse elastic grid (y, x), or ``(2, 0, 0)``.
    stain_alpha, stain_beta : numpy.ndarray
        ``(3,)`` scale and shift of the H, E, D optical densities.
    contrast, brightness : float
    blur : float
        Gaussian blur sigma in pixels; 0 = none.
    jpeg : int
        JPEG quality of the compression round trip; 0 = none.
    """

    image: int
    scale: float
    theta: float
    flip: bool
    cy: float
    cx: float
    field: np.ndarray
    stain_alpha: np.ndarray
    stain_beta: np.ndarray
    contrast: float
    brightness: float
    blur: float
    jpeg: int = 0


def draw_crop(rng: np.random.Generator, shapes: Sequence[tuple[int, int]], size: int, aug: AugmentConfig) -> CropDraw:
    """Draw the parameters of one ``size x size`` crop from one of images of ``shapes``.

    Parameters
    ----------
    rng : numpy.random.Generator
    shapes : sequence of (int, int)
        ``(H, W)`` of each source image.
    size : int
        Crop side.
    aug : AugmentConfig
    """
    image = int(rng.integers(len(shapes)))
    scale, theta, flip = draw_pose(rng, aug)
    cy, cx = draw_centre(rng, shapes[image], size, scale)
    if aug.elastic_alpha > 0:
        field = rng.standard_normal((2, _coarse(size), _coarse(size))).astype(np.float32)
    else:
        field = np.zeros((2, 0, 0), np.float32)
    alpha, beta = draw_stain(rng, aug)
    contrast = 1 + rng.uniform(-aug.contrast, aug.contrast) if aug.contrast > 0 else 1.0
    brightness = rng.uniform(-aug.brightness, aug.brightness) if aug.brightness > 0 else 0.0
    blur = rng.uniform(0.3, aug.blur_sigma) if aug.blur_p > 0 and rng.random() < aug.blur_p else 0.0
    return CropDraw(image, scale, theta, flip, cy, cx, field, alpha, beta, float(contrast), float(brightness), float(blur),
                    draw_jpeg(rng, aug))


_ELASTIC_STEP = 4  # the elastic noise is drawn and filtered on a grid this much coarser


def _coarse(size: int) -> int:
    return max(2, -(-size // _ELASTIC_STEP))


def stack_sources(rgb: np.ndarray, targets: Sequence[np.ndarray], device: torch.device | str) -> torch.Tensor:
    """One source image as a ``(3 + len(targets), H, W)`` float32 tensor on ``device`` (RGB in [0, 1])."""
    chans = [torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)]
    chans += [torch.from_numpy(np.asarray(t, np.float32))[None] for t in targets]
    return torch.cat(chans).to(device)


def _grid(d: CropDraw, size: int, h: int, w: int, aug: AugmentConfig, device: torch.device) -> torch.Tensor:
    """grid_sample's normalised (x, y) source coordinates of one crop, ``(size, size, 2)``."""
    c = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    if d.flip:
        xx = -xx
    ct, st = math.cos(d.theta), math.sin(d.theta)
    ys = (ct * yy - st * xx) / d.scale
    xs = (st * yy + ct * xx) / d.scale
    if d.field.size:
        noise = _blur(torch.from_numpy(d.field).to(device), aug.elastic_sigma / _ELASTIC_STEP)
        field = F.interpolate(noise[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        field = field * (aug.elastic_alpha / (field.std(dim=(1, 2), keepdim=True) + 1e-8))
        ys, xs = ys + field[0], xs + field[1]
    ys, xs = ys + d.cy, xs + d.cx
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    return torch.stack([xs * (2 / max(w - 1, 1)) - 1, ys * (2 / max(h - 1, 1)) - 1], dim=-1)


_LOG_ADJUST = math.log(1e-6)  # skimage.color.separate_stains' constant


def _stain_jitter(rgb: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`nucseg.data.stain_jitter` for a ``(B, 3, H, W)`` batch: densities (not clamped at 0),
    scale and shift, back to RGB (scikit-image's formulas and H&E-DAB matrices, Ruifrok & Johnston 2001)."""
    from skimage.color import hed_from_rgb as hfr
    from skimage.color import rgb_from_hed as rfh

    hed_from_rgb = torch.as_tensor(hfr, dtype=rgb.dtype, device=rgb.device)
    rgb_from_hed = torch.as_tensor(rfh, dtype=rgb.dtype, device=rgb.device)
    od = torch.log(rgb.clamp(0, 1).clamp_min(1e-6)) / _LOG_ADJUST
    hed = torch.einsum("bchw,cd->bdhw", od, hed_from_rgb)
    hed = hed * alpha[:, :, None, None] + beta[:, :, None, None]
    log_rgb = -(hed * -_LOG_ADJUST)
    out = torch.exp(torch.einsum("bchw,cd->bdhw", log_rgb, rgb_from_hed))
    return out.clamp(0, 1)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of one ``(C, H, W)`` crop, reflecting at the border (as scipy's default)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    pad = min(radius, img.shape[1] - 1, img.shape[2] - 1)
    out = F.pad(img[None], (pad, pad, pad, pad), mode="reflect") if pad else img[None]
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c, padding=(0, radius - pad))
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c, padding=(radius - pad, 0))
    return out[0]


def render_batch(
    draws: Sequence[CropDraw], sources: Sequence[torch.Tensor], size: int, aug: AugmentConfig, *, nearest: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render drawn crops: ``(B, 3, size, size)`` RGB in [0, 1] and ``(B, T, size, size)`` targets.

    Parameters
    ----------
    draws : sequence of CropDraw
    sources : sequence of torch.Tensor
        ``(3 + T, H, W)`` per image (:func:`stack_sources`), all on the same device.
    size : int
    aug : AugmentConfig
        Its ``elastic_alpha`` and ``elastic_sigma`` shape the fields (the draws say whether
        there is one).
    nearest : sequence of bool
        Per target: nearest-neighbour resampling (masks) instead of bilinear.
    """
    device = sources[0].device
    near_ch = [3 + i for i, nn in enumerate(nearest) if nn]  # resampled twice: bilinear, then nearest
    crops = []
    for d in draws:
        src = sources[d.image]
        _, h, w = src.shape
        grid = _grid(d, size, h, w, aug, device)[None]
        crop = F.grid_sample(src[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
        if near_ch:
            crop[near_ch] = F.grid_sample(src[None, near_ch], grid, mode="nearest", padding_mode="reflection",
                                          align_corners=True)[0]
        crops.append(crop)
    batch = torch.stack(crops)
    img, targets = batch[:, :3], batch[:, 3:]
    if aug.stain_on:
        alpha = torch.as_tensor(np.stack([d.stain_alpha for d in draws]), dtype=img.dtype, device=device)
        beta = torch.as_tensor(np.stack([d.stain_beta for d in draws]), dtype=img.dtype, device=device)
        img = _stain_jitter(img, alpha, beta)
    f = torch.tensor([d.contrast for d in draws], dtype=img.dtype, device=device)[:, None, None, None]
    b = torch.tensor([d.brightness for d in draws], dtype=img.dtype, device=device)[:, None, None, None]
    img = (img - 0.5) * f + 0.5 + b
    img = torch.stack([_blur(im, d.blur) if d.blur > 0 else im for im, d in zip(img, draws)]).clamp(0, 1)
    if any(d.jpeg for d in draws):
        img = torch.stack([_jpeg(im, d.jpeg) if d.jpeg else im for im, d in zip(img, draws)])
    return img, targets


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """:func:`nucseg.data.jpeg_roundtrip` of one ``(3, H, W)`` crop, through the CPU and back to its device."""
    rgb = img.detach().permute(1, 2, 0).to("cpu", torch.float32).numpy()
    return torch.from_numpy(jpeg_roundtrip(rgb, quality)).permute(2, 0, 1).to(img.device, img.dtype)
