"""Lazy whole-slide readers: OpenSlide for vendor formats, tifffile for (OME-)TIFF and SVS.

Both readers expose the same small interface (:class:`SlideReader`): the pyramid
geometry, the level-0 microns per pixel, and ``read(level, x, y, w, h)`` that returns
one RGB region of one level. Nothing ever reads a whole level.

Which reads a slide (:func:`open_slide`'s ``reader``): tifffile with imagecodecs decodes
the tiles of Aperio SVS and generic tiled TIFF (JPEG, RGB JPEG 2000, lossless) to the same
pixels as OpenSlide, 4.5-7x faster on JPEG and deflate tiles and 1.3x on JPEG 2000
(docs/SCALING.md, "Slide reading"), so ``"auto"`` picks it there; OpenSlide keeps every
other vendor format, and Aperio's YCbCr JPEG 2000 (compression 33003), whose colour
conversion tifffile does not do.

Everything taken from the file (dimensions, level count, resolution) is validated
before it is used to size an allocation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Plausible microns per pixel for a microscope slide; outside it the metadata is wrong
#: (a TIFF written with the 72 dpi default says 352.8 um/px).
MPP_RANGE = (0.01, 50.0)
#: Largest accepted level side in pixels (OpenSlide's own limit is 2**31).
MAX_SIDE = 2**31 - 1
#: Largest region read in one call, in pixels (about 1.5 GB of RGBA).
MAX_REGION_PIXELS = 2**28
#: Largest physical side of level 0 in millimetres: a glass slide is 75 x 26 mm, whole-mount
#: slides 2 x 3 inches; more means wrong dimensions or resolution.
MAX_EXTENT_MM = 200.0
#: Most pixels one read of :meth:`SlideReader.thumbnail` holds (12 MiB of RGB).
OVERVIEW_READ_PIXELS = 2**22

_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf2", ".tf8")

#: The ``reader`` choices of :func:`open_slide`.
READERS = ("auto", "openslide", "tifffile")
#: TIFF compressions tifffile decodes without imagecodecs: none, deflate, PackBits.
_NATIVE_COMPRESSIONS = frozenset({1, 8, 32946, 32773})
#: Aperio JPEG 2000 with YCbCr samples: OpenSlide converts them to RGB, tifffile does not.
_YCBCR_JPEG2000 = frozenset({33003, 33004})
FAST_READ_HINT = "pip install 'nucseg[fast-read]'"


class SlideError(ValueError):
    """A slide that cannot be opened or read, with a message naming the slide."""


class ReaderUnavailable(SlideError):
    """The chosen reader cannot decode this slide correctly here (a missing package, a
    compression it decodes differently); another reader may."""


def check_reader(reader: str) -> str:
    """Return ``reader`` if it is one of :data:`READERS`, else raise a ValueError naming it."""
    if not isinstance(reader, str) or reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(map(repr, READERS))}, got {reader!r}")
    return reader


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: size in pixels and downsample relative to level 0."""

    width: int
    height: int
    downsample: float


def validate_mpp(value: float, what: str) -> float:
    """Return ``value`` as a float if it is a plausible microns-per-pixel value.

    Parameters
    ----------
    value : float
        Candidate microns per pixel.
    what : str
        Name used in the error message (an argument name or a metadata field).

    Raises
    ------
    ValueError
        When ``value`` is not finite or outside :data:`MPP_RANGE`.
    """
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of microns per pixel, got {value!r}") from None
    if not math.isfinite(mpp) or not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        raise ValueError(
            f"{what} must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} microns per pixel, got {value!r}"
        )
    return mpp


def _validate_levels(levels: list[LevelInfo], path: Path) -> None:
    if not levels:
        raise SlideError(f"{path}: the slide has no image levels")
    for i, lv in enumerate(levels):
        if not (0 < lv.width <= MAX_SIDE and 0 < lv.height <= MAX_SIDE):
            raise SlideError(f"{path}: level {i} has an invalid size {lv.width}x{lv.height}")
        if not (math.isfinite(lv.downsample) and lv.downsample >= 1.0 - 1e-6):
            raise SlideError(f"{path}: level {i} has an invalid downsample {lv.downsample!r}")


