"""Run many slides on a Dask cluster (``dask.distributed``), one OME-Zarr per slide.

The result is the single-process runner's (:func:`nucseg.wsi.segment_slide`), label
for label: the same tile grid, ownership rule, label ids, store layout and per-tile
completion records, only the tiles are computed by Dask workers.

Tasks
-----
Per slide, the client drives five phases, each a set of independent Dask tasks (no
task depends on another task's data, so a lost worker costs a re-run of its own
tasks and never the recomputation of finished ones):

1. ``prepare`` (one task): open the slide, plan the geometry, detect tissue, create or
   reopen the store, list the tiles still to do.
2. ``tiles``: one task per *group* of ``group x group`` tiles. Label chunks are one tile
   (the runner's chunking), so a group owns a chunk-aligned region that no other task
   writes. The worker opens the slide itself (each worker thread keeps it open, with
   the store, for its next task of the slide), reads, runs the model (loaded once per
   worker by :class:`ModelPlugin`), the watershed and the ownership step, and writes
   its region directly. A nucleus owned by a tile may reach into a neighbouring
   group's chunks (the owner writes whole nuclei); those few pixels are not written
   there but saved as a *spill* file ``nucseg/spill/DEST/SRC.npz`` (DEST: the chunk,
   SRC: the owning tile), before the tile's completion record.
3. ``spill``: once every tile task of the slide has finished, the chunks with spill
   files get them written in (idempotent: the pixels are deterministic), split into
   two tasks per worker thread at most (each chunk in one task).
4. ``pyramid``: level ``k`` by 2x stride subsampling of level ``k - 1``, level after
   level; each level's blocks of ``group x group`` chunks split into two tasks per
   worker thread at most.
5. ``finish``: merge the table parts, mark the store complete, drop the spill files;
   with ``qc``, render the QC picture there (the worker re-reads the slide's overview)
   and send it back as PNG bytes, which the client writes.

No two tasks that can run at the same time write the same chunk. A worker that dies
mid-task loses only that task: Dask runs it again elsewhere, and it rewrites the same
pixels. An interrupted run resumes with ``resume=True`` (tiles with a completion
record are skipped; leftover spill files are applied), or in a single process with
:func:`nucseg.wsi.segment_slide` ``(resume=True)``, which applies them too.

Planning and the tile computation are the single-process runner's own
(:func:`nucseg.wsi.pipeline.prepare_output`, :func:`nucseg.wsi.pipeline.compute_tile`);
this module adds the tasks, the split of each tile's nuclei into its group's region
and spill, and the client's loop.

Requirements
------------
Every worker must reach the slides under the same absolute paths, and the output
either under the same absolute path (a shared filesystem: NFS, Lustre, GPFS,
CephFS...) or at the same URL of an object store zarr and fsspec understand
(``s3://bucket/results``, ``gs://...``; see :mod:`nucseg.wsi.location`). A write probe
runs on each worker first and fails the call with a clear message otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    from distributed import WorkerPlugin as _PluginBase
except ImportError:  # optional: the batch helpers work without it, run_distributed says what to install
    _PluginBase = object

from .._cpu import usable_cpus
from .location import Location, probe_write
from .options import RunOptions, check_int, pick_options
from .pipeline import OVERVIEW_SIDE, SlideSummary, TileParams
from .store import (  # apply_pending_spill: also importable from here, as documented before
    SPILL_DIR,
    apply_pending_spill,  # noqa: F401
    apply_spill,
    pending_spill,
    save_spill,
)

logger = logging.getLogger(__name__)
#: Suffixes stripped from a slide's name to name its store in a batch.
_DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")

Box = tuple[int, int, int, int]


class DistributedError(RuntimeError):
    """The cluster cannot run the job (no workers, a worker cannot reach the paths)."""


# -- worker side: the model and the allocator ------------------------------------------

#: glibc's own steady state: its dynamic mmap threshold tops out at 32 MiB, and the trim
#: threshold follows at twice that (mallopt(3)); :func:`relax_malloc_trim` restores it.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def relax_malloc_trim() -> bool:
    """Undo a low ``MALLOC_TRIM_THRESHOLD_`` in this (worker) process, on glibc.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``distributed.nanny.pre-spawn-environ``), which returns freed memory to the system at
    once and, as a side effect, freezes glibc's mmap threshold at 128 KiB: every array
    of a tile (a 512^2 float32 is 1 MiB) is then a fresh ``mmap`` whose pages fault in on
    first touch. On 54 tiles of 512^2 (hematoxylin predictor) that was 1.2 M page faults
    and 2.2 s of system time, +35 % on the tile phase (``docs/SCALING.md``). Dask's docs
    note the cost ("may degrade performance").

    Sets the thresholds glibc settles on by itself (mmap 32 MiB, trim 64 MiB): a worker
    keeps at most about 64 MiB of freed heap per malloc arena instead of handing it back.
    Does nothing when the variable is unset or not lower, or on a C library without
    glibc's ``mallopt``.

    Returns
    -------
    bool
        Whether the thresholds were changed.
    """
    import ctypes
    import sys

    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if value is None or not sys.platform.startswith("linux"):
        return False
    try:
        if int(value) >= _TRIM_THRESHOLD:
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not a number, or not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


class ModelPlugin(_PluginBase):
    """A Dask worker plugin that loads the model once per worker process.

    Registered by :func:`run_distributed`; tasks get it with :func:`worker_plugin`.
    Workers that join later (or restart after a crash) load it when they start. It also
    keeps, per worker thread, the slide and store its tile tasks opened
    (:meth:`open_job`), and relaxes the worker's malloc trimming
    (:func:`relax_malloc_trim`).

    Parameters
    ----------
    model : None, str, path-like or predictor
        As for :func:`nucseg.wsi.predictors.resolve_model`; a predictor object is
        pickled once per worker, not per task.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"auto"``/None (the worker's GPU when it has one).
    precision : str
        The network's arithmetic (:func:`nucseg.inference.load_model`).
    backend : str
        What runs the network (:mod:`nucseg.backends`).
    name : str
        Plugin name (unique per run).
    """

    def __init__(
        self, model: Any, device: str | None, name: str, precision: str = "auto", backend: str = "torch"
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.backend = backend
        self.name = name
        self.loads = 0
        self.predictor: Any = None
        self.lock: Any = None
        self.opened: dict[int, OpenJob] = {}  # by worker thread

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(predictor=None, lock=None, opened={})  # loaded and created on the worker
        return state

    async def setup(self, worker: Any) -> None:
        """Load the model in a thread so the worker's event loop stays responsive."""
        self.lock = threading.Lock()
        await asyncio.get_running_loop().run_in_executor(None, self._load, getattr(worker.state, "nthreads", 1))

    def _load(self, nthreads: int) -> None:
        import sys

        from .predictors import resolve_model

        self.predictor = resolve_model(
            self.model, device=self.device, precision=self.precision, backend=self.backend,
            threads=max(1, int(nthreads)),
        )
        self.loads += 1
        if relax_malloc_trim():
            logger.info("raised this worker's malloc trim threshold (MALLOC_TRIM_THRESHOLD_ was %s)",
                        os.environ["MALLOC_TRIM_THRESHOLD_"])
        if "torch" in sys.modules:  # CPU inference: one torch thread per task slot
            sys.modules["torch"].set_num_threads(max(1, int(nthreads)))

    def teardown(self, worker: Any) -> None:  # noqa: ARG002 - Dask's signature
        """Drop the model and close the open slides (a later run on the same cluster registers its own)."""
        self.predictor = None
        for opened in list(self.opened.values()):
            opened.reader.close()
        self.opened.clear()

    def open_job(self, job: SlideJob) -> OpenJob:
        """The slide, store, tile grid and id scheme of ``job`` for the calling thread.

        Opened by the thread's first tile task of the job and reused by its next ones
        (about 8 ms per task saved: opening the slide and the store, building the grid);
        a task of another job closes them first. One per thread: readers and stores
        are not shared between threads.
        """
        from .reader import open_slide
        from .store import OutputStore
        from .tiling import IdScheme, make_tiles

        key = (job.slide, job.output)
        opened = self.opened.get(threading.get_ident())
        if opened is not None and opened.key == key:
            return opened
        self.close_job()
        reader = open_slide(job.slide, mpp=job.mpp, reader=job.reader)
        try:
            store = OutputStore.open(job.output)
        except BaseException:
            reader.close()
            raise
        opened = OpenJob(key, reader, store, make_tiles(job.geom), IdScheme(job.geom.n_tiles))
        self.opened[threading.get_ident()] = opened
        return opened

    def close_job(self) -> None:
        """Close what :meth:`open_job` opened for the calling thread, if anything."""
        opened = self.opened.pop(threading.get_ident(), None)
        if opened is not None:
            opened.reader.close()

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """``predictor.predict`` under a lock: one batch at a time per worker (one GPU)."""
        with self.lock:
            return np.asarray(self.predictor.predict(rgb), dtype=np.float32)


@dataclass
class OpenJob:
    """What a worker thread keeps open between tile tasks of one slide (:meth:`ModelPlugin.open_job`).

    Attributes
    ----------
    key : tuple of str
        The job's slide and output.
    reader : SlideReader
    store : OutputStore
    tiles : list of Tile
        The slide's tile grid (:func:`nucseg.wsi.tiling.make_tiles`).
    scheme : IdScheme
    """

    key: tuple[str, str]
    reader: Any
    store: Any
    tiles: list[Any]
    scheme: Any


def worker_plugin(name: str) -> ModelPlugin:
    """The :class:`ModelPlugin` called ``name`` on the current Dask worker."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(name)
    if plugin is None or plugin.predictor is None:
        raise DistributedError(f"the model plugin {name!r} is not loaded on this worker")
    return plugin


# -- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideJob:
    """What a worker needs to compute tiles of one slide (small: sent with each task).

    Attributes
    ----------
    slide, output : str
        Absolute paths (or the output's URL), valid on every worker.
    mpp : float or None
        Level-0 microns per pixel override.
    reader : str
        What decodes the slide (:func:`nucseg.wsi.reader.open_slide`).
    geom : Geometry
        The processing geometry (:func:`nucseg.wsi.tiling.plan_geometry`).
    settings : dict
        The store settings.
    params : TileParams
        How each tile is post-processed (:func:`nucseg.wsi.pipeline.compute_tile`).
    batch_size, group : int
    save_image : bool
    plugin : str
        Name of the :class:`ModelPlugin`.
    tissue_map : TissueMap or None
        Where nuclei are segmented (:class:`nucseg.wsi.tissue.TissueMap`, packed bits).
    """

    slide: str
    output: str
    mpp: float | None
    reader: str
    geom: Any
    settings: dict[str, Any]
    params: TileParams
    batch_size: int
    group: int
    save_image: bool
    plugin: str
    tissue_map: Any = None


@dataclass
class SlidePlan:
    """Result of the ``prepare`` task.

    Attributes
    ----------
    job : SlideJob or None
        None when the slide is already complete (``skipped``).
    todo : list of int
        Tile indices to compute, in raster order.
    tiles, tiles_tissue, tiles_resumed : int
    tissue_fraction, tissue_mm2 : float
    spill : list of int
        Chunks with spill files left by an interrupted run.
    skipped : SlideSummary or None
        The summary of a complete store (nothing to do).
    """

    job: SlideJob | None
    todo: list[int] = field(default_factory=list)
    tiles: int = 0
    tiles_tissue: int = 0
    tiles_resumed: int = 0
    tissue_fraction: float = 0.0
    tissue_mm2: float = 0.0
    spill: list[int] = field(default_factory=list)
    skipped: SlideSummary | None = None


@dataclass
class SlideOutcome:
    """What happened to one slide of a batch.

    Attributes
    ----------
    slide : Path
    output : Path or str
        The store (its URL for a store at a URL).
    status : str
        ``"done"``, ``"skipped"`` (already complete) or ``"failed"``.
    summary : SlideSummary or None
        For ``done`` and ``skipped``.
    error : str or None
        One line, for ``failed``.
    details : dict
        Task counts of this call: ``tile_tasks``, ``spill_chunks`` (chunks that got
        pixels of nuclei owned by another group), ``pyramid_tasks``, ``tiles_enlarged``;
        and the client's wall seconds per phase: ``prepare_s``, ``tiles_s``,
        ``spill_s``, ``pyramid_s``, ``finish_s``.
    """

    slide: Path
    output: Path | str
    status: str
    summary: SlideSummary | None = None
    error: str | None = None
    details: dict[str, float] = field(default_factory=dict)


def _stem(slide: str | os.PathLike[str]) -> str:
    """A slide's file name less its suffix (``b.ome.tiff`` -> ``b``)."""
    name = Path(slide).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def output_path(slide: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path | str:
    """The store of ``slide`` in a batch: ``out_dir / NAME.zarr`` (``NAME``: file name less its suffix).

    A URL ``out_dir`` gives a URL.

    Examples
    --------
    >>> output_path("/data/a.svs", "/res").as_posix()
    '/res/a.zarr'
    >>> output_path("/data/b.ome.tiff", "/res").as_posix()
    '/res/b.zarr'
    >>> output_path("/data/c.svs", "s3://bucket/res/")
    's3://bucket/res/c.zarr'
    """
    return (Location.of(out_dir) / (_stem(slide) + ".zarr")).public


def qc_path(slide: str | os.PathLike[str], qc_dir: str | os.PathLike[str]) -> Path:
    """The QC picture of ``slide`` in a batch: ``qc_dir / NAME_qc.png``.

    Examples
    --------
    >>> qc_path("/data/b.ome.tiff", "/qc").as_posix()
    '/qc/b_qc.png'
    """
    return Path(qc_dir) / f"{_stem(slide)}_qc.png"


def store_status(output: str | os.PathLike[str]) -> str:
    """``"missing"``, ``"complete"`` or ``"partial"`` (anything else at that path) for a batch.

    Reads only ``zarr.json``: cheap enough to check thousands of stores.
    """
    from .store import read_meta

    p = Location.of(output)
    if not p.exists():
        return "missing"
    meta = read_meta(p)
    return "complete" if meta is not None and meta.get("status") == "complete" else "partial"


def single_store(n_slides: int, out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` is the store of a single slide itself (it ends in ``.zarr``), not a folder of stores."""
    return n_slides == 1 and os.fspath(out).rstrip("/").endswith(".zarr")


def plan_outputs(
    slides: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> list[tuple[Path, Path | str]]:
    """Pair each slide with its store (absolute paths, or URLs for a URL ``out``).

    ``out`` is a folder receiving ``NAME.zarr`` per slide, or, for a single slide, the
    ``.zarr`` store itself (:func:`single_store`); a local folder or a URL.

    Raises
    ------
    ValueError
        No slides, or two slides that would write the same store;
        :class:`~nucseg.wsi.location.LocationError` for an unusable URL.
    """
    if isinstance(slides, (str, os.PathLike)):
        slides = [slides]
    slides = [Path(os.path.abspath(s)) for s in slides]
    if not slides:
        raise ValueError("slides must name at least one slide")
    loc = Location.of(out)
    out_p = Path(os.path.abspath(loc.url)) if loc.local else loc.url
    if single_store(len(slides), out_p):
        return [(slides[0], out_p)]
    pairs = [(s, output_path(s, out_p)) for s in slides]
    seen: dict[Path | str, Path] = {}
    for s, o in pairs:
        if o in seen:
            raise ValueError(f"slides {seen[o]} and {s} would both write {o}; rename one or run them separately")
        seen[o] = s
    return pairs


# -- prepare (worker) ---------------------------------------------------------------------


def prepare_slide(slide: str, output: str, options: RunOptions, group: int, plugin: str) -> SlidePlan:
    """Dask task: plan one slide and create (or reopen) its store; see :class:`SlidePlan`.

    ``options`` shape the run as they do :func:`nucseg.wsi.segment_slide`'s; ``group``
    is the side of a tile task in tiles. Planning is
    :func:`~nucseg.wsi.pipeline.prepare_output`'s, so either runner can continue the
    other's store; a complete store with the same settings is skipped.
    """
    from .pipeline import prepare_output
    from .reader import open_slide
    from .store import jsonable

    pred = worker_plugin(plugin).predictor
    reader = open_slide(slide, mpp=options.mpp, reader=options.reader)
    try:
        setup = prepare_output(reader, pred, output, options, skip_complete=True)
    finally:
        reader.close()
    if setup.skipped is not None:
        return SlidePlan(job=None, skipped=setup.skipped)
    job = SlideJob(
        slide=str(slide),
        output=str(setup.output),
        mpp=options.mpp,
        reader=options.reader,
        geom=setup.geom,
        settings=jsonable(setup.settings),
        params=setup.params,
        batch_size=options.batch_size,
        group=group,
        save_image=setup.save_image,
        plugin=plugin,
        tissue_map=setup.tissue_map,
    )
    return SlidePlan(
        job=job,
        todo=setup.todo,
        tiles=len(setup.tiles),
        tiles_tissue=len(setup.keep),
        tiles_resumed=setup.resumed,
        tissue_fraction=setup.tissue_fraction,
        tissue_mm2=setup.tissue_mm2,
        spill=pending_spill(setup.output),
    )


# -- geometry of groups ------------------------------------------------------------------


def group_of(tile_index: int, grid: tuple[int, int], group: int) -> int:
    """Index of the group (``group x group`` tiles, row-major over groups) holding a tile."""
    cols = grid[1]
    gcols = -(-cols // group)
    r, c = divmod(tile_index, cols)
    return (r // group) * gcols + c // group


def group_box(group_index: int, geom: Any, group: int) -> Box:
    """Chunk-aligned region ``(y0, y1, x0, x1)`` of a group, in processing pixels."""
    gcols = -(-geom.grid[1] // group)
    gr, gc = divmod(group_index, gcols)
    span = group * geom.tile
    return (
        gr * span,
        min(geom.size[0], (gr + 1) * span),
        gc * span,
        min(geom.size[1], (gc + 1) * span),
    )


def split_result(result: Any, region: Box, geom: Any) -> tuple[Any, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Split a tile's owned nuclei into the part inside ``region`` and spill per chunk.

    Returns
    -------
    inside : TileResult
        ``result`` with ``box``/``labels`` cropped to ``region`` (ids, table fields and
        ``prob_core`` unchanged).
    spill : dict
        ``{chunk_index: (yx, ids)}``: global ``(y, x)`` (int64, ``(n, 2)``) and label of
        each owned pixel outside ``region``, by the label chunk (= tile) holding it.
    """
    if result.box is None:
        return result, {}
    y0, y1, x0, x1 = result.box
    ry0, ry1, rx0, rx1 = region
    lab = result.labels
    iy0, iy1, ix0, ix1 = max(y0, ry0), min(y1, ry1), max(x0, rx0), min(x1, rx1)
    outside = lab != 0
    inside_res = replace(result, box=None, labels=None)
    if iy0 < iy1 and ix0 < ix1:
        crop = lab[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        outside[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = False
        if crop.any():
            inside_res = replace(result, box=(iy0, iy1, ix0, ix1), labels=np.ascontiguousarray(crop))
    if not outside.any():
        return inside_res, {}
    ys, xs = np.nonzero(outside)
    ids = lab[ys, xs]
    ys = ys.astype(np.int64) + y0
    xs = xs.astype(np.int64) + x0
    chunk = (ys // geom.tile) * geom.grid[1] + xs // geom.tile
    spill = {}
    for c in np.unique(chunk):
        m = chunk == c
        spill[int(c)] = (np.stack([ys[m], xs[m]], axis=1), ids[m])
    return inside_res, spill


# -- tile groups (worker) -------------------------------------------------------------------


def run_tile_group(job: SlideJob, group_index: int, tiles: list[int]) -> dict[str, Any]:
    """Dask task: compute ``tiles`` (all in group ``group_index``) and write them.

    Each tile is computed by :func:`nucseg.wsi.pipeline.compute_tile`, as in the
    single-process runner. Owned pixels inside the group's region are written to the
    labels; the others go to spill files; then :meth:`OutputStore.write_tile` writes
    the table part and the completion record. Returns counts and stage timings (small).
    The slide and the store stay open for the worker thread's next task of the same
    slide (:meth:`ModelPlugin.open_job`).
    """
    from .pipeline import compute_tile, mask_outside, plan_tile, predict_enlarged, predict_tiles, read_tile
    from .tiling import crop_box

    geom = job.geom
    for i in tiles:
        if group_of(i, geom.grid, job.group) != group_index:
            raise ValueError(f"tile {i} is not in group {group_index}")
    plugin = worker_plugin(job.plugin)
    opened = plugin.open_job(job)
    reader, store, scheme = opened.reader, opened.store, opened.scheme
    region = group_box(group_index, geom, job.group)
    windows = bool(getattr(plugin.predictor, "accepts_windows", True))  # see pipeline.predict_tiles
    timings = {"read": 0.0, "infer": 0.0, "post": 0.0, "write": 0.0}
    nuclei: dict[int, int] = {}
    spill_chunks: set[int] = set()
    enlarged = 0

    def clock(stage: str, seconds: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + seconds  # also the ``stage.step`` parts

    def read(t: Any) -> np.ndarray:
        t0 = time.perf_counter()
        rgb = read_tile(reader, geom, t)
        clock("read", time.perf_counter() - t0)
        return rgb

    def infer(batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        prob = plugin.predict(batch)  # its shape is checked by the pipeline's predict_* callers
        clock("infer", time.perf_counter() - t0)
        return prob

    def recompute(t: Any) -> tuple[np.ndarray, np.ndarray]:
        rgb = read(t)  # a larger halo
        return rgb, predict_enlarged(infer, t, rgb, job.tissue_map, geom, job.params.stride, windows=windows)

    try:
        for batch in _batches([opened.tiles[i] for i in tiles], job.batch_size):
            rgbs = [read(t) for t in batch]
            plans = [plan_tile(job.tissue_map, geom, t, job.params.stride, windows=windows) for t in batch]
            probs = predict_tiles(infer, rgbs, plans)
            for t, rgb, prob, plan in zip(batch, rgbs, probs, plans):
                prob = mask_outside(prob, plan)
                rgb_core = np.ascontiguousarray(rgb[crop_box(t.core, t.read)]) if job.save_image else None
                out = compute_tile(t, prob, geom, scheme, job.params, recompute=recompute, rgb=rgb,
                                   rgb_core=rgb_core, clock=clock)
                enlarged += out.enlarged
                t0 = time.perf_counter()
                inside, spill = split_result(out.result, region, geom)
                for dest, (yx, ids) in spill.items():
                    save_spill(store.loc, dest, t.index, yx, ids)
                    spill_chunks.add(dest)
                # The completion record comes last: the spill files are on disk before it.
                store.write_tile(inside, out.table, out.record, scheme)
                clock("write", time.perf_counter() - t0)
                nuclei[t.index] = out.record["nuclei"]
    except BaseException:
        plugin.close_job()  # the next task opens them afresh
        raise
    return {"nuclei": nuclei, "spill": sorted(spill_chunks), "timings": timings, "enlarged": enlarged}


def _batches(tiles: list[Any], size: int) -> list[list[Any]]:
    """Consecutive tiles of the same read shape, at most ``size`` per batch (as the runner batches)."""
    def shape(t: Any) -> tuple[int, int]:
        return (t.read[1] - t.read[0], t.read[3] - t.read[2])

    out: list[list[Any]] = []
    for t in tiles:
        if out and len(out[-1]) < size and shape(out[-1][0]) == shape(t):
            out[-1].append(t)
        else:
            out.append([t])
    return out


# -- spill, pyramid, finish (worker) ------------------------------------------------------


def pyramid_blocks(geom: Any, level: int, group: int) -> list[Box]:
    """Blocks of ``group x group`` chunks covering pyramid ``level`` (>= 1) of the labels.

    Shapes and chunks are those :meth:`OutputStore.create` gives the levels, so the
    client plans the pyramid without opening the store.
    """
    from .store import pyramid_shapes

    h, w = pyramid_shapes(geom.size)[level]
    ch, cw = min(geom.tile, geom.size[0], h), min(geom.tile, geom.size[1], w)
    return [
        (y, min(h, y + group * ch), x, min(w, x + group * cw))
        for y in range(0, h, group * ch)
        for x in range(0, w, group * cw)
    ]


def merge_spill(output: str | os.PathLike[str], chunks: Sequence[int], n_tiles: int) -> int:
    """Dask task: :func:`~nucseg.wsi.store.apply_spill`, a write error as one
    :class:`~nucseg.wsi.store.StoreError` with the ``--resume`` hint."""
    from .store import finishing

    with finishing(output):
        return apply_spill(output, chunks, n_tiles)


def build_pyramid_blocks(output: str | os.PathLike[str], level: int, boxes: Sequence[Box], image: bool = False) -> None:
    """Dask task: fill ``boxes`` of pyramid ``level`` from ``level - 1``.

    Labels by 2x stride subsampling, the RGB image (``image=True``) by 2x2 means: the
    values of :meth:`nucseg.wsi.store.OutputStore.build_pyramid`, whose chunks these
    boxes align with. A write error is one :class:`~nucseg.wsi.store.StoreError` with
    the ``--resume`` hint.
    """
    from .store import finishing

    with finishing(output):
        _fill_pyramid_blocks(output, level, boxes, image)


def _fill_pyramid_blocks(output: str | os.PathLike[str], level: int, boxes: Sequence[Box], image: bool) -> None:
    import zarr

    from .store import mean2

    loc = Location.of(output)
    if image:
        root = zarr.open_group(loc.url, mode="r+")
        src, dst = root[str(level - 1)], root[str(level)]
    else:
        nuc = zarr.open_group((loc / "labels" / "nuclei").url, mode="r+")
        src, dst = nuc[str(level - 1)], nuc[str(level)]
    for y0, y1, x0, x1 in boxes:
        if image:
            dst[:, y0:y1, x0:x1] = mean2(src[:, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1])
        else:
            dst[y0:y1, x0:x1] = src[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2]


def split_even(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in at most ``parts`` consecutive runs of near-equal length (none empty).

    Examples
    --------
    >>> split_even(list(range(7)), 3)
    [[0, 1, 2], [3, 4], [5, 6]]
    >>> split_even([1, 2], 4)
    [[1], [2]]
    """
    if not items:
        return []
    n = min(len(items), max(1, parts))
    q, r = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        stop = start + q + (k < r)
        out.append(list(items[start:stop]))
        start = stop
    return out


def finish_slide(job: SlideJob, update: dict[str, Any], t_client: float, qc: bool = False) -> dict[str, Any]:
    """Dask task: drop the spill files (applied), merge the table parts, mark the store complete.

    ``update`` is merged into the run metadata (timings, enlarged tiles...);
    ``t_client`` is the client's elapsed seconds so far (for ``timings["wall"]``).
    The pyramid was built by :func:`build_pyramid_blocks` tasks. With ``qc``, the QC
    picture (:func:`nucseg.wsi.qc.render_qc`, from the slide's overview read again here)
    comes back as PNG bytes under ``"qc"``: the client writes it where it was asked for,
    so the picture needs no path the workers share.
    """
    from .store import OutputStore, finishing

    t0 = time.perf_counter()
    store = OutputStore.open(job.output)
    with finishing(store.path):  # a full or read-only disk: one StoreError with the --resume hint
        (store.loc / "nucseg" / SPILL_DIR).remove_tree()
        table_path = store.finish(update, pyramid=False)
    png = _qc_png(job, store) if qc else None
    timings = dict(update.get("timings", {}))
    timings["finish"] = time.perf_counter() - t0
    timings["wall"] = t_client + timings["finish"]
    with finishing(store.path):
        store.update_meta({"timings": timings})
    return {
        "nuclei": int(store.meta["nuclei"]),
        "approximate": int(store.meta["approximate_nuclei"]),
        "table": str(table_path),
        "timings": timings,
        "qc": png,
    }


def _qc_png(job: SlideJob, store: Any) -> bytes:
    """The QC picture of a finished store, as PNG (the overview is the one tissue was detected on)."""
    from .qc import qc_png
    from .reader import open_slide

    reader = open_slide(job.slide, mpp=job.mpp, reader=job.reader)
    try:
        overview = reader.thumbnail(OVERVIEW_SIDE)
    finally:
        reader.close()
    return qc_png(store, overview, job.geom)


def probe_worker(out_dirs: Sequence[str], slides: Sequence[str]) -> str | None:
    """Run on each worker before any work: can it write the outputs and read the slides?

    Creates each output folder (a local one; an object store has none), writes, reads
    back and deletes a small file there
    (:func:`~nucseg.wsi.location.probe_write`), and checks that every slide is a
    readable file. Returns None, or one line saying what fails.
    """
    import socket

    host = socket.gethostname()
    for d in out_dirs:
        problem = probe_write(Location.of(d), f"-{host}")
        if problem is not None:
            return f"host {host} {problem}"
    for s in slides:
        if not os.path.isfile(s):
            return f"host {host} cannot see the slide {s}"
        if not os.access(s, os.R_OK):
            return f"host {host} cannot read the slide {s}"
    return None


# -- client -------------------------------------------------------------------------------


@dataclass
class _Slide:
    """Client-side state of one slide."""

    index: int
    slide: Path
    output: Path | str
    qc: Path | None = None
    t0: float = 0.0
    phase: str = "prepare"
    plan: SlidePlan | None = None
    pending: dict[str, Any] = field(default_factory=dict)
    spill: set[int] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "infer": 0.0, "post": 0.0, "write": 0.0})
    enlarged: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"tile_tasks": 0, "spill_chunks": 0, "pyramid_tasks": 0})
    phase_s: dict[str, float] = field(default_factory=dict)
    t_phase: float = 0.0
    t_tiles: float = 0.0
    tiles_wall: float = 0.0
    level: int = 0
    n_levels: int = 1
    outcome: SlideOutcome | None = None


def connect(scheduler: Any = None, workers: int | None = None, threads_per_worker: int = 1) -> tuple[Any, Any]:
    """A Dask client: to ``scheduler`` (an address or a Client), or to a new LocalCluster.

    Returns
    -------
    client : distributed.Client
    cluster : LocalCluster or None
        The cluster started here (close it after the client), None otherwise.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("running on a Dask cluster needs dask.distributed: pip install 'nucseg[dask]'") from None

    if scheduler is not None and workers is not None:
        raise ValueError("scheduler and workers are exclusive: --workers starts a local cluster")
    if isinstance(scheduler, Client):
        return scheduler, None
    if scheduler is not None:
        if not isinstance(scheduler, str):
            raise TypeError(f"scheduler must be an address like 'tcp://host:8786' or a Client, got {scheduler!r}")
        try:
            return Client(scheduler, timeout="30s"), None
        except OSError as exc:
            raise DistributedError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    n = check_int("workers", usable_cpus() if workers is None else workers, 1)
    tpw = check_int("threads_per_worker", threads_per_worker, 1)
    cluster = LocalCluster(n_workers=n, threads_per_worker=tpw, processes=True, dashboard_address=":0")
    client = Client(cluster)
    import importlib.util

    note = "" if importlib.util.find_spec("bokeh") else " (pip install 'bokeh>=3.1' to see it)"
    logger.info("started a local Dask cluster: %d workers x %d threads; dashboard %s%s", n, tpw, cluster.dashboard_link,
                note)
    return client, cluster


def run_distributed(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    scheduler: Any = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    group: int = 2,
    model: Any = None,
    lam: float | None = None,
    threshold: float | None = None,
    mpp: float | None = None,
    level: int | None = None,
    tile: int = 2048,
    halo: int | None = None,
    max_halo: int | None = None,
    strict: bool = False,
    device: str | None = None,
    precision: str = "auto",
    backend: str = "torch",
    reader: str = "auto",
    batch_size: int = 1,
    tissue: str | os.PathLike[str] = "auto",
    resume: bool = False,
    overwrite: bool = False,
    save_prob: bool = False,
    save_image: bool = False,
    qc: str | os.PathLike[str] | None = None,
    connectivity: int | None = None,
    errors: str = "raise",
    wait_for_workers: float = 300.0,
    progress: bool = False,
    min_area: int | None = None,
    options: RunOptions | None = None,
) -> list[SlideOutcome]:
    """Segment slides on a Dask cluster; one OME-Zarr per slide, identical to :func:`segment_slide`'s.

    Parameters
    ----------
    slides : path-like or sequence of path-like
        Slides (any format the runner reads), on a path every worker reaches.
    out : path-like or URL
        Output folder (one ``NAME.zarr`` per slide, see :func:`output_path`), or for a
        single slide the ``.zarr`` store itself. Must be reachable by every worker: a
        shared filesystem, or a URL of an object store (``s3://bucket/results``).
    scheduler : str or distributed.Client, optional
        An existing cluster (``"tcp://host:8786"``). Without it a ``LocalCluster`` of
        ``workers`` processes is started (and closed at the end).
    workers : int, optional
        Worker processes of the local cluster (default: the CPUs this process may use).
    threads_per_worker : int
        Threads per local worker (tasks run side by side; ``predict`` is serialised
        per worker, so reads and watershed overlap inference).
    group : int
        Tasks compute ``group x group`` tiles (a chunk-aligned region).
    model, lam, threshold, mpp, level, tile, halo, max_halo, strict, device, precision, backend, reader, batch_size, tissue
        As for :func:`nucseg.wsi.segment_slide`.
    save_prob, save_image, connectivity, min_area
        As for :func:`nucseg.wsi.segment_slide`.
    qc : path-like, optional
        QC pictures (:mod:`nucseg.wsi.qc`), written by this process (the workers send
        them back as PNG bytes): for a single store ``out``, the PNG file (its folder
        must exist); otherwise a folder (created) receiving ``NAME_qc.png`` per slide
        (:func:`qc_path`). Slides skipped as complete get none.
    resume : bool
        Continue incomplete stores (tiles with a completion record are kept).
    overwrite : bool
        Redo every slide from scratch. Complete stores with the same settings are
        skipped unless ``overwrite``.
    errors : ``"raise"`` or ``"collect"``
        On a failing slide: cancel everything and raise, or record it in its
        :class:`SlideOutcome` and go on with the other slides.
    wait_for_workers : float
        Seconds to wait for a first worker on an existing cluster.
    progress : bool
        Show a tqdm bar (tiles, nuclei, tiles/s) driven from the client.
    options : RunOptions, optional
        The options shared with :func:`~nucseg.wsi.segment_slide` as one object; then
        leave their keywords unset.

    Returns
    -------
    list of SlideOutcome
        In the order of ``slides``.

    Raises
    ------
    DistributedError
        No worker, or a worker that cannot write the output folder or read a slide.
    ValueError, TypeError, FileNotFoundError
        Invalid arguments; with ``errors="raise"``, the first failing slide's error.

    Examples
    --------
    >>> outcomes = run_distributed(["a.svs", "b.svs"], "results", workers=2)  # doctest: +SKIP
    >>> print("\\n".join(outcome_lines(outcomes)))  # doctest: +SKIP
    a.svs: 51234 nuclei -> /data/results/a.zarr (2311 tiles computed, 0 resumed, 812.4s)
    b.svs: 48890 nuclei -> /data/results/b.zarr (2176 tiles computed, 0 resumed, 790.1s)
    slides: 2 done, 0 skipped, 0 failed
    """
    pairs = plan_outputs(slides, out)
    given = RunOptions(
        lam=lam, threshold=threshold, min_area=min_area, connectivity=connectivity, mpp=mpp, level=level, tile=tile,
        halo=halo, max_halo=max_halo, strict=strict, tissue=tissue, resume=resume, overwrite=overwrite,
        save_prob=save_prob, save_image=save_image, batch_size=batch_size, device=device, precision=precision,
        backend=backend, reader=reader,
    )
    options = pick_options(options, given).with_absolute_paths()  # workers may run elsewhere
    group = check_int("group", group, 1)
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    if isinstance(model, (str, os.PathLike)) and os.path.exists(model):
        model = os.path.abspath(model)
    if scheduler is None:  # a local cluster sees what this process sees; remote workers are probed
        for s, _ in pairs:
            if not s.is_file():
                raise FileNotFoundError(f"slide not found: {s}")
    qcs = _plan_qc(pairs, out, qc)

    client, cluster = connect(scheduler, workers, threads_per_worker)
    name = f"nucseg-model-{uuid.uuid4().hex[:12]}"
    try:
        try:
            client.wait_for_workers(1, timeout=wait_for_workers)
        except (TimeoutError, asyncio.TimeoutError):
            raise DistributedError(
                f"no Dask worker joined {client.scheduler.address} within {wait_for_workers:g} s"
            ) from None
        _probe(client, sorted({Location.of(o).parent.url for _, o in pairs}), [str(s) for s, _ in pairs])
        client.register_plugin(ModelPlugin(model, options.device, name, options.precision, options.backend), name=name)
        try:
            return _drive(client, pairs, qcs, options, group, name, errors=errors, progress=progress)
        finally:
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 - best effort: the run's result matters more
                logger.debug("could not unregister %s", name, exc_info=True)
    finally:
        if cluster is not None:
            client.close()
            cluster.close()


def _plan_qc(
    pairs: list[tuple[Path, Path | str]], out: str | os.PathLike[str], qc: str | os.PathLike[str] | None
) -> list[Path | None]:
    """The QC picture of each slide (None: none asked for), its folder checked or created."""
    from .qc import check_qc_path

    if qc is None:
        return [None] * len(pairs)
    if single_store(len(pairs), out):
        return [check_qc_path(qc)]
    Path(qc).mkdir(parents=True, exist_ok=True)
    return [qc_path(s, qc) for s, _ in pairs]


def _probe(client: Any, out_dirs: list[str], slides: list[str]) -> None:
    in_memory = [d for d in out_dirs if d.startswith("memory:")]
    if in_memory and set(client.run(os.getpid).values()) != {os.getpid()}:
        raise DistributedError(
            f"{in_memory[0]} lives in the memory of one process, and this cluster's workers are other "
            "processes: write to a shared filesystem or an object store, or use LocalCluster(processes=False)"
        )
    answers = client.run(probe_worker, out_dirs, slides, on_error="return")
    for addr, ans in sorted(answers.items()):
        if isinstance(ans, BaseException):
            raise DistributedError(f"worker {addr} failed the write probe: {ans}")
        if ans is not None:
            raise DistributedError(
                f"worker {addr}: {ans}; the slides must be on a filesystem and the output on a filesystem "
                "or an object store that every worker reaches"
            )


def running_keys(prefix: str, dask_worker: Any = None) -> list[str]:
    """Keys starting with ``prefix`` whose function still runs on this worker (cancelled or not)."""
    st = dask_worker.state
    return [str(ts.key) for ts in (*st.executing, *st.long_running) if str(ts.key).startswith(prefix)]


def _settle(client: Any, prefix: str, timeout: float = 120.0) -> None:
    """Wait until no task of this run executes anywhere.

    Cancelling a future does not stop a running task: before returning (and before a
    ``--resume`` can start), let those tasks finish so that no two writers share a chunk.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = client.run(running_keys, prefix, on_error="return")
        except Exception:  # noqa: BLE001 - the cluster is going away: nothing runs
            return
        if not any(isinstance(v, list) and v for v in left.values()):
            return
        time.sleep(0.2)
    logger.warning("tasks of this run still execute after %.0f s; do not resume until they end", timeout)


def _drive(
    client: Any,
    pairs: list[tuple[Path, Path | str]],
    qcs: list[Path | None],
    options: RunOptions,
    group: int,
    plugin: str,
    *,
    errors: str,
    progress: bool,
) -> list[SlideOutcome]:
    """The client's loop: submit each slide's phases as the previous one completes."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from .store import pyramid_shapes

    run = uuid.uuid4().hex[:8]
    states = [_Slide(i, s, o, qc=q) for i, ((s, o), q) in enumerate(zip(pairs, qcs))]
    owner: dict[str, tuple[_Slide, str]] = {}
    ac = as_completed()
    bar = tqdm(total=0, unit="tile", disable=not progress, dynamic_ncols=True, desc="tiles")
    nuclei = 0
    finished = 0
    stopped = False  # tasks were cancelled: wait for those still running before returning

    def submit(st: _Slide, kind: str, fn: Any, *args: Any, tag: Any = "") -> None:
        # Earlier slides first; within a slide, later phases first (a slide completes
        # before the next one takes the workers).
        prio = {"prepare": 0, "tiles": 1, "spill": 2, "pyramid": 3, "finish": 4}[kind]
        fut = client.submit(
            fn, *args, key=f"nucseg-{run}-{kind}-{st.index}-{tag}", priority=prio - 10 * st.index, pure=False
        )
        owner[fut.key] = (st, kind)
        if kind in ("tiles", "pyramid"):
            st.counts[f"{'tile' if kind == 'tiles' else kind}_tasks"] += 1
        st.pending[fut.key] = fut
        ac.add(fut)

    def enter(st: _Slide, phase: str) -> None:
        now = time.perf_counter()
        st.phase_s[f"{st.phase}_s"] = st.phase_s.get(f"{st.phase}_s", 0.0) + now - st.t_phase
        st.phase, st.t_phase = phase, now

    def next_phase(st: _Slide) -> None:
        plan = st.plan
        assert plan is not None and plan.job is not None
        job = plan.job
        if st.phase == "tiles":
            st.tiles_wall = time.perf_counter() - st.t_tiles
            enter(st, "spill")
            chunks = sorted(st.spill | set(plan.spill))
            st.counts["spill_chunks"] = len(chunks)
            # Each chunk in one task (no two writers); a few tasks per thread, not one per chunk.
            for j, part in enumerate(split_even(chunks, 2 * nthreads)):
                submit(st, "spill", merge_spill, job.output, part, job.geom.n_tiles, tag=j)
            if chunks:
                return
        if st.phase == "spill":
            enter(st, "pyramid")
            st.n_levels = len(pyramid_shapes(job.geom.size))
            st.level = 0
        if st.phase == "pyramid":
            st.level += 1
            if st.level < st.n_levels:
                blocks = pyramid_blocks(job.geom, st.level, job.group)
                for j, part in enumerate(split_even(blocks, 2 * nthreads)):
                    submit(st, "pyramid", build_pyramid_blocks, job.output, st.level, part, tag=f"{st.level}-{j}")
                    if job.save_image:
                        submit(st, "pyramid", build_pyramid_blocks, job.output, st.level, part, True,
                               tag=f"{st.level}-{j}-image")
                return
            enter(st, "finish")
            update = {"timings": dict(st.timings, tiles_wall=st.tiles_wall), "tiles_enlarged": st.enlarged}
            submit(st, "finish", finish_slide, job, update, time.perf_counter() - st.t0, st.qc is not None, tag="")

    def start_tiles(st: _Slide) -> None:
        plan = st.plan
        assert plan is not None and plan.job is not None
        job = plan.job
        groups: dict[int, list[int]] = {}
        for i in plan.todo:
            groups.setdefault(group_of(i, job.geom.grid, job.group), []).append(i)
        enter(st, "tiles")
        st.t_tiles = time.perf_counter()
        bar.total += len(plan.todo)
        bar.refresh()
        for g, tiles in sorted(groups.items()):
            submit(st, "tiles", run_tile_group, job, g, tiles, tag=g)
        if not groups:
            next_phase(st)

    waiting = list(reversed(states))
    nthreads = max(1, sum(client.nthreads().values()))

    def admit() -> None:
        # Start slides while the cluster has less than two tasks per thread queued: the
        # scheduler holds the tasks of a few slides at a time, never of the whole batch.
        while waiting and sum(len(st.pending) for st in states) < 2 * nthreads:
            st = waiting.pop()
            st.t0 = st.t_phase = time.perf_counter()
            submit(st, "prepare", prepare_slide, str(st.slide), str(st.output), options, group, plugin, tag="")

    def handle(fut: Any) -> None:
        nonlocal nuclei, finished, stopped, nthreads
        st, kind = owner.pop(fut.key)
        st.pending.pop(fut.key, None)
        if st.outcome is not None:  # the slide failed already
            return
        if fut.status != "finished":
            exc = fut.exception()
            if errors == "raise":
                raise exc
            st.outcome = SlideOutcome(st.slide, st.output, "failed", error=f"{type(exc).__name__}: {exc}")
            finished += 1
            logger.error("%s: %s", st.slide, st.outcome.error)
            client.cancel(list(st.pending.values()))
            st.pending.clear()
            stopped = True
            return
        res = fut.result()
        fut.release()
        if kind == "prepare":
            st.plan = res
            if res.skipped is not None:
                st.outcome = SlideOutcome(st.slide, st.output, "skipped", summary=res.skipped)
                finished += 1
                logger.info("%s: complete already, skipped", st.output)
            else:
                start_tiles(st)
        elif kind == "tiles":
            nuclei += sum(res["nuclei"].values())
            for k, v in res["timings"].items():
                st.timings[k] = st.timings.get(k, 0.0) + v
            st.enlarged += res["enlarged"]
            st.spill.update(res["spill"])
            bar.update(len(res["nuclei"]))
            bar.set_postfix(nuclei=nuclei, slides=f"{finished}/{len(states)}", refresh=False)
        elif kind == "finish":
            if st.qc is not None and res["qc"] is not None:
                st.qc.write_bytes(res["qc"])
            enter(st, "done")
            details = dict(st.counts, tiles_enlarged=st.enlarged, **{k: round(v, 3) for k, v in st.phase_s.items()})
            st.outcome = SlideOutcome(st.slide, st.output, "done", summary=_summary(st, res), details=details)
            finished += 1
            bar.set_postfix(nuclei=nuclei, slides=f"{finished}/{len(states)}", refresh=True)
        if kind not in ("prepare", "finish") and not st.pending and st.outcome is None:
            next_phase(st)
        if st.outcome is not None and waiting:
            nthreads = max(1, sum(client.nthreads().values()))  # workers may have come or gone

    try:
        admit()
        for fut in ac:
            handle(fut)
            admit()
    except BaseException:
        client.cancel([f for st in states for f in st.pending.values()])
        stopped = True
        raise
    finally:
        bar.close()
        if stopped:
            _settle(client, f"nucseg-{run}-")
    return [st.outcome for st in states if st.outcome is not None]


def _summary(st: _Slide, res: dict[str, Any]) -> SlideSummary:
    plan = st.plan
    assert plan is not None and plan.job is not None
    geom = plan.job.geom
    return SlideSummary(
        output=st.output,
        table=Location.of(res["table"]).public,
        nuclei=res["nuclei"],
        tiles=plan.tiles,
        tiles_tissue=plan.tiles_tissue,
        tiles_run=len(plan.todo),
        tiles_resumed=plan.tiles_resumed,
        tissue_fraction=plan.tissue_fraction,
        tissue_mm2=plan.tissue_mm2,
        level=geom.level,
        mpp=geom.mpp,
        size=geom.size,
        timings=res["timings"],
        tiles_enlarged=st.enlarged,
        approximate=res["approximate"],
        qc=st.qc if res["qc"] is not None else None,
    )


def outcome_lines(outcomes: Sequence[SlideOutcome]) -> list[str]:
    """One line per slide (for the CLI), then a total."""
    lines = []
    for o in outcomes:
        if o.status == "failed":
            lines.append(f"{o.slide.name}: FAILED: {o.error}")
        elif o.summary is not None:
            s = o.summary
            what = "complete already, skipped" if o.status == "skipped" else (
                f"{s.tiles_run} tiles computed, {s.tiles_resumed} resumed, {s.timings.get('wall', 0.0):.1f}s"
            )
            lines.append(f"{o.slide.name}: {s.nuclei} nuclei -> {o.output} ({what})")
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    lines.append(f"slides: {done} done, {skipped} skipped, {failed} failed")
    return lines
