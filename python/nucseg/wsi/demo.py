"""A synthetic H&E-like pyramidal TIFF with known nuclei, for first runs and tests.

The slide has a white glass background with a few tissue islands: pink eosin-stained
stroma with a fine texture, and dark purple hematoxylin-stained elliptical nuclei,
some of them touching. Every nucleus is known (centre, semi-axes, angle), so a
segmentation can be checked against it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_GLASS = np.array([242.0, 240.0, 244.0])
_EOSIN = np.array([232.0, 160.0, 196.0])
_HEMA = np.array([92.0, 52.0, 140.0])


@dataclass(frozen=True)
class DemoNuclei:
    """Ground truth of a synthetic slide, in level-0 pixels.

    Attributes
    ----------
    center : ndarray, shape (n, 2)
        ``(y, x)`` centres.
    axes : ndarray, shape (n, 2)
        Semi-axes ``(a, b)`` in pixels.
    angle : ndarray, shape (n,)
        Orientation in radians.
    """

    center: np.ndarray
    axes: np.ndarray
    angle: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bilinear upsampling of a coarse random grid)."""
    gh, gw = shape[0] // scale + 2, shape[1] // scale + 2
    coarse = rng.random((gh, gw))
    yy = np.linspace(0, gh - 2, shape[0])
    xx = np.linspace(0, gw - 2, shape[1])
    # Separable linear interpolation: cheap, and smooth enough at these scales.
    iy, fy = np.minimum(yy.astype(int), gh - 2), (yy % 1)[:, None]
    ix, fx = np.minimum(xx.astype(int), gw - 2), (xx % 1)[None, :]
    rows = coarse[iy] * (1 - fy) + coarse[iy + 1] * fy
    field = rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-9)


