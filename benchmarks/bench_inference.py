"""Inference speed of every architecture on the CPU (and the GPU when there is one).

Run::

    python -m pytest benchmarks/bench_inference.py --benchmark-only -q \
        --benchmark-columns=min,median,rounds --benchmark-sort=name

Each benchmark records ``extra_info``: megapixels per second of the network's
``predict`` at 512x512 and 1024x1024, and, for the default model, the share of
:func:`nucseg.segment` spent in :func:`nucseg.watershed_dynamics`. The paper's
VGG networks at full width are slow on a CPU (tens of seconds per megapixel on
one thread) and run one round only; ``NUCSEG_BENCH_FULL_VGG=0`` skips them.
Torch runs with one thread unless ``NUCSEG_BENCH_THREADS`` says otherwise.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nucseg  # noqa: E402
from nucseg.inference import ModelConfig, NucleusModel  # noqa: E402
from nucseg.models import build_model  # noqa: E402

THREADS = int(os.environ.get("NUCSEG_BENCH_THREADS", "1"))
FULL_VGG = os.environ.get("NUCSEG_BENCH_FULL_VGG", "1") != "0"

ARCHS = {
    "default": None,  # the bundled trained model
    "pangnet": ("pangnet", {}),
    "unet": ("unet", {"width": 64, "depth": 4}),
    "fcn8s": ("fcn8s", {}),
    "deconvnet": ("deconvnet", {}),
}
HEAVY = {"fcn8s", "deconvnet", "unet"}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _model(name: str, device: str) -> NucleusModel:
    if name == "default":
        return nucseg.load_model(device=device)
    arch, kwargs = ARCHS[name]
    net = build_model(arch, 3, 1, **kwargs)
    cfg = ModelConfig(name, arch, 3, 1, int(net.stride), arch_kwargs=kwargs)
    return NucleusModel(cfg, net, "", torch.device(device))


def _rgb(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("size", [512, 1024])
@pytest.mark.parametrize("name", list(ARCHS))
def test_predict(benchmark, name, size, device):
    if name in HEAVY and device == "cpu" and not FULL_VGG:
        pytest.skip("full-width VGG/U-Net on CPU skipped (NUCSEG_BENCH_FULL_VGG=0)")
    model = _model(name, device)
    rgb = _rgb(size)
    model.predict(rgb[:64, :64])  # warm-up (allocations, cuDNN autotune)
    rounds = 1 if (name in HEAVY and device == "cpu") else 3
    out = benchmark.pedantic(model.predict, args=(rgb,), rounds=rounds, iterations=1)
    assert out.shape == (size, size) and np.isfinite(out).all()
    benchmark.extra_info.update(
        mpix_per_s=round(size * size / 1e6 / benchmark.stats["median"], 3),
        device=torch.cuda.get_device_name() if device == "cuda" else f"cpu x{THREADS} threads",
        amp=device == "cuda",
    )


@pytest.mark.parametrize("size", [512, 1024])
def test_segment_default_watershed_share(benchmark, size):
    model = nucseg.load_model(device="cpu")
    rgb = _rgb(size)
    if size == 1024:
        # Real-looking tissue: tile a TNBC image when the data is present, else noise.
        path = os.environ.get("NUCSEG_DATA")
        if path and os.path.isdir(os.path.join(path, "tnbc")):
            from nucseg.data import read_rgb

            tile = read_rgb(os.path.join(path, "tnbc", "Slide_04", "04_1.png"))
            rgb = np.tile(tile, (2, 2, 1))

    def run():
        t0 = time.perf_counter()
        labels, prob = nucseg.segment(rgb, model, return_map=True)
        t1 = time.perf_counter()
        nucseg.watershed_dynamics(prob, model.config.lam, threshold=model.config.threshold)
        t2 = time.perf_counter()
        return labels, (t2 - t1) / (t1 - t0)

    labels, share = benchmark.pedantic(run, rounds=3, iterations=1)
    assert labels.shape == (size, size)
    benchmark.extra_info.update(
        mpix_per_s=round(size * size / 1e6 / benchmark.stats["median"], 3),
        watershed_share=round(share, 4),
    )


# ------------------------------------------------------------------ CPU backends (issue 18)
#
# The bundled model on a 1024x1024 tile, torch vs ONNX Runtime (nucseg.backends) on 1 and 2
# threads. Each case runs in a fresh child process, so its peak RSS (VmHWM) is its own and
# no thread pool of another case lingers; the child times `predict` (5 rounds after a warm-up;
# Mpix/s from the fastest, which a CPU shared with other jobs disturbs least, and the process
# CPU seconds per call, which contention hardly changes) and the ratio is to torch float32 on
# the same thread count in the same run. NUCSEG_BENCH_BACKEND_SIZE changes the tile side.

BACKEND_SIZE = int(os.environ.get("NUCSEG_BENCH_BACKEND_SIZE", "1024"))
BACKEND_CASES = ["torch", "torch-bfloat16", "onnx"]
_BACKEND_MPIX: dict[tuple[str, int], float] = {}


def _backend_child(backend: str, threads: int, size: int) -> dict:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, __file__, backend, str(threads), str(size)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", BACKEND_CASES)
def test_backend_cpu(benchmark, backend, threads):
    if backend == "onnx":
        pytest.importorskip("onnxruntime", reason="backend onnx needs pip install 'nucseg[onnx]'")
    result: dict = {}
    benchmark.group = f"backend {BACKEND_SIZE}px x{threads} threads"
    benchmark.pedantic(lambda: result.update(_backend_child(backend, threads, BACKEND_SIZE)), rounds=1, iterations=1)
    _BACKEND_MPIX[(backend, threads)] = result["mpix_per_s"]
    base = _BACKEND_MPIX.get(("torch", threads))
    result["ratio_to_torch"] = round(result["mpix_per_s"] / base, 3) if base else None
    benchmark.extra_info.update(result)
    print(f"\n{backend} x{threads}: {result}")


def _backend_main(backend: str, threads: int, size: int) -> None:
    """Child process: time `predict` of one backend and print a JSON line."""
    import json

    from _rss import peak_rss_bytes

    torch.set_num_threads(threads)
    kind, _, precision = backend.partition("-")
    model = nucseg.load_model(device="cpu", backend=kind, precision=precision or "float32", threads=threads)
    rgb = _rgb(size)
    model.predict(rgb)  # warm-up: allocations, oneDNN primitive cache, ORT arena, export or cache read
    times, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        model.predict(rgb)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best, median = min(times), float(np.median(times))
    print(json.dumps({
        "backend": backend,
        "threads": threads,
        "size": size,
        "min_s": round(best, 4),
        "median_s": round(median, 4),
        "cpu_s": round(float(np.median(cpu)), 4),
        "mpix_per_s": round(size * size / 1e6 / best, 4),
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "cpu": f"{os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _backend_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
