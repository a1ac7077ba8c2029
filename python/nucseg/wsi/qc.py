"""The QC picture: the slide overview with nucleus outlines, beside a density heat map."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Anchor colours of the heat map (dark blue -> magenta -> orange -> yellow).
_HEAT = np.array(
    [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]],
    dtype=np.float64,
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along a plasma-like ramp."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_HEAT) - 1)
    i = np.minimum(v.astype(int), len(_HEAT) - 2)
    f = (v - i)[..., None]
    return np.rint(_HEAT[i] * (1 - f) + _HEAT[i + 1] * f).astype(np.uint8)


def _labels_on_overview(store: Any, overview: Any, geom: Any) -> np.ndarray:
    """Nucleus labels sampled at the overview's pixel centres (nearest)."""
    nuc = store.group["labels/nuclei"]
    h, w = overview.rgb.shape[:2]
    ds = overview.downsample  # level-0 px per overview px
    # Coarsest label level that still has at least one pixel per overview pixel.
    level = 0
    while str(level + 1) in nuc:
        finer_than = (geom.level_downsample[0] / geom.scale[0]) * 2 ** (level + 1)
        if finer_than > ds[0]:
            break
        level += 1
    arr = nuc[str(level)][...]
    step = 2**level
    yy = (np.arange(h) + 0.5) * overview.downsample[0]  # level-0 coordinates of centres
    xx = (np.arange(w) + 0.5) * overview.downsample[1]
    py = np.clip((yy / geom.level_downsample[0] * geom.scale[0]) // step, 0, arr.shape[0] - 1).astype(int)
    px = np.clip((xx / geom.level_downsample[1] * geom.scale[1]) // step, 0, arr.shape[1] - 1).astype(int)
    return arr[py][:, px]


def check_qc_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or FileNotFoundError when its folder does not exist (checked
    before a run, so a typo does not cost the run's QC at the end)."""
    out = Path(path)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"QC folder does not exist: {out.parent}")
    if out.is_dir():
        raise ValueError(f"qc must name a PNG file, got the folder {out}")
    return out


def render_qc(store: Any, overview: Any, geom: Any, *, bin_um: float = 100.0) -> np.ndarray:
    """The QC picture as RGB uint8: overview with outlines (left), nuclei per mm^2 (right).

    Parameters
    ----------
    store : OutputStore
        The finished store: labels are read from its pyramid (never whole at level 0
        unless the slide is small), centroids from its nucleus table.
    overview : Overview
        The slide overview used for tissue detection.
    geom : Geometry
    bin_um : float
        Side of the density bins in micrometres.
    """
    import pyarrow.parquet as pq
    from skimage.segmentation import find_boundaries

    rgb = overview.rgb.copy()
    labels = _labels_on_overview(store, overview, geom)
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = (0, 200, 0)

    h, w = rgb.shape[:2]
    mpp0 = geom.level0_mpp
    extent_um = (h * overview.downsample[0] * mpp0[0], w * overview.downsample[1] * mpp0[1])
    ny, nx = max(1, int(np.ceil(extent_um[0] / bin_um))), max(1, int(np.ceil(extent_um[1] / bin_um)))
    with (store.loc / "nucseg" / "nuclei.parquet").open_read() as fh:
        cols = pq.read_table(fh, columns=["y_um", "x_um"]).to_pydict()
    counts, _, _ = np.histogram2d(
        np.asarray(cols["y_um"], float), np.asarray(cols["x_um"], float), bins=(ny, nx),
        range=((0, ny * bin_um), (0, nx * bin_um)),
    )
    density = counts / (bin_um * bin_um / 1e6)  # nuclei per mm^2
    top = float(np.percentile(density[density > 0], 99)) if (density > 0).any() else 1.0
    iy = np.minimum(((np.arange(h) + 0.5) * overview.downsample[0] * mpp0[0] / bin_um).astype(int), ny - 1)
    ix = np.minimum(((np.arange(w) + 0.5) * overview.downsample[1] * mpp0[1] / bin_um).astype(int), nx - 1)
    heat = heat_colours(density[iy][:, ix] / max(top, 1e-9))
    grey = overview.rgb.mean(axis=2, keepdims=True)
    empty = (density[iy][:, ix] == 0)[..., None]
    heat = np.where(empty, grey * 0.6 + 100, 0.35 * grey + 0.65 * heat).astype(np.uint8)
    gap = np.full((h, 8, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, heat], axis=1)


def qc_png(store: Any, overview: Any, geom: Any) -> bytes:
    """:func:`render_qc` encoded as PNG (what a Dask worker sends back to the client)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(render_qc(store, overview, geom)).save(buf, format="PNG")
    return buf.getvalue()


def write_qc(path: str | os.PathLike[str], store: Any, overview: Any, geom: Any) -> Path:
    """Write the QC PNG (:func:`render_qc`) to ``path``; returns it.

    Raises
    ------
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    out = check_qc_path(path)
    out.write_bytes(qc_png(store, overview, geom))
    return out
