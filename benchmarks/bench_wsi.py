"""Whole-slide runner: end-to-end throughput, time per stage and peak memory.

Run::

    python -m pytest benchmarks/bench_wsi.py --benchmark-only -q -s

Two synthetic slides (0.25 um/px, about 60 % tissue) of 1x and 4x the area
(``NUCSEG_BENCH_WSI_SIDE``, default 2048 px, and twice that side) are segmented, in
tiles of ``NUCSEG_BENCH_WSI_TILE`` px (default 512, so that even the small slide has
enough tiles to fill the pipeline's queues), in a
fresh subprocess each, so its ``VmHWM`` is the peak RSS of that run alone. Each
benchmark records in ``extra_info``: megapixels per second over the whole slide and
over its tissue, tissue square millimetres per minute at the processing resolution,
the share of busy time per stage (read, infer, post, write; summed over threads),
and the peak RSS. The RSS of the 4x slide must stay within 10 % of the 1x slide's:
memory is bounded by tiles and queues, not by the slide.

Models: the classical hematoxylin predictor (always), the bundled network (when
its weights exist; ``NUCSEG_BENCH_WSI_MODEL=0`` skips it) and the model files named in
``NUCSEG_BENCH_WSI_MODELS`` (``os.pathsep``-separated; e.g. a model trained at 0.5 um/px,
which reads the slide's 2x level: ``mpp`` in ``extra_info`` is the processing resolution). Torch uses
``NUCSEG_BENCH_THREADS`` threads (default 1). With a CUDA device the bundled model
also runs there (``--device cuda``). On the CPU the bundled model runs with each backend
of ``NUCSEG_BENCH_WSI_BACKENDS`` (comma-separated, default ``torch,onnx``; onnx is skipped
when onnxruntime is missing), ONNX Runtime with the same thread count as torch.

The slide path without the network (``test_slide_path``): a synthetic slide of
``NUCSEG_BENCH_PATH_SIDE`` px (default 4096) at 0.25 um/px, tiles of
``NUCSEG_BENCH_PATH_TILE`` px (default 2048, the CLI's), segmented with a
:class:`~nucseg.wsi.precomputed.PrecomputedPredictor` that replays the hematoxylin map
computed beforehand: the run pays read, decode, halo, watershed, ownership,
morphometrics, table rows and compressed zarr writes, and a lookup for the network.
Each child first runs a 512 px slide so that imports and first calls are paid before
the measured run (as in a long batch). It records tissue mm^2 per minute of wall and
per CPU-minute of the process (all threads: the figure per core), Mpix/s, peak RSS, and
each stage's and step's share of the busy time (``share_read.decode``,
``share_post.measure``...; ``prepare`` is the overview, tissue detection and store
creation, ``finish`` the pyramid and table). With ``NUCSEG_BENCH_BASELINE`` set to the
``python/`` folder of another checkout, the same slide is run with that code too,
interleaved, ``NUCSEG_BENCH_PATH_ROUNDS`` times (default 3), and the medians' ratios
are printed.

Slide readers side by side (``test_readers``, :mod:`_readers`): OpenSlide, nucseg's
tifffile reader, tiffslide and pyvips read the runner's read boxes (1232 px: a 1024 px
core and its 104 px halo) of ``NUCSEG_BENCH_READ_SIDE`` px synthetic slides (default
4096, 256 px tiles, 2x pyramid at 0.25 um/px: Aperio SVS with JPEG, RGB JPEG 2000 (33005)
and YCbCr JPEG 2000 (33003) tiles, generic tiled TIFF with JPEG 2000 and deflate tiles)
and of the real CMU-1 SVS when ``NUCSEG_DATA`` has it, at level 0 and level 1 (what a
0.5 um/px model reads there), with 1 thread and 2 threads (one handle shared, or one
each). Each measurement runs in a fresh process (its peak RSS is its own), the first
``NUCSEG_BENCH_READ_BOXES`` boxes (default 8), alternating with OpenSlide on the same
boxes ``NUCSEG_BENCH_READ_ROUNDS`` times (default 3): ``extra_info`` holds the medians'
Mpix/s, tissue-free mm^2/min (the whole box area at the level's resolution), peak RSS,
the ratio to OpenSlide of that same test, and the largest pixel difference from
OpenSlide on three boxes (from tifffile where OpenSlide cannot read the slide).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _rss import peak_rss_bytes  # benchmarks/ is on sys.path, as a script and under pytest

from nucseg._cpu import usable_cpus

SIDE = int(os.environ.get("NUCSEG_BENCH_WSI_SIDE", "2048"))
THREADS = int(os.environ.get("NUCSEG_BENCH_THREADS", "1"))
TILE = int(os.environ.get("NUCSEG_BENCH_WSI_TILE", "512"))
RUN_MODEL = os.environ.get("NUCSEG_BENCH_WSI_MODEL", "1") != "0"
BACKENDS = [b for b in os.environ.get("NUCSEG_BENCH_WSI_BACKENDS", "torch,onnx").split(",") if b]
# Model files run beside the bundled one (os.pathsep-separated), e.g. one trained at 0.5 um/px.
MODELS = [m for m in os.environ.get("NUCSEG_BENCH_WSI_MODELS", "").split(os.pathsep) if m]
_RSS: dict[tuple[str, str, str], float] = {}
_TILES: dict[tuple[str, str, str], int] = {}


def _weights() -> Path:
    import nucseg

    return Path(nucseg.__file__).parent / "models" / "weights" / "default.safetensors"


def _devices() -> list[str]:
    try:
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    except ImportError:
        return ["cpu"]


def _cases() -> list[tuple[str, str, str]]:
    cases = [("hematoxylin", "cpu", "torch")]
    if RUN_MODEL and _weights().is_file():
        cases += [("default", "cpu", b) for b in BACKENDS]
        cases += [("default", d, "torch") for d in _devices() if d != "cpu"]
    for path in MODELS:
        if not Path(path).is_file():
            raise FileNotFoundError(f"NUCSEG_BENCH_WSI_MODELS: {path} is not a file")
        cases += [(path, "cpu", b) for b in BACKENDS]
    return cases


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

    root = tmp_path_factory.mktemp("wsi_bench")
    out = {}
    for name, side in (("1x", SIDE), ("4x", 2 * SIDE)):
        rgb, _, _ = synthetic_he((side, side), seed=7, spacing=34.0)
        out[name] = write_pyramid_tiff(root / f"{name}.tif", rgb, mpp=0.25, levels=4)
        del rgb
    return out


def _run_child(slide: Path, out: Path, model: str, device: str, backend: str = "torch") -> dict:
    cmd = [sys.executable, __file__, str(slide), str(out), model, device, str(THREADS), str(TILE), backend]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", ["1x", "4x"])
@pytest.mark.parametrize(("model", "device", "backend"), _cases())
def test_wsi_end_to_end(benchmark, slides, tmp_path, model: str, device: str, backend: str, size: str) -> None:
    if backend == "onnx":
        pytest.importorskip("onnxruntime", reason="backend onnx needs pip install 'nucseg[onnx]'")
    result: dict = {}

    def run() -> None:
        out = tmp_path / f"{Path(model).stem}-{device}-{backend}-{size}-{len(result)}.zarr"
        result.update(_run_child(slides[size], out, model, device, backend))

    benchmark.group = f"wsi {model} {device} {backend}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["nuclei"] > 0
    benchmark.extra_info.update({k: v for k, v in result.items() if k != "timings"})
    key = f"{device}-{backend}"
    _RSS[(model, key, size)] = result["peak_rss_mb"]
    _TILES[(model, key, size)] = int(result["tiles"].split("/")[0])
    print(f"\n{model} {key} {size}: " + json.dumps({k: v for k, v in result.items() if k != "timings"}))
    other = "1x" if size == "4x" else "4x"
    if (model, key, other) in _RSS:
        small, large = _RSS[(model, key, "1x")], _RSS[(model, key, "4x")]
        print(f"peak RSS 4x / 1x = {large / small:.3f}")
        # The runner keeps up to 2 tiles per post-processing thread in flight (pipeline.py):
        # memory is bounded by that, so the comparison needs a 1x slide with more tiles.
        in_flight = 2 * usable_cpus()  # the runner's default post threads
        if _TILES[(model, key, "1x")] <= in_flight:
            print(f"(RSS not compared: the 1x slide has {_TILES[(model, key, '1x')]} tissue tiles, not more than "
                  f"the {in_flight} in flight; raise NUCSEG_BENCH_WSI_SIDE or lower NUCSEG_BENCH_WSI_TILE)")
        else:
            assert large <= 1.10 * small, f"peak RSS grows with the slide: {small:.0f} MB -> {large:.0f} MB"


def _child(slide: str, out: str, model: str, device: str, threads: int, backend: str = "torch") -> None:
    """Run one slide in this process and print a JSON line of figures."""
    if model != "hematoxylin":
        import torch

        torch.set_num_threads(threads)
    import resource

    from nucseg.wsi import segment_slide

    usage = resource.getrusage(resource.RUSAGE_SELF)
    s = segment_slide(
        slide,
        out,
        model=None if model == "default" else model,
        device=device,
        backend=backend if model != "hematoxylin" else "torch",
        tile=TILE,
        batch_size=2,
        threads=usable_cpus(),
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of the run, all threads: unlike the wall time, hardly changed by other jobs on the machine.
    cpu_s = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    t = s.timings
    stages = {k: t[k] for k in ("read", "infer", "post", "write")}
    busy = sum(stages.values())
    px = s.size[0] * s.size[1]
    tissue_px = s.tissue_fraction * px
    wall = t["wall"]
    figures = {
        "model": model,
        "device": device,
        "backend": backend,
        "threads": threads,
        "slide_px": f"{s.size[1]}x{s.size[0]}",
        "mpp": round(s.mpp[0], 4),
        "nuclei": s.nuclei,
        "tiles": f"{s.tiles_tissue}/{s.tiles}",
        "tissue_fraction": round(s.tissue_fraction, 3),
        "wall_s": round(wall, 2),
        "slide_mpix_per_s": round(px / 1e6 / wall, 3),
        "tissue_mpix_per_s": round(tissue_px / 1e6 / wall, 3),
        "tissue_mm2_per_min": round(s.tissue_mm2 / wall * 60, 3),
        "cpu_s": round(cpu_s, 2),
        "tissue_mm2_per_cpu_min": round(s.tissue_mm2 / cpu_s * 60, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        **{f"share_{k}": round(v / busy, 3) for k, v in stages.items()},
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "timings": t,
    }
    print(json.dumps(figures))


PATH_SIDE = int(os.environ.get("NUCSEG_BENCH_PATH_SIDE", "4096"))
PATH_TILE = int(os.environ.get("NUCSEG_BENCH_PATH_TILE", "2048"))
PATH_ROUNDS = int(os.environ.get("NUCSEG_BENCH_PATH_ROUNDS", "3"))
BASELINE = os.environ.get("NUCSEG_BENCH_BASELINE", "")
_STAGES = ("read", "infer", "post", "write")


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The slide, its precomputed hematoxylin map, and a small warm-up slide with its map."""
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.precomputed import precompute
    from nucseg.wsi.predictors import HematoxylinPredictor

    root = tmp_path_factory.mktemp("wsi_path")
    out = {}
    for name, side, tile in (("slide", PATH_SIDE, PATH_TILE), ("warm", 512, 256)):
        rgb, _, _ = synthetic_he((side, side), seed=11, spacing=34.0)
        out[name] = write_pyramid_tiff(root / f"{name}.tif", rgb, mpp=0.25, levels=4)
        del rgb
        precompute(out[name], HematoxylinPredictor(), root / f"{name}_map", tile=tile)
        out[f"{name}_map"] = root / f"{name}_map"
    return out


