"""``segment_slide``: reader threads -> batched inference -> watershed pool -> writer.

Stages and queues
-----------------
* Reader threads read each tile's read box (OpenSlide and zlib release the GIL),
  resample it to the processing resolution and plan which of its pixels the network
  must see (:func:`plan_tile`: glass beyond the tissue's margin is skipped); a bounded
  queue holds at most ``2 * batch_size`` tiles.
* One inference thread groups tiles of the same shape into batches and calls
  ``model.predict``.
* A thread pool runs :func:`nucseg.watershed_dynamics` (which releases the GIL), the
  ownership step and the morphometrics of the owned nuclei (measured on the tile's RGB
  while it is in memory); a semaphore bounds the tiles in flight between inference and
  writing.
* The calling thread writes finished tiles to the store and drives the progress bar.

Memory is bounded by the queue sizes and the tile size, never by the slide size.
The result does not depend on the order in which tiles finish (every nucleus is owned
by exactly one tile, and owned pixels never overlap).

The Dask runner (:mod:`nucseg.wsi.distributed`) shares the two steps that decide the
result: :func:`prepare_output` (geometry, tissue, settings, the store) and
:func:`compute_tile` (watershed, ownership, halo enlargement, table rows).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nucseg._cpu import usable_cpus
from nucseg._recipe import PostprocessRecipe, recipe_of

from .location import Location
from .options import RunOptions, check_int, pick_options

logger = logging.getLogger(__name__)

#: Default pixels of trusted probability beyond the core for nuclei (and clusters of
#: touching nuclei) that cross the core's border: 24 um at 0.25 um/px.
DEFAULT_OBJECT_MARGIN = 96
#: Largest halo a tile is recomputed with when a cluster does not fit its margin.
DEFAULT_MAX_HALO = 512
#: Longest side of the slide overview tissue is detected on (also the QC picture's).
OVERVIEW_SIDE = 2048
_STOP = object()


@dataclass
class SlideSummary:
    """What :func:`segment_slide` did.

    Attributes
    ----------
    output : Path or str
        The OME-Zarr store (its URL for a store at a URL).
    table : Path or str
        The per-nucleus Parquet table (likewise).
    nuclei : int
        Nuclei in the output (all tiles, including those of an earlier interrupted run).
    tiles : int
        Tiles in the grid.
    tiles_tissue : int
        Tiles whose core lies within the object margin of tissue (the others are skipped).
    tiles_run : int
        Tiles computed by this call.
    tiles_resumed : int
        Tiles found finished by an earlier run and not recomputed.
    tissue_fraction : float
        Fraction of the slide overview detected as tissue (1.0 with ``tissue="none"``).
    tissue_mm2 : float
        Tissue area in square millimetres.
    level : int
        Slide level read.
    mpp : tuple of float
        ``(y, x)`` microns per pixel of the labels.
    size : tuple of int
        ``(height, width)`` of the labels.
    timings : dict
        Seconds spent per stage (``read``, ``infer``, ``post``, ``write``, summed over
        threads) and ``wall`` (elapsed) and ``finish`` (pyramid, table).
    qc : Path or None
        The QC picture, when asked for.
    tiles_enlarged : int
        Tiles recomputed with a larger halo by this call.
    approximate : int
        Nuclei kept as approximate (clusters larger than the largest halo).
    """

    output: Path | str
    table: Path | str
    nuclei: int
    tiles: int
    tiles_tissue: int
    tiles_run: int
    tiles_resumed: int
    tissue_fraction: float
    tissue_mm2: float
    level: int
    mpp: tuple[float, float]
    size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    qc: Path | None = None
    tiles_enlarged: int = 0
    approximate: int = 0


#: The parts of the ``post`` stage timed separately (keys ``post.<step>`` of the timings).
POST_STEPS = ("watershed", "own", "measure", "rows")
#: The parts of the ``read`` and ``write`` stages timed separately.
READ_STEPS = ("decode",)
WRITE_STEPS = ("labels", "table")


class _Steps:
    """Sub-stage seconds of one tile, handed to a ``clock`` at once (one lock, not one per step)."""

    def __init__(self, clock: Callable[[str, float], None] | None) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}

    def add(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    def flush(self) -> None:
        if self.clock is not None:
            for step, seconds in self.seconds.items():
                self.clock(step, seconds)
        self.seconds.clear()


class _Timer:
    """Seconds per stage, summed over threads; ``stage.step`` keys time the parts of a stage."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: dict[str, float] = {"read": 0.0, "infer": 0.0, "post": 0.0, "write": 0.0}
        self.enlarged = 0  # tiles recomputed with a larger halo

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.total[stage] = self.total.get(stage, 0.0) + seconds


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class TileParams:
    """How every tile of a run is post-processed (small: the Dask runner sends it with each task).

    Attributes
    ----------
    lam, threshold : float
        Watershed dynamics and foreground threshold.
    max_halo, stride : int
        Largest halo a tile is enlarged to, and the step halos are rounded up to.
    connectivity : int
        Watershed connectivity.
    strict : bool
        Raise :class:`~nucseg.wsi.tiling.ObjectTooLargeError` at ``max_halo`` instead of
        keeping the nuclei of such a cluster as approximate.
    save_prob : bool
        Keep the core's probability as uint8 for the store.
    min_area : int
        Owned nuclei with fewer pixels are dropped.

    ``lam``, ``threshold``, ``connectivity`` and ``min_area`` are the fields of
    :attr:`recipe`, the one post-processing recipe (validated here).
    """

    lam: float
    threshold: float
    max_halo: int
    stride: int
    connectivity: int = 1
    strict: bool = False
    save_prob: bool = False
    min_area: int = 0

    def __post_init__(self) -> None:
        self.recipe  # noqa: B018 - validates the recipe's fields now, not in a worker

    @property
    def recipe(self) -> PostprocessRecipe:
        """The post-processing recipe of every tile (watershed lines always on)."""
        return PostprocessRecipe.of_fields(self)

    @classmethod
    def of(cls, recipe: PostprocessRecipe, **tiling: Any) -> TileParams:
        """The parameters of a run with this recipe (``tiling``: ``max_halo``, ``stride``, ...)."""
        if not recipe.watershed_line:
            raise ValueError("the slide runner needs watershed lines (recipe.watershed_line=True)")
        return cls(
            lam=recipe.lam, threshold=recipe.threshold, connectivity=recipe.connectivity, min_area=recipe.min_area,
            **tiling,
        )


