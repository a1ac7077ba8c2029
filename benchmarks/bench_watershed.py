"""Speed and memory of nucseg.watershed_dynamics beside its baselines, same input, same run.

Run: python -m pytest benchmarks/bench_watershed.py --benchmark-only -p no:randomly
A summary table (Mpix/s and ratios) is printed at the end of the run.

Every method's result is checked against nucseg's on the same map in the same run:
DIPlib and the scikit-image pipeline must give the same objects, one to one at IoU >= 0.5,
for at least 99 % of them (measured at 2048^2: DIPlib 99.94 % uint8, 99.97 % float32;
scikit-image 100 % and 99.97 %); the floor (no splitting) must hold each nucseg object
inside one of its components. DIPlib is required (the `bench` extra installs it): without
it the module fails with an error, unless NUCSEG_BENCH_NO_DIPLIB=1 opts out on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

import nucseg
from nucseg.metrics import object_scores
from nucseg.postprocess import foreground
from nucseg.synthetic import probability_map

try:
    import diplib as dip
except ImportError as exc:  # fail loudly: a silent skip hid the fastest baseline before
    if os.environ.get("NUCSEG_BENCH_NO_DIPLIB") != "1":
        raise ImportError(
            "benchmarks/bench_watershed.py compares nucseg with DIPlib, which is not installed: "
            "pip install 'nucseg[bench]' (or diplib), or set NUCSEG_BENCH_NO_DIPLIB=1 to leave it out on purpose"
        ) from exc
    dip = None

MATCHED = 0.99  # fraction of objects a baseline must share with nucseg (one to one, IoU >= 0.5)

SIZES = (2048, 4096)
QUANTISED = ["float32 (float16 values)", "float32 (1/1024 steps)", "float32 (k/255)"]
# The float16 map's levels as a 16-bit integer map (k = round(65535 v), one-to-one on them but
# for a few dozen levels below 2^-16): how fast the same levels go through the integer path.
F16_LEVELS = "uint16 (float16 levels)"
LAM = {"uint8": 7.0, "float32": 7.0 / 255, **dict.fromkeys(QUANTISED, 7.0 / 255), F16_LEVELS: 7.0 / 255 * 65535}
THRESHOLD = {"uint8": 127.0, "float32": 0.5, **dict.fromkeys(QUANTISED, 0.5), F16_LEVELS: 32767.0}


def _maps(size: int) -> dict[str, np.ndarray]:
    prob, _ = probability_map((size, size), seed=size)
    return {
        "float32": prob,
        "uint8": np.round(prob * 255).astype(np.uint8),
        # Quantised float maps, as float16 inference gives: few distinct values, many ties.
        "float32 (float16 values)": prob.astype(np.float16).astype(np.float32),
        "float32 (1/1024 steps)": (np.round(prob * 1024) / 1024).astype(np.float32),
        # A uint8 map divided by 255, as a PNG probability map is read.
        "float32 (k/255)": (np.round(prob * 255).astype(np.uint8) / np.float32(255)).astype(np.float32),
        F16_LEVELS: np.round(prob.astype(np.float16).astype(np.float64) * 65535).astype(np.uint16),
    }


_CACHE: dict[int, dict[str, np.ndarray]] = {}


def maps(size: int) -> dict[str, np.ndarray]:
    if size not in _CACHE:
        _CACHE[size] = _maps(size)
    return _CACHE[size]


def skimage_pipeline(prob: np.ndarray, lam: float, threshold: float) -> np.ndarray:
    """The scikit-image pipeline nucseg replaces: h-maxima inside the mask + watershed."""
    f = prob.astype(np.float64)
    mask = f > threshold
    low = f.min() - lam - 1.0
    g = np.where(mask, f, low)
    fp = ndi.generate_binary_structure(2, 1)
    rec = reconstruction(np.maximum(g - lam, low), g, method="dilation", footprint=fp)
    markers = cc_label(local_maxima(rec, connectivity=1) & mask, connectivity=1)
    return watershed(-f, markers, mask=mask, connectivity=1, watershed_line=True)


def floor(prob: np.ndarray, threshold: float) -> np.ndarray:
    """The floor: threshold plus connected components, no splitting at all."""
    return ndi.label(foreground(prob, threshold))[0]


def diplib_watershed(prob: np.ndarray, lam: float, threshold: float) -> np.ndarray:
    inv = dip.Image((prob.max() - prob) if prob.dtype.kind == "f" else (255 - prob))
    return np.asarray(
        dip.Watershed(inv, dip.Image(foreground(prob, threshold)), connectivity=1, maxDepth=lam, maxSize=0,
                      flags={"labels", "low first"})
    )


def matched_fraction(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Objects matched one to one at IoU >= 0.5, over the larger of the two counts."""
    theirs = theirs.astype(np.int32, copy=False)
    s = object_scores(ours, theirs, iou_threshold=0.5 - 1e-9)  # object_scores matches IoU > threshold
    return s.tp / max(s.tp + s.fn, s.tp + s.fp, 1)


