"""Per-nucleus morphometrics: shape in micrometres, stain optical densities, probability.

:func:`measure_nuclei` is meant to be called once per tile while the tile's RGB is in
memory (the slide is never re-read for it). Perimeter and solidity are
:func:`skimage.measure.regionprops`' values, computed for all nuclei in one compiled
pass (``cpp/include/nucseg/shape.hpp``, GIL released; tested equal to
regionprops, and 20x faster than its per-object Python loop); the moment-based shape (axes, eccentricity,
orientation) from scikit-image's formulas evaluated for all nuclei at once with
:func:`numpy.bincount` (the same values, without a Python loop per nucleus: the runner
measures millions); stain densities from the Ruifrok-Johnston
colour deconvolution :func:`skimage.color.rgb2hed`.

Columns
-------
``label``                  the nucleus id (as in the label image)
``centroid_y_px, centroid_x_px``  centroid in label-grid pixels (pixel centres), plus ``offset``
``area_px``                pixels
``area_um2``               square micrometres (pixels x ``mpp_y * mpp_x``)
``perimeter_um``           perimeter (scikit-image's 4-connected estimate) in micrometres
``equivalent_diameter_um`` diameter of the disk of the same area, micrometres
``major_axis_um, minor_axis_um``  full axes of the ellipse with the same second moments
``eccentricity``           of that ellipse, 0 (circle) to 1 (line)
``solidity``               area / convex hull area, 0..1
``orientation_deg``        angle between the image rows (y axis, pointing down) and the
                           major axis, degrees in [-90, 90] (scikit-image's ``orientation``)
``hematoxylin_od, eosin_od``  mean optical density (base 10) along the hematoxylin and
                           eosin stain vectors, over the nucleus's pixels
``mean_prob``              mean probability over the nucleus (NaN when no map is given)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

#: Columns :func:`measure_nuclei` returns, in order.
COLUMNS = (
    "label",
    "centroid_y_px",
    "centroid_x_px",
    "area_px",
    "area_um2",
    "perimeter_um",
    "equivalent_diameter_um",
    "major_axis_um",
    "minor_axis_um",
    "eccentricity",
    "solidity",
    "orientation_deg",
    "hematoxylin_od",
    "eosin_od",
    "mean_prob",
)

#: The columns the whole-slide table does not already hold (it has label, centroid,
#: area and mean probability): what the runner adds to each tile's rows.
TABLE_COLUMNS = tuple(
    c for c in COLUMNS if c not in {"label", "centroid_y_px", "centroid_x_px", "area_px", "area_um2", "mean_prob"}
)

# skimage's separate_stains divides natural-log absorbance by -ln(1e-6) = 6 ln(10):
# its output times 6 is the base-10 optical density (checked by tests/test_morphometrics.py).
_RGB2HED_TO_OD10 = -math.log10(1e-6)
#: Pixels per product with the stain matrix: OpenBLAS runs a product this small on the
#: calling thread (rows are independent, so the blocks give the very same values).
_STAIN_ROWS = 8192


def _check_mpp(mpp: Any) -> tuple[float, float]:
    if isinstance(mpp, (int, float, np.integer, np.floating)) and not isinstance(mpp, bool):
        pair = (float(mpp), float(mpp))
    elif isinstance(mpp, (tuple, list)) and len(mpp) == 2:
        pair = (float(mpp[0]), float(mpp[1]))
    else:
        raise TypeError(f"mpp must be a number or a (y, x) pair of microns per pixel, got {mpp!r}")
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"mpp must be positive and finite, got {mpp!r}")
    return pair


def arrow_fields(columns: tuple[str, ...] = TABLE_COLUMNS) -> list[Any]:
    """Arrow fields of ``columns`` (float32 measurements), for a Parquet schema.

    Parameters
    ----------
    columns : tuple of str
        Names from :data:`COLUMNS` other than ``label``.
    """
    import pyarrow as pa

    types = {"area_px": pa.int64(), "centroid_y_px": pa.float64(), "centroid_x_px": pa.float64()}
    bad = [c for c in columns if c not in COLUMNS or c == "label"]
    if bad:
        raise ValueError(f"columns must be names from nucseg.morphometrics.COLUMNS other than 'label', got {bad}")
    return [pa.field(c, types.get(c, pa.float32())) for c in columns]


def rows_for(measurements: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of ``measurements`` for ``ids``, in the order of ``ids``.

    Parameters
    ----------
    measurements : dict of str to ndarray
        A result of :func:`measure_nuclei` (rows sorted by label).
    ids : ndarray of int
        Labels in any order, e.g. a tile's nuclei in rank order.

    Raises
    ------
    ValueError
        When an id has no row (it has no pixel in the measured labels).
    """
    ids = np.asarray(ids)
    have = measurements["label"]
    pos = np.searchsorted(have, ids)
    ok = pos < have.size
    ok[ok] = have[pos[ok]] == ids[ok]
    if not ok.all():
        raise ValueError(f"ids {ids[~ok][:5].tolist()} have no pixels in the measured labels")
    return {k: v[pos] for k, v in measurements.items()}