@dataclass
class SlideSetup:
    """What a run of one slide decided before its first tile (see :func:`prepare_output`).

    Both runners (:func:`segment_slide` and :func:`nucseg.wsi.distributed.run_distributed`)
    start from it, so they compute the same tiles into the same store.

    Attributes
    ----------
    output : Path or str
        The store (its URL for a store at a URL).
    geom : Geometry
        The processing geometry (:func:`nucseg.wsi.tiling.plan_geometry`).
    tiles : list of Tile
        The whole tile grid, by index.
    scheme : IdScheme
        The label id scheme of the grid.
    keep : list of int
        Indices of the tiles that overlap tissue, in raster order.
    done : set of int
        Tiles finished by an earlier run (empty for a new store).
    tissue_fraction, tissue_mm2 : float
        Fraction of the overview detected as tissue, and its area.
    settings : dict
        What a later ``--resume`` must match (stored in the run metadata).
    store : OutputStore or None
        The created or reopened store; None only when ``skipped``.
    overview : Overview
        The slide overview tissue was detected on.
    tissue_map : TissueMap or None
        Where nuclei are segmented (:class:`~nucseg.wsi.tissue.TissueMap`); None with
        ``tissue="none"`` (everywhere).
    info : dict
        The model's description (:func:`nucseg.wsi.predictors.describe`).
    params : TileParams
        How each tile is post-processed: the recipe (the model's, with the ``lam``,
        ``threshold``, ``min_area`` and ``connectivity`` given), ``max_halo`` and
        ``stride`` (rounded to the model's stride), ``strict``, ``save_prob``.
    save_image : bool
        Also store the RGB.
    skipped : SlideSummary or None
        With ``skip_complete``: the summary of a complete store, left untouched.
    """

    output: Path | str
    geom: Any
    tiles: list[Any]
    scheme: Any
    keep: list[int]
    done: set[int]
    tissue_fraction: float
    tissue_mm2: float
    settings: dict[str, Any]
    store: Any
    overview: Any
    tissue_map: Any
    info: dict[str, Any]
    params: TileParams
    save_image: bool
    skipped: SlideSummary | None = None

    @property
    def todo(self) -> list[int]:
        """Indices of the tiles still to compute, in raster order."""
        return [i for i in self.keep if i not in self.done]

    @property
    def resumed(self) -> int:
        """Tiles with tissue found finished by an earlier run."""
        return len([i for i in self.keep if i in self.done])


def prepare_output(
    reader: Any,
    pred: Any,
    output: str | os.PathLike[str] | Location,
    options: RunOptions | None = None,
    *,
    skip_complete: bool = False,
    started: str | None = None,
) -> SlideSetup:
    """Plan a slide's run and create (or reopen) its store.

    Plans the geometry and the tile grid, detects tissue on an overview, and creates
    the store, or with ``resume`` reopens it after checking its settings.

    Parameters
    ----------
    reader : SlideReader
        The open slide (:func:`nucseg.wsi.reader.open_slide`); the caller closes it.
    pred : predictor
        The model (:func:`nucseg.wsi.predictors.resolve_model`).
    output : path-like, URL or Location
        The ``.zarr`` store (a local path or a URL such as ``s3://bucket/out.zarr``).
    options : RunOptions, optional
        The run's options (default: ``RunOptions()``); this step uses the recipe's
        overrides (``lam``, ``threshold``, ``min_area``, ``connectivity``), ``level``,
        ``tile``, ``halo``, ``max_halo``, ``strict``, ``tissue``, ``save_prob``,
        ``save_image``, and ``resume`` / ``overwrite``: reopen an existing store, or
        replace it (with neither an existing store is refused).
    skip_complete : bool
        Leave a complete store with the same settings untouched and return its summary
        in ``skipped`` (``store`` is then None). A complete store made with other
        settings raises :class:`~nucseg.wsi.store.StoreError`.
    started : str, optional
        ISO start time for the run metadata (default: now).

    Returns
    -------
    SlideSetup

    Raises
    ------
    ValueError
        :class:`~nucseg.wsi.reader.SlideError` (no microns per pixel),
        :class:`~nucseg.wsi.store.StoreError` (existing, mismatched or unwritable
        store), an invalid recipe (a non-finite ``lam`` or ``threshold``, a negative
        ``min_area``).
    TypeError
        An invalid ``tissue``.
    """
    from .predictors import describe
    from .store import OutputStore, StoreError, is_unfinished_creation
    from .tiling import IdScheme, make_tiles, plan_geometry

    o = RunOptions() if options is None else options
    if started is None:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mpp_x, mpp_y = reader.require_mpp()
    reader.check_extent()  # before the tile grid and the overview are sized by the claimed size
    info = describe(pred)
    recipe = recipe_of(pred.config).replace(lam=o.lam, threshold=o.threshold, min_area=o.min_area, connectivity=o.connectivity)
    if not math.isfinite(recipe.lam):
        raise ValueError(f"lam must be a finite number >= 0, got {recipe.lam}")
    stride, context = info["stride"], info["context"]
    halo = _round_up(context + DEFAULT_OBJECT_MARGIN, stride) if o.halo is None else o.halo
    max_halo = _round_up(max(halo, DEFAULT_MAX_HALO if o.max_halo is None else o.max_halo), stride)
    geom = plan_geometry(
        [(lv.width, lv.height) for lv in reader.levels],
        (mpp_x, mpp_y),
        info["mpp"],
        tile=o.tile,
        halo=halo,
        context=context,
        level=o.level,
        stride=stride,
    )
    tiles = make_tiles(geom)
    overview = reader.thumbnail(OVERVIEW_SIDE)
    keep, fraction, tissue_mode, tissue_map = _select_tiles(o.tissue, overview, geom, tiles)
    lv0 = reader.levels[0]
    fingerprint = reader.fingerprint()
    settings = {
        "slide_fingerprint": fingerprint,
        "model_sha256": info["sha256"],
        "model_name": info["name"],
        # The whole recipe (lam, threshold, min_area, connectivity, watershed_line): a resume must match it.
        **recipe.to_dict(),
        "level": geom.level,
        "size": list(geom.size),
        "mpp": list(geom.mpp),
        "tile": geom.tile,
        "halo": geom.halo,
        "context": geom.context,
        "tissue": tissue_mode,
        # Beyond this many px of tissue the probability is 0 and the network does not run.
        "tissue_margin": None if tissue_map is None else tissue_map.margin,
        "save_prob": o.save_prob,
        "save_image": o.save_image,
    }
    loc = Location.of(output)
    setup = SlideSetup(
        output=loc.public,
        geom=geom,
        tiles=tiles,
        scheme=IdScheme(geom.n_tiles),
        keep=keep,
        done=set(),
        tissue_fraction=fraction,
        tissue_mm2=fraction * lv0.width * lv0.height * mpp_x * mpp_y / 1e6,
        settings=settings,
        store=None,
        overview=overview,
        tissue_map=tissue_map,
        info=info,
        params=TileParams.of(recipe, max_halo=max_halo, stride=stride, strict=o.strict, save_prob=o.save_prob),
        save_image=o.save_image,
    )
    # A store whose creation was killed holds no finished tile: resuming it means creating it.
    unborn = o.resume and is_unfinished_creation(loc)
    if loc.exists() and not o.overwrite and not unborn:
        if skip_complete:
            setup.skipped = _complete_summary(loc, settings, len(tiles))
            if setup.skipped is not None:
                return setup
        if not o.resume:
            state = "exists but is not complete" if skip_complete else "already exists"
            raise StoreError(f"output {loc} {state}; pass --resume to continue it or --overwrite to replace it")
        setup.store = OutputStore.resume(loc, settings=settings)
    else:
        meta = _run_meta(reader, info, geom, started, fingerprint)
        meta.update(tissue_fraction=fraction, tissue_mm2=setup.tissue_mm2, tiles=len(tiles), tiles_tissue=len(keep))
        ov_ds, ov_lds = overview.downsample, overview.level_downsample
        setup.store = OutputStore.create(
            loc,
            geom=geom,
            label_dtype=setup.scheme.dtype,
            settings=settings,
            meta=meta,
            overview=overview.rgb,
            overview_mpp=(ov_ds[0] * mpp_y, ov_ds[1] * mpp_x),
            overview_translation=(0.5 * mpp_y * (ov_lds[0] - 1), 0.5 * mpp_x * (ov_lds[1] - 1)),
            overwrite=o.overwrite or unborn,
        )
    setup.done = setup.store.done_tiles()
    return setup


