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

Models: the classical hematoxylin predictor (always) and the bundled network (when
its weights exist; ``NUCSEG_BENCH_WSI_MODEL=0`` skips it). Torch uses
``NUCSEG_BENCH_THREADS`` threads (default 1). With a CUDA device the bundled model
also runs there (``--device cuda``). On the CPU the bundled model runs with each backend
of ``NUCSEG_BENCH_WSI_BACKENDS`` (comma-separated, default ``torch,onnx``; onnx is skipped
when onnxruntime is missing), ONNX Runtime with the same thread count as torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _rss import peak_rss_bytes  # benchmarks/ is on sys.path, as a script and under pytest

SIDE = int(os.environ.get("NUCSEG_BENCH_WSI_SIDE", "2048"))
THREADS = int(os.environ.get("NUCSEG_BENCH_THREADS", "1"))
TILE = int(os.environ.get("NUCSEG_BENCH_WSI_TILE", "512"))
RUN_MODEL = os.environ.get("NUCSEG_BENCH_WSI_MODEL", "1") != "0"
BACKENDS = [b for b in os.environ.get("NUCSEG_BENCH_WSI_BACKENDS", "torch,onnx").split(",") if b]
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
        out = tmp_path / f"{model}-{device}-{backend}-{size}-{len(result)}.zarr"
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
        in_flight = 2 * (os.cpu_count() or 1)
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
        threads=os.cpu_count() or 1,
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


if __name__ == "__main__":
    TILE = int(sys.argv[6])
    _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[7])