@dataclass(frozen=True)
class Overview:
    """A low-resolution RGB overview of a slide.

    Attributes
    ----------
    rgb : ndarray of uint8, shape (h, w, 3)
    level : int
        Level it was subsampled from.
    stride : int
        Subsampling step within that level (overview pixel ``i`` is level pixel ``i * stride``).
    level_downsample : tuple of float
        ``(dy, dx)`` level-0 pixels per pixel of that level.
    """

    rgb: np.ndarray
    level: int
    stride: int
    level_downsample: tuple[float, float]

    @property
    def downsample(self) -> tuple[float, float]:
        """``(dy, dx)`` level-0 pixels per overview pixel."""
        return (self.stride * self.level_downsample[0], self.stride * self.level_downsample[1])


class SlideReader:
    """Base class of the readers: geometry, resolution, and region reads.

    Attributes
    ----------
    path : Path
        The slide file.
    levels : list of LevelInfo
        Pyramid levels, finest first.
    mpp : tuple of float or None
        Level-0 microns per pixel ``(x, y)`` from the slide metadata, or None.
    backend : str
        ``"openslide"`` or ``"tifffile"``.
    vendor : str
        Format reported by the backend.
    """

    backend = "base"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.levels: list[LevelInfo] = []
        self.mpp: tuple[float, float] | None = None
        self.vendor = "unknown"
        #: Seconds spent in :meth:`read` (decoding and assembling regions), summed over threads.
        self.decode_seconds = 0.0
        self._clock_lock = threading.Lock()

    # -- interface -------------------------------------------------------------
    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle."""

    # -- shared ----------------------------------------------------------------
    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a region of one level as RGB uint8 of shape ``(h, w, 3)``.

        Parameters
        ----------
        level : int
            Pyramid level index.
        x, y : int
            Top-left corner in that level's pixel coordinates; the region must lie
            inside the level.
        w, h : int
            Region size in pixels.

        Raises
        ------
        SlideError
            When the region is outside the level or the file cannot be decoded there;
            the message names the slide, the level and the region.
        """
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level must be in [0, {len(self.levels) - 1}], got {level}")
        lv = self.levels[level]
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise ValueError(
                f"region x={x} y={y} w={w} h={h} is outside level {level} ({lv.width}x{lv.height})"
            )
        if w * h > MAX_REGION_PIXELS:
            raise ValueError(f"region {w}x{h} is larger than the {MAX_REGION_PIXELS} pixel limit")
        t0 = time.perf_counter()
        try:
            rgb = self._read(level, x, y, w, h)
        except SlideError:
            raise
        except Exception as exc:  # decoder errors come in many types
            raise SlideError(
                f"{self.path}: cannot read level {level} region x={x} y={y} w={w} h={h}: {exc}"
            ) from exc
        with self._clock_lock:
            self.decode_seconds += time.perf_counter() - t0
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise SlideError(
                f"{self.path}: level {level} region x={x} y={y} w={w} h={h} decoded to "
                f"{rgb.dtype} {rgb.shape}, expected uint8 {(h, w, 3)}"
            )
        return rgb

    def require_mpp(self) -> tuple[float, float]:
        """Level-0 microns per pixel ``(x, y)``.

        Raises
        ------
        SlideError
            When the slide has none and no override was given (the message asks for ``--mpp``).
        """
        if self.mpp is None:
            raise SlideError(f"{self.path}: the slide has no microns-per-pixel metadata; pass --mpp")
        return self.mpp

    def check_extent(self, limit_mm: float = MAX_EXTENT_MM) -> tuple[float, float]:
        """Level 0's ``(width, height)`` in millimetres, checked against ``limit_mm``.

        Raises
        ------
        SlideError
            When the slide has no resolution (see :meth:`require_mpp`), or a side is
            longer than ``limit_mm``: such a slide cannot exist, its metadata is wrong.
        """
        mx, my = self.require_mpp()
        lv0 = self.levels[0]
        size = (lv0.width * mx / 1000.0, lv0.height * my / 1000.0)
        if max(size) > limit_mm:
            raise SlideError(
                f"{self.path}: level 0 is {lv0.width}x{lv0.height} px at {mx:g}x{my:g} um/px = "
                f"{size[0]:.1f}x{size[1]:.1f} mm, larger than the {limit_mm:g} mm limit for a slide; "
                "check its dimensions and mpp (--mpp overrides the mpp)"
            )
        return size

    def level_mpp(self, level: int) -> tuple[float, float]:
        """Microns per pixel ``(x, y)`` of one level (needs :attr:`mpp`)."""
        mx, my = self.require_mpp()
        lv0, lv = self.levels[0], self.levels[level]
        # Per-axis downsample from the sizes: OpenSlide's scalar downsample is rounded.
        return (mx * lv0.width / lv.width, my * lv0.height / lv.height)

    def thumbnail(self, max_side: int = 2048) -> Overview:
        """A small RGB overview, from the coarsest level with a side of ``max_side / 2`` or more.

        The level is read block by block and subsampled by an integer stride; each read
        holds at most :data:`OVERVIEW_READ_PIXELS` pixels whatever the slide size (with a
        stride too large for square blocks, only the sampled rows are read).

        Returns
        -------
        Overview
        """
        if max_side < 16:
            raise ValueError(f"max_side must be at least 16, got {max_side}")
        level = 0
        for i, lv in enumerate(self.levels):
            if max(lv.width, lv.height) >= max_side // 2:  # detailed enough, and cheap to read
                level = i
        lv = self.levels[level]
        stride = max(1, math.ceil(max(lv.width, lv.height) / max_side))
        out = np.empty((math.ceil(lv.height / stride), math.ceil(lv.width / stride), 3), np.uint8)
        bh, bw = overview_block(stride)
        for y in range(0, lv.height, max(bh, stride)):  # 1 px high reads: only the sampled rows
            for x in range(0, lv.width, bw):
                h, w = min(bh, lv.height - y), min(bw, lv.width - x)
                part = self.read(level, x, y, w, h)[::stride, ::stride]
                out[y // stride : y // stride + part.shape[0], x // stride : x // stride + part.shape[1]] = part
        lv0 = self.levels[0]
        level_ds = (lv0.height / lv.height, lv0.width / lv.width)
        return Overview(rgb=out, level=level, stride=stride, level_downsample=level_ds)

    def fingerprint(self) -> str:
        """A cheap, stable fingerprint: sha256 of size, first and last MiB, and geometry."""
        h = hashlib.sha256()
        size = self.path.stat().st_size
        h.update(str(size).encode())
        with open(self.path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 1 << 20:
                f.seek(max(size - (1 << 20), 1 << 20))
                h.update(f.read(1 << 20))
        h.update(repr([(lv.width, lv.height) for lv in self.levels]).encode())
        return h.hexdigest()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def overview_block(stride: int, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of the reads that subsample a level by ``stride``.

    Both start at multiples of ``stride`` and the width is one too, so every sampled
    pixel is read once. Square blocks while ``stride**2`` fits ``max_pixels``; beyond,
    one sampled row at a time (1 px high) instead of ``stride`` rows of which one is kept.
    ``max_pixels`` defaults to :data:`OVERVIEW_READ_PIXELS`.

    Examples
    --------
    >>> overview_block(3, 100)
    (9, 9)
    >>> overview_block(16, 100)
    (1, 96)
    """
    if max_pixels is None:
        max_pixels = OVERVIEW_READ_PIXELS
    side = math.isqrt(max_pixels) // stride * stride
    if side >= stride:
        return side, side
    return 1, max(stride, max_pixels // stride * stride)


class OpenSlideReader(SlideReader):
    """Reader for every format OpenSlide knows (Aperio, Hamamatsu, MIRAX, ...)."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        super().__init__(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{path}: OpenSlide cannot open the slide: {exc}") from exc
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self.levels = [
            LevelInfo(int(w), int(h), float(d))
            for (w, h), d in zip(self._slide.level_dimensions, self._slide.level_downsamples)
        ]
        _validate_levels(self.levels, path)
        mx, my = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
        if mx is not None and my is not None:
            self.mpp = (
                _metadata_mpp(mx, path, "openslide.mpp-x"),
                _metadata_mpp(my, path, "openslide.mpp-y"),
            )

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.levels[level].downsample
        # OpenSlide takes the top-left corner in level-0 coordinates.
        region = self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h))
        rgba = np.asarray(region)
        return _rgba_on_white(rgba)

    def close(self) -> None:
        self._slide.close()


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied RGBA (OpenSlide's output) on white."""
    if rgba[..., 3].min() == 255:  # opaque, as inside a scanned region: the RGB as it is (2x cheaper)
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgb + (255 - alpha)
    return np.minimum(out, 255).astype(np.uint8)


def _metadata_mpp(value: Any, path: Path, field: str) -> float:
    try:
        return validate_mpp(value, field)
    except ValueError as exc:
        raise SlideError(f"{path}: {exc} (pass --mpp to override)") from None


class TiffReader(SlideReader):
    """Reader for plain, pyramidal and OME-TIFF files through tifffile (lazy).

    Levels stored as tiles of 8-bit interleaved samples (what slide writers produce) are
    read tile by tile, and the last :data:`TILE_CACHE_BYTES` of decoded tiles are kept:
    the runner's read boxes overlap by twice the halo, so without them every tile near
    a core's border would be decoded two to four times. Other layouts are read through
    tifffile's zarr store.
    """

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            arrays = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{path}: not a readable TIFF slide: {exc}") from exc
        self.vendor = "aperio" if self._tif.is_svs else "ome-tiff" if self._tif.is_ome else "tiff"
        try:
            _check_decodable(series, path)
        except SlideError:
            self._tif.close()
            raise
        self._axes = series.axes
        self._arrays = arrays
        self._lock = threading.Lock()  # tifffile shares one file handle (and the tile cache)
        self._tiled = [_tiled_page(lv) for lv in series.levels]
        self._cache = _TileCache(TILE_CACHE_BYTES)
        self._yx = []
        levels = []
        for lv in series.levels:
            axes = lv.axes
            if "Y" not in axes or "X" not in axes:
                raise SlideError(f"{path}: TIFF series has axes {axes!r}, expected Y and X")
            shape = dict(zip(axes, lv.shape))
            levels.append(LevelInfo(int(shape["X"]), int(shape["Y"]), 1.0))
            self._yx.append(axes)
        w0 = levels[0].width
        self.levels = [LevelInfo(lv.width, lv.height, w0 / lv.width) for lv in levels]
        _validate_levels(self.levels, path)
        self._check_samples(series)
        self.mpp = self._read_mpp()

    def _check_samples(self, series: Any) -> None:
        axes = series.levels[0].axes
        shape = dict(zip(axes, series.levels[0].shape))
        samples = shape.get("S", shape.get("C", 1))
        extra = [a for a in axes if a not in "YXSC" and shape[a] != 1]
        if samples not in (1, 3, 4) or extra:
            raise SlideError(
                f"{self.path}: TIFF image has axes {axes!r} shape {series.levels[0].shape}; "
                "expected a 2-D RGB (or grey) image"
            )
        if series.dtype != np.uint8:
            raise SlideError(f"{self.path}: TIFF pixels are {series.dtype}, expected uint8 RGB")

    def _read_mpp(self) -> tuple[float, float] | None:
        return tiff_file_mpp(self._tif, self.path)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        axes = self._yx[level]
        index = tuple(
            slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else slice(None) if a in "SC" else 0
            for a in axes
        )
        page = self._tiled[level]
        if page is not None:
            return _as_rgb(self._read_tiles(level, page, x, y, w, h))
        with self._lock:
            arr = np.asarray(self._arrays[level][index])
        kept = [a for a in axes if a in "YXSC"]
        if "S" not in kept and "C" not in kept:
            arr = arr[..., None]
            kept.append("S")
        sample = "S" if "S" in kept else "C"
        arr = np.moveaxis(arr, [kept.index("Y"), kept.index("X"), kept.index(sample)], [0, 1, 2])
        return _as_rgb(arr)

    def _read_tiles(self, level: int, page: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The region ``(h, w, samples)`` of a tiled level, from cached or decoded tiles."""
        th, tw = page.tilelength, page.tilewidth
        per_row = -(-page.imagewidth // tw)
        out = np.empty((h, w, page.samplesperpixel), np.uint8)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                tile = self._tile(level, page, ty * per_row + tx)
                y0, x0 = ty * th, tx * tw
                a0, a1, b0, b1 = max(y, y0), min(y + h, y0 + th), max(x, x0), min(x + w, x0 + tw)
                out[a0 - y : a1 - y, b0 - x : b1 - x] = tile[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]
        return out

    def _tile(self, level: int, page: Any, index: int) -> np.ndarray:
        """Decoded tile ``index`` of a level ``(tile_h, tile_w, samples)``.

        Only the file read and the cache hold the lock: decoders release the GIL, so the
        runner's reader threads decode side by side (two may decode the same tile once).
        """
        with self._lock:
            tile = self._cache.get((level, index))
            if tile is not None:
                return tile
            count = page.databytecounts[index]
            if count:
                fh = self._tif.filehandle
                fh.seek(page.dataoffsets[index])
                data = fh.read(count)
        shape = (page.tilelength, page.tilewidth, page.samplesperpixel)
        if count == 0:  # a tile never written: glass, as OpenSlide shows it (transparent on white)
            tile = np.full(shape, 255, np.uint8)
        else:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            tile = np.asarray(seg).reshape(shape)
        with self._lock:
            self._cache.put((level, index), tile)
        return tile

    def close(self) -> None:
        self._tif.close()


#: Decoded TIFF tiles a :class:`TiffReader` keeps (a band of 256 px tiles across a
#: 40,000 px wide level, about the rows two neighbouring read boxes share).
TILE_CACHE_BYTES = 64 * 2**20


class _TileCache:
    """Least recently used decoded tiles, up to a number of bytes (not thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.bytes = 0
        self.tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        tile = self.tiles.get(key)
        if tile is not None:
            self.tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        self.tiles[key] = tile
        self.bytes += tile.nbytes
        while self.bytes > self.max_bytes and len(self.tiles) > 1:
            _, old = self.tiles.popitem(last=False)
            self.bytes -= old.nbytes


def _check_decodable(series: Any, path: Path) -> None:
    """Raise :class:`ReaderUnavailable` when tifffile would not decode a level as OpenSlide does.

    That is Aperio's YCbCr JPEG 2000 (returned as YCbCr), and any compression but none,
    deflate and PackBits without imagecodecs.
    """
    compressions = {int(p.compression) for lv in series.levels for p in getattr(lv, "pages", []) if p is not None}
    if compressions & _YCBCR_JPEG2000:
        raise ReaderUnavailable(
            f"{path}: its tiles are JPEG 2000 with YCbCr samples (Aperio compression 33003), which tifffile "
            "returns without converting them to RGB; read it with reader='openslide'"
        )
    if compressions - _NATIVE_COMPRESSIONS:
        try:
            import imagecodecs  # noqa: F401
        except ImportError:
            names = ", ".join(sorted(str(c) for c in compressions - _NATIVE_COMPRESSIONS))
            raise ReaderUnavailable(
                f"{path}: decoding its tiles (TIFF compression {names}) with tifffile needs imagecodecs: "
                f"{FAST_READ_HINT}, or read it with reader='openslide'"
            ) from None


def _tiled_page(level: Any) -> Any:
    """The page of a series level when it can be read tile by tile, else None.

    That is one page of 8-bit tiles with interleaved samples (1, 3 or 4) in the axes
    ``YX`` or ``YXS``: a plain, pyramidal or OME-TIFF slide level as writers make them.
    """
    pages = getattr(level, "pages", [])
    if len(pages) != 1 or level.axes not in ("YX", "YXS"):
        return None
    page = level.keyframe
    if not page.is_tiled or page.dtype != np.uint8 or page.imagedepth != 1 or page.tiledepth != 1:
        return None
    if page.samplesperpixel not in (1, 3, 4) or (page.samplesperpixel > 1 and page.planarconfig != 1):
        return None
    return page


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    """``(h, w, samples)`` as contiguous RGB: grey repeated, alpha dropped."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def tiff_file_mpp(tif: Any, path: Path) -> tuple[float, float] | None:
    """Microns per pixel ``(x, y)`` of a TIFF's first image, or None when it has none.

    OME PhysicalSizeX/Y first, then an Aperio ImageDescription's ``MPP`` (what OpenSlide
    reports for SVS), then the XResolution/YResolution tags of the first page
    (ResolutionUnit inch or centimetre). The 72 dpi default that writers put in every
    TIFF, and a unit-less resolution (an aspect ratio), count as no resolution.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    path : Path
        Named in error messages.

    Raises
    ------
    SlideError
        The metadata gives an implausible resolution (outside :data:`MPP_RANGE`).
    """
    if tif.is_ome and tif.ome_metadata:
        found = _ome_mpp(tif.ome_metadata)
        if found is not None:
            return (
                _metadata_mpp(found[0], path, "OME PhysicalSizeX"),
                _metadata_mpp(found[1], path, "OME PhysicalSizeY"),
            )
    if tif.is_svs:
        m = re.search(r"\|\s*MPP\s*=\s*([^|\s]+)", tif.pages[0].description)
        if m:
            mpp = _metadata_mpp(m.group(1), path, "Aperio MPP")
            return (mpp, mpp)
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit_um is None:  # RESUNIT_NONE: the numbers are an aspect ratio only
        return None
    out = []
    for name in ("XResolution", "YResolution"):
        num, den = tags[name].value
        if num <= 0 or den <= 0:
            return None
        out.append(per_unit_um * den / num)
    if unit == 2 and abs(out[0] - 25400.0 / 72.0) < 1e-6:
        return None  # the 72 dpi default that writers put in every TIFF
    return (
        _metadata_mpp(out[0], path, "TIFF XResolution"),
        _metadata_mpp(out[1], path, "TIFF YResolution"),
    )


def _ome_mpp(xml: str) -> tuple[float, float] | None:
    """PhysicalSizeX/Y in micrometres from the first OME Pixels element, or None."""
    m = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if not m:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
    out = []
    for axis in ("X", "Y"):
        if f"PhysicalSize{axis}" not in attrs:
            return None
        unit = attrs.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in scale:
            return None
        try:
            out.append(float(attrs[f"PhysicalSize{axis}"]) * scale[unit])
        except ValueError:
            return None
    return out[0], out[1]


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None, reader: str = "auto") -> SlideReader:
    """Open a whole-slide image lazily with the right backend.

    Parameters
    ----------
    path : str or path-like
        The slide file: any format OpenSlide reads (Aperio SVS, Hamamatsu, MIRAX, ...),
        or a plain, pyramidal or OME-TIFF.
    mpp : float, optional
        Level-0 microns per pixel, overriding (or supplying) the slide's own value.
    reader : {"auto", "openslide", "tifffile"}
        Which library decodes the tiles. ``"auto"``: tifffile (with imagecodecs) for
        Aperio SVS and TIFF, where it gives OpenSlide's pixels faster; OpenSlide for
        the other vendor formats, for Aperio's YCbCr JPEG 2000, and for compressed
        tiles when imagecodecs is missing. ``"openslide"`` or ``"tifffile"`` force one.

    Returns
    -------
    SlideReader

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist or is a directory.
    ValueError
        An unknown ``reader``.
    SlideError
        When the file is not a slide the chosen reader can read, or its metadata is
        invalid; :class:`ReaderUnavailable` (a SlideError) when ``reader="tifffile"``
        lacks imagecodecs (the message says ``pip install 'nucseg[fast-read]'``) or
        would decode the tiles differently from OpenSlide.

    Examples
    --------
    >>> with open_slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
    ...     print(slide.backend, slide.levels[0], slide.mpp)
    tifffile LevelInfo(width=2220, height=2967, downsample=1.0) (0.499, 0.499)
    """
    check_reader(reader)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"slide not found: {p}")
    if not p.is_file():
        raise FileNotFoundError(f"slide is not a file: {p}")
    override = None if mpp is None else validate_mpp(mpp, "mpp")
    slide = _open_backend(p, reader)
    if override is not None:
        slide.mpp = (override, override)
    return slide


def _open_backend(p: Path, reader: str = "auto") -> SlideReader:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(p))
    except Exception:  # detect_format raises on unreadable files in some versions
        vendor = None
    if reader == "openslide":
        if vendor is None:
            raise SlideError(f"{p}: OpenSlide cannot read this file (reader='openslide'); try reader='tifffile'")
        return OpenSlideReader(p)
    tiff = _looks_like_tiff(p)
    if reader == "tifffile":
        if not tiff:
            raise SlideError(f"{p}: not a TIFF file, which reader='tifffile' needs; try reader='openslide'")
        return TiffReader(p)
    if vendor not in (None, "generic-tiff", "aperio"):  # formats tifffile is not proven equal on
        return OpenSlideReader(p)
    if tiff:
        try:
            return TiffReader(p)
        except ReaderUnavailable as exc:
            if vendor is None:
                raise
            logger.info("%s; reading it with OpenSlide", exc)
        return OpenSlideReader(p)
    raise SlideError(f"{p}: not a slide (neither OpenSlide nor tifffile can read this file)")


def _looks_like_tiff(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SlideError(f"{p}: cannot read the file: {exc}") from exc
    return magic[:2] in (b"II", b"MM") and magic[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")