def assert_same_objects(benchmark, prob: np.ndarray, lam: float, theirs: np.ndarray) -> None:
    ours = nucseg.watershed_dynamics(prob, lam)
    fraction = matched_fraction(ours, theirs)
    benchmark.extra_info["matched"] = round(fraction, 5)
    assert fraction >= MATCHED, f"only {fraction:.4f} of objects match nucseg's at IoU >= 0.5"


def _record(benchmark, size: int, method: str, dtype: str) -> None:
    benchmark.extra_info.update({"size": size, "method": method, "dtype": dtype, "mpix": size * size / 1e6})
    benchmark.group = f"watershed {size}x{size} {dtype}"


@pytest.mark.parametrize("dtype", ["uint8", "float32", *QUANTISED, F16_LEVELS])
@pytest.mark.parametrize("size", SIZES)
def test_nucseg(benchmark, size, dtype):
    prob = maps(size)[dtype]
    _record(benchmark, size, "nucseg", dtype)
    labels = benchmark(nucseg.watershed_dynamics, prob, LAM[dtype])
    assert labels.max() > 1000  # it really segmented the thousands of nuclei
    if dtype in QUANTISED:  # their own queue paths, checked in the same run
        check_quantised(benchmark, dtype, prob)
    if dtype == F16_LEVELS:  # the same map as the float16 one, so (nearly) the same objects
        f16 = maps(size)["float32 (float16 values)"]
        assert_same_objects(benchmark, f16, LAM["float32 (float16 values)"], labels)


def check_quantised(benchmark, dtype: str, prob: np.ndarray) -> None:
    """A quantised map's objects are the scikit-image pipeline's on it (one to one, IoU >= 0.5);
    a map of k/255 or k/1024 gives exactly the labels of the integer map k (ByteQueue and the
    16-bit path), with lam halfway between two levels so that no rounding can tip a dynamics."""
    assert_same_objects(benchmark, prob, LAM[dtype], skimage_pipeline(prob, LAM[dtype], THRESHOLD[dtype]))
    steps = {"float32 (k/255)": (255, np.uint8), "float32 (1/1024 steps)": (1024, np.uint16)}
    if dtype in steps:
        n, int_dtype = steps[dtype]
        k = np.rint(prob.astype(np.float64) * n).astype(int_dtype)
        assert np.array_equal((k / np.float32(n)).astype(np.float32), prob)  # the map is k / n
        ours = nucseg.watershed_dynamics(prob, 7.5 / n, threshold=0.5)
        theirs = nucseg.watershed_dynamics(k, 7.5, threshold=0.5 * n)
        assert np.array_equal(ours, theirs), f"{dtype}: not the labels of the integer map"


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("size", SIZES)
def test_floor(benchmark, size, dtype):
    prob = maps(size)[dtype]
    _record(benchmark, size, "floor (threshold + ndi.label)", dtype)
    components = benchmark(floor, prob, THRESHOLD[dtype])
    # No splitting, so no one-to-one match: each nucseg object lies inside one component.
    ours = nucseg.watershed_dynamics(prob, LAM[dtype])
    pairs = np.unique(np.stack([ours[ours > 0], components[ours > 0]]), axis=1)
    assert (components[ours > 0] > 0).all() and pairs.shape[1] == ours.max()


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("size", SIZES)
def test_diplib(benchmark, size, dtype):
    if dip is None:
        pytest.skip("NUCSEG_BENCH_NO_DIPLIB=1: DIPlib left out on purpose")
    prob = maps(size)[dtype]
    _record(benchmark, size, "DIPlib Watershed", dtype)
    labels = benchmark.pedantic(diplib_watershed, (prob, LAM[dtype], THRESHOLD[dtype]), rounds=3, iterations=1)
    assert_same_objects(benchmark, prob, LAM[dtype], labels)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("size", SIZES)