def synthetic_he(
    shape: tuple[int, int] = (2048, 2048),
    *,
    seed: int = 0,
    tissue_fraction: float = 0.6,
    spacing: float = 34.0,
    radius: tuple[float, float] = (7.0, 12.0),
) -> tuple[np.ndarray, np.ndarray, DemoNuclei]:
    """Render an H&E-like RGB image with known nuclei.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` in pixels (about 0.25 um/px is realistic for the defaults).
    seed : int
        Random seed: the same seed gives the same image.
    tissue_fraction : float
        Rough fraction of the image covered by tissue (the rest is glass).
    spacing : float
        Mean distance between nucleus centres in pixels.
    radius : tuple of float
        Range of nucleus semi-axes in pixels.

    Returns
    -------
    rgb : ndarray of uint8, shape (h, w, 3)
    tissue : ndarray of bool, shape (h, w)
    nuclei : DemoNuclei
    """
    h, w = shape
    if h < 64 or w < 64:
        raise ValueError(f"shape must be at least 64x64, got {shape}")
    if not 0.0 < tissue_fraction <= 1.0:
        raise ValueError(f"tissue_fraction must be in (0, 1], got {tissue_fraction}")
    rng = np.random.default_rng(seed)
    field = _smooth_noise(rng, shape, scale=max(64, min(h, w) // 3))
    cut = np.quantile(field, 1.0 - tissue_fraction)
    tissue = field >= cut
    texture = _smooth_noise(rng, shape, scale=6)
    rgb = np.empty((h, w, 3), np.float32)
    stroma = _EOSIN[None, None, :] + (texture[..., None] - 0.5) * np.array([20.0, 50.0, 30.0])
    rgb[:] = np.where(tissue[..., None], stroma, _GLASS[None, None, :])

    # Nuclei on a jittered grid: random, but rarely overlapping more than touching.
    ys = np.arange(spacing / 2, h - spacing / 2, spacing)
    xs = np.arange(spacing / 2, w - spacing / 2, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    centers = np.stack([gy.ravel(), gx.ravel()], axis=1)
    centers += rng.uniform(-0.3, 0.3, centers.shape) * spacing
    keep = tissue[centers[:, 0].astype(int), centers[:, 1].astype(int)]
    keep &= rng.random(len(centers)) < 0.8
    centers = centers[keep]
    n = len(centers)
    axes = np.stack([rng.uniform(*radius, n), rng.uniform(*radius, n)], axis=1)
    axes.sort(axis=1)
    axes = axes[:, ::-1].copy()
    angle = rng.uniform(0, math.pi, n)
    darkness = rng.uniform(0.75, 1.0, n)
    for (cy, cx), (a, b), t, d in zip(centers, axes, angle, darkness):
        r = int(math.ceil(a)) + 2
        y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dx * math.cos(t) + dy * math.sin(t)) / a
        v = (-dx * math.sin(t) + dy * math.cos(t)) / b
        rr = np.sqrt(u * u + v * v)
        alpha = np.clip((1.15 - rr) / 0.3, 0.0, 1.0) * d  # soft edge
        # Chromatin texture: nuclei are not flat.
        alpha *= 0.85 + 0.15 * texture[y0:y1, x0:x1]
        patch = rgb[y0:y1, x0:x1]
        patch[:] = patch * (1 - alpha[..., None]) + _HEMA[None, None, :] * alpha[..., None]
    rgb += 3.0 * rng.standard_normal(rgb.shape, dtype=np.float32)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out, tissue, DemoNuclei(center=centers, axes=axes, angle=angle)


def write_pyramid_tiff(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    mpp: float | None = 0.25,
    levels: int = 3,
    tile: int = 256,
    ome: bool = False,
) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF (sub-IFDs, 2x downsampling).

    Parameters
    ----------
    path : path-like
        Output file.
    rgb : ndarray of uint8, shape (h, w, 3)
    mpp : float or None
        Level-0 microns per pixel, stored as TIFF resolution tags (centimetre unit) or,
        with ``ome=True``, as OME PhysicalSizeX/Y. None writes no resolution.
    levels : int
        Number of pyramid levels, including level 0.
    tile : int
        TIFF tile size (a multiple of 16).
    ome : bool
        Write OME-TIFF metadata.
    """
    import tifffile

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (h, w, 3), got {rgb.dtype} {rgb.shape}")
    path = Path(path)
    kwargs: dict = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib"}
    extra: dict = {}
    if mpp is not None and not ome:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    metadata = None
    if ome:
        metadata = {"axes": "YXS"}
        if mpp is not None:
            metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    with tifffile.TiffWriter(path, ome=ome, bigtiff=rgb.nbytes > 2**31) as tif:
        tif.write(rgb, subifds=levels - 1, metadata=metadata, **kwargs, **extra)
        level = rgb
        for _ in range(levels - 1):
            hh, ww = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            tif.write(level, subfiletype=1, metadata=None, **kwargs)
    return path


def write_demo_slide(
    path: str | os.PathLike[str],
    shape: tuple[int, int] = (2048, 2048),
    *,
    seed: int = 0,
    mpp: float | None = 0.25,
    levels: int = 3,
) -> DemoNuclei:
    """Write the synthetic demo slide and return its known nuclei (level-0 pixels)."""
    rgb, _, nuclei = synthetic_he(shape, seed=seed)
    write_pyramid_tiff(path, rgb, mpp=mpp, levels=levels)
    return nuclei


#: Compressions :func:`write_tiled_slide` writes: name -> TIFF Compression tag value.
SLIDE_COMPRESSIONS = {
    "none": 1,
    "deflate": 8,
    "jpeg": 7,
    "jpeg2000": 34712,  # plain JPEG 2000 tiles (OpenSlide does not read them)
    "aperio-j2k-ycbcr": 33003,  # Aperio's JPEG 2000 with YCbCr samples in the codestream
    "aperio-j2k-rgb": 33005,  # Aperio's JPEG 2000 with RGB samples
}


def write_tiled_slide(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    compression: str = "jpeg",
    layout: str = "aperio",
    mpp: float = 0.25,
    levels: int = 3,
    tile: int = 256,
    quality: int | None = None,
) -> Path:
    """Write an RGB image as a tiled slide of the kinds scanners write (2x pyramid).

    Unlike :func:`write_pyramid_tiff` (sub-IFDs), every level is a page of the main
    chain, as in Aperio SVS and OpenSlide's "generic tiled TIFF", so OpenSlide reads the
    whole pyramid. Lossy compressions need ``imagecodecs``.

    Parameters
    ----------
    path : path-like
        Output file.
    rgb : ndarray of uint8, shape (h, w, 3)
    compression : str
        A key of :data:`SLIDE_COMPRESSIONS`. ``"aperio-j2k-ycbcr"`` stores full-range
        YCbCr (JPEG's BT.601 matrix) without the codestream's colour transform, as
        Aperio's 33003 tiles do; readers must convert it back to RGB.
    layout : {"aperio", "generic"}
        ``"aperio"``: an Aperio ImageDescription (with ``MPP``) on each page and a
        stripped thumbnail as the second page, so OpenSlide reads it as SVS;
        ``"generic"``: resolution tags and reduced-resolution pages (OpenSlide's
        generic-tiff).
    mpp : float
        Level-0 microns per pixel.
    levels : int
        Pyramid levels including level 0 (2x2 means).
    tile : int
        TIFF tile side (a multiple of 16).
    quality : int, optional
        JPEG quality (default 80) or JPEG 2000 PSNR in dB (default 45).

    Returns
    -------
    Path
    """
    import tifffile

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"rgb must be a non-empty uint8 (h, w, 3) array, got {rgb.dtype} {rgb.shape}")
    if compression not in SLIDE_COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(SLIDE_COMPRESSIONS)}, got {compression!r}")
    if layout not in ("aperio", "generic"):
        raise ValueError(f"layout must be 'aperio' or 'generic', got {layout!r}")
    if levels < 1 or tile < 16 or tile % 16:
        raise ValueError(f"levels must be >= 1 and tile a multiple of 16, got levels={levels} tile={tile}")
    path = Path(path)
    tag = SLIDE_COMPRESSIONS[compression]
    args = _compression_args(tag, quality)
    pyramid = [rgb]
    for _ in range(levels - 1):
        lv = pyramid[-1]
        hh, ww = lv.shape[0] // 2 * 2, lv.shape[1] // 2 * 2
        pyramid.append(lv[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    h0, w0 = rgb.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as tif:
        for i, lv in enumerate(pyramid):
            meta: dict = {"photometric": "rgb", "metadata": None}
            if layout == "aperio":
                meta["description"] = (
                    f"Aperio Image Library v12.0.15\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) "
                    f"-> {lv.shape[1]}x{lv.shape[0]} |AppMag = 40|MPP = {mpp}"
                )
            elif i == 0:
                meta.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            else:
                meta["subfiletype"] = 1
            _write_level(tif, lv, tag, args, tile, meta)
            if layout == "aperio" and i == 0:  # Aperio's second page: a stripped thumbnail
                step = max(1, max(h0, w0) // 256)
                tif.write(np.ascontiguousarray(rgb[::step, ::step]), photometric="rgb", metadata=None,
                          description="Aperio Image Library v12.0.15\nthumbnail")
    return path


def _compression_args(tag: int, quality: int | None) -> dict:
    if tag == 7:
        return {"level": 80 if quality is None else quality}
    if tag in (33003, 33005, 34712):
        return {"level": 45 if quality is None else quality}
    return {}


def _write_level(tif: object, lv: np.ndarray, tag: int, args: dict, tile: int, meta: dict) -> None:
    """One tiled page; Aperio YCbCr JPEG 2000 tiles are encoded here (tifffile writes RGB)."""
    if tag != 33003:
        tif.write(lv, tile=(tile, tile), compression=tag if tag != 1 else None,  # type: ignore[attr-defined]
                  compressionargs=args or None, **meta)
        return
    import imagecodecs

    h, w = lv.shape[:2]
    # Edge tiles padded by repeating the border: black YCbCr is saturated green, whose ringing would tint the edge.
    padded = np.pad(_rgb_to_ycbcr(lv), ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")

    def tiles():  # row-major, each encoded without the codestream's colour transform
        for y in range(0, padded.shape[0], tile):
            for x in range(0, padded.shape[1], tile):
                part = np.ascontiguousarray(padded[y : y + tile, x : x + tile])
                yield imagecodecs.jpeg2k_encode(part, level=args["level"], codecformat="J2K", mct=False)

    tif.write(  # type: ignore[attr-defined]
        tiles(), shape=lv.shape, dtype=np.uint8, tile=(tile, tile), compression=33003, **meta
    )


def _rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (JPEG's), rounded to uint8."""
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = rgb.astype(np.float32) @ m.T.astype(np.float32) + np.array([0.0, 128.0, 128.0], np.float32)
    return np.clip(np.rint(ycc), 0, 255).astype(np.uint8)
