"""Tissue detection on a low-resolution overview, and which tiles it keeps.

Glass is bright and grey; stained tissue is saturated. Otsu's threshold on the HSV
saturation of the overview, clamped to a sensible range so an overview that is all
tissue (or all glass) is not split in two, then a closing, removal of specks and
filling of small holes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

#: Otsu's saturation threshold is clamped to this range (H&E tissue is above ~0.15,
#: clean glass below ~0.05).
SATURATION_RANGE = (0.04, 0.12)


def detect_tissue(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 overview.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)

    Returns
    -------
    ndarray of bool, shape (h, w)
    """
    from skimage import morphology
    from skimage.filters import threshold_otsu

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (h, w, 3), got {rgb.shape}")
    sat, val = saturation_value(rgb)
    try:
        thr = float(threshold_otsu(sat))
    except ValueError:  # constant image
        thr = SATURATION_RANGE[0]
    thr = min(max(thr, SATURATION_RANGE[0]), SATURATION_RANGE[1])
    mask = (sat > thr) & (val > 0.05)  # pure black is a scanner artefact, not tissue
    mask = morphology.closing(mask, morphology.disk(2))
    min_size = max(4, mask.size // 20000)
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = morphology.remove_small_holes(mask, max_size=min_size * 4)
    return mask


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB image, as :func:`skimage.color.rgb2hsv` gives them.

    For uint8 both depend only on each pixel's largest and smallest channel, so they
    are read from tables that ``rgb2hsv`` itself computed for every such pair: the very
    same float64 values without the hue, which ``rgb2hsv`` spends most of its time on.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3)

    Returns
    -------
    sat, val : ndarray of float64, shape (h, w)
    """
    if rgb.dtype != np.uint8:
        from skimage.color import rgb2hsv

        hsv = rgb2hsv(rgb)
        return hsv[..., 1], hsv[..., 2]
    sat_of, val_of = _saturation_value_tables()
    hi = rgb.max(axis=-1)
    return sat_of[hi, rgb.min(axis=-1)], val_of[hi]


@functools.lru_cache(maxsize=1)
def _saturation_value_tables() -> tuple[np.ndarray, np.ndarray]:
    """``rgb2hsv``'s saturation by ``[max, min]`` of a uint8 pixel and its value by ``max``."""
    from skimage.color import rgb2hsv

    hi, lo = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    lo = np.minimum(lo, hi)  # pairs with min > max never occur: any pixel fills them
    hsv = rgb2hsv(np.stack([hi, lo, lo], axis=-1).astype(np.uint8))
    return np.ascontiguousarray(hsv[..., 1]), np.ascontiguousarray(hsv[:, 0, 2])


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """Read a user tissue mask image (non-zero = tissue), resized to ``shape`` (nearest).

    The mask covers the whole slide; any aspect ratio close to the slide's is accepted.
    """
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tissue mask not found: {p}")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        raise ValueError(f"tissue mask {p} is not a readable image: {exc}") from None
    ry = np.minimum((np.arange(shape[0]) + 0.5) * arr.shape[0] / shape[0], arr.shape[0] - 1).astype(int)
    rx = np.minimum((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1], arr.shape[1] - 1).astype(int)
    return arr[ry][:, rx] > 0


def tiles_with_tissue(
    mask: np.ndarray, mask_downsample: tuple[float, float], boxes_level0: np.ndarray
) -> np.ndarray:
    """Which level-0 boxes overlap the tissue mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        Tissue mask of the overview.
    mask_downsample : tuple of float
        ``(dy, dx)`` level-0 pixels per mask pixel.
    boxes_level0 : ndarray, shape (n, 4)
        ``(y0, y1, x0, x1)`` in level-0 pixels.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    from scipy import ndimage

    # One mask pixel of slack against rounding at the overview scale.
    grown = ndimage.binary_dilation(mask, iterations=1)
    integral = np.pad(grown.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    b = np.asarray(boxes_level0, dtype=np.float64)
    y0 = np.clip(np.floor(b[:, 0] / mask_downsample[0]), 0, h).astype(int)
    y1 = np.clip(np.ceil(b[:, 1] / mask_downsample[0]), 0, h).astype(int)
    x0 = np.clip(np.floor(b[:, 2] / mask_downsample[1]), 0, w).astype(int)
    x1 = np.clip(np.ceil(b[:, 3] / mask_downsample[1]), 0, w).astype(int)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total > 0