def _complete_summary(out: Location, settings: dict[str, Any], n_tiles: int) -> SlideSummary | None:
    """The summary of a complete store with these settings; None when it is not complete.

    Raises :class:`StoreError` when the store is complete but was made with other settings.
    """
    from .store import StoreError, read_meta, settings_diff

    meta = read_meta(out)
    if meta is None or meta.get("status") != "complete":
        return None
    diff = settings_diff(dict(meta.get("settings", {})), settings)
    if diff:
        raise StoreError(
            f"{out} is complete but was made with other settings ({', '.join(diff[:4])}); use --overwrite to redo it"
        )
    return SlideSummary(
        output=out.public,
        table=(out / "nucseg" / "nuclei.parquet").public,
        nuclei=int(meta.get("nuclei", 0)),
        tiles=int(meta.get("tiles", n_tiles)),
        tiles_tissue=int(meta.get("tiles_tissue", 0)),
        tiles_run=0,
        tiles_resumed=int(meta.get("tiles_done", 0)),
        tissue_fraction=float(meta.get("tissue_fraction", 0.0)),
        tissue_mm2=float(meta.get("tissue_mm2", 0.0)),
        level=int(settings["level"]),
        mpp=(float(settings["mpp"][0]), float(settings["mpp"][1])),
        size=(int(settings["size"][0]), int(settings["size"][1])),
        timings=dict(meta.get("timings", {})),
        tiles_enlarged=int(meta.get("tiles_enlarged", 0)),
        approximate=int(meta.get("approximate_nuclei", 0)),
    )