def test_skimage(benchmark, size, dtype):
    prob = maps(size)[dtype]
    _record(benchmark, size, "scikit-image pipeline", dtype)
    labels = benchmark.pedantic(skimage_pipeline, (prob, LAM[dtype], THRESHOLD[dtype]), rounds=1, iterations=1)
    assert labels.max() == nucseg.watershed_dynamics(prob, LAM[dtype]).max()
    assert_same_objects(benchmark, prob, LAM[dtype], labels)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_two_threads_two_tiles(benchmark, dtype):
    """Two tiles on two threads against the same two tiles one after the other."""
    tiles = [maps(2048)[dtype], np.ascontiguousarray(maps(2048)[dtype][::-1])]
    lam = LAM[dtype]

    def serial():
        return [nucseg.watershed_dynamics(t, lam) for t in tiles]

    def threaded():
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda t: nucseg.watershed_dynamics(t, lam), tiles))

    def best(fn, n=5):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    benchmark.group = f"threads {dtype}"
    t_serial = best(serial)
    benchmark.extra_info.update({"method": "2 threads", "dtype": dtype, "serial_s": t_serial})
    result = benchmark.pedantic(threaded, rounds=5, iterations=1)
    benchmark.extra_info["speedup"] = t_serial / benchmark.stats.stats.min
    assert all(np.array_equal(a, b) for a, b in zip(result, serial()))


_RSS_PROBE = """
import json, sys
import numpy as np
import nucseg

sys.path.insert(0, sys.argv[2])  # this folder, for _rss
from _rss import peak_rss_bytes as peak

prob = np.load(sys.argv[1])
lam = 0.03 if prob.dtype == np.float32 else 7
nucseg.watershed_dynamics(prob[:64, :64], lam)  # imports and first-call allocations
out = np.ones(prob.shape, np.int32)  # an output's worth of pages, freed: the output reuses them
del out
before = peak()
if len(sys.argv) > 3:  # control: hold 4 bytes per pixel during the call
    waste = np.ones(prob.shape, np.int32)
labels = nucseg.watershed_dynamics(prob, lam)
after = peak()
print(json.dumps({"extra_bytes_per_pixel": (after - before) / prob.size, "objects": int(labels.max())}))
"""


def _one_component(dtype: str) -> np.ndarray:
    """The worst case for memory: a smooth 4096^2 map entirely above the threshold, so
    the whole image is one foreground component (tens of thousands of maxima)."""
    rng = np.random.default_rng(0)
    f = ndi.gaussian_filter(rng.random((4096, 4096), dtype=np.float32), 3)
    f = 0.55 + 0.45 * (f - f.min()) / np.ptp(f)
    if dtype == "uint8":
        return np.round(f * 255).astype(np.uint8)
    return f.astype(np.float16).astype(np.float32) if dtype == "float32 (float16 values)" else f.astype(np.float32)


def _one_pixel_runs(dtype: str) -> np.ndarray:
    """The worst case for the run-length bookkeeping: foreground every other column, so
    every foreground pixel is a run of its own (2048 components of one plateau each)."""
    top = 255 if dtype == "uint8" else 1.0
    return np.tile(np.array([0.8 * top, 0], dtype=np.uint8 if dtype == "uint8" else np.float32), (4096, 2048))


_MAPS = {"one component": _one_component, "one-pixel runs": _one_pixel_runs}


@pytest.mark.parametrize("kind", ["realistic", "one component", "one-pixel runs"])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float32 (float16 values)"])
def test_peak_memory(benchmark, dtype, kind, tmp_path):
    """Peak RSS beyond input and output, per pixel, at 4096x4096, in a fresh process that
    holds only the map (loaded from disk) before the call. The realistic map must stay
    within 8 bytes per pixel; the worst cases (one component; one-pixel runs) are recorded."""
    path = tmp_path / "map.npy"
    np.save(path, maps(4096)[dtype] if kind == "realistic" else _MAPS[kind](dtype))
    benchmark.group = f"memory {dtype}"

    def probe(*control):
        here = str(Path(__file__).parent)
        proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), here, *control], check=True,
                              capture_output=True, text=True)
        return json.loads(proc.stdout)

    result = benchmark.pedantic(probe, rounds=1, iterations=1)
    control = probe("control")
    benchmark.extra_info.update({"method": f"peak RSS, {kind}", "dtype": dtype, **result,
                                 "control_4_bytes_per_pixel": round(control["extra_bytes_per_pixel"], 2)})
    assert 3.5 <= control["extra_bytes_per_pixel"] - result["extra_bytes_per_pixel"] <= 4.5  # the probe sees a known allocation
    assert result["objects"] >= 1000
    if kind == "realistic":
        assert result["extra_bytes_per_pixel"] <= 8.0