def _run_path_child(replay: dict[str, Path], out: Path, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, __file__, "--path", str(replay["slide"]), str(replay["slide_map"]), str(out),
           str(replay["warm"]), str(replay["warm_map"]), str(PATH_TILE)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_slide_path(benchmark, replay, tmp_path) -> None:
    """Everything but the network, on a replayed map: throughput, stage shares, peak RSS."""
    result: dict = {}

    def run() -> None:
        result.update(_run_path_child(replay, tmp_path / f"path-{len(result)}.zarr"))

    benchmark.group = "wsi slide path (precomputed map)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["nuclei"] > 0
    benchmark.extra_info.update(result)
    print("\nslide path: " + json.dumps(result))


@pytest.mark.skipif(not BASELINE, reason="NUCSEG_BENCH_BASELINE (another checkout's python/) not set")
def test_slide_path_vs_baseline(benchmark, replay, tmp_path) -> None:
    """This code and the baseline's on the same slide, interleaved; prints the medians' ratios."""
    import statistics

    runs: dict[str, list[dict]] = {"baseline": [], "this": []}

    def interleaved() -> None:
        for r in range(PATH_ROUNDS):
            for name, pp in (("baseline", BASELINE), ("this", None)):
                runs[name].append(_run_path_child(replay, tmp_path / f"{name}-{r}.zarr", pp))

    benchmark.group = "wsi slide path vs baseline"
    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    keys = ("wall_s", "cpu_s", "tissue_mm2_per_cpu_min", "slide_mpix_per_s", "peak_rss_mb")
    med = {name: {k: statistics.median(x[k] for x in rs) for k in keys}
           for name, rs in runs.items()}
    for name, rs in runs.items():
        print(f"\n{name}: " + json.dumps(med[name]) + " rounds: " + json.dumps([x["cpu_s"] for x in rs]))
    ratios = {k: round(med["baseline"][k] / med["this"][k], 3) for k in ("wall_s", "cpu_s")}
    print(f"baseline / this: wall {ratios['wall_s']:.2f}x, cpu {ratios['cpu_s']:.2f}x")
    benchmark.extra_info.update({"baseline_over_this_wall": ratios["wall_s"], "baseline_over_this_cpu": ratios["cpu_s"],
                                 **{f"this_{k}": v for k, v in med["this"].items()}})
    # The same output, label for label and row for row (the stores of round 0).
    import numpy as np
    import pyarrow.parquet as pq
    import zarr

    stores = [tmp_path / f"{name}-0.zarr" for name in ("baseline", "this")]
    a, b = (zarr.open_array(str(p / "labels" / "nuclei" / "0"), mode="r")[...] for p in stores)
    np.testing.assert_array_equal(a, b)
    tables = [pq.read_table(p / "nucseg" / "nuclei.parquet") for p in stores]
    if not tables[0].equals(tables[1]):  # the same rows; float32 columns within rounding
        assert tables[0].schema == tables[1].schema and tables[0].num_rows == tables[1].num_rows
        for name in tables[0].column_names:
            x, y = (t.column(name).to_numpy() for t in tables)
            if name == "orientation_deg":  # an axis: -90 and +90 degrees are the same one
                np.testing.assert_allclose((x - y.astype(np.float64) + 90) % 180 - 90, 0, atol=1e-4, err_msg=name)
            elif x.dtype.kind == "f":
                # (e.g. eccentricity sqrt(1 - l2/l1) of a round nucleus: 0 from exact moments, ~1e-8 before)
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _path_child(slide: str, folder: str, out: str, warm: str, warm_folder: str, tile: int) -> None:
    """Run the slide path on a replayed map in this process and print a JSON line of figures."""
    from nucseg.wsi import segment_slide
    from nucseg.wsi.precomputed import PrecomputedPredictor

    threads = usable_cpus()
    segment_slide(warm, out + ".warm", model=PrecomputedPredictor(warm_folder), tile=256, threads=threads)
    pred = PrecomputedPredictor(folder)
    c0 = _cpu_seconds()
    s = segment_slide(slide, out, model=pred, tile=tile, threads=threads)
    cpu = _cpu_seconds() - c0
    t = s.timings
    busy = sum(t[k] for k in _STAGES)
    px = s.size[0] * s.size[1]
    steps = {k: v for k, v in t.items() if "." in k}
    figures = {
        "slide_px": f"{s.size[1]}x{s.size[0]}",
        "tile": tile,
        "threads": threads,
        "nuclei": s.nuclei,
        "tiles": f"{s.tiles_tissue}/{s.tiles}",
        "tissue_mm2": round(s.tissue_mm2, 3),
        "wall_s": round(t["wall"], 3),
        "cpu_s": round(cpu, 3),
        "tissue_mm2_per_min": round(s.tissue_mm2 / t["wall"] * 60, 2),
        "tissue_mm2_per_cpu_min": round(s.tissue_mm2 / cpu * 60, 2),
        "slide_mpix_per_s": round(px / 1e6 / t["wall"], 2),
        "slide_mpix_per_cpu_s": round(px / 1e6 / cpu, 2),
        "prepare_s": round(t["wall"] - t["tiles_wall"] - t["finish"], 3),
        "tiles_wall_s": round(t["tiles_wall"], 3),
        "finish_s": round(t["finish"], 3),
        **{f"share_{k}": round(t[k] / busy, 3) for k in _STAGES},
        **{f"share_{k}": round(v / busy, 3) for k, v in sorted(steps.items())},
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1] == "--path":
        _path_child(*sys.argv[2:7], int(sys.argv[7]))
    else:
        TILE = int(sys.argv[6])
        _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[7])