def segment_slide(
    slide: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
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
    threads: int | None = None,
    tissue: str | os.PathLike[str] = "auto",
    resume: bool = False,
    overwrite: bool = False,
    save_prob: bool = False,
    save_image: bool = False,
    qc: str | os.PathLike[str] | None = None,
    connectivity: int | None = None,
    progress: bool = False,
    min_area: int | None = None,
    options: RunOptions | None = None,
) -> SlideSummary:
    """Segment every nucleus of a whole-slide image into an OME-Zarr store.

    Parameters
    ----------
    slide : path-like
        Any slide OpenSlide reads, or a (pyramidal, OME-) TIFF.
    output : path-like or URL
        The ``.zarr`` store to write (never derived from the slide's metadata): a local
        path, or a URL of any filesystem fsspec knows (``s3://bucket/out.zarr``,
        ``gs://...``, ``memory://...``; credentials as the fsspec backend reads them,
        e.g. the usual AWS environment variables for s3fs).
    model : None, str, path-like or predictor
        See :func:`nucseg.wsi.predictors.resolve_model`; None is the bundled network.
    lam, threshold : float, optional
        Watershed dynamics and foreground threshold; default to the model's.
    min_area : int, optional
        Nuclei with fewer pixels (at the processing resolution) are dropped; default
        the model's (``config.min_area``, 60 for the bundled network), as
        :func:`nucseg.segment` does. Together with ``lam``, ``threshold`` and
        ``connectivity`` it forms the run's :class:`nucseg.PostprocessRecipe`, recorded
        in the store: a resume with another recipe is refused.
    mpp : float, optional
        Level-0 microns per pixel, overriding or supplying the slide's.
    level : int, optional
        Pyramid level to read (default: the one closest to the model's resolution).
    tile : int
        Core tile size in processing pixels (a multiple of the model stride). The
        default 2048 with ``batch_size=1`` costs the bundled network 1.3-1.5x less CPU
        per mm^2 than 1024 (the 144 px halo is a smaller share: 2336^2 computed per
        2048^2 kept, against 1312^2 per 1024^2), for ~1.3-1.9x the peak RSS (4.1-4.6
        GB against 2.2-3.4 GB; see docs/SCALING.md).
    halo : int, optional
        Pixels read around each core; default: model context + 96 (rounded up to the
        model stride). Nuclei (and clusters of touching nuclei) may reach
        ``halo - context`` pixels beyond a core.
    max_halo : int, optional
        A tile whose foreground object reaches beyond its margin is recomputed with a
        doubled halo, up to this many pixels (default: 512 or ``halo`` if larger).
    strict : bool
        At ``max_halo``, raise :class:`~nucseg.wsi.tiling.ObjectTooLargeError` instead
        of keeping the nuclei of such a cluster as *approximate* (flagged in the ids,
        the table and the run metadata; see :mod:`nucseg.wsi.tiling`).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"auto"`` for the network.
    precision : {"auto", "float32", "bfloat16"}
        The network's arithmetic (:class:`nucseg.inference.NucleusModel`): ``"auto"``
        is float16 on CUDA and float32 on the CPU; ``"bfloat16"`` is about 2.5x faster
        than float32 on CPUs with AMX, with object F1 >= 0.996 against float32.
    backend : {"torch", "auto", "onnx", "openvino"}
        What runs the network (:mod:`nucseg.backends`): ``"onnx"`` is ONNX Runtime and
        ``"openvino"`` OpenVINO on the CPU, with torch's thread count; ``"auto"`` picks
        ONNX Runtime on the CPU in float32 when installed, else OpenVINO when installed.
    reader : {"auto", "openslide", "tifffile"}
        What decodes the slide (:func:`nucseg.wsi.reader.open_slide`): ``"auto"`` is
        tifffile for Aperio SVS and TIFF, where its pixels are OpenSlide's, OpenSlide
        for the other formats. Not recorded as a setting: a resume may use another.
    batch_size : int
        Tiles per inference call (1: a 2048 px tile already fills a CPU or a GPU;
        2 doubles the network's memory for no measured gain on the CPU).
    threads : int, optional
        Post-processing threads (default: the CPUs this process may use, see
        :func:`nucseg._cpu.usable_cpus`); readers use half as many.
    tissue : ``"auto"``, ``"none"`` or path-like
        Tissue detection on an overview, no detection, or a mask image (non-zero =
        tissue) covering the slide. With a mask, nuclei are segmented within the
        object margin (``halo - context``, 96 px by default) of tissue and the
        probability is 0 beyond (:class:`~nucseg.wsi.tissue.TissueMap`): tiles without
        such pixels are skipped and glass inside a tile is not fed to the network
        (:func:`tissue_windows`), and the result does not depend on the tile size.
    resume, overwrite : bool
        Continue an interrupted store (also one left by
        :func:`~nucseg.wsi.distributed.run_distributed`: its spill files are merged),
        or replace an existing one. Without either an existing output is refused.
    save_prob : bool
        Also store the probability map as uint8.
    save_image : bool
        Store the slide's RGB at the processing resolution (with a pyramid) as the root
        image instead of the slide overview (a 2x2 mean pyramid, as many levels as the
        labels). Either way the store is a valid NGFF 0.5 image with its labels.
    qc : path-like, optional
        Write a QC picture (PNG) there (a local file; its folder must exist).
    connectivity : {1, 2}, optional
        Watershed connectivity; default the model's (``config.recipe.connectivity``).
    progress : bool
        Show a tqdm progress bar.
    options : RunOptions, optional
        All the options above except ``model``, ``threads``, ``qc`` and ``progress``, as
        one validated object (what the CLI passes); then leave those keywords unset.

    Returns
    -------
    SlideSummary

    Raises
    ------
    FileNotFoundError
        Missing slide, model or mask.
    ValueError
        Invalid arguments; :class:`~nucseg.wsi.reader.SlideError` (unreadable slide,
        missing resolution), :class:`~nucseg.wsi.store.StoreError` (existing or
        unwritable output), :class:`~nucseg.wsi.tiling.ObjectTooLargeError`.
    """
    from .predictors import resolve_model
    from .qc import check_qc_path
    from .reader import open_slide
    from .store import StoreError, apply_pending_spill, finishing

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    given = RunOptions(
        lam=lam, threshold=threshold, min_area=min_area, connectivity=connectivity, mpp=mpp, level=level, tile=tile,
        halo=halo, max_halo=max_halo, strict=strict, tissue=tissue, resume=resume, overwrite=overwrite,
        save_prob=save_prob, save_image=save_image, batch_size=batch_size, device=device, precision=precision,
        backend=backend, reader=reader,
    )
    o = pick_options(options, given)
    threads = check_int("threads", usable_cpus() if threads is None else threads, 1)
    out_loc = Location.of(output)  # an unknown protocol or a missing fsspec backend: fail here
    if out_loc.exists() and not (o.resume or o.overwrite):
        raise StoreError(f"output {out_loc} already exists; pass --resume to continue it or --overwrite to replace it")
    if qc is not None:
        check_qc_path(qc)

    reader = open_slide(slide, mpp=o.mpp, reader=o.reader)
    try:
        reader.require_mpp()  # before loading the model: the cheaper error first
        pred = resolve_model(model, device=o.device, precision=o.precision, backend=o.backend)
        setup = prepare_output(reader, pred, out_loc, o, started=started)
        store = setup.store
        todo = [setup.tiles[i] for i in setup.todo]
        timer = _Timer()
        t_tiles = time.perf_counter()
        decoded = getattr(reader, "decode_seconds", 0.0)
        _run_tiles(reader, pred, setup, todo, batch_size=o.batch_size, threads=threads, timer=timer, progress=progress)
        tiles_wall = time.perf_counter() - t_tiles
        timer.add("read.decode", getattr(reader, "decode_seconds", 0.0) - decoded)
        t_finish = time.perf_counter()
        timings = dict(timer.total, tiles_wall=tiles_wall)
        with finishing(out_loc):  # a full or read-only disk here: one StoreError with the hint
            if o.resume:  # a run interrupted on Dask may have left nuclei for other chunks
                apply_pending_spill(out_loc)
            table_path = store.finish({"tiles_enlarged": timer.enlarged, "timings": timings})
        qc_path = None
        if qc is not None:
            from .qc import write_qc

            qc_path = write_qc(qc, store, setup.overview, setup.geom)
        timings["finish"] = time.perf_counter() - t_finish
        timings["wall"] = time.perf_counter() - t_start
        with finishing(out_loc):
            store.update_meta({"timings": timings})
    finally:
        reader.close()
    return SlideSummary(
        output=out_loc.public,
        table=table_path,
        nuclei=int(store.meta["nuclei"]),
        tiles=len(setup.tiles),
        tiles_tissue=len(setup.keep),
        tiles_run=len(todo),
        tiles_resumed=setup.resumed,
        tissue_fraction=setup.tissue_fraction,
        tissue_mm2=setup.tissue_mm2,
        level=setup.geom.level,
        mpp=setup.geom.mpp,
        size=setup.geom.size,
        timings=timings,
        qc=qc_path,
        tiles_enlarged=timer.enlarged,
        approximate=int(store.meta["approximate_nuclei"]),
    )


def _run_meta(reader: Any, info: dict[str, Any], geom: Any, started: str, fingerprint: str) -> dict[str, Any]:
    import nucseg

    return {
        "nucseg_version": getattr(nucseg, "__version__", "unknown"),
        "model": info,
        "slide": {
            "path": str(Path(reader.path).resolve()),
            "backend": reader.backend,
            "vendor": reader.vendor,
            "fingerprint": fingerprint,
            "levels": [[lv.width, lv.height] for lv in reader.levels],
            "mpp": list(reader.mpp),
        },
        "processing": {
            "level": geom.level,
            "scale": list(geom.scale),
            "mpp": list(geom.mpp),
            "size": list(geom.size),
            "tile": geom.tile,
            "halo": geom.halo,
            "context": geom.context,
            "object_margin": geom.margin,
        },
        "label_scheme": "id = (tile_index << object_bits) + rank; see nucseg.wsi.tiling",
        "start_time": started,
    }


