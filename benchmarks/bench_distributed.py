"""Dask path: 1 vs 2 local workers against the single-process runner, same slide.

Run::

    python -m pytest benchmarks/bench_distributed.py --benchmark-only -q -s

One synthetic slide (``NUCSEG_BENCH_DIST_SIDE``, default 2048 px square, 0.25 um/px,
about 60 % tissue; tissue detection on), the classical hematoxylin predictor (no
weights, deterministic), ``NUCSEG_BENCH_DIST_TILE`` px tiles (default 512) and one tile
per Dask task (``group=1``, so 2 workers can share a small slide). Measured:

* ``single-1t``: :func:`segment_slide` with ``threads=1`` (one core, as one worker);
* ``single-2t``: :func:`segment_slide` with ``threads=2`` (the runner's own threads);
* ``dask-1w`` and ``dask-2w``: :func:`run_distributed` on a LocalCluster of 1 or 2
  single-threaded worker processes, started before the clock (its start-up, about
  2-3 s, is reported apart).

Each records Mpix/s over the whole slide; the last one prints the speed-up of 2
workers over 1, and the overhead of the Dask path: ``dask-1w / single-1t - 1`` in
wall time (planning, spill files, chunked pyramid, the
scheduler's round trips). The outputs are checked equal to the single-process one.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

SIDE = int(os.environ.get("NUCSEG_BENCH_DIST_SIDE", "2048"))
TILE = int(os.environ.get("NUCSEG_BENCH_DIST_TILE", "512"))
ROUNDS = int(os.environ.get("NUCSEG_BENCH_DIST_ROUNDS", "2"))
_WALL: dict[str, float] = {}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

    rgb, _, _ = synthetic_he((SIDE, SIDE), seed=7)
    return write_pyramid_tiff(tmp_path_factory.mktemp("dist_bench") / "slide.tif", rgb, mpp=0.25, levels=4)


@pytest.fixture(scope="module")
def reference(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    import zarr

    from nucseg.wsi import segment_slide

    out = tmp_path_factory.mktemp("dist_ref") / "ref.zarr"
    segment_slide(slide, out, model="hematoxylin", tile=TILE, threads=1)
    return zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]


def _labels(out: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]


def _record(benchmark, name: str, wall: float) -> None:
    _WALL[name] = wall
    benchmark.group = "distributed"
    benchmark.extra_info.update(
        {"case": name, "slide_px": f"{SIDE}x{SIDE}", "tile": TILE, "mpix_per_s": round(SIDE * SIDE / 1e6 / wall, 3)}
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_single_process(benchmark, slide: Path, reference: np.ndarray, tmp_path: Path, threads: int) -> None:
    from nucseg.wsi import segment_slide

    out = tmp_path / "o.zarr"

    def run() -> None:
        segment_slide(slide, out, model="hematoxylin", tile=TILE, threads=threads)

    benchmark.pedantic(run, setup=lambda: shutil.rmtree(out, ignore_errors=True), rounds=ROUNDS, iterations=1)
    np.testing.assert_array_equal(_labels(out), reference)
    _record(benchmark, f"single-{threads}t", benchmark.stats.stats.min)


@pytest.mark.parametrize("workers", [1, 2])
def test_dask_local(benchmark, slide: Path, reference: np.ndarray, tmp_path: Path, workers: int) -> None:
    from distributed import Client, LocalCluster

    from nucseg.wsi.distributed import run_distributed

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    startup = time.perf_counter() - t0
    out = tmp_path / "o.zarr"
    details: dict = {}

    def run() -> None:
        [res] = run_distributed(slide, out, scheduler=client, model="hematoxylin", tile=TILE, group=1)
        details.update(res.details)

    try:
        benchmark.pedantic(run, setup=lambda: shutil.rmtree(out, ignore_errors=True), rounds=ROUNDS, iterations=1)
    finally:
        client.close()
        cluster.close()
    np.testing.assert_array_equal(_labels(out), reference)
    name = f"dask-{workers}w"
    _record(benchmark, name, benchmark.stats.stats.min)
    benchmark.extra_info.update(cluster_startup_s=round(startup, 2), tile_tasks=details.get("tile_tasks", 0))
    if {"single-1t", "dask-1w", "dask-2w"} <= set(_WALL):
        speedup = _WALL["dask-1w"] / _WALL["dask-2w"]
        overhead = _WALL["dask-1w"] / _WALL["single-1t"] - 1.0
        benchmark.extra_info.update(speedup_2w_over_1w=round(speedup, 3), dask_overhead_vs_single=round(overhead, 3))
        print(
            f"\nwall (best of {ROUNDS}): "
            + ", ".join(f"{k} {v:.2f}s ({SIDE * SIDE / 1e6 / v:.2f} Mpix/s)" for k, v in sorted(_WALL.items()))
            + f"\nspeed-up 2 workers / 1 worker: {speedup:.2f}x; Dask overhead (1 worker vs 1 thread): "
            f"{100 * overhead:+.0f}%; cluster start-up {startup:.1f}s (not in the figures)"
        )
