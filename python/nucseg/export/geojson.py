"""QuPath-compatible GeoJSON: one polygon per nucleus, streamed to disk.

Polygons follow the pixel edges of each label exactly (a "staircase" keeping only its
corners), so their area equals the label's pixel count and re-rasterising them gives
back the labels. Coordinates are slide level-0 pixels with QuPath's convention: the
image's top-left corner is ``(0, 0)`` and pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``
(x first, as GeoJSON wants).

Streaming: the nucleus table is read in batches, in the order the runner wrote it
(tile by tile); consecutive rows are grouped into windows of the label array that hold
each of their nuclei whole (the table's bounding boxes say where), each window is read
once, and its nuclei are traced and written before the next window is read. Each
nucleus is one row of the table, so it is traced once, however many chunks it crosses.

Rings: exterior rings are counter-clockwise and holes clockwise in the ``(x, y)`` plane
(RFC 7946). Diagonal-only contacts between pixels of one label do not connect them: a
label made of several such pieces (rare with the runner's 4-connected watershed)
becomes a MultiPolygon, and where a diagonal contact closes a background bay the ring,
which would touch itself (invalid in OGC terms), is repaired into an exterior and a
hole touching it at that vertex (``shapely.make_valid``, same area).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Table columns that are bookkeeping, not measurements.
_NOT_MEASUREMENTS = frozenset(
    {"label", "tile", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "y_px", "x_px", "centroid_y_px", "centroid_x_px"}
)
#: Largest window (pixels) read at once when grouping table rows.
_MAX_WINDOW_PX = 2048 * 2048
_NAMESPACE = uuid.UUID("6f1c1d52-3a55-4c55-9d0e-8d1b6a0f5e11")  # stable per-nucleus UUIDs

# Direction codes: 0 east (+x), 1 south (+y), 2 west, 3 north; the label is on the right.
_DY = np.array([0, 1, 0, -1])
_DX = np.array([1, 0, -1, 0])


def trace_rings(
    window: np.ndarray, ids: np.ndarray, saddles: set[int] | None = None
) -> dict[int, list[np.ndarray]]:
    """Boundary rings of some labels of a label window, along pixel edges.

    Parameters
    ----------
    window : ndarray of int, shape (h, w)
        Labels; the labels in ``ids`` must lie whole inside it.
    ids : ndarray of int
        The labels to trace.
    saddles : set, optional
        Filled with the ids that have a diagonal-only contact between two of their
        pixels: their rings may touch themselves at a vertex (see
        :func:`rings_to_geometry`'s ``repair``).

    Returns
    -------
    dict of int to list of ndarray
        For each id found, its rings as ``(n, 2)`` float arrays of ``(y, x)`` corner
        vertices in window edge coordinates (not closed). Exterior rings have a
        positive signed area in the ``(x, y)`` plane, holes a negative one.
    """
    window = np.asarray(window)
    ids = np.unique(np.asarray(ids, dtype=window.dtype))
    ids = ids[ids != 0]
    # Membership by binary search: cheaper than np.isin, which sorts the whole window.
    pos = np.minimum(np.searchsorted(ids, window), max(ids.size - 1, 0))
    lab = np.where(ids[pos] == window, window, 0) if ids.size else np.zeros_like(window)
    p = np.pad(lab, 1)
    inner = p[1:-1, 1:-1]
    cols = p.shape[1] + 1  # vertices per row of the padded grid
    starts, dirs, owners = [], [], []
    # (neighbour slice, start vertex offset (dy, dx) from the pixel's top-left, direction)
    sides = (
        (p[:-2, 1:-1], (0, 0), 0),  # top edge, going east
        (p[1:-1, 2:], (0, 1), 1),  # right edge, going south
        (p[2:, 1:-1], (1, 1), 2),  # bottom edge, going west
        (p[1:-1, :-2], (1, 0), 3),  # left edge, going north
    )
    for nb, (oy, ox), d in sides:
        yy, xx = np.nonzero((inner != 0) & (inner != nb))
        # inner pixel (yy, xx) is padded pixel (yy + 1, xx + 1)
        starts.append((yy + 1 + oy) * cols + (xx + 1 + ox))
        dirs.append(np.full(yy.size, d, np.int8))
        owners.append(inner[yy, xx])
    start = np.concatenate(starts).astype(np.int64)
    direction = np.concatenate(dirs)
    owner = np.concatenate(owners)
    if start.size == 0:
        return {}
    rank = np.searchsorted(ids, owner).astype(np.int64)
    n_vertices = (p.shape[0] + 1) * cols
    key = rank * n_vertices + start
    order = np.lexsort((direction, key))
    start, direction, owner, key, rank = start[order], direction[order], owner[order], key[order], rank[order]
    end = start + _DY[direction] * cols + _DX[direction]
    target = rank * n_vertices + end
    lo = np.searchsorted(key, target, side="left")
    hi = np.searchsorted(key, target, side="right")
    nxt = lo.copy()
    # Saddle vertex (two outgoing edges of the same label): turn right, staying on the
    # same pixel, so that diagonal neighbours are not joined.
    two = np.flatnonzero(hi - lo == 2)
    if two.size:
        want = (direction[two] + 1) % 4
        nxt[two] = np.where(direction[lo[two] + 1] == want, lo[two] + 1, lo[two])
        if saddles is not None:
            saddles.update(int(v) for v in np.unique(owner[two]))
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(nxt.size)
    corner = direction != direction[prev]

    vy, vx = np.divmod(start, cols)
    vy = vy - 1.0  # padded -> window edge coordinates
    vx = vx - 1.0
    nxt_l, corner_l = nxt.tolist(), corner.tolist()
    seen = [False] * nxt.size
    rings: dict[int, list[np.ndarray]] = {}
    for s in range(nxt.size):
        if seen[s]:
            continue
        idx = []
        e = s
        while True:
            seen[e] = True
            if corner_l[e]:
                idx.append(e)
            e = nxt_l[e]
            if e == s:
                break
        rings.setdefault(int(owner[s]), []).append(np.stack([vy[idx], vx[idx]], axis=1))
    return rings


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ``(n, 2)`` ``(y, x)`` ring in the ``(x, y)`` plane."""
    y, x = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def rings_to_geometry(
    rings: list[np.ndarray],
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    origin: tuple[float, float] = (0.0, 0.0),
    decimals: int = 2,
    repair: bool = False,
) -> dict[str, Any]:
    """GeoJSON geometry (Polygon or MultiPolygon) of one label's rings.

    Parameters
    ----------
    rings : list of ndarray
        From :func:`trace_rings`.
    scale, origin : tuple of float
        ``(y, x)``: output = (vertex + origin) * scale.
    decimals : int
        Coordinates are rounded to this many decimals.
    repair : bool
        Check validity with shapely and repair (``make_valid``, same area) a ring that
        touches itself. Needed only for labels reported in ``saddles`` by
        :func:`trace_rings`: a background bay that opens through a diagonal contact
        makes the exterior ring touch itself, which OGC calls invalid; the repaired
        form is an exterior plus a hole touching it at that vertex.
    """
    outers, holes = [], []
    for r in rings:
        (outers if signed_area(r) > 0 else holes).append(r)
    if not outers:
        raise ValueError("no exterior ring among the rings")
    outers.sort(key=signed_area, reverse=True)

    def coords(r: np.ndarray) -> list[list[float]]:
        xy = np.round((r[:, ::-1] + (origin[1], origin[0])) * (scale[1], scale[0]), decimals)
        xy = np.vstack([xy, xy[:1]])
        if decimals <= 0 or np.all(xy == np.round(xy)):
            return xy.astype(np.int64).tolist()
        return xy.tolist()

    if len(outers) == 1:
        geom = {"type": "Polygon", "coordinates": [coords(outers[0])] + [coords(h) for h in holes]}
        return _repaired(geom) if repair else geom
    from shapely.geometry import LinearRing, Polygon

    # Several pieces: give each hole to the exterior that covers it.
    shells = [Polygon(LinearRing(o[:, ::-1])) for o in outers]
    parts: list[list[list[list[float]]]] = [[coords(o)] for o in outers]
    for h in holes:
        ring = LinearRing(h[:, ::-1])
        k = next((i for i, s in enumerate(shells) if s.covers(ring)), 0)
        parts[k].append(coords(h))
    geom = {"type": "MultiPolygon", "coordinates": parts}
    return _repaired(geom) if repair else geom


def _repaired(geom: dict[str, Any]) -> dict[str, Any]:
    """``geom`` when it is valid, else its ``make_valid`` polygonal part (same area)."""
    import shapely
    from shapely.geometry import MultiPolygon, mapping, shape

    g = shape(geom)
    if g.is_valid:
        return geom
    fixed = shapely.make_valid(g)
    polys = [p for p in getattr(fixed, "geoms", [fixed]) if p.geom_type in ("Polygon", "MultiPolygon")]
    parts = [q for p in polys for q in getattr(p, "geoms", [p])]
    if not parts:
        return geom
    out = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    out = shapely.orient_polygons(out) if hasattr(shapely, "orient_polygons") else out
    m = mapping(out)
    return {"type": m["type"], "coordinates": _lists(m["coordinates"])}


@dataclass
class ExportSummary:
    """What :func:`write_geojson` wrote.

    Attributes
    ----------
    path : Path
    features : int
        Nuclei written.
    multipart : int
        Nuclei written as MultiPolygon (labels in diagonal-only pieces).
    missing : int
        Table rows whose label was not found in the label image (skipped).
    """

    path: Path
    features: int = 0
    multipart: int = 0
    missing: int = 0


def _row_groups(table_path: Path, batch_rows: int = 65536) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive table rows in groups whose bounding-box union stays small."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(table_path)
    names = pf.schema_arrow.names
    need = {"label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"}
    if not need <= set(names):
        raise ValueError(f"{table_path}: the nucleus table lacks columns {sorted(need - set(names))}")
    for batch in pf.iter_batches(batch_size=batch_rows):
        cols = {n: batch.column(n).to_numpy(zero_copy_only=False) for n in names}
        y0, x0, y1, x1 = cols["bbox_y0"], cols["bbox_x0"], cols["bbox_y1"], cols["bbox_x1"]
        n = len(y0)
        i = 0
        while i < n:
            j = i + 1
            uy0, ux0, uy1, ux1 = y0[i], x0[i], y1[i], x1[i]
            while j < n:
                ny0, nx0 = min(uy0, y0[j]), min(ux0, x0[j])
                ny1, nx1 = max(uy1, y1[j]), max(ux1, x1[j])
                if (ny1 - ny0) * (nx1 - nx0) > _MAX_WINDOW_PX:
                    break
                uy0, ux0, uy1, ux1 = ny0, nx0, ny1, nx1
                j += 1
            yield {k: v[i:j] for k, v in cols.items()}
            i = j


def iter_features(
    result: Any,
    *,
    simplify: float = 0.0,
    classification: str | None = None,
    measurements: bool = True,
    stats: ExportSummary | None = None,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield one GeoJSON Feature per nucleus of a finished store, lazily.

    Parameters
    ----------
    result : Result or path-like
        A store opened with :func:`nucseg.export.open_result`, or its path.
    simplify : float
        Douglas-Peucker tolerance in level-0 pixels (0: the exact pixel outline).
    classification : str, optional
        QuPath class name given to every nucleus.
    measurements : bool
        Copy the table's measurements into ``properties["measurements"]``.
    stats : ExportSummary, optional
        Counters updated while features are produced.
    progress : bool
        Show a tqdm progress bar (nuclei).

    Yields
    ------
    dict
        A GeoJSON Feature with QuPath's ``objectType: "detection"``.
    """
    from tqdm.auto import tqdm

    from .result import Result, open_result

    if not isinstance(result, Result):
        result = open_result(result)
    if not (isinstance(simplify, (int, float)) and math.isfinite(simplify) and simplify >= 0):
        raise ValueError(f"simplify must be a finite number of pixels >= 0, got {simplify!r}")
    stats = stats if stats is not None else ExportSummary(path=Path())
    labels = result.labels
    fy, fx = result.level0_per_label
    fingerprint = str(result.meta.get("slide", {}).get("fingerprint", result.path.name))
    klass = {"name": classification, "color": [0, 200, 0]} if classification else None
    import pyarrow.parquet as pq

    total = pq.ParquetFile(result.table_path).metadata.num_rows
    with tqdm(total=total, unit="nucleus", disable=not progress, dynamic_ncols=True, desc="geojson") as bar:
        for rows in _row_groups(result.table_path):
            wy0, wx0 = int(rows["bbox_y0"].min()), int(rows["bbox_x0"].min())
            wy1, wx1 = int(rows["bbox_y1"].max()), int(rows["bbox_x1"].max())
            window = np.asarray(labels[wy0:wy1, wx0:wx1])
            saddles: set[int] = set()
            rings = trace_rings(window, rows["label"], saddles)
            meas_cols = [c for c in rows if c not in _NOT_MEASUREMENTS] if measurements else []
            for k, lab in enumerate(rows["label"].tolist()):
                lab_rings = rings.get(int(lab))
                if not lab_rings:
                    stats.missing += 1
                    continue
                geom = rings_to_geometry(lab_rings, scale=(fy, fx), origin=(wy0, wx0), repair=int(lab) in saddles)
                if simplify > 0:
                    geom = _simplify(geom, simplify)
                if geom["type"] == "MultiPolygon":
                    stats.multipart += 1
                props: dict[str, Any] = {"objectType": "detection", "name": f"nucleus {lab}", "nucleus_id": int(lab)}
                if klass:
                    props["classification"] = klass
                if meas_cols:
                    props["measurements"] = _measurements(rows, meas_cols, k)
                stats.features += 1
                yield {
                    "type": "Feature",
                    "id": str(uuid.uuid5(_NAMESPACE, f"{fingerprint}:{lab}")),
                    "geometry": geom,
                    "properties": props,
                }
            bar.update(len(rows["label"]))


def _measurements(rows: dict[str, np.ndarray], cols: list[str], k: int) -> dict[str, float]:
    out = {}
    for c in cols:
        v = rows[c][k]
        if isinstance(v, (bool, np.bool_)):
            out[c] = int(v)  # QuPath measurements are numbers
        elif isinstance(v, (np.integer, int)):
            out[c] = int(v)
        elif isinstance(v, (np.floating, float)) and math.isfinite(float(v)):
            out[c] = round(float(v), 6)  # NaN is not JSON: leave it out
    return out


def _simplify(geom: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Simplified geometry, or the original when simplifying would break it."""
    import shapely
    from shapely.geometry import mapping, shape

    g = shape(geom)
    s = shapely.simplify(g, tolerance, preserve_topology=True)
    if s.is_empty or not s.is_valid or s.geom_type != g.geom_type:
        return geom
    s = shapely.orient_polygons(s) if hasattr(shapely, "orient_polygons") else s
    out = mapping(s)
    return {"type": out["type"], "coordinates": _lists(out["coordinates"])}


def _lists(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return [_lists(v) for v in obj]
    return obj


def write_feature_collection(
    features: Iterable[dict[str, Any]], path: str | os.PathLike[str], *, overwrite: bool = False
) -> int:
    """Stream features into a GeoJSON FeatureCollection file, one feature at a time.

    The file is written under a temporary name and renamed at the end, so a failure
    never leaves a partial file nor replaces an existing one.

    Parameters
    ----------
    features : iterable of dict
        Consumed lazily (never turned into a list).
    path : path-like
        The ``.geojson`` file.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    int
        Features written.
    """
    from .result import atomic_writer

    n = 0
    with atomic_writer(path, overwrite=overwrite) as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for feat in features:
            if n:
                fh.write(",\n")
            fh.write(json.dumps(feat, allow_nan=False, separators=(",", ":")))
            n += 1
        fh.write("\n]}\n")
    return n


def write_geojson(
    store: Any,
    path: str | os.PathLike[str],
    *,
    simplify: float = 0.0,
    classification: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportSummary:
    """Export every nucleus of a finished nucseg-wsi store as QuPath GeoJSON.

    Parameters
    ----------
    store : path-like or Result
        The ``OUT.zarr`` written by ``nucseg-wsi``.
    path : path-like
        The ``.geojson`` file to write.
    simplify : float
        Douglas-Peucker tolerance in level-0 pixels (0 keeps the exact pixel outline).
    classification : str, optional
        QuPath class name for every nucleus (none by default).
    overwrite : bool
        Replace an existing file.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ExportSummary

    Raises
    ------
    FileNotFoundError, ResultError
        Missing store, not a nucseg output, half-finished run, or a destination that
        exists (without ``overwrite``) or cannot be written. Nothing is written then.

    Examples
    --------
    >>> from nucseg.export import write_geojson
    >>> write_geojson("slide.zarr", "nuclei.geojson", simplify=0.5)  # doctest: +SKIP
    """
    from .result import Result, check_destination, open_result

    if not (isinstance(simplify, (int, float)) and math.isfinite(simplify) and simplify >= 0):
        raise ValueError(f"simplify must be a finite number of pixels >= 0, got {simplify!r}")
    result = store if isinstance(store, Result) else open_result(store)
    dest = check_destination(path, overwrite=overwrite)
    stats = ExportSummary(path=dest)
    feats = iter_features(result, simplify=simplify, classification=classification, stats=stats, progress=progress)
    write_feature_collection(feats, dest, overwrite=overwrite)
    return stats