READ_SIDE = int(os.environ.get("NUCSEG_BENCH_READ_SIDE", "4096"))
READ_BOXES = int(os.environ.get("NUCSEG_BENCH_READ_BOXES", "8"))
READ_ROUNDS = int(os.environ.get("NUCSEG_BENCH_READ_ROUNDS", "3"))
_READ_SLIDES = [("aperio", "jpeg"), ("aperio", "aperio-j2k-rgb"), ("aperio", "aperio-j2k-ycbcr"),
                ("generic", "jpeg2000"), ("generic", "deflate")]
_READ_MODES = [(1, "shared"), (2, "shared"), (2, "own")]


@pytest.fixture(scope="module")
def read_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic slides of ``test_readers`` (written once), and the real SVS when present."""
    pytest.importorskip("imagecodecs", reason="the JPEG and JPEG 2000 slides need pip install 'nucseg[fast-read]'")
    import numpy as np

    from nucseg.wsi.demo import synthetic_he, write_tiled_slide

    root = tmp_path_factory.mktemp("readers")
    base = min(READ_SIDE, 2048)  # a 2048 px synthetic image repeated: the decoders' work, without minutes of drawing
    img, _, _ = synthetic_he((base, base), seed=7, spacing=34.0)
    rgb = np.tile(img, (READ_SIDE // base, READ_SIDE // base, 1))
    out = {f"{lay} {comp}": write_tiled_slide(root / f"{lay}-{comp}.{'svs' if lay == 'aperio' else 'tif'}", rgb,
                                              compression=comp, layout=lay, levels=3)
           for lay, comp in _READ_SLIDES}
    real = Path(os.environ.get("NUCSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if (real / "wsi" / "CMU-1-Small-Region.svs").is_file():
        out["real CMU-1 SVS"] = real / "wsi" / "CMU-1-Small-Region.svs"
    return out


def _read_child(path: Path, level: int, reader: str, threads: int, mode: str) -> dict:
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, str(here / "_readers.py"), "--child", str(path), str(level), reader, str(threads), mode,
           str(READ_BOXES)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("threads", "mode"), _READ_MODES, ids=[f"{t}t-{m}" for t, m in _READ_MODES])
@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("reader", ["tifffile", "tiffslide", "pyvips", "openslide"])
@pytest.mark.parametrize("slide", [f"{lay} {comp}" for lay, comp in _READ_SLIDES] + ["real CMU-1 SVS"])
def test_readers(benchmark, read_slides, slide: str, reader: str, level: int, threads: int, mode: str) -> None:
    """One reader against OpenSlide on the same read boxes, in alternating fresh processes."""
    import statistics

    import _readers

    if slide not in read_slides:
        pytest.skip("the real slide is not under NUCSEG_DATA")
    why = _readers.available(reader)
    if why:
        pytest.skip(f"{reader} is not installed: {why}")
    path = read_slides[slide]
    from nucseg.wsi.reader import OpenSlideReader, SlideError, TiffReader

    try:
        with OpenSlideReader(path) as r:
            n_levels, has_openslide, mpp = len(r.levels), True, r.require_mpp()[0]
    except SlideError:
        if reader == "openslide":
            pytest.skip("OpenSlide cannot read this slide")
        with TiffReader(path) as r:
            n_levels, has_openslide, mpp = len(r.levels), False, r.require_mpp()[0]
    if level >= n_levels:
        pytest.skip(f"the slide has {n_levels} level(s)")
    ref = "openslide" if has_openslide else "tifffile"
    with_ref = reader != ref
    try:
        first = _readers.boxes(*_readers.level_size(path, level), 3)
        diff = _readers.max_diff(reader, ref, path, level, first) if with_ref else 0
    except Exception as exc:  # noqa: BLE001 - a reader that cannot decode this compression
        pytest.skip(f"{reader} cannot read {slide}: {type(exc).__name__}: {str(exc)[:80]}")
    runs: dict[str, list[dict]] = {reader: [], ref: []}

    def interleaved() -> None:
        for _ in range(READ_ROUNDS):
            for name in ([ref] if with_ref else []) + [reader]:
                runs[name].append(_read_child(path, level, name, threads, mode))

    benchmark.group = f"readers {slide} L{level} {threads}t-{mode}"
    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    mps = statistics.median(x["mpix_s"] for x in runs[reader])
    base = statistics.median(x["mpix_s"] for x in runs[ref]) if with_ref else mps
    um2_per_px = (mpp * 2**level) ** 2
    info = {
        "reader": reader, "slide": slide, "level": level, "threads": threads, "handles": mode,
        "boxes": runs[reader][0]["boxes"], "box_px": runs[reader][0]["box"],
        "mpix_s": round(mps, 2), "mm2_per_min": round(mps * um2_per_px * 60, 2),
        f"{ref}_mpix_s": round(base, 2), f"ratio_to_{ref}": round(mps / base, 3),
        "max_abs_diff": diff, "diff_vs": ref,
        "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs[reader]), 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    benchmark.extra_info.update(info)
    print(f"\n{slide} L{level} {threads}t-{mode} {reader}: " + json.dumps(info))