def _select_tiles(tissue: Any, overview: Any, geom: Any, tiles: list[Any]) -> tuple[list[int], float, str, Any]:
    """Indices of tiles to compute, tissue fraction, a description of the mode, and the
    :class:`~nucseg.wsi.tissue.TissueMap` (None without a tissue mask)."""
    from .tissue import TissueMap, detect_tissue, load_mask

    if isinstance(tissue, str) and tissue == "none":
        return [t.index for t in tiles], 1.0, "none", None
    if isinstance(tissue, str) and tissue == "auto":
        mask, mode = detect_tissue(overview.rgb), "auto"
    elif isinstance(tissue, (str, os.PathLike)):
        mask = load_mask(tissue, overview.rgb.shape[:2])
        mode = f"mask:{Path(tissue).resolve()}"
    else:
        raise TypeError(f"tissue must be 'auto', 'none' or a mask path, got {tissue!r}")
    # Nuclei are segmented within the object margin of tissue (0 beyond): a tile is needed
    # when its core holds such a pixel, since a nucleus is owned by the tile whose core holds
    # its first pixel. So the result does not depend on the tile grid.
    tmap = TissueMap.grow(mask, overview.downsample, geom, geom.margin)
    hit = tmap.any_inside(geom, np.array([t.core for t in tiles], dtype=np.int64))
    return [t.index for t, h in zip(tiles, hit) if h], float(mask.mean()), mode, tmap


def read_tile(reader: Any, geom: Any, tile: Any) -> np.ndarray:
    """The RGB of ``tile``'s read box at the processing resolution.

    Raises
    ------
    SlideError
        The slide cannot be read there; the message names the tile and its box.
    """
    from .reader import SlideError
    from .tiling import read_region

    try:
        return read_region(reader, geom, tile.read)
    except SlideError as exc:
        y0, y1, x0, x1 = tile.read
        raise SlideError(f"{exc} (tile {tile.index}, processing box y={y0}:{y1} x={x0}:{x1})") from exc


def postprocess_tile(
    prob_read: np.ndarray,
    tile: Any,
    geom: Any,
    scheme: Any,
    recipe: PostprocessRecipe,
    *,
    save_prob: bool = False,
    approximate: bool = False,
    clock: Callable[[str, float], None] | None = None,
) -> Any:
    """The recipe on the tile's valid box: watershed, ownership, then the size filter.

    The size filter runs inside :func:`~nucseg.wsi.tiling.own_objects`, after the check
    that the owned nuclei are exact (see :mod:`nucseg.wsi.tiling`): filtering the whole
    valid box first could hide a cut fragment that needs a larger halo. ``clock``, when
    given, receives ``("post.watershed", s)`` and ``("post.own", s)``.
    """
    from .tiling import crop_box, own_objects

    t0 = time.perf_counter()
    prob_valid = np.ascontiguousarray(prob_read[crop_box(tile.valid, tile.read)], dtype=np.float32)
    labels = recipe.watershed(prob_valid)
    t1 = time.perf_counter()
    try:
        result = own_objects(
            labels, prob_valid, recipe.threshold, tile, geom, scheme, connectivity=recipe.connectivity,
            approximate=approximate, min_area=recipe.min_area,
        )
    finally:  # also a try that needs a larger halo: it cost the time
        if clock is not None:
            clock("post.watershed", t1 - t0)
            clock("post.own", time.perf_counter() - t1)
    if save_prob:
        core = prob_read[crop_box(tile.core, tile.read)]
        result.prob_core = np.clip(np.rint(core * 255.0), 0, 255).astype(np.uint8)
    return result


def measure_tile(result: Any, tile: Any, geom: Any, rgb_read: np.ndarray) -> dict[str, np.ndarray] | None:
    """Morphometrics of the nuclei ``result`` owns (:func:`nucseg.morphometrics.measure_nuclei`).

    Parameters
    ----------
    result : TileResult
        The owned nuclei of ``tile``.
    tile : Tile
        The tile (with the halo it was computed with).
    geom : Geometry
    rgb_read : ndarray of uint8, shape of ``tile.read`` plus (3,)
        The RGB the tile's probability was predicted from.

    Returns
    -------
    dict or None
        One row per owned nucleus (sorted by id), None when the tile owns none.
    """
    from nucseg.morphometrics import measure_compact

    from .tiling import crop_box

    if result.box is None:
        return None
    shape = (tile.read[1] - tile.read[0], tile.read[3] - tile.read[2], 3)
    if rgb_read.shape != shape:
        raise ValueError(f"rgb of tile {tile.index} must have its read box's shape {shape}, got {rgb_read.shape}")
    y0, _, x0, _ = result.box
    # The owned labels hold each exact nucleus whole (0 on other tiles' pixels). Their ids
    # ascend in rank order, so a nucleus's number 1..n is its id's position: no sort.
    labels = result.labels
    compact = np.zeros(labels.shape, np.int32)
    fg = labels != 0
    compact[fg] = np.searchsorted(result.ids, labels[fg]) + 1
    rgb = rgb_read[crop_box(result.box, tile.read)]
    return {"label": result.ids, **measure_compact(compact, result.ids.size, rgb, None, geom.mpp, (y0, x0))}


@dataclass
class TileOutput:
    """One computed tile, ready for :meth:`~nucseg.wsi.store.OutputStore.write_tile`.

    Attributes
    ----------
    result : TileResult
        The owned nuclei (:func:`nucseg.wsi.tiling.own_objects`).
    table : pyarrow.Table
        Their rows of the nucleus table.
    record : dict
        The tile's completion record (``tile``, ``nuclei``, ``approximate``).
    enlarged : int
        Times the tile was recomputed with a doubled halo.
    """

    result: Any
    table: Any
    record: dict[str, int]
    enlarged: int = 0


