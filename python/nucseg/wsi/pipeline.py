"""``segment_slide``: reader threads -> batched inference -> watershed pool -> writer.

Stages and queues
-----------------
* Reader threads read each tile's read box (OpenSlide and zlib release the GIL) and
  resample it to the processing resolution; a bounded queue holds at most
  ``2 * batch_size`` tiles.
* One inference thread groups tiles of the same shape into batches and calls
  ``model.predict``.
* A thread pool runs :func:`nucseg.watershed_dynamics` (which releases the GIL) and the
  ownership step; a semaphore bounds the tiles in flight between inference and writing.
* The calling thread writes finished tiles to the store and drives the progress bar.

Memory is bounded by the queue sizes and the tile size, never by the slide size.
The result does not depend on the order in which tiles finish (every nucleus is owned
by exactly one tile, and owned pixels never overlap).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Default pixels of trusted probability beyond the core for nuclei (and clusters of
#: touching nuclei) that cross the core's border: 24 um at 0.25 um/px.
DEFAULT_OBJECT_MARGIN = 96
#: Largest halo a tile is recomputed with when a cluster does not fit its margin.
DEFAULT_MAX_HALO = 512
_STOP = object()


@dataclass
class SlideSummary:
    """What :func:`segment_slide` did.

    Attributes
    ----------
    output : Path
        The OME-Zarr store.
    table : Path
        The per-nucleus Parquet table.
    nuclei : int
        Nuclei in the output (all tiles, including those of an earlier interrupted run).
    tiles : int
        Tiles in the grid.
    tiles_tissue : int
        Tiles that overlap tissue (the others are skipped).
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

    output: Path
    table: Path
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


