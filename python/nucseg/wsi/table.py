"""The per-nucleus table: one Parquet part per tile while running, one file at the end.

Columns
-------
``label``            global label id (as in the label image)
``tile``             index of the owning tile (row-major grid)
``y_px, x_px``       centroid in processing pixels (the label image's grid)
``y_level0, x_level0`` centroid in slide level-0 pixels
``y_um, x_um``       centroid in micrometres from the slide's top-left corner
``area_px``          area in processing pixels
``area_um2``         area in square micrometres
``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` half-open bounding box in processing pixels
``mean_prob``        mean model probability over the nucleus
``exact``            False for approximate nuclei (clusters larger than the largest halo)

then the morphometrics of :mod:`nucseg.morphometrics` (its ``TABLE_COLUMNS``), measured
per tile while the tile's RGB is in memory, float32:

``perimeter_um, equivalent_diameter_um, major_axis_um, minor_axis_um``  micrometres
``eccentricity, solidity``  0..1
``orientation_deg``  major axis against the image rows, degrees in [-90, 90]
``hematoxylin_od, eosin_od``  mean base-10 optical density along the stain vectors

An approximate nucleus is measured on the pixels its tile owns. Parts written without
these columns (a store begun by an earlier nucseg version, then resumed) are merged
with NaN in them, and a warning says how many such parts there were.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from nucseg.morphometrics import TABLE_COLUMNS as MORPHOMETRICS

from .location import Location

logger = logging.getLogger(__name__)

COLUMNS = (
    "label",
    "tile",
    "y_px",
    "x_px",
    "y_level0",
    "x_level0",
    "y_um",
    "x_um",
    "area_px",
    "area_um2",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "mean_prob",
    "exact",
    *MORPHOMETRICS,
)


def schema(label_dtype: str) -> Any:
    """The Arrow schema of the table for uint32 or uint64 labels."""
    import pyarrow as pa

    f64, i64 = pa.float64(), pa.int64()
    types = {
        "label": pa.uint32() if label_dtype == "uint32" else pa.uint64(),
        "tile": pa.int32(),
        "area_px": i64,
        "bbox_y0": i64,
        "bbox_x0": i64,
        "bbox_y1": i64,
        "bbox_x1": i64,
        "mean_prob": pa.float32(),
        "exact": pa.bool_(),
        **{c: pa.float32() for c in MORPHOMETRICS},
    }
    return pa.schema([(c, types.get(c, f64)) for c in COLUMNS])


def tile_rows(
    result: Any, geom: Any, label_dtype: str, measurements: dict[str, np.ndarray] | None = None
) -> Any:
    """Arrow table of the nuclei of one :class:`~nucseg.wsi.tiling.TileResult`.

    Parameters
    ----------
    result : TileResult
    geom : Geometry
    label_dtype : str
        ``"uint32"`` or ``"uint64"``.
    measurements : dict, optional
        :func:`nucseg.morphometrics.measure_nuclei` of the tile's owned labels (rows in
        any order; every owned id must have one); without it the morphometric columns
        are NaN.

    Raises
    ------
    ValueError
        An owned nucleus has no row in ``measurements``.
    """
    import pyarrow as pa

    from nucseg.morphometrics import rows_for

    n = len(result.ids)
    cen = np.asarray(result.centroid, np.float64).reshape(n, 2)
    l0 = geom.to_level0(cen) if n else np.zeros((0, 2))
    my0, mx0 = geom.level0_mpp
    cols = {
        "label": np.asarray(result.ids, label_dtype),
        "tile": np.full(n, result.tile.index, np.int32),
        "y_px": cen[:, 0],
        "x_px": cen[:, 1],
        "y_level0": l0[:, 0],
        "x_level0": l0[:, 1],
        "y_um": (l0[:, 0] + 0.5) * my0,
        "x_um": (l0[:, 1] + 0.5) * mx0,
        "area_px": np.asarray(result.area, np.int64),
        "area_um2": np.asarray(result.area, np.float64) * geom.mpp[0] * geom.mpp[1],
        "bbox_y0": result.bbox[:, 0],
        "bbox_x0": result.bbox[:, 1],
        "bbox_y1": result.bbox[:, 2],
        "bbox_x1": result.bbox[:, 3],
        "mean_prob": np.asarray(result.mean_prob, np.float32),
        "exact": np.asarray(result.exact, bool),
    }
    # measure_nuclei sorts by id; the tile lists its nuclei by rank.
    m = rows_for(measurements, cols["label"]) if measurements is not None and n else None
    for c in MORPHOMETRICS:
        cols[c] = np.asarray(m[c], np.float32) if m is not None else np.full(n, np.nan, np.float32)
    return pa.Table.from_pydict(cols, schema=schema(label_dtype))


def write_part(table: Any, path: Location) -> None:
    """Write a Parquet file whole or not at all (:meth:`~nucseg.wsi.location.Location.write_bytes`)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.write_bytes(buf.getvalue())


def merge_parts(parts: list[Location], out: Location, label_dtype: str) -> int:
    """Concatenate part files (in the given order) into ``out``; returns the row count.

    ``out`` appears whole when the merge succeeds (renamed into place locally, uploaded
    in one go at a URL), never half-written. Parts without the morphometric columns
    (written by an earlier nucseg version) get NaN there; parts missing any other column
    are refused.

    Raises
    ------
    ValueError
        A part lacks a column other than the morphometrics.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = schema(label_dtype)
    rows = 0
    old_parts = 0
    with out.open_write() as fh, pq.ParquetWriter(fh, sch) as writer:
        for p in parts:
            with p.open_read() as src:
                part = pq.ParquetFile(src)
                have = set(part.schema_arrow.names)
                missing = [c for c in COLUMNS if c not in have]
                if any(c not in MORPHOMETRICS for c in missing):
                    raise ValueError(f"table part {p} lacks the columns {missing}: not written by nucseg-wsi")
                t = part.read(columns=[c for c in COLUMNS if c in have])
            for c in missing:
                t = t.append_column(sch.field(c), pa.array(np.full(t.num_rows, np.nan, np.float32)))
            old_parts += bool(missing)
            t = t.select(list(COLUMNS)).cast(sch)
            rows += t.num_rows
            if t.num_rows:
                writer.write_table(t)
    if old_parts:
        logger.warning(
            "%d tile(s) were computed by an earlier nucseg without morphometrics: their nuclei have NaN "
            "perimeter, axes, solidity and stain densities; rerun with --overwrite to measure every nucleus",
            old_parts,
        )
    return rows
