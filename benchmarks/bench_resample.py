"""Slide resampling: the compiled kernel beside the NumPy tap-by-tap path, same input, same run.

Run::

    python -m pytest benchmarks/bench_resample.py --benchmark-only -p no:randomly \
        --benchmark-columns=min,median,rounds --benchmark-sort=name

The input is the runner's read box at the default tile (2048 px core, 144 px halo: 2336 x
2336 px at the processing resolution) of a 20x slide (0.5 um/px) processed at 0.25 um/px,
so read from a ~1170 x 1170 px region of the level and upsampled 2x, as
``nucseg.wsi.tiling.read_region`` does. "1 thread": one box; "2 threads": two boxes at
once in two threads (the runner's readers). Both paths give the same bytes (asserted).
The summary at the end gives output Mpix/s and nucseg's ratio over NumPy.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nucseg._core import resample_separable
from nucseg._reference import resample_reference
from nucseg.wsi.tiling import resample_taps

SCALE = 2.0
READ = 2048 + 2 * 144  # the read box side at the default tile and halo
ORIGIN = 3 * 2048 - 144  # an interior tile: no clamping at the slide border
LEVEL_SIDE = 20_000


def numpy_path(src: np.ndarray, iy: np.ndarray, wy: np.ndarray, ix: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """The pure-NumPy resampling ``read_region`` used before the kernel (the baseline)."""
    return resample_reference(src, iy, wy, ix, wx)


def _box(seed: int) -> tuple[np.ndarray, ...]:
    """A source region with the taps of one read box, relative to the region (as in read_region)."""
    iy, wy = resample_taps(ORIGIN, ORIGIN + READ, SCALE, LEVEL_SIDE)
    iy = iy - iy.min()
    rng = np.random.default_rng(seed)
    n = int(iy.max()) + 1
    # Tissue-like: smooth stain with noise (the speed does not depend on the values).
    yy, xx = np.mgrid[:n, :n]
    smooth = 160 + 60 * np.sin(yy / 23.0)[..., None] * np.cos(xx / 31.0)[..., None]
    src = np.clip(smooth + rng.normal(0, 12, (n, n, 3)), 0, 255).astype(np.uint8)
    return src, iy, wy, iy, wy


@pytest.fixture(scope="module")
def boxes() -> list[tuple[np.ndarray, ...]]:
    out = [_box(seed) for seed in (1, 2)]
    for box in out:
        np.testing.assert_array_equal(resample_separable(*box), numpy_path(*box))
    return out


METHODS = {"nucseg": (resample_separable, 10), "numpy": (numpy_path, 3)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_resample(benchmark, boxes, method: str, threads: int) -> None:  # noqa: ANN001
    fn, rounds = METHODS[method]
    with ThreadPoolExecutor(threads) as pool:
        benchmark.pedantic(lambda: list(pool.map(lambda b: fn(*b), boxes[:threads])), rounds=rounds, warmup_rounds=1)
    n = boxes[0][1].shape[0]
    benchmark.group = f"resample {n}^2 -> {READ}^2, {threads} thread(s) on {threads} box(es)"
    # Read by benchmarks/conftest.py's summary: output Mpix/s and the ratio to NumPy.
    benchmark.extra_info.update(
        {
            "size": READ,
            "dtype": f"uint8 RGB x{SCALE:g}, {threads} thread(s)",
            "method": method,
            "mpix": threads * READ * READ / 1e6,
        }
    )
