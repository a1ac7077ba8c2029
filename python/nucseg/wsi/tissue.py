"""Tissue detection on a low-resolution overview, and which tiles it keeps.

Glass is bright and grey; stained tissue is saturated. Otsu's threshold on the HSV
saturation of the overview, clamped to a sensible range so an overview that is all
tissue (or all glass) is not split in two, then a closing, removal of specks and
filling of small holes.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True, eq=False)
class TissueMap:
    """Where a slide's nuclei are segmented: its tissue mask grown by the object margin.

    The network runs only where the map is true and the probability is 0 elsewhere,
    decided pixel by pixel from the overview, so every tile that sees a pixel agrees on
    it (ownership relies on that) whatever the tile grid, and glass inside a tissue tile
    costs no inference (:func:`nucseg.wsi.pipeline.tissue_windows`).

    Attributes
    ----------
    bits : ndarray of uint8
        The grown overview mask, ``numpy.packbits`` of its rows (small enough to send
        with every distributed task).
    shape : tuple of int
        The overview mask's ``(h, w)``.
    downsample : tuple of float
        ``(dy, dx)`` level-0 pixels per overview pixel.
    margin : int
        Processing pixels the tissue was grown by (at least; rounded up to whole
        overview pixels, plus one against rounding).
    """

    bits: np.ndarray
    shape: tuple[int, int]
    downsample: tuple[float, float]
    margin: int

    @classmethod
    def grow(cls, mask: np.ndarray, downsample: tuple[float, float], geom: Any, margin: int) -> TissueMap:
        """The map of overview ``mask`` grown by ``margin`` processing pixels of ``geom``.

        A square footprint: a nucleus whose pixels reach within ``margin`` of tissue in
        any direction is inside.
        """
        from scipy import ndimage

        level0_per_px = max(d / s for d, s in zip(geom.level_downsample, geom.scale))
        steps = math.ceil(margin * level0_per_px / min(downsample)) + 1
        grown = ndimage.maximum_filter(np.asarray(mask, dtype=np.uint8), size=2 * steps + 1) > 0
        return cls(np.packbits(grown, axis=1), grown.shape, (float(downsample[0]), float(downsample[1])), int(margin))

    @functools.cached_property
    def _grown(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=1, count=self.shape[1]).view(bool)

    def __getstate__(self) -> dict[str, Any]:  # pickled (to Dask workers) packed, never unpacked
        return {k: v for k, v in self.__dict__.items() if k != "_grown"}

    def _rows_cols(self, geom: Any, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The overview row of each processing row ``ys`` and column of each column ``xs``."""
        ys = np.asarray(ys, dtype=np.float64)
        xs = np.asarray(xs, dtype=np.float64)
        ly = geom.to_level0(np.stack([ys, np.zeros_like(ys)], axis=-1))[..., 0]
        lx = geom.to_level0(np.stack([np.zeros_like(xs), xs], axis=-1))[..., 1]
        rows = np.clip(np.floor((ly + 0.5) / self.downsample[0]), 0, self.shape[0] - 1).astype(np.intp)
        cols = np.clip(np.floor((lx + 0.5) / self.downsample[1]), 0, self.shape[1] - 1).astype(np.intp)
        return rows, cols

    def any_inside(self, geom: Any, boxes: np.ndarray) -> np.ndarray:
        """Whether each processing-pixel box ``(y0, y1, x0, x1)`` (rows of ``boxes``) has a pixel inside.

        Exactly ``inside(geom, box).any()``, from an integral image of the overview: a
        tile is computed when its core holds a pixel inside, since a nucleus (0 outside
        the map) is owned by the tile whose core holds its first pixel.
        """
        b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        r0, c0 = self._rows_cols(geom, b[:, 0], b[:, 2])
        r1, c1 = self._rows_cols(geom, b[:, 1] - 1, b[:, 3] - 1)  # the mapping is monotonic
        integral = np.pad(self._grown.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        total = integral[r1 + 1, c1 + 1] - integral[r0, c1 + 1] - integral[r1 + 1, c0] + integral[r0, c0]
        return (total > 0) & (b[:, 1] > b[:, 0]) & (b[:, 3] > b[:, 2])

    def inside(self, geom: Any, box: tuple[int, int, int, int]) -> np.ndarray:
        """Boolean map of the processing-pixel ``box`` ``(y0, y1, x0, x1)``: True where nuclei are segmented.

        Each processing pixel takes the overview pixel its centre falls in (level 0
        through ``geom``); pixels beyond the slide take the nearest edge pixel.
        """
        y0, y1, x0, x1 = box
        rows, cols = self._rows_cols(geom, np.arange(y0, y1), np.arange(x0, x1))
        return self._grown[rows][:, cols]