def compute_tile(
    tile: Any,
    prob: np.ndarray,
    geom: Any,
    scheme: Any,
    params: TileParams,
    *,
    recompute: Callable[[Any], Any],
    rgb: np.ndarray | None = None,
    rgb_core: np.ndarray | None = None,
    clock: Callable[[str, float], None] | None = None,
) -> TileOutput:
    """Post-process one tile: watershed, ownership, halo enlargement, morphometrics, table rows.

    While a foreground cluster reaches beyond the tile's margin
    (:class:`~nucseg.wsi.tiling.ObjectTooLargeError`), the tile is recomputed with a
    doubled halo (rounded up to ``params.stride``), up to ``params.max_halo``; there
    the nuclei of such a cluster are kept as approximate, or with ``params.strict`` the
    error is raised. Both runners call this, so they own, number and tabulate nuclei
    alike.

    Parameters
    ----------
    tile : Tile
        The tile, with the runner's default halo.
    prob : ndarray of float32, shape of ``tile.read``
        The model's probability on the tile's read box.
    geom : Geometry
    scheme : IdScheme
    params : TileParams
        Watershed parameters, halo limits, ``strict`` and ``save_prob``.
    recompute : callable
        ``recompute(enlarged_tile) -> (rgb, prob)``: reads and predicts a larger read
        box. Without ``rgb`` it may return ``prob`` alone.
    rgb : ndarray of uint8, shape of ``tile.read`` plus (3,), optional
        The RGB ``prob`` was predicted from: the owned nuclei are measured on it
        (:func:`measure_tile`) into the table's morphometric columns, NaN without it.
    rgb_core : ndarray of uint8, optional
        The core's RGB, for a store with the image.
    clock : callable, optional
        ``clock("post", seconds)`` receives the time spent here (not in ``recompute``),
        and ``clock("post.<step>", seconds)`` its parts (:data:`POST_STEPS`).

    Returns
    -------
    TileOutput
    """
    from .table import tile_rows
    from .tiling import ObjectTooLargeError, with_halo

    max_halo = params.max_halo
    recipe = params.recipe
    halo = geom.halo
    enlarged = 0
    spent = 0.0
    steps = _Steps(clock)
    while True:
        t0 = time.perf_counter()
        try:
            res = postprocess_tile(
                prob, tile, geom, scheme, recipe, save_prob=params.save_prob,
                approximate=halo >= max_halo and not params.strict, clock=steps.add,
            )
            break
        except ObjectTooLargeError:
            if halo >= max_halo:
                raise
        finally:
            spent += time.perf_counter() - t0
        # A cluster reaches beyond the margin: redo this tile with a doubled halo.
        halo = min(max_halo, _round_up(2 * halo, params.stride))
        tile = with_halo(tile, geom, halo)
        logger.info("tile %d: recomputing with halo %d px for a large object", tile.index, halo)
        enlarged += 1
        rgb, prob = _recomputed(recompute(tile), tile, measure=rgb is not None)
    t0 = time.perf_counter()
    res.rgb_core = rgb_core
    measurements = measure_tile(res, tile, geom, rgb) if rgb is not None else None
    t1 = time.perf_counter()
    table = tile_rows(res, geom, scheme.dtype, measurements)
    t2 = time.perf_counter()
    steps.add("post.measure", t1 - t0)
    steps.add("post.rows", t2 - t1)
    steps.flush()
    if clock is not None:
        clock("post", spent + t2 - t0)
    n_approx = int((~res.exact).sum())
    if n_approx:
        logger.warning(
            "tile %d: %d nuclei of clusters larger than the %d px halo are approximate", tile.index, n_approx, max_halo
        )
    record = {"tile": tile.index, "nuclei": int(len(res.ids)), "approximate": n_approx}
    return TileOutput(result=res, table=table, record=record, enlarged=enlarged)


def predict_in_windows(
    predict: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, *, window: int, context: int, stride: int
) -> np.ndarray:
    """``predict(rgb[None])[0]``, computed in windows of at most ``window`` x ``window`` px.

    A tile recomputed with a larger halo (up to ``max_halo``) is a larger input than the
    runner's tiles, and the network's memory grows with it (ONNX Runtime's arena: ~3.2 GB
    for the 2336 px read box of a 2048 px tile, ~7.3 GB at 3072 px). Cut into the fewest
    windows of at most the tiles' own read size, each keeping ``context`` px of its own
    context around the part kept, the peak stays that of an ordinary tile. Windows start at
    multiples of ``stride`` (the network's output is equivariant to shifts by it), so the map
    differs from the one-piece map only by what lies beyond ``context``.

    Parameters
    ----------
    predict : callable
        ``(1, H, W, 3) uint8 -> (1, H, W) float32``.
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8.
    window : int
        Largest window side (> ``2 * context``).
    context, stride : int
        The model's context (px each side) and stride.
    """
    h, w = rgb.shape[:2]
    if h <= window and w <= window:
        return _predict_windows(predict, rgb, [((0, h, 0, w), (0, h, 0, w))])
    context = _round_up(context, stride)
    room = window - 2 * context
    if room < stride:
        raise ValueError(f"window {window} leaves no room inside a context of {context} px each side")

    def cores(n: int) -> list[int]:  # the fewest cores of equal size (a multiple of the stride) that fit
        size = _round_up(math.ceil(n / math.ceil(n / (room - room % stride))), stride)
        return list(range(0, n, size)) + [n]

    ys, xs = cores(h), cores(w)
    windows = [
        ((y0, y1, x0, x1), (max(0, y0 - context), min(h, y1 + context), max(0, x0 - context), min(w, x1 + context)))
        for y0, y1 in zip(ys[:-1], ys[1:])
        for x0, x1 in zip(xs[:-1], xs[1:])
    ]
    return _predict_windows(predict, rgb, windows)


#: Rows per window when glass inside a tissue tile is skipped (:func:`tissue_windows`).
#: On CMU-1-Small-Region at 2048 px tiles the network's pixels fell 1.42x with strips of
#: 512 rows, 1.29x with 256 (more context per pixel kept), 1.33x with 1024.
TISSUE_STRIP = 512


def tissue_windows(
    inside: np.ndarray, tile: Any, *, context: int, stride: int, strip: int = TISSUE_STRIP
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] | None:
    """Windows of a tile's read box that give every ``inside`` pixel of its valid box the network's map.

    The valid box is cut into strips of ``strip`` rows; each strip's window spans the
    columns of its ``inside`` pixels (rounded out to the stride) and keeps ``context`` px
    of context on every side, so the map it gives differs from the one-piece map only
    by what lies beyond the context, as in :func:`predict_in_windows`.

    Parameters
    ----------
    inside : ndarray of bool, shape of ``tile.read``
        Where nuclei are segmented (:meth:`nucseg.wsi.tissue.TissueMap.inside`).
    tile : Tile
    context, stride : int
        The model's context (px each side) and stride; ``strip`` is a multiple of the stride.

    Returns
    -------
    list of (kept, read) box pairs, or None
        Boxes ``(y0, y1, x0, x1)`` relative to the read box: the part of each window
        kept and the part fed to the network. Empty when no pixel is inside; None when
        the windows would feed the network at least 85 % of the read box (one piece is
        then cheaper).
    """
    from .tiling import crop_box

    if strip % stride:
        raise ValueError(f"strip must be a multiple of the stride {stride}, got {strip}")
    h, w = inside.shape
    ctx = _round_up(context, stride)
    vy, vx = crop_box(tile.valid, tile.read)
    windows = []
    fed = 0
    for y0 in range(vy.start, vy.stop, strip):
        y1 = min(y0 + strip, vy.stop)
        cols = np.flatnonzero(inside[y0:y1, vx].any(axis=0))
        if cols.size == 0:
            continue
        x0 = vx.start + int(cols[0]) // stride * stride  # window starts on the stride grid of the read box
        x1 = vx.start + int(cols[-1]) + 1
        read = (max(0, y0 - ctx), min(h, y1 + ctx), max(0, x0 - ctx), min(w, x1 + ctx))
        windows.append(((y0, y1, x0, x1), read))
        fed += (read[1] - read[0]) * (read[3] - read[2])
    return None if fed >= 0.85 * h * w else windows


@dataclass(frozen=True)
class TilePlan:
    """How one tile's probability is computed (:func:`plan_tile`).

    Attributes
    ----------
    inside : ndarray of bool or None
        Where nuclei are segmented on the read box (:meth:`~nucseg.wsi.tissue.TissueMap.inside`);
        None without a tissue map (everywhere).
    windows : list or None
        :func:`tissue_windows` to predict; None for the whole read box.
    """

    inside: np.ndarray | None = None
    windows: list[Any] | None = None


