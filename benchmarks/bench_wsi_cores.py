"""End to end on 1 and 2 cores: the bundled network on a slide, per backend, with the
default thread policy (nothing set by hand).

Run::

    python -m pytest benchmarks/bench_wsi_cores.py --benchmark-only -q -s

Each case runs ``nucseg.wsi.segment_slide`` in a fresh child process whose CPU
affinity is set to 1 or 2 cores *before* torch is imported, as ``taskset`` or a batch
scheduler would: the thread counts (torch's intra-op pool, ONNX Runtime's, the
post-processing pool, the readers) then follow from :func:`nucseg._cpu.usable_cpus`,
which is what a user gets. The slide is the real Aperio slide of ``shared/data``
(``NUCSEG_DATA``; 0.499 um/px, read at level 0 and resampled to the model's 0.25 um/px)
or, without it, the synthetic demo slide. Records tissue mm^2 per minute at the
processing resolution, Mpix/s of tissue, CPU-seconds, the stage shares, the load
average, and at the end the ratios 2 cores / 1 core and ONNX / torch from this run.
Each child first segments a small synthetic slide, so imports and first calls are paid
before the measured run. ``NUCSEG_BENCH_CORES_BACKENDS`` (default
``torch,onnx,openvino,openvino:bfloat16``; ``backend:precision`` sets the precision)
chooses the backends (one missing is skipped), ``NUCSEG_BENCH_CORES_TILE`` the tile and ``NUCSEG_BENCH_CORES_BATCH``
the batch size (defaults 2048 and 1, the CLI's). ``NUCSEG_BENCH_CORES_MODELS``
(``os.pathsep``-separated model files) adds models beside the bundled one, e.g. one
trained at 0.5 um/px, which reads the real slide at its own 0.499 um/px (no resampling):
``processing_mpp`` in the results is the resolution each ran at.
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

BACKENDS = [b for b in os.environ.get("NUCSEG_BENCH_CORES_BACKENDS", "torch,onnx,openvino,openvino:bfloat16").split(",") if b]
TILE = int(os.environ.get("NUCSEG_BENCH_CORES_TILE", "2048"))  # the CLI's default
BATCH = int(os.environ.get("NUCSEG_BENCH_CORES_BATCH", "1"))  # the CLI's default
_DATA = Path(os.environ.get("NUCSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
REAL = _DATA / "wsi" / "CMU-1-Small-Region.svs"
MODELS = ["default", *(m for m in os.environ.get("NUCSEG_BENCH_CORES_MODELS", "").split(os.pathsep) if m)]
_RESULTS: dict[tuple[str, str, int], dict] = {}


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    if REAL.is_file():
        return REAL
    from nucseg.wsi.demo import write_demo_slide

    path = tmp_path_factory.mktemp("slide") / "demo.tiff"
    write_demo_slide(path, (4096, 4096))
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_cores(benchmark, slide, tmp_path, model: str, cores: int, backend: str) -> None:
    if model != "default" and not Path(model).is_file():
        raise FileNotFoundError(f"NUCSEG_BENCH_CORES_MODELS: {model} is not a file")
    if cores > usable_cpus():
        pytest.skip(f"needs {cores} cores, this process may use {usable_cpus()}")
    engine = backend.split(":")[0]
    if engine in ("onnx", "openvino"):
        pytest.importorskip("onnxruntime" if engine == "onnx" else "openvino",
                            reason=f"backend {engine} needs pip install 'nucseg[{engine}]'")
    result: dict = {}

    def run() -> None:
        cmd = [sys.executable, __file__, str(slide), str(tmp_path / "out.zarr"), str(cores), backend, str(TILE), str(BATCH),
               model]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        result.update(json.loads(res.stdout.strip().splitlines()[-1]))

    benchmark.group = "wsi cores"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["nuclei"] > 0 and result["threads"]["post"] == cores
    benchmark.extra_info.update(result)
    _RESULTS[(model, backend, cores)] = result
    name = Path(model).name
    print(f"\n{name} {backend} {cores} core(s): " + json.dumps(result))
    one, two = _RESULTS.get((model, backend, 1)), _RESULTS.get((model, backend, 2))
    if one and two:  # both core counts measured for this backend
        print(f"{name} {backend}: 2 cores / 1 core = {two['tissue_mm2_per_min'] / one['tissue_mm2_per_min']:.2f}x")
    if backend != "torch" and (model, "torch", cores) in _RESULTS:
        ratio = result["tissue_mm2_per_min"] / _RESULTS[(model, "torch", cores)]["tissue_mm2_per_min"]
        print(f"{name} {backend} / torch on {cores} core(s) = {ratio:.2f}x")
    if model != "default" and ("default", backend, cores) in _RESULTS:
        ratio = result["tissue_mm2_per_min"] / _RESULTS[("default", backend, cores)]["tissue_mm2_per_min"]
        print(f"{name} / bundled, {backend} on {cores} core(s) = {ratio:.2f}x")


def _child(slide: str, out: str, cores: int, backend: str, tile: int, batch_size: int, model: str = "default") -> None:
    """Pin this process to ``cores`` CPUs, then run the slide and print one JSON line.

    ``backend`` may carry a precision: ``"openvino:bfloat16"``.
    """
    label = backend
    backend, _, precision = backend.partition(":")
    precision = precision or "auto"
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import resource
    import tempfile

    import torch

    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import write_demo_slide

    chosen = None if model == "default" else model
    with tempfile.TemporaryDirectory() as warm:  # imports, model load, first calls
        small = Path(warm) / "warm.tiff"
        write_demo_slide(small, (512, 512), levels=1)
        segment_slide(small, Path(warm) / "warm.zarr", model=chosen, backend=backend, precision=precision, device="cpu",
                      progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    s = segment_slide(slide, out, model=chosen, backend=backend, precision=precision, device="cpu", tile=tile,
                      batch_size=batch_size, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    t = s.timings
    busy = sum(t[k] for k in ("read", "infer", "post", "write"))
    px = s.size[0] * s.size[1]
    print(json.dumps({
        "model": Path(model).name,
        "backend": label,
        "cores": cores,
        "threads": {"torch": torch.get_num_threads(), "post": usable_cpus()},
        "slide": Path(slide).name,
        "tile": tile,
        "batch_size": batch_size,
        "slide_px": f"{s.size[1]}x{s.size[0]}",
        "processing_mpp": round(s.mpp[0], 4),
        "nuclei": s.nuclei,
        "tissue_mm2": round(s.tissue_mm2, 3),
        "wall_s": round(t["wall"], 2),
        "tissue_mm2_per_min": round(s.tissue_mm2 / t["wall"] * 60, 3),
        "tissue_mpix_per_s": round(s.tissue_fraction * px / 1e6 / t["wall"], 3),
        "cpu_s": round(cpu_s, 2),
        "cpu_busy_fraction": round(cpu_s / (cores * t["wall"]), 3),
        **{f"share_{k}": round(t[k] / busy, 3) for k in ("read", "infer", "post", "write")},
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
