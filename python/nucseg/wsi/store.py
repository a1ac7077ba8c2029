"""The OME-Zarr output (zarr v3, OME-NGFF 0.5), resume records and run metadata.

Layout of ``OUT.zarr``::

    zarr.json                 root image group: "ome" (NGFF 0.5 multiscales and
                              "omero" red/green/blue channels of the image) and
                              "nucseg" (run metadata; its "status" goes "creating"
                              -> "running" -> "complete")
    0/, 1/, ...               RGB overview of the slide (c, y, x), uint8, and its 2x2
                              mean pyramid with as many levels as the labels (NGFF
                              wants a label image level for level with its image);
                              with --save-image instead: the RGB at the processing
                              resolution and its 2x2 mean pyramid, level for level with
                              the labels
    labels/zarr.json          {"ome": {"version": "0.5", "labels": ["nuclei"]}}
    labels/nuclei/zarr.json   NGFF multiscales + image-label
    labels/nuclei/0, 1, ...   nucleus labels (y, x) at the processing resolution, then
                              2x stride-subsampled levels (labels are never invented)
    prob/0                    with --save-prob: probability as uint8 (0..255)
    nucseg/tiles/NNNNNN.json  completion record of each finished tile
    nucseg/parts/NNNNNN.parquet  that tile's rows of the nucleus table
    nucseg/spill/DEST/SRC.npz pixels of nuclei owned by tile SRC that lie in label
                              chunk DEST, left by a Dask run (nucseg.wsi.distributed)
                              until they are merged into the labels
    nucseg/nuclei.parquet     the per-nucleus table, written at the end

Coordinates are in micrometres with the slide's level-0 pixel centres at
``i * mpp`` (the convention of a slide opened as NGFF), so every array here overlays
the slide at the right place in napari and other NGFF viewers.

The store may be a local folder or a URL of any filesystem fsspec knows (``s3://``,
``gs://``, ``memory://``...): see :mod:`nucseg.wsi.location` for how records, parts and
spill files are committed there (renamed into place locally, one atomic PUT at a URL).

Files under ``nucseg/`` are not zarr nodes: listing the hierarchy recursively with
zarr emits one "not recognized" warning for that folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .location import Location, probe_write

NGFF_VERSION = "0.5"
LABEL_NAME = "nuclei"
MIN_PYRAMID_SIDE = 256
#: Chunk side of the overview pyramid (the overview is at most a few thousand pixels).
OVERVIEW_CHUNK = 1024
#: Folder of the spill files inside ``OUT.zarr/nucseg``.
SPILL_DIR = "spill"


#: Run status of a store whose creation has not finished (a kill left it half-made).
CREATING = "creating"


class StoreError(ValueError):
    """The output store cannot be created, reused or written."""


#: A store's location: a local path, a URL (``s3://bucket/out.zarr``) or a :class:`Location`.
StoreTarget = str | os.PathLike[str] | Location


def is_unfinished_creation(path: StoreTarget) -> bool:
    """Whether ``path`` is a store that :meth:`OutputStore.create` began and never finished.

    That is a folder holding nothing but zarr's temporary ``*.partial`` files (killed
    before the first ``zarr.json``), or one whose run metadata says ``"creating"``. No
    tile of such a store was finished: it is safe to delete and create again.
    """
    loc = Location.of(path)
    if not loc.isdir():
        return False
    if not (loc / "zarr.json").exists():
        return all(not folder and name.endswith(".partial") for name, folder in loc.entries().items())
    meta = read_meta(loc)
    return meta is not None and meta.get("status") == CREATING


@contextlib.contextmanager
def finishing(path: StoreTarget) -> Iterator[None]:
    """Turn an ``OSError`` raised while finishing the store ``path`` (spill merge, pyramid,
    table, metadata) into one :class:`StoreError` that says what to do.

    Nothing is lost: the store is marked complete only by the last metadata write, so
    ``--resume`` redoes the finish step from the kept tiles.
    """
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot finish {path}: {exc}; nothing finished is lost, rerun with --resume") from exc


def _axes(channel: bool) -> list[dict[str, str]]:
    space = [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def pyramid_shapes(size: tuple[int, int], min_side: int = MIN_PYRAMID_SIDE) -> list[tuple[int, int]]:
    """Shapes of the 2x stride-subsampled pyramid, down to ``min_side`` pixels."""
    shapes = [size]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def multiscales(
    name: str,
    n_levels: int,
    mpp: tuple[float, float],
    translation: tuple[float, float],
    *,
    channel: bool = False,
    factor: int = 2,
    mean: bool = False,
) -> list[dict[str, Any]]:
    """NGFF 0.5 ``multiscales`` for ``n_levels`` levels, each ``factor`` times coarser.

    Level ``k`` has pixel size ``mpp * factor**k``. Stride subsampling keeps the first
    pixel of every block, so all levels share ``translation``; with ``mean`` (block
    means) pixel 0 of level ``k`` sits at the centre of its block,
    ``translation + (factor**k - 1) / 2 * mpp``.
    """
    datasets = []
    for k in range(n_levels):
        scale = [mpp[0] * factor**k, mpp[1] * factor**k]
        shift = 0.5 * (factor**k - 1) if mean else 0.0
        trans = [translation[0] + shift * mpp[0], translation[1] + shift * mpp[1]]
        if channel:
            scale, trans = [1.0, *scale], [0.0, *trans]
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": trans},
                ],
            }
        )
    return [
        {
            "name": name,
            "axes": _axes(channel),
            "datasets": datasets,
            "type": "mean" if mean else "stride subsampling",
        }
    ]


def omero_rgb(name: str) -> dict[str, Any]:
    """NGFF ``omero`` rendering metadata of a 3-channel uint8 RGB image.

    Viewers (napari, OMERO, Vizarr) then show channels 0, 1, 2 as red, green and blue
    with the full 0..255 window, which blends back into the RGB picture.
    """
    window = {"min": 0, "max": 255, "start": 0, "end": 255}
    return {
        "name": name,
        "channels": [
            {
                "label": label,
                "color": color,
                "window": dict(window),
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
            }
            for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
        ],
        "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
    }


def image_shapes(size: tuple[int, int], n_levels: int) -> list[tuple[int, int]]:
    """Shapes of ``n_levels`` levels of a 2x2 mean pyramid (halved, rounded up; at least 1 px)."""
    shapes = [(int(size[0]), int(size[1]))]
    while len(shapes) < n_levels:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def fill_mean_level(src: Any, dst: Any) -> None:
    """Fill a (c, y, x) pyramid level ``dst`` with the 2x2 means of ``src``, one chunk of
    ``dst`` at a time (memory: one chunk and its four source chunks)."""
    _, ch, cw = dst.chunks
    for y in range(0, dst.shape[1], ch):
        for x in range(0, dst.shape[2], cw):
            dst[:, y : y + ch, x : x + cw] = mean2(src[:, 2 * y : 2 * (y + ch), 2 * x : 2 * (x + cw)])


def write_overview_pyramid(
    group: Any, overview: np.ndarray, n_levels: int, *, chunk: int = OVERVIEW_CHUNK
) -> list[tuple[int, int]]:
    """Write ``overview`` (h, w, 3) as arrays ``0..n_levels-1`` of ``group``: level 0 as
    given, each next one the 2x2 mean of the one before, built chunk by chunk from the
    stored level (never a whole level in memory). Returns the level shapes."""
    if overview.ndim != 3 or overview.shape[2] != 3 or overview.dtype != np.uint8:
        raise ValueError(f"overview must be uint8 of shape (h, w, 3), got {overview.dtype} {overview.shape}")
    top = _create_rgb_level(group, 0, overview.shape[:2], chunk)
    for y in range(0, top.shape[1], top.chunks[1]):  # chunk rows: no (c, h, w) copy of the whole
        rows = overview[y : y + top.chunks[1]]
        top[:, y : y + rows.shape[0], :] = np.moveaxis(rows, 2, 0)
    return add_mean_levels(group, n_levels, chunk=chunk)


def add_mean_levels(group: Any, n_levels: int, *, chunk: int = OVERVIEW_CHUNK) -> list[tuple[int, int]]:
    """(Re)create arrays ``1..n_levels-1`` of ``group`` as the 2x2 mean pyramid of its
    (c, y, x) array ``0``, level by level, chunk by chunk. Returns the level shapes."""
    shapes = image_shapes(group["0"].shape[1:], n_levels)
    prev = group["0"]
    for k in range(1, len(shapes)):
        dst = _create_rgb_level(group, k, shapes[k], chunk)
        fill_mean_level(prev, dst)
        prev = dst
    return shapes


def _create_rgb_level(group: Any, k: int, shape: tuple[int, int], chunk: int) -> Any:
    return group.create_array(
        str(k),
        shape=(3, *shape),
        chunks=(3, min(chunk, shape[0]), min(chunk, shape[1])),
        dtype="uint8",
        fill_value=0,
        dimension_names=("c", "y", "x"),
        overwrite=True,  # a level left by a killed upgrade (OutputStore.finish)
    )


def _translation(pixel_mpp: tuple[float, float], level0_mpp: tuple[float, float]) -> tuple[float, float]:
    # Physical centre of pixel 0 when level-0 pixel centres sit at i * mpp0.
    return (0.5 * (pixel_mpp[0] - level0_mpp[0]), 0.5 * (pixel_mpp[1] - level0_mpp[1]))


class OutputStore:
    """The output of one slide run: create, resume, write tiles, finalise.

    Use :meth:`create`, :meth:`resume` or (for one of several concurrent writers)
    :meth:`open`; an instance is not thread-safe (one writer thread each).
    """

    def __init__(self, path: StoreTarget, group: Any) -> None:
        self.loc = Location.of(path)
        #: The store as the API shows it: a Path when local, the URL otherwise.
        self.path: Path | str = self.loc.public
        self.group = group
        self.meta: dict[str, Any] = dict(group.attrs.get("nucseg", {}))
        settings = self.meta.get("settings", {})
        self.label_dtype: str = settings.get("label_dtype", "uint32")
        # Every label chunk written, even all-zero: zarr's test for empty chunks compares each
        # written chunk with the fill value (~8 ms per 1024^2 chunk), more than the write it saves.
        self.labels = group["labels/nuclei/0"].with_config({"write_empty_chunks": True})
        self.prob = group["prob/0"] if settings.get("save_prob") else None
        self.image = group["0"] if settings.get("save_image") else None
        self.tiles_dir = self.loc / "nucseg" / "tiles"
        self.parts_dir = self.loc / "nucseg" / "parts"

    # -- opening -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: StoreTarget,
        *,
        geom: Any,
        label_dtype: str,
        settings: dict[str, Any],
        meta: dict[str, Any],
        overview: np.ndarray,
        overview_mpp: tuple[float, float],
        overview_translation: tuple[float, float],
        overwrite: bool = False,
    ) -> OutputStore:
        """Create a new store (refusing to touch an existing path unless ``overwrite``).

        Parameters
        ----------
        path : path-like, URL or Location
            The ``.zarr`` directory (or URL) to create.
        geom : Geometry
            Processing geometry (sizes, pixel sizes, tile).
        label_dtype : str
            ``"uint32"`` or ``"uint64"``.
        settings : dict
            Everything that must match for a later ``--resume``.
        meta : dict
            Run metadata stored under the root attribute ``nucseg``.
        overview : ndarray of uint8, shape (h, w, 3)
            Low-resolution RGB overview stored as the root image.
        overview_mpp, overview_translation : tuple of float
            ``(y, x)`` pixel size and position of pixel 0 of the overview, in micrometres.
        overwrite : bool
            Replace an existing nucseg store at ``path``.
        """
        import zarr

        p = Location.of(path)
        if p.exists():
            if not overwrite:
                raise StoreError(f"output {p} already exists; pass --resume to continue it or --overwrite to replace it")
            _remove_store(p)
        if p.local:
            if not Path(p.parent.url).is_dir():
                raise StoreError(f"output folder {p.parent} does not exist")
            if not os.access(p.parent.url, os.W_OK):
                raise StoreError(f"output folder {p.parent} is not writable")
        else:  # no folders and no permission bits on an object store: try a write
            problem = probe_write(p.parent)
            if problem is not None:
                raise StoreError(f"output {p}: {problem}")
        full = jsonable(dict(meta, settings=dict(settings, label_dtype=label_dtype), status=CREATING))
        try:
            # The marker goes into the first zarr.json (written atomically): a kill from
            # here on leaves a store that --resume and --overwrite recognise and redo.
            root = zarr.open_group(p.url, mode="w-", zarr_format=3, attributes={"nucseg": full})
        except Exception as exc:  # noqa: BLE001 - store errors come in many types
            raise StoreError(f"cannot create output {p}: {exc}") from exc
        chunk = (min(geom.tile, geom.size[0]), min(geom.tile, geom.size[1]))
        shapes = pyramid_shapes(geom.size)
        trans = _translation(geom.mpp, geom.level0_mpp)
        labels_grp = root.create_group("labels")
        labels_grp.attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABEL_NAME]}
        nuc = labels_grp.create_group(LABEL_NAME)
        nuc.attrs["ome"] = {
            "version": NGFF_VERSION,
            "multiscales": multiscales(LABEL_NAME, len(shapes), geom.mpp, trans),
            "image-label": {"source": {"image": "../../"}},
        }
        for k, shape in enumerate(shapes):
            nuc.create_array(
                str(k),
                shape=shape,
                chunks=(min(chunk[0], shape[0]), min(chunk[1], shape[1])),
                dtype=label_dtype,
                fill_value=0,
                dimension_names=("y", "x"),
            )
        if settings.get("save_prob"):
            prob = root.create_group("prob")
            prob.attrs["ome"] = {
                "version": NGFF_VERSION,
                "multiscales": multiscales("probability", 1, geom.mpp, trans),
            }
            prob.create_array(
                "0", shape=geom.size, chunks=chunk, dtype="uint8", fill_value=0, dimension_names=("y", "x")
            )
        if settings.get("save_image"):
            for k, shape in enumerate(shapes):
                root.create_array(
                    str(k),
                    shape=(3, *shape),
                    chunks=(3, min(chunk[0], shape[0]), min(chunk[1], shape[1])),
                    dtype="uint8",
                    fill_value=255,  # skipped background tiles read as white glass
                    dimension_names=("c", "y", "x"),
                )
            image_ms = multiscales("slide", len(shapes), geom.mpp, trans, channel=True)
        else:
            # As many levels as the labels: NGFF wants a label image level for level with its image.
            write_overview_pyramid(root, np.asarray(overview), len(shapes))
            image_ms = multiscales(
                "slide overview", len(shapes), overview_mpp, overview_translation, channel=True, mean=True
            )
        name = image_ms[0]["name"]
        (p / "nucseg" / "tiles").makedirs()
        (p / "nucseg" / "parts").makedirs()
        # Last, in one write: from here on the store is resumable tile by tile.
        root.update_attributes(
            {
                "ome": {"version": NGFF_VERSION, "multiscales": image_ms, "omero": omero_rgb(name)},
                "nucseg": dict(full, status="running"),
            }
        )
        return cls(p, root)

    @classmethod
    def resume(cls, path: StoreTarget, *, settings: dict[str, Any]) -> OutputStore:
        """Reopen a store written by an earlier run with the same ``settings``.

        Drops the temporary files of a killed run: use it only when no other process
        writes the store (see :meth:`open`).
        """
        p = Location.of(path)
        if not p.exists():
            raise StoreError(f"cannot resume: output {p} does not exist (run without --resume first)")
        if is_unfinished_creation(p):  # prepare_output creates such a store anew instead
            raise StoreError(f"cannot resume {p}: its creation never finished (no tile was done); use --overwrite")
        try:
            store = cls.open(p)
            stored = dict(store.meta["settings"])
        except (StoreError, KeyError, TypeError, ValueError):
            raise StoreError(f"cannot resume: {p} is not an output of nucseg-wsi") from None
        diff = settings_diff(stored, settings)
        if diff:
            show = ", ".join(f"{k}: {stored.get(k)!r} -> {jsonable(settings.get(k))!r}" for k in diff[:4])
            raise StoreError(f"cannot resume {p}: the settings differ from the first run ({show}); use --overwrite")
        store.tiles_dir.makedirs()
        store.parts_dir.makedirs()
        # Temporary files of a killed run (local stores only): never renamed into place, safe to drop.
        for d in (store.tiles_dir, store.parts_dir, p / "nucseg"):
            for tmp in d.files(".tmp"):
                tmp.remove()
        return store

    @classmethod
    def open(cls, path: StoreTarget) -> OutputStore:
        """Open an existing store to write tiles, as one of several concurrent writers.

        Unlike :meth:`resume`, neither checks the settings nor deletes the ``*.tmp``
        files of a killed run: here they may be another writer's live ones.

        Raises
        ------
        StoreError
            ``path`` is not a readable, writable nucseg-wsi output.
        """
        import zarr

        p = Location.of(path)
        try:
            return cls(p, zarr.open_group(p.url, mode="r+", zarr_format=3))
        except Exception as exc:  # noqa: BLE001 - store errors come in many types
            raise StoreError(f"cannot open {p} for writing: {exc}") from exc

    # -- tiles ---------------------------------------------------------------------
    def done_tiles(self) -> set[int]:
        """Indices of the tiles recorded as finished."""
        return set(_records_by_index(self.tiles_dir))

    def write_tile(
        self, result: Any, table: Any, record: dict[str, Any], scheme: Any, *,
        clock: Callable[[str, float], None] | None = None,
    ) -> None:
        """Write one tile's nuclei, probability, table part, then its completion record.

        The record is written last and atomically: a tile without a record is redone
        on resume, and redoing it rewrites the same pixels. Exact nuclei of different
        tiles never overlap; a pixel claimed twice (approximate nuclei) keeps the claim
        of highest :meth:`~nucseg.wsi.tiling.IdScheme.priority`, whatever the order.
        ``clock``, when given, receives ``("write.labels", s)`` (labels, probability
        and image arrays) and ``("write.table", s)`` (table part and record).
        """
        idx = result.tile.index
        t0 = time.perf_counter()
        try:
            arrays = self._write_tile(result, table, record, scheme)
        except OSError as exc:
            raise StoreError(
                f"cannot write tile {idx} to {self.path}: {exc}; the finished tiles are kept, "
                "free space or fix permissions and rerun with --resume"
            ) from exc
        if clock is not None and isinstance(arrays, float):
            clock("write.labels", arrays)
            clock("write.table", time.perf_counter() - t0 - arrays)

    def _write_tile(self, result: Any, table: Any, record: dict[str, Any], scheme: Any) -> float:
        """:meth:`write_tile` without its error message; returns the seconds spent on the arrays."""
        from .table import write_part
        from .tiling import merge_claims

        idx = result.tile.index
        t0 = time.perf_counter()
        if result.box is not None:
            y0, y1, x0, x1 = result.box
            self.labels[y0:y1, x0:x1] = merge_claims(self.labels[y0:y1, x0:x1], result.labels, scheme)
        y0, y1, x0, x1 = result.tile.core
        if self.prob is not None and result.prob_core is not None:
            self.prob[y0:y1, x0:x1] = result.prob_core
        if self.image is not None and result.rgb_core is not None:
            self.image[:, y0:y1, x0:x1] = np.moveaxis(result.rgb_core, 2, 0)
        t1 = time.perf_counter()
        write_part(table, self.parts_dir / f"{idx:06d}.parquet")
        (self.tiles_dir / f"{idx:06d}.json").write_bytes(json.dumps(jsonable(record)).encode())
        return t1 - t0

    def tile_records(self) -> dict[int, dict[str, Any]]:
        """All completion records by tile index."""
        files = _records_by_index(self.tiles_dir)
        order = sorted(files)
        texts = self.tiles_dir.read_all([files[i] for i in order])
        return {i: json.loads(t) for i, t in zip(order, texts)}

    # -- end -----------------------------------------------------------------------
    def build_pyramid(self) -> None:
        """Fill levels 1.. one output chunk at a time: labels by 2x stride subsampling
        (no label is invented), the image (``--save-image``) by 2x2 means."""
        nuc = self.group["labels/nuclei"]
        k = 1
        while str(k) in nuc:
            src, dst = nuc[str(k - 1)], nuc[str(k)]
            ch, cw = dst.chunks
            for y in range(0, dst.shape[0], ch):
                for x in range(0, dst.shape[1], cw):
                    block = src[2 * y : 2 * (y + ch) : 2, 2 * x : 2 * (x + cw) : 2]
                    dst[y : y + block.shape[0], x : x + block.shape[1]] = block
            k += 1
        k = 1
        while self.image is not None and str(k) in self.group:
            fill_mean_level(self.group[str(k - 1)], self.group[str(k)])
            k += 1

    def complete_overview(self) -> bool:
        """Give the overview of a store begun by an earlier nucseg (one level, no ``omero``)
        as many levels as the labels and its RGB rendering, so a resumed store is a valid
        NGFF image too. Returns True when it changed the store."""
        if self.image is not None:
            return False
        ome = dict(self.group.attrs.get("ome", {}))
        ms = ome["multiscales"][0]
        n = len(self.group["labels/nuclei"].attrs["ome"]["multiscales"][0]["datasets"])
        if len(ms["datasets"]) == n and "omero" in ome:
            return False
        tr = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
        scale, trans = tr["scale"], tr.get("translation", [0.0, 0.0, 0.0])
        add_mean_levels(self.group, n)
        name = ms.get("name", "slide overview")
        mpp, origin = (scale[1], scale[2]), (trans[1], trans[2])
        self.group.attrs["ome"] = {
            **ome,
            "multiscales": multiscales(name, n, mpp, origin, channel=True, mean=True),
            "omero": omero_rgb(name),
        }
        return True

    def finish(self, update: dict[str, Any], *, pyramid: bool = True) -> Path | str:
        """Merge the table, build the pyramid (and the overview's, for a store begun by an
        earlier nucseg: :meth:`complete_overview`) and mark the run complete.

        Parameters
        ----------
        update : dict
            Merged into the run metadata, with the totals of the completion records
            (``nuclei``, ``tiles_done``, ``approximate_nuclei``) and ``end_time``.
        pyramid : bool
            Build the pyramid levels here; False when they were built elsewhere (the
            Dask runner builds them block by block on its workers).

        Returns
        -------
        Path or str
            The per-nucleus Parquet table (its URL for a store at a URL).
        """
        from datetime import datetime, timezone

        from .table import merge_parts

        if pyramid:
            self.build_pyramid()
        self.complete_overview()
        records = self.tile_records()
        # Only parts whose tile finished: a kill between part and record leaves a stale part.
        parts = [p for i, p in sorted(_records_by_index(self.parts_dir, ".parquet").items()) if i in records]
        table = self.loc / "nucseg" / "nuclei.parquet"
        merge_parts(parts, table, self.label_dtype)
        totals = {
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "nuclei": int(sum(r.get("nuclei", 0) for r in records.values())),
            "tiles_done": len(records),
            "approximate_nuclei": int(sum(r.get("approximate", 0) for r in records.values())),
        }
        self.update_meta({**totals, **update, "status": "complete"})
        return table.public

    def update_meta(self, update: dict[str, Any]) -> None:
        """Merge ``update`` into the run metadata."""
        meta = dict(self.group.attrs["nucseg"])
        meta.update(jsonable(update))
        self.group.attrs["nucseg"] = meta
        self.meta = meta


def read_meta(path: StoreTarget) -> dict[str, Any] | None:
    """The run metadata of a store, read from its ``zarr.json`` alone (cheap for thousands
    of stores); None when ``path`` holds no nucseg-wsi output."""
    try:
        meta = json.loads((Location.of(path) / "zarr.json").read_bytes())["attributes"]["nucseg"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(meta, dict) else None


def _records_by_index(folder: Location, suffix: str = ".json") -> dict[int, Location]:
    """``{tile index: file}`` of the files ``NNNNNN<suffix>`` in ``folder``."""
    return {int(f.name[: -len(suffix)]): f for f in folder.files(suffix) if f.name[: -len(suffix)].isdigit()}


def settings_diff(stored: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a store's ``stored`` settings and new ``settings``."""
    stored = {k: v for k, v in stored.items() if k != "label_dtype"}  # chosen by the store, not the user
    return sorted(k for k in set(stored) | set(settings) if stored.get(k) != jsonable(settings.get(k)))