def plan_tile(tissue_map: Any, geom: Any, tile: Any, stride: int, *, windows: bool = True) -> TilePlan:
    """The :class:`TilePlan` of ``tile``: its tissue map and, with ``windows``, its windows.

    Computed beside the read (reader threads), not on the inference thread: ~5 ms per
    2336² tile. ``windows=False`` predicts the whole read box (a predictor that takes
    only whole read boxes: ``accepts_windows = False``, as
    :class:`~nucseg.wsi.precomputed.PrecomputedPredictor`).
    """
    if tissue_map is None:
        return TilePlan()
    inside = tissue_map.inside(geom, tile.read)
    if inside.all():  # most tiles of a slide: nothing to skip or mask
        return TilePlan()
    return TilePlan(inside, tissue_windows(inside, tile, context=geom.context, stride=stride) if windows else None)


def predict_tiles(predict: Callable[[np.ndarray], np.ndarray], rgbs: list[np.ndarray], plans: list[TilePlan]) -> list[np.ndarray]:
    """Each tile's probability on its read box, as its plan says (not yet masked: :func:`mask_outside`).

    Tiles predicted whole go in batches of one shape (``predict(stack)``); the others
    window by window. Pixels of the read box outside the valid box (context only: the
    runners use nothing there) are 0 where a tile was predicted in windows.

    Parameters
    ----------
    predict : callable
        ``(n, H, W, 3) uint8 -> (n, H, W) float32``.
    rgbs : list of ndarray
        Each tile's read box, uint8 RGB.
    plans : list of TilePlan
    """
    out: list[Any] = [None] * len(rgbs)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.windows is None:
            by_shape.setdefault(rgbs[i].shape, []).append(i)
        else:
            out[i] = _predict_windows(predict, rgbs[i], plan.windows)
    for whole in by_shape.values():
        batch = np.stack([rgbs[i] for i in whole]) if len(whole) > 1 else rgbs[whole[0]][None]
        probs = np.asarray(predict(batch), dtype=np.float32)
        if probs.shape != batch.shape[:3]:
            raise ValueError(f"model.predict returned shape {probs.shape}, expected {batch.shape[:3]}")
        for i, prob in zip(whole, probs):
            out[i] = prob
    return out


def mask_outside(prob: np.ndarray, plan: TilePlan) -> np.ndarray:
    """``prob`` with 0 outside the tissue map (in place when writable); unchanged without one.

    Every tile that sees a pixel gives it the same 0, so neighbouring tiles agree on the
    map there (ownership relies on it) whatever the tile grid.
    """
    if plan.inside is None:
        return prob
    if not prob.flags.writeable:
        prob = prob.copy()
    np.multiply(prob, plan.inside, out=prob)
    return prob


