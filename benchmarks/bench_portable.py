"""The portable build of the kernel (what the wheels ship) beside a ``-march=native`` build.

Wheels are compiled for the baseline of each architecture (SSE2 on x86-64, no ``-march``), so
users who install them without a compiler run this build. This benchmark builds the same
sources a second time with ``-march=native`` into a temporary folder and times both on the
same maps in one run, so the price of portability is a measured ratio, not a guess.

Run: python -m pytest benchmarks/bench_portable.py --benchmark-only -p no:randomly
(needs cmake, ninja and a C++ compiler, as a source install does; about 40 s of compiling).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nucseg
from nucseg.synthetic import probability_map

ROOT = Path(__file__).resolve().parents[1]
SIZE = 2048
LAM = {"uint8": 7.0, "float32": 7.0 / 255}
THRESHOLD = {"uint8": 127.0, "float32": 0.5}


def _build(flags: str, where: Path):
    """Compile the extension with extra CXX flags and load it under a private name."""
    import pybind11

    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build the comparison extension (pip install cmake ninja)")
    cmd = [
        "cmake", "-S", str(ROOT), "-B", str(where), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CXX_FLAGS={flags}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(where)], check=True, capture_output=True)
    so = next(where.glob("_core*.so"), None) or next(where.glob("_core*.pyd"))
    # the init function is PyInit__core, so the spec keeps the name; it never enters sys.modules
    spec = importlib.util.spec_from_file_location("_core", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("builds")
    return {"portable": _build("", base / "portable"), "native": _build("-march=native", base / "native")}


@pytest.fixture(scope="module")
def maps() -> dict[str, np.ndarray]:
    prob, _ = probability_map((SIZE, SIZE), seed=SIZE)
    return {"float32": prob, "uint8": np.round(prob * 255).astype(np.uint8)}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("build", ["portable", "native"])
def test_build(benchmark, builds, maps, build, dtype):
    prob = maps[dtype]
    expected = nucseg.watershed_dynamics(prob, LAM[dtype], threshold=THRESHOLD[dtype])
    # the kernel entry with the wrapper's arguments: (prob, lam, threshold, connectivity, line)
    labels = benchmark(builds[build].watershed_dynamics, prob, LAM[dtype], THRESHOLD[dtype], 1, True)
    np.testing.assert_array_equal(labels, expected)  # same labels whatever the flags
    benchmark.extra_info.update({"size": SIZE, "method": "nucseg" if build == "portable" else "nucseg -march=native", "dtype": dtype, "mpix": SIZE * SIZE / 1e6})
    # the summary table prints the ratio portable / native on the native row
    benchmark.group = f"portable vs native {SIZE}x{SIZE} {dtype}"