# -- spill: pixels a Dask tile task owns in another task's chunks --------------------------


def save_spill(out: StoreTarget, dest: int, src: int, yx: np.ndarray, ids: np.ndarray) -> None:
    """Save the pixels ``yx`` (global ``(y, x)``, shape ``(n, 2)``) with labels ``ids`` that
    tile ``src`` owns in label chunk ``dest``, atomically."""
    buf = io.BytesIO()
    np.savez(buf, yx=yx, ids=ids)
    (Location.of(out) / "nucseg" / SPILL_DIR / f"{dest:06d}" / f"{src:06d}.npz").write_bytes(buf.getvalue())


def pending_spill(out: StoreTarget) -> list[int]:
    """Label chunks that have spill files waiting to be merged."""
    d = Location.of(out) / "nucseg" / SPILL_DIR
    return sorted(
        int(name) for name, folder in d.entries().items() if folder and name.isdigit() and (d / name).files(".npz")
    )


def apply_spill(output: StoreTarget, chunks: Sequence[int], n_tiles: int) -> int:
    """Write the spill files of ``chunks`` into the labels; returns the pixels read.

    Pixels are merged as tiles are (:func:`~nucseg.wsi.tiling.merge_claims`: a pixel
    claimed twice keeps the claim of highest priority), so the order of the files does
    not matter. Run only when no other writer is running: it rewrites whole chunks.
    Idempotent (the files stay until the run finishes).
    """
    import zarr

    from .tiling import IdScheme, merge_claims

    scheme = IdScheme(n_tiles)
    out = Location.of(output)
    labels = zarr.open_array((out / "labels" / LABEL_NAME / "0").url, mode="r+")
    ch, cw = labels.chunks
    n_cols = -(-labels.shape[1] // cw)
    written = 0
    for c in chunks:
        folder = out / "nucseg" / SPILL_DIR / f"{int(c):06d}"
        files = folder.files(".npz")
        if not files:
            continue
        r, col = divmod(int(c), n_cols)
        y0, x0 = r * ch, col * cw
        block = labels[y0 : y0 + ch, x0 : x0 + cw]
        for data in folder.read_all(files):
            with np.load(io.BytesIO(data)) as z:
                yx, ids = z["yx"], z["ids"]
            new = np.zeros_like(block)
            new[yx[:, 0] - y0, yx[:, 1] - x0] = ids
            block = merge_claims(block, new, scheme)
            written += len(ids)
        labels[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
    return written


def apply_pending_spill(output: StoreTarget) -> int:
    """Write and delete every spill file an interrupted Dask run left in a store.

    :func:`nucseg.wsi.segment_slide` calls it when resuming, before
    :meth:`OutputStore.finish`, so a store interrupted in a Dask run completes exactly.
    Returns the pixels read (0 when there was nothing to do).
    """
    out = Location.of(output)
    chunks = pending_spill(out)
    if chunks:
        meta = read_meta(out)
        if meta is None or "settings" not in meta:
            raise StoreError(f"{out} has spill files but is not an output of nucseg-wsi")
        (h, w), tile = meta["settings"]["size"], int(meta["settings"]["tile"])
        n = apply_spill(out, chunks, math.ceil(h / tile) * math.ceil(w / tile))
    else:
        n = 0
    (out / "nucseg" / SPILL_DIR).remove_tree()
    return n


def mean2(block: np.ndarray) -> np.ndarray:
    """2x2 mean of a (c, h, w) uint8 block; an odd last row or column is averaged alone."""
    c, h, w = block.shape
    padded = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge").astype(np.uint16)
    out = padded.reshape(c, (h + 1) // 2, 2, (w + 1) // 2, 2).sum(axis=(2, 4))
    return ((out + 2) // 4).astype(np.uint8)


def _remove_store(p: Location) -> None:
    """Delete ``p`` only when it is an output of nucseg-wsi (or an empty folder, or the
    beginning of one: :func:`is_unfinished_creation`)."""
    if (p.isdir() and not p.entries()) or is_unfinished_creation(p):
        p.remove_tree()
        return
    try:
        ok = p.isdir() and "nucseg" in json.loads((p / "zarr.json").read_bytes()).get("attributes", {})
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise StoreError(f"refusing to overwrite {p}: it is not an output of nucseg-wsi")
    p.remove_tree()


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars, tuples and paths so stored and new values compare equal.

    Examples
    --------
    >>> jsonable({"size": (2, np.int64(3)), "path": Path("/a")})
    {'size': [2, 3], 'path': '/a'}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