def _predict_windows(predict: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, windows: list[Any]) -> np.ndarray:
    """The map of ``(kept, read)`` windows on ``rgb`` (:func:`tissue_windows`, :func:`predict_in_windows`), 0 elsewhere."""
    out = np.zeros(rgb.shape[:2], np.float32)
    for (y0, y1, x0, x1), (ry0, ry1, rx0, rx1) in windows:
        m = np.asarray(predict(rgb[None, ry0:ry1, rx0:rx1]), dtype=np.float32)
        if m.shape != (1, ry1 - ry0, rx1 - rx0):
            raise ValueError(f"model.predict returned shape {m.shape}, expected {(1, ry1 - ry0, rx1 - rx0)}")
        out[y0:y1, x0:x1] = m[0, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
    return out


def predict_enlarged(
    predict: Callable[[np.ndarray], np.ndarray],
    tile: Any,
    rgb: np.ndarray,
    tissue_map: Any,
    geom: Any,
    stride: int,
    *,
    windows: bool = True,
) -> np.ndarray:
    """The probability of a tile recomputed with a larger halo (:func:`compute_tile`'s retries).

    Planned, predicted and masked as the runners do for their tiles; a read box that
    needs predicting whole goes in windows no larger than the runner's tiles
    (:func:`predict_in_windows`), so the retry's peak memory stays that of an ordinary tile.
    """
    plan = plan_tile(tissue_map, geom, tile, stride, windows=windows)
    if plan.windows is not None:
        prob = _predict_windows(predict, rgb, plan.windows)
    else:
        prob = predict_in_windows(predict, rgb, window=geom.tile + 2 * geom.halo, context=geom.context, stride=stride)
    return mask_outside(prob, plan)


def _recomputed(value: Any, tile: Any, *, measure: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``(rgb, prob)`` from what a ``recompute`` callback returned."""
    if isinstance(value, tuple) and len(value) == 2:
        return value[0], value[1]
    if measure:
        raise TypeError(
            f"recompute must return (rgb, prob) when compute_tile measures the nuclei (rgb given); "
            f"got {type(value).__name__} for tile {tile.index}"
        )
    return None, value


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _STOP


def _run_tiles(
    reader: Any,
    pred: Any,
    setup: SlideSetup,
    todo: list[Any],
    *,
    batch_size: int,
    threads: int,
    timer: _Timer,
    progress: bool,
) -> None:
    """Compute and write ``todo`` with the threaded stages of the module docs (see :class:`_TileRunner`)."""
    if todo:
        _TileRunner(reader, pred, setup, batch_size=batch_size, threads=threads, timer=timer).run(todo, progress)


class _TileRunner:
    """One run of the threaded stages: reader threads -> inference thread -> post pool -> writer.

    The stages share only what is set here: the queues between them, the ``stop`` event
    any stage sets on failure, and the first error, which :meth:`run` raises once every
    thread has stopped. A read error stops reading but lets tiles already read finish
    (they are written, so a resume has less to redo).
    """

    def __init__(self, reader: Any, pred: Any, setup: SlideSetup, *, batch_size: int, threads: int, timer: _Timer) -> None:
        self.reader, self.pred, self.setup, self.timer = reader, pred, setup, timer
        self.batch_size = batch_size
        self.windows = bool(getattr(pred, "accepts_windows", True))  # see predict_tiles
        self.n_readers = max(1, min(4, threads // 2 or 1))
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.read_errors: list[BaseException] = []
        self.err_lock = threading.Lock()
        self.q_rgb: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch_size))  # read tiles awaiting inference
        self.q_done: queue.Queue = queue.Queue()  # finished post-processing futures, for the writer
        self.in_flight = threading.BoundedSemaphore(max(2, 2 * threads))  # tiles between inference and writing
        self.infer_done = threading.Event()
        self.submitted = 0  # written by the inference thread only
        self.predict_lock = threading.Lock()  # predict is also called from the post threads (halo retries)
        self.todo_lock = threading.Lock()
        self.todo: Any = iter(())
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nucseg-post")

    def run(self, todo: list[Any], progress: bool) -> None:
        """Compute and write every tile of ``todo``; raises the first error of any stage."""
        self.todo = iter(todo)
        readers = [
            threading.Thread(target=self._read_worker, name=f"nucseg-read-{i}", daemon=True)
            for i in range(self.n_readers)
        ]
        infer = threading.Thread(target=self._infer_worker, name="nucseg-infer", daemon=True)
        for th in readers:
            th.start()
        infer.start()
        try:
            self._write_all(len(todo), progress)
        except BaseException as exc:  # noqa: BLE001 - includes KeyboardInterrupt
            self._fail(exc)
        finally:
            self.stop.set()
            for th in readers:
                th.join()
            infer.join()
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.errors:
            raise self.errors[0]
        if self.read_errors:
            raise self.read_errors[0]

    def _fail(self, exc: BaseException) -> None:
        with self.err_lock:
            self.errors.append(exc)
        self.stop.set()

    # -- reading ---------------------------------------------------------------------

    def _next_tile(self) -> Any:
        with self.todo_lock:
            return next(self.todo, None)

    def _read_worker(self) -> None:
        from .reader import SlideError

        try:
            while not self.stop.is_set() and not self.read_errors:
                t = self._next_tile()
                if t is None:
                    break
                t0 = time.perf_counter()
                try:
                    rgb = read_tile(self.reader, self.setup.geom, t)
                except SlideError as exc:
                    with self.err_lock:
                        self.read_errors.append(exc)
                    break
                s = self.setup
                plan = plan_tile(s.tissue_map, s.geom, t, s.params.stride, windows=self.windows)
                self.timer.add("read", time.perf_counter() - t0)
                if not _put(self.q_rgb, (t, rgb, plan), self.stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - forwarded to the caller
            self._fail(exc)
        finally:
            _put(self.q_rgb, _STOP, self.stop)

    # -- inference -------------------------------------------------------------------

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        with self.predict_lock:
            return np.asarray(self.pred.predict(batch), dtype=np.float32)

    def _infer_worker(self) -> None:
        finished = 0
        batch: list[tuple[Any, np.ndarray]] = []
        try:
            while finished < self.n_readers:
                item = _get(self.q_rgb, self.stop)
                if item is _STOP:
                    if self.stop.is_set():
                        return
                    finished += 1
                    continue
                if batch and (item[1].shape != batch[0][1].shape or len(batch) >= self.batch_size):
                    self._submit(batch)
                    batch = []
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self._submit(batch)
                    batch = []
            if batch:
                self._submit(batch)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self.infer_done.set()

    def _submit(self, items: list[tuple[Any, np.ndarray, TilePlan]]) -> None:
        """Predict one batch and hand each tile to the post-processing pool."""
        from .tiling import crop_box

        t0 = time.perf_counter()
        probs = predict_tiles(self._predict, [rgb for _, rgb, _ in items], [plan for _, _, plan in items])
        self.timer.add("infer", time.perf_counter() - t0)
        for (t, rgb, plan), prob in zip(items, probs):
            while not self.in_flight.acquire(timeout=0.1):
                if self.stop.is_set():
                    return
            rgb_core = np.ascontiguousarray(rgb[crop_box(t.core, t.read)]) if self.setup.save_image else None
            fut: Future = self.pool.submit(self._post_job, t, rgb, prob, plan, rgb_core)
            self.submitted += 1
            fut.add_done_callback(self.q_done.put)

    # -- post-processing (pool threads) ----------------------------------------------

    def _recompute(self, t: Any) -> tuple[np.ndarray, np.ndarray]:
        """Read and predict a tile again with a larger halo (:func:`compute_tile`'s callback)."""
        t0 = time.perf_counter()
        rgb = read_tile(self.reader, self.setup.geom, t)
        self.timer.add("read", time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = self.setup
        prob = predict_enlarged(self._predict, t, rgb, s.tissue_map, s.geom, s.params.stride, windows=self.windows)
        self.timer.add("infer", time.perf_counter() - t0)
        return rgb, prob

    def _post_job(
        self, t: Any, rgb: np.ndarray, prob: np.ndarray, plan: TilePlan, rgb_core: np.ndarray | None
    ) -> TileOutput:
        s = self.setup
        t0 = time.perf_counter()
        prob = mask_outside(prob, plan)  # here, not on the inference thread
        self.timer.add("post", time.perf_counter() - t0)
        out = compute_tile(
            t, prob, s.geom, s.scheme, s.params, recompute=self._recompute, rgb=rgb, rgb_core=rgb_core,
            clock=self.timer.add,
        )
        with self.timer.lock:
            self.timer.enlarged += out.enlarged
        return out

    # -- writing (calling thread) ----------------------------------------------------

    def _write_all(self, total: int, progress: bool) -> None:
        """Write finished tiles until every submitted one is written, or a stage fails."""
        from tqdm.auto import tqdm

        store, scheme = self.setup.store, self.setup.scheme
        nuclei = written = 0
        with tqdm(total=total, unit="tile", disable=not progress, dynamic_ncols=True, desc="tiles") as bar:
            while not self.stop.is_set() and not (self.infer_done.is_set() and written == self.submitted):
                try:
                    fut = self.q_done.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    out = fut.result()
                    t0 = time.perf_counter()
                    store.write_tile(out.result, out.table, out.record, scheme, clock=self.timer.add)
                    self.timer.add("write", time.perf_counter() - t0)
                finally:
                    self.in_flight.release()
                nuclei += out.record["nuclei"]
                written += 1
                bar.update(1)
                bar.set_postfix(nuclei=nuclei, refresh=False)


def summary_lines(summary: SlideSummary) -> list[str]:
    """Human-readable lines about a run: counts, tissue and stage timings."""
    t = summary.timings
    stage = {k: t.get(k, 0.0) for k in ("read", "infer", "post", "write")}
    busy = sum(stage.values()) or 1.0
    shares = ", ".join(f"{k} {v:.1f}s ({100 * v / busy:.0f}%)" for k, v in stage.items())
    return [
        f"nuclei: {summary.nuclei} in {summary.tiles_tissue}/{summary.tiles} tiles with tissue "
        f"({summary.tiles_run} computed, {summary.tiles_resumed} resumed, {summary.tiles_enlarged} with a "
        f"larger halo); approximate: {summary.approximate}",
        f"tissue: {100 * summary.tissue_fraction:.1f}% of the slide, {summary.tissue_mm2:.2f} mm^2; "
        f"labels {summary.size[1]}x{summary.size[0]} px at {summary.mpp[1]:.4f} um/px (level {summary.level})",
        f"stage time (summed over threads): {shares}; wall {t.get('wall', 0.0):.1f}s",
        f"output: {summary.output}  table: {summary.table}" + (f"  qc: {summary.qc}" if summary.qc else ""),
    ]