class _Timer:
    """Seconds per stage, summed over threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: dict[str, float] = {"read": 0.0, "infer": 0.0, "post": 0.0, "write": 0.0}
        self.enlarged = 0  # tiles recomputed with a larger halo

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.total[stage] = self.total.get(stage, 0.0) + seconds


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def segment_slide(
    slide: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: Any = None,
    lam: float | None = None,
    threshold: float | None = None,
    mpp: float | None = None,
    level: int | None = None,
    tile: int = 1024,
    halo: int | None = None,
    max_halo: int | None = None,
    strict: bool = False,
    device: str | None = None,
    batch_size: int = 2,
    threads: int | None = None,
    tissue: str | os.PathLike[str] = "auto",
    resume: bool = False,
    overwrite: bool = False,
    save_prob: bool = False,
    save_image: bool = False,
    qc: str | os.PathLike[str] | None = None,
    connectivity: int = 1,
    progress: bool = False,
) -> SlideSummary:
    """Segment every nucleus of a whole-slide image into an OME-Zarr store.

    Parameters
    ----------
    slide : path-like
        Any slide OpenSlide reads, or a (pyramidal, OME-) TIFF.
    output : path-like
        The ``.zarr`` store to write (never derived from the slide's metadata).
    model : None, str, path-like or predictor
        See :func:`nucseg.wsi.predictors.resolve_model`; None is the bundled network.
    lam, threshold : float, optional
        Watershed dynamics and foreground threshold; default to the model's.
    mpp : float, optional
        Level-0 microns per pixel, overriding or supplying the slide's.
    level : int, optional
        Pyramid level to read (default: the one closest to the model's resolution).
    tile : int
        Core tile size in processing pixels (a multiple of the model stride).
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
    batch_size : int
        Tiles per inference call.
    threads : int, optional
        Post-processing threads (default: the CPU count); readers use half as many.
    tissue : ``"auto"``, ``"none"`` or path-like
        Tissue detection on an overview, no detection, or a mask image (non-zero =
        tissue) covering the slide.
    resume, overwrite : bool
        Continue an interrupted store, or replace an existing one. Without either an
        existing output is refused.
    save_prob : bool
        Also store the probability map as uint8.
    save_image : bool
        Also store the slide's RGB at the processing resolution (with a pyramid) as the
        root image, so the store is a complete NGFF image with its labels.
    qc : path-like, optional
        Write a QC picture (PNG) there.
    connectivity : int
        Watershed connectivity (1 or 2).
    progress : bool
        Show a tqdm progress bar.

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
    from .predictors import describe, resolve_model
    from .reader import SlideError, open_slide
    from .store import OutputStore, StoreError
    from .tiling import IdScheme, make_tiles, plan_geometry

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if resume and overwrite:
        raise ValueError("resume and overwrite are exclusive: pick one")
    tile = _check_int("tile", tile, 16)
    batch_size = _check_int("batch_size", batch_size, 1)
    threads = _check_int("threads", (os.cpu_count() or 1) if threads is None else threads, 1)
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    if halo is not None:
        halo = _check_int("halo", halo, 1)
    if max_halo is not None:
        max_halo = _check_int("max_halo", max_halo, 1)
    out_path = Path(output)
    if out_path.exists() and not (resume or overwrite):
        raise StoreError(f"output {out_path} already exists; pass --resume to continue it or --overwrite to replace it")

    reader = open_slide(slide, mpp=mpp)
    try:
        if reader.mpp is None:
            raise SlideError(f"{reader.path}: the slide has no microns-per-pixel metadata; pass --mpp")
        pred = resolve_model(model, device=device)
        info = describe(pred)
        lam = info["lam"] if lam is None else float(lam)
        threshold = info["threshold"] if threshold is None else float(threshold)
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        stride = info["stride"]
        context = info["context"]
        if halo is None:
            halo = _round_up(context + DEFAULT_OBJECT_MARGIN, stride)
        max_halo = _round_up(max(halo, DEFAULT_MAX_HALO if max_halo is None else max_halo), stride)
        geom = plan_geometry(
            [(lv.width, lv.height) for lv in reader.levels],
            reader.mpp,
            info["mpp"],
            tile=tile,
            halo=halo,
            context=context,
            level=level,
            stride=stride,
        )
        tiles = make_tiles(geom)
        scheme = IdScheme(geom.n_tiles)

        overview = reader.thumbnail(2048)
        keep, fraction, tissue_mode = _select_tiles(tissue, overview, geom, tiles)
        lv0 = reader.levels[0]
        tissue_mm2 = fraction * lv0.width * lv0.height * reader.mpp[0] * reader.mpp[1] / 1e6
        fingerprint = reader.fingerprint()
        settings = {
            "slide_fingerprint": fingerprint,
            "model_sha256": info["sha256"],
            "model_name": info["name"],
            "lam": lam,
            "threshold": threshold,
            "connectivity": connectivity,
            "level": geom.level,
            "size": list(geom.size),
            "mpp": list(geom.mpp),
            "tile": geom.tile,
            "halo": geom.halo,
            "context": geom.context,
            "tissue": tissue_mode,
            "save_prob": bool(save_prob),
            "save_image": bool(save_image),
        }
        if resume and out_path.exists():
            store = OutputStore.resume(out_path, settings=settings)
        else:
            meta = _run_meta(reader, info, geom, started, slide, fingerprint)
            meta.update(tissue_fraction=fraction, tissue_mm2=tissue_mm2, tiles=len(tiles), tiles_tissue=len(keep))
            ov_ds = overview.downsample
            my0, mx0 = reader.mpp[1], reader.mpp[0]
            store = OutputStore.create(
                out_path,
                geom=geom,
                label_dtype=scheme.dtype,
                settings=settings,
                meta=meta,
                overview=overview.rgb,
                overview_mpp=(ov_ds[0] * my0, ov_ds[1] * mx0),
                overview_translation=(
                    0.5 * my0 * (overview.level_downsample[0] - 1),
                    0.5 * mx0 * (overview.level_downsample[1] - 1),
                ),
                overwrite=overwrite,
            )
        done = store.done_tiles()
        todo = [tiles[i] for i in keep if i not in done]
        timer = _Timer()
        t_tiles = time.perf_counter()
        _run_tiles(
            reader,
            pred,
            store,
            geom,
            scheme,
            todo,
            max_halo=max_halo,
            strict=strict,
            lam=lam,
            threshold=threshold,
            connectivity=connectivity,
            batch_size=batch_size,
            threads=threads,
            save_prob=save_prob,
            save_image=save_image,
            timer=timer,
            progress=progress,
        )
        tiles_wall = time.perf_counter() - t_tiles
        t_finish = time.perf_counter()
        records = store.tile_records()
        nuclei = int(sum(r.get("nuclei", 0) for r in records.values()))
        approximate = int(sum(r.get("approximate", 0) for r in records.values()))
        timings = dict(timer.total, tiles_wall=tiles_wall)
        enlarged = timer.enlarged
        table_path = store.finish(
            {
                "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "nuclei": nuclei,
                "tiles_done": len(records),
                "tiles_enlarged": enlarged,
                "approximate_nuclei": approximate,
                "timings": timings,
            }
        )
        qc_path = None
        if qc is not None:
            from .qc import write_qc

            qc_path = write_qc(qc, store, overview, geom, table_path)
        timings["finish"] = time.perf_counter() - t_finish
        timings["wall"] = time.perf_counter() - t_start
        store.update_meta({"timings": timings})
    finally:
        reader.close()
    return SlideSummary(
        output=out_path,
        table=table_path,
        nuclei=nuclei,
        tiles=len(tiles),
        tiles_tissue=len(keep),
        tiles_run=len(todo),
        tiles_resumed=len([i for i in keep if i in done]),
        tissue_fraction=fraction,
        tissue_mm2=tissue_mm2,
        level=geom.level,
        mpp=geom.mpp,
        size=geom.size,
        timings=timings,
        qc=qc_path,
        tiles_enlarged=enlarged,
        approximate=approximate,
    )


def _run_meta(
    reader: Any, info: dict[str, Any], geom: Any, started: str, slide: Any, fingerprint: str
) -> dict[str, Any]:
    import nucseg

    return {
        "nucseg_version": getattr(nucseg, "__version__", "unknown"),
        "model": info,
        "slide": {
            "path": str(Path(slide).resolve()),
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


def _select_tiles(tissue: Any, overview: Any, geom: Any, tiles: list[Any]) -> tuple[list[int], float, str]:
    """Indices of tiles to compute, tissue fraction, and a description of the mode."""
    from .tissue import detect_tissue, load_mask, tiles_with_tissue

    if isinstance(tissue, str) and tissue == "none":
        return [t.index for t in tiles], 1.0, "none"
    if isinstance(tissue, str) and tissue == "auto":
        mask, mode = detect_tissue(overview.rgb), "auto"
    elif isinstance(tissue, (str, os.PathLike)):
        mask = load_mask(tissue, overview.rgb.shape[:2])
        mode = f"mask:{Path(tissue).resolve()}"
    else:
        raise TypeError(f"tissue must be 'auto', 'none' or a mask path, got {tissue!r}")
    # A tile is needed when tissue touches its core grown by the object margin.
    boxes = np.array([t.valid for t in tiles], dtype=np.float64)
    corners = geom.to_level0(np.stack([boxes[:, [0, 2]] - 0.5, boxes[:, [1, 3]] - 0.5], axis=1)) + 0.5
    boxes0 = np.stack([corners[:, 0, 0], corners[:, 1, 0], corners[:, 0, 1], corners[:, 1, 1]], axis=1)
    hit = tiles_with_tissue(mask, overview.downsample, boxes0)
    return [t.index for t, h in zip(tiles, hit) if h], float(mask.mean()), mode


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


def postprocess_tile(
    prob_read: np.ndarray,
    tile: Any,
    geom: Any,
    scheme: Any,
    *,
    lam: float,
    threshold: float,
    connectivity: int = 1,
    save_prob: bool = False,
    approximate: bool = False,
) -> Any:
    """Watershed on the tile's valid box and ownership (see :mod:`nucseg.wsi.tiling`)."""
    from nucseg import watershed_dynamics

    from .tiling import crop_box, own_objects

    prob_valid = np.ascontiguousarray(prob_read[crop_box(tile.valid, tile.read)], dtype=np.float32)
    labels = watershed_dynamics(prob_valid, lam, threshold=threshold, connectivity=connectivity, watershed_line=True)
    result = own_objects(
        labels, prob_valid, threshold, tile, geom, scheme, connectivity=connectivity, approximate=approximate
    )
    if save_prob:
        core = prob_read[crop_box(tile.core, tile.read)]
        result.prob_core = np.clip(np.rint(core * 255.0), 0, 255).astype(np.uint8)
    return result


def _run_tiles(
    reader: Any,
    pred: Any,
    store: Any,
    geom: Any,
    scheme: Any,
    todo: list[Any],
    *,
    max_halo: int,
    strict: bool,
    lam: float,
    threshold: float,
    connectivity: int,
    batch_size: int,
    threads: int,
    save_prob: bool,
    save_image: bool,
    timer: _Timer,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    from .reader import SlideError
    from .table import tile_rows
    from .tiling import ObjectTooLargeError, crop_box, read_region, with_halo

    if not todo:
        return
    stride = int(getattr(pred.config, "stride", 1) or 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    err_lock = threading.Lock()

    def fail(exc: BaseException) -> None:
        with err_lock:
            errors.append(exc)
        stop.set()

    n_readers = max(1, min(4, threads // 2 or 1))
    q_rgb: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch_size))
    q_done: queue.Queue = queue.Queue()
    in_flight = threading.BoundedSemaphore(max(2, 2 * threads))
    infer_done = threading.Event()
    counts = {"submitted": 0}  # written by the inference thread only
    it = iter(todo)
    it_lock = threading.Lock()

    read_errors: list[BaseException] = []  # reading stops, tiles already read still finish

    def read_worker() -> None:
        try:
            while not stop.is_set() and not read_errors:
                with it_lock:
                    t = next(it, None)
                if t is None:
                    break
                t0 = time.perf_counter()
                try:
                    rgb = read_region(reader, geom, t.read)
                except SlideError as exc:
                    with err_lock:
                        read_errors.append(
                            SlideError(
                                f"{exc} (tile {t.index}, processing box y={t.read[0]}:{t.read[1]} "
                                f"x={t.read[2]}:{t.read[3]})"
                            )
                        )
                    break
                timer.add("read", time.perf_counter() - t0)
                if not _put(q_rgb, (t, rgb), stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - forwarded to the caller
            fail(exc)
        finally:
            _put(q_rgb, _STOP, stop)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nucseg-post")

    predict_lock = threading.Lock()  # retries predict from the post threads too

    def predict(batch: np.ndarray) -> np.ndarray:
        with predict_lock:
            return np.asarray(pred.predict(batch), dtype=np.float32)

    def post_job(t: Any, prob: np.ndarray, rgb_core: np.ndarray | None) -> Any:
        halo = geom.halo
        while True:
            t0 = time.perf_counter()
            try:
                res = postprocess_tile(
                    prob,
                    t,
                    geom,
                    scheme,
                    lam=lam,
                    threshold=threshold,
                    connectivity=connectivity,
                    save_prob=save_prob,
                    approximate=halo >= max_halo and not strict,
                )
                break
            except ObjectTooLargeError:
                if halo >= max_halo:
                    raise
                timer.add("post", time.perf_counter() - t0)
            # A cluster reaches beyond the margin: redo this tile with a doubled halo.
            halo = min(max_halo, _round_up(2 * halo, stride))
            t = with_halo(t, geom, halo)
            logger.info("tile %d: recomputing with halo %d px for a large object", t.index, halo)
            with timer.lock:
                timer.enlarged += 1
            t0 = time.perf_counter()
            rgb = read_region(reader, geom, t.read)
            timer.add("read", time.perf_counter() - t0)
            t0 = time.perf_counter()
            prob = predict(rgb[None])[0]
            timer.add("infer", time.perf_counter() - t0)
        res.rgb_core = rgb_core
        table = tile_rows(res, geom, scheme.dtype)
        timer.add("post", time.perf_counter() - t0)
        n_approx = int((~res.exact).sum())
        if n_approx:
            logger.warning("tile %d: %d nuclei of clusters larger than the %d px halo are approximate",
                           t.index, n_approx, max_halo)
        return res, table

    def submit(items: list[tuple[Any, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        probs = predict(np.stack([rgb for _, rgb in items]))
        timer.add("infer", time.perf_counter() - t0)
        if probs.shape != (len(items), *items[0][1].shape[:2]):
            raise ValueError(
                f"model.predict returned shape {probs.shape}, expected {(len(items), *items[0][1].shape[:2])}"
            )
        for (t, rgb), prob in zip(items, probs):
            while not in_flight.acquire(timeout=0.1):
                if stop.is_set():
                    return
            rgb_core = np.ascontiguousarray(rgb[crop_box(t.core, t.read)]) if save_image else None
            fut: Future = pool.submit(post_job, t, prob, rgb_core)
            counts["submitted"] += 1
            fut.add_done_callback(q_done.put)

    def infer_worker() -> None:
        finished = 0
        batch: list[tuple[Any, np.ndarray]] = []
        try:
            while finished < n_readers:
                item = _get(q_rgb, stop)
                if item is _STOP:
                    if stop.is_set():
                        return
                    finished += 1
                    continue
                if batch and (item[1].shape != batch[0][1].shape or len(batch) >= batch_size):
                    submit(batch)
                    batch = []
                batch.append(item)
                if len(batch) >= batch_size:
                    submit(batch)
                    batch = []
            if batch:
                submit(batch)
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            infer_done.set()

    readers = [threading.Thread(target=read_worker, name=f"nucseg-read-{i}", daemon=True) for i in range(n_readers)]
    infer = threading.Thread(target=infer_worker, name="nucseg-infer", daemon=True)
    for th in readers:
        th.start()
    infer.start()

    bar = tqdm(total=len(todo), unit="tile", disable=not progress, dynamic_ncols=True, desc="tiles")
    nuclei = 0
    written = 0
    try:
        # Until every tile submitted for post-processing is written (or a failure).
        while not stop.is_set() and not (infer_done.is_set() and written == counts["submitted"]):
            try:
                fut = q_done.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                res, table = fut.result()
                t0 = time.perf_counter()
                record = {"tile": res.tile.index, "nuclei": int(len(res.ids)), "approximate": int((~res.exact).sum())}
                store.write_tile(res, table, record, scheme)
                timer.add("write", time.perf_counter() - t0)
            finally:
                in_flight.release()
            nuclei += len(res.ids)
            written += 1
            bar.update(1)
            bar.set_postfix(nuclei=nuclei, refresh=False)
    except BaseException as exc:  # noqa: BLE001 - includes KeyboardInterrupt
        fail(exc)
    finally:
        bar.close()
        stop.set()
        for th in readers:
            th.join()
        infer.join()
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
    if read_errors:
        raise read_errors[0]


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