def empty_measurements(label_dtype: Any = np.uint32) -> dict[str, np.ndarray]:
    """The result of :func:`measure_nuclei` for a tile without nuclei."""
    out: dict[str, np.ndarray] = {c: np.zeros(0, np.float64) for c in COLUMNS}
    out["label"] = np.zeros(0, label_dtype)
    out["area_px"] = np.zeros(0, np.int64)
    return out


def _n_s2_minus(n: np.ndarray, s2: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``n * s2 - a * b`` as float64: exact (int64) where the products fit, else in float64."""
    fits = (np.abs(n * s2.astype(np.float64)) < 2.0**62) & (np.abs(a * b.astype(np.float64)) < 2.0**62)
    exact = np.where(fits, n, 0) * np.where(fits, s2, 0) - np.where(fits, a, 0) * np.where(fits, b, 0)
    return np.where(fits, exact, n * s2.astype(np.float64) - a * b.astype(np.float64)).astype(np.float64)


def _moment_shape(
    vyy: np.ndarray, vxx: np.ndarray, vxy: np.ndarray
) -> dict[str, np.ndarray]:
    """Axes, eccentricity and orientation of every nucleus from its second central moments.

    ``vyy, vxx, vxy`` are each nucleus's coordinate variances and covariance in um^2.
    These are :class:`skimage.measure.RegionProperties`' ``axis_major_length``,
    ``axis_minor_length``, ``eccentricity`` and ``orientation`` (with ``spacing=mpp``),
    for all nuclei at once.
    """
    # scikit-image's inertia tensor [[a, b], [b, c]] and its eigenvalues l1 >= l2 >= 0.
    a, b, c = vxx, -vxy, vyy
    mid, half = 0.5 * (a + c), np.hypot(0.5 * (a - c), b)
    l1, l2 = np.maximum(mid + half, 0.0), np.maximum(mid - half, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / l1, 0.0, 1.0)), 0.0)
    diagonal = np.where(b < 0, math.pi / 4, -math.pi / 4)  # as scikit-image 0.26 decides a - c == 0
    orientation = np.where(a - c == 0, diagonal, 0.5 * np.arctan2(-2.0 * b, c - a))
    return {
        "major_axis_um": 4.0 * np.sqrt(l1),
        "minor_axis_um": 4.0 * np.sqrt(l2),
        "eccentricity": ecc,
        "orientation_deg": np.degrees(orientation),
    }


@functools.lru_cache(maxsize=1)
def _log_term_lut() -> np.ndarray:
    """``log(max(v, 1e-6)) / log(1e-6)`` of every uint8 value ``v`` as scikit-image scales it.

    The per-channel term of :func:`skimage.color.separate_stains`, computed with its
    own steps (``img_as_float``, the 1e-6 floor) on the 256 values once.
    """
    from skimage import img_as_float

    ramp = img_as_float(np.arange(256, dtype=np.uint8))
    np.maximum(ramp, 1e-6, out=ramp)
    return np.log(ramp) / np.log(1e-6)


def _rgb2hed_u8(rgb: np.ndarray) -> np.ndarray:
    """:func:`skimage.color.rgb2hed` of uint8 RGB pixels ``(n, 3)``, bit for bit, in float64.

    Why not ``rgb2hed`` itself: it takes a float64 logarithm of every channel of every
    pixel, where a uint8 channel has 256 values (a table here), and it multiplies by the
    stain matrix in one BLAS call, which OpenBLAS spreads over its threads: with the
    runner's post-processing threads on a busy machine that took 80-160 ms per tile
    instead of 8 (:data:`_STAIN_ROWS`). The operands and the product are the same, so
    are the values (``tests/test_morphometrics.py`` checks it).
    """
    from skimage.color import hed_from_rgb

    log_term = _log_term_lut()[rgb]
    stains = np.empty_like(log_term)
    for i in range(0, len(log_term), _STAIN_ROWS):
        np.matmul(log_term[i : i + _STAIN_ROWS], hed_from_rgb, out=stains[i : i + _STAIN_ROWS])
    np.maximum(stains, 0, out=stains)
    return stains


def measure_nuclei(
    labels: np.ndarray,
    rgb: np.ndarray,
    prob: np.ndarray | None = None,
    *,
    mpp: float | tuple[float, float],
    offset: tuple[float, float] = (0, 0),
) -> dict[str, np.ndarray]:
    """Shape, stain and probability measurements of every labelled nucleus.

    Parameters
    ----------
    labels : ndarray of int, shape (h, w)
        Nucleus labels, 0 = background. Ids may be large and sparse (global slide ids).
        Every nucleus must be whole in the array (a cut nucleus is measured as cut).
    rgb : ndarray of uint8, shape (h, w, 3)
        The H&E image under ``labels``, pixel for pixel.
    prob : ndarray of float, shape (h, w), optional
        The model probability under ``labels``; ``mean_prob`` is NaN without it.
    mpp : float or (float, float)
        Microns per pixel of ``labels`` (one number, or ``(y, x)``).
    offset : (float, float)
        ``(y, x)`` added to the centroids, e.g. the array's origin in the slide's
        label grid.

    Returns
    -------
    dict of str to ndarray
        One array per name in :data:`COLUMNS`, one entry per nucleus, sorted by label.

    Notes
    -----
    With anisotropic pixels, ``perimeter_um`` is the pixel perimeter times
    ``sqrt(mpp_y * mpp_x)`` (scikit-image measures perimeters on isotropic grids only);
    every other length honours each axis's pixel size.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage.draw import disk
    >>> lab = np.zeros((40, 40), np.uint32)
    >>> lab[disk((20, 20), 8)] = 7
    >>> rgb = np.full((40, 40, 3), 200, np.uint8)
    >>> m = measure_nuclei(lab, rgb, mpp=0.5)
    >>> int(m["label"][0]), round(float(m["equivalent_diameter_um"][0]), 1)
    (7, 8.0)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (h, w), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    rgb = np.asarray(rgb)
    if rgb.shape != (*labels.shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(
            f"rgb must be uint8 of shape {(*labels.shape, 3)} (the labels' shape), got {rgb.dtype} {rgb.shape}"
        )
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != labels.shape:
            raise ValueError(f"prob must have the labels' shape {labels.shape}, got {prob.shape}")
    my, mx = _check_mpp(mpp)
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")

    # Sort only the nucleus pixels (most of a tile is background) to number them 1..n.
    flat_labels = labels.ravel()
    fg = flat_labels != 0
    ids, inverse = np.unique(flat_labels[fg], return_inverse=True)
    if ids.size == 0:
        return empty_measurements(labels.dtype)
    if ids.size >= 2**31:
        raise ValueError(f"labels hold {ids.size} nuclei; at most 2**31 - 1 can be measured in one call")
    flat = np.zeros(labels.size, np.int32)
    flat[fg] = inverse.ravel() + 1
    return {"label": ids.astype(labels.dtype), **measure_compact(flat.reshape(labels.shape), ids.size, rgb, prob, (my, mx), offset)}


def measure_compact(
    compact: np.ndarray,
    n: int,
    rgb: np.ndarray,
    prob: np.ndarray | None,
    mpp: tuple[float, float],
    offset: tuple[float, float],
) -> dict[str, np.ndarray]:
    """:func:`measure_nuclei` (without its ``label`` column) of int32 labels numbering the
    nuclei 1..n, all present; inputs already validated. For callers that number their
    nuclei themselves (the slide runner's tiles), saving measure_nuclei's sort."""
    from ._core import perimeter_and_convex_area, region_stats

    my, mx = mpp
    # Area, centroid, probability sum and exact second moments of every nucleus in one pass.
    values = None if prob is None else np.asarray(prob)
    first, area, sum_y, sum_x, sum_prob, _, second = region_stats(compact, values, moments=True)
    area_px, first = area[1:], first[1:]
    cy = sum_y[1:] / area_px
    cx = sum_x[1:] / area_px
    mean_prob = np.full(n, np.nan) if sum_prob is None else sum_prob[1:] / area_px
    # Central moments from the exact sums about each nucleus's first pixel: n^2 var = n S2 - S1 S1'
    # in integers, so a round nucleus has exactly equal variances, as scikit-image finds.
    oy, ox = np.divmod(first, compact.shape[1])
    s1y, s1x = sum_y[1:] - area_px * oy, sum_x[1:] - area_px * ox
    n2 = area_px.astype(np.float64) ** 2
    vyy, vxx, vxy = (
        _n_s2_minus(area_px, second[1:, i], a, b) / n2 for i, (a, b) in enumerate(((s1y, s1y), (s1x, s1x), (s1y, s1x)))
    )
    axes = _moment_shape(vyy * (my * my), vxx * (mx * mx), vxy * (my * mx))
    # Stain densities of the nucleus pixels only: rgb2hed's arithmetic, its logarithm read from a table.
    flat = compact.ravel()
    fg = flat != 0
    idx = flat[fg] - 1  # nucleus index of each nucleus pixel
    hed = _rgb2hed_u8(rgb.reshape(-1, 3)[fg]) * _RGB2HED_TO_OD10
    h_od = np.bincount(idx, weights=hed[:, 0], minlength=n) / area_px
    e_od = np.bincount(idx, weights=hed[:, 1], minlength=n) / area_px

    # Measured on the compact ids 1..n. Solidity is a ratio of areas (any pixel size);
    # perimeters are measured on the pixel grid, as scikit-image does (isotropic only).
    perimeter_px, convex_px = perimeter_and_convex_area(compact, n)
    unit = math.sqrt(my * mx)
    area_um2 = area_px * (my * mx)
    return {
        "centroid_y_px": cy + float(offset[0]),
        "centroid_x_px": cx + float(offset[1]),
        "area_px": area_px,
        "area_um2": area_um2,
        "perimeter_um": perimeter_px * unit,
        "equivalent_diameter_um": np.sqrt(4.0 * area_um2 / math.pi),
        **axes,
        "solidity": area_px / convex_px,
        "hematoxylin_od": h_od,
        "eosin_od": e_od,
        "mean_prob": mean_prob,
    }
