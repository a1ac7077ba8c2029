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
