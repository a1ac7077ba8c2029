"""A predictor that replays a probability map computed beforehand (benchmarks, profiling).

:class:`PrecomputedPredictor` has the interface of the predictors of
:mod:`nucseg.wsi.predictors` (``predict(rgb) -> prob`` and a ``config``), but
``predict`` only finds the requested window in a map saved on disk and copies it out.
With it, a run of :func:`nucseg.wsi.segment_slide` measures the whole slide path
except the network: read, decode, resampling, halo, watershed, ownership, table rows
and the compressed zarr writes.

How a window is found
---------------------
``predict`` is given RGB only, no coordinates. A tile's read box is its core grown by
the halo on every side, so the window's centre pixel ``(H // 2, W // 2)`` is the
core's centre pixel ``(y0 + core_h // 2, x0 + core_w // 2)`` whatever the halo (the
default one or an enlarged one). :func:`precompute` reads a small patch around each
core's centre from the slide and keys the centre's position by the patch's digest;
``predict`` digests the same patch of the window and slices the map around that
centre. The patch lies in the core, which the runner reads from the slide itself
(never mirrored), so the digests match bit for bit on lossless and lossy slides alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Side of the centre patch whose digest identifies a window (cores must be at least this).
PATCH = 16
_MAP, _INDEX = "prob.npy", "index.json"


def centre_digest(rgb: np.ndarray, cy: int, cx: int) -> str:
    """Digest of the ``PATCH x PATCH`` RGB patch centred on ``(cy, cx)`` of ``rgb``."""
    h = PATCH // 2
    patch = np.ascontiguousarray(rgb[cy - h : cy - h + PATCH, cx - h : cx - h + PATCH])
    return hashlib.blake2b(patch.tobytes(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class PrecomputedConfig:
    """The replayed predictor's configuration: the original's fields, another name.

    Attributes
    ----------
    name, arch : str
    mpp, lam, threshold : float
    halo, stride, min_area : int
        As the predictor the map was computed with.
    """

    name: str
    arch: str
    mpp: float
    lam: float
    threshold: float
    halo: int
    stride: int = 1
    min_area: int = 0


class PrecomputedPredictor:
    """Returns, for each requested window, its slice of a probability map saved on disk.

    Build one with :func:`precompute`; a later process opens its folder with the constructor. The map is read
    through a memory map opened per call and closed after it, so the process holds
    only the windows in flight (its peak RSS stays the runner's own).

    Parameters
    ----------
    folder : path-like
        A folder written by :func:`precompute`.

    Raises
    ------
    KeyError
        From :meth:`predict`, for a window whose centre patch was not indexed (another
        slide, tile size or processing resolution than the one precomputed).
    """

    #: Windows are found by their centre, which only a tile's whole read box shares with
    #: its core: the runners predict whole read boxes (:func:`nucseg.wsi.pipeline.predict_tiles`).
    accepts_windows = False

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / _INDEX).read_text())
        self.config = PrecomputedConfig(**meta["config"])
        self.sha256 = str(meta["sha256"])
        self.pad = int(meta["pad"])
        self._centres = {k: (int(v[0]), int(v[1])) for k, v in meta["centres"].items()}

    def window(self, cy: int, cx: int, shape: tuple[int, int]) -> np.ndarray:
        """The map on the ``shape`` window centred (as a read box is) on ``(cy, cx)``."""
        h, w = shape
        y0, x0 = cy - h // 2 + self.pad, cx - w // 2 + self.pad
        mm = np.load(self.folder / _MAP, mmap_mode="r")
        if y0 < 0 or x0 < 0 or y0 + h > mm.shape[0] or x0 + w > mm.shape[1]:
            raise ValueError(f"window {shape} at ({cy}, {cx}) exceeds the map's {self.pad} px padding")
        out = np.array(mm[y0 : y0 + h, x0 : x0 + w], dtype=np.float32)
        del mm  # unmapped now: the map's pages do not stay in this process's RSS
        return out

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Probability maps for a batch of RGB uint8 windows ``(B, H, W, 3)``."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or min(rgb.shape[1:3]) < PATCH:
            raise ValueError(f"rgb must be (B, H, W, 3) with H, W >= {PATCH}, got {rgb.shape}")
        b, h, w = rgb.shape[:3]
        out = np.empty((b, h, w), np.float32)
        for i in range(b):
            key = centre_digest(rgb[i], h // 2, w // 2)
            if key not in self._centres:
                raise KeyError(f"window {i} of shape {(h, w)} is not in the precomputed map {self.folder}")
            out[i] = self.window(*self._centres[key], (h, w))
        return out


def precompute(
    slide: str | os.PathLike[str],
    base: Any,
    folder: str | os.PathLike[str],
    *,
    tile: int,
    pad: int = 512,
    strip: int = 512,
) -> PrecomputedPredictor:
    """Compute ``base``'s map of a slide once and index its tiles' centres.

    The map covers the processing image (the geometry :func:`nucseg.wsi.segment_slide`
    plans for ``base`` and ``tile``), computed in strips of ``strip`` rows with
    ``base.config.halo`` pixels of context (so no whole-slide RGB is ever in memory),
    and mirrored by ``pad`` pixels beyond the image.

    Parameters
    ----------
    slide : path-like
        The slide.
    base : predictor
        The predictor whose map is replayed (e.g. :class:`~nucseg.wsi.predictors.HematoxylinPredictor`).
    folder : path-like
        Written: ``prob.npy`` (float32) and ``index.json``.
    tile : int
        The core tile size the replaying runs will use.
    pad : int
        Mirror padding of the map: the largest halo a run may read (the runner's
        default ``max_halo`` is 512).
    strip : int
        Rows computed per call of ``base.predict``.

    Returns
    -------
    PrecomputedPredictor
    """
    from .pipeline import _round_up
    from .predictors import describe
    from .reader import open_slide
    from .tiling import make_tiles, plan_geometry, read_region

    info = describe(base)
    if tile < PATCH:
        raise ValueError(f"tile must be at least {PATCH} px to index its centre, got {tile}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open_slide(slide) as reader:
        ctx, stride = info["context"], info["stride"]
        geom = plan_geometry(
            [(lv.width, lv.height) for lv in reader.levels], reader.require_mpp(), info["mpp"], tile=tile,
            halo=_round_up(ctx + 1, stride), context=ctx, stride=stride,
        )
        h, w = geom.size
        prob = np.lib.format.open_memmap(folder / _MAP, mode="w+", dtype=np.float32, shape=(h + 2 * pad, w + 2 * pad))
        for y in range(0, h, strip):
            rows = min(strip, h - y)
            # read_region mirrors the context beyond the image's border, as the runner's reads do.
            rgb = read_region(reader, geom, (y - ctx, y + rows + ctx, -ctx, w + ctx))
            p = np.asarray(base.predict(rgb[None]), np.float32)[0, ctx : ctx + rows, ctx : ctx + w]
            prob[y + pad : y + pad + rows] = np.pad(p, ((0, 0), (pad, pad)), mode="reflect")
        # Beyond the image the map is mirrored; the runner never uses it there (valid boxes
        # lie inside the image), it only fills the read boxes that reach beyond.
        rows = np.pad(np.arange(h), pad, mode="reflect") + pad
        for r in (*range(pad), *range(pad + h, h + 2 * pad)):
            prob[r] = prob[rows[r]]
        prob.flush()
        del prob
        centres = {}
        for t in make_tiles(geom):
            cy, cx = (t.core[0] + t.core[1]) // 2, (t.core[2] + t.core[3]) // 2
            if min(t.core[1] - t.core[0], t.core[3] - t.core[2]) < PATCH:
                continue  # a sliver at the image's edge; its reads would miss (KeyError)
            o = PATCH // 2
            patch = read_region(reader, geom, (cy - o, cy - o + PATCH, cx - o, cx - o + PATCH))
            centres[centre_digest(patch, o, o)] = (cy, cx)
    cfg = {k: info[k] for k in ("name", "arch", "mpp", "lam", "threshold", "stride", "min_area")}
    cfg.update(name=f"precomputed-{info['name']}", halo=ctx)
    digest = hashlib.sha256(f"precomputed:{info['sha256']}:{Path(slide).name}:{tile}".encode()).hexdigest()
    meta = {"config": cfg, "sha256": digest, "pad": pad, "centres": centres}
    (folder / _INDEX).write_text(json.dumps(meta))
    return PrecomputedPredictor(folder)
