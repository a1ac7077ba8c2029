"""The compiled separable resampling kernel: bitwise equal to the float32 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucseg._core import resample_separable
from nucseg._reference import resample_reference as reference
from nucseg.wsi.tiling import resample_taps


def _region(rng: np.random.Generator, scale: float, n_src: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of a random run of output pixels (possibly reaching past the clamped border)."""
    full = max(1, round(n_src * scale))
    start = int(rng.integers(0, full))
    return resample_taps(start, start + n_out, scale, n_src)


SCALES = st.one_of(st.sampled_from([0.37, 0.5, 1.6, 2.0]), st.floats(0.15, 4.0))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sy=SCALES,
    sx=SCALES,
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    channels=st.sampled_from([1, 2, 3, 4]),
    n_rows=st.integers(1, 40),
    n_cols=st.integers(1, 40),
)
def test_bitwise_equal_to_the_numpy_reference(
    seed: int, sy: float, sx: float, h: int, w: int, channels: int, n_rows: int, n_cols: int
) -> None:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    iy, wy = _region(rng, sy, h, n_rows)
    ix, wx = _region(rng, sx, w, n_cols)
    np.testing.assert_array_equal(resample_separable(src, iy, wy, ix, wx), reference(src, iy, wy, ix, wx))


@pytest.mark.parametrize("scale", [0.37, 1.6, 2.0])
def test_bitwise_equal_on_a_slide_sized_box(scale: float) -> None:
    rng = np.random.default_rng(7)
    # Smooth content with noise: many values land near .5 after interpolation.
    yy, xx = np.mgrid[:300, :260]
    base = 127.5 + 120 * np.sin(yy / 7.0)[..., None] * np.cos(xx / 11.0)[..., None]
    src = np.clip(base + rng.normal(0, 20, (300, 260, 3)), 0, 255).astype(np.uint8)
    iy, wy = resample_taps(17, 17 + int(250 * scale), scale, 300)
    ix, wx = resample_taps(0, int(260 * scale), scale, 260)
    np.testing.assert_array_equal(resample_separable(src, iy, wy, ix, wx), reference(src, iy, wy, ix, wx))


def test_any_weights_round_half_to_even_and_clip() -> None:
    # Unnormalised and negative weights reach outside 0..255 and hit exact halves.
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    iy = rng.integers(0, 20, (25, 4))
    ix = rng.integers(0, 30, (35, 3))
    wy = rng.choice(np.float32([-1.0, -0.5, 0.25, 0.5, 1.0, 1.5]), (25, 4))
    wx = rng.choice(np.float32([-0.5, 0.5, 0.75, 2.0]), (35, 3))
    out = resample_separable(src, iy, wy, ix, wx)
    np.testing.assert_array_equal(out, reference(src, iy, wy, ix, wx))
    assert out.min() == 0 and out.max() == 255
    halves = np.uint8([[[1], [2]]])  # (1 + 2) / 2 = 1.5 -> 2, (2 + 3) / 2 = 2.5 -> 2
    one = np.zeros((1, 1), np.int64)
    half = np.full((1, 2), 0.5, np.float32)
    assert resample_separable(halves, one, np.ones((1, 1), np.float32), np.array([[0, 1]]), half)[0, 0, 0] == 2
    threes = np.uint8([[[2], [3]]])
    assert resample_separable(threes, one, np.ones((1, 1), np.float32), np.array([[0, 1]]), half)[0, 0, 0] == 2


def test_int32_taps_give_the_same_result() -> None:
    rng = np.random.default_rng(5)
    src = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    iy, wy = resample_taps(0, 70, 1.6, 40)
    ix, wx = resample_taps(3, 19, 0.37, 50)
    np.testing.assert_array_equal(
        resample_separable(src, iy.astype(np.int32), wy, ix.astype(np.int32), wx),
        resample_separable(src, iy, wy, ix, wx),
    )


def _args() -> dict[str, np.ndarray]:
    iy, wy = resample_taps(0, 8, 2.0, 4)
    ix, wx = resample_taps(0, 10, 2.0, 5)
    return {
        "src": np.zeros((4, 5, 3), np.uint8),
        "row_index": iy,
        "row_weight": wy,
        "col_index": ix,
        "col_weight": wx,
    }


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"src": np.zeros((4, 5, 3), np.float32)}, TypeError, "src must be uint8, got float32"),
        ({"src": np.zeros((4, 5), np.uint8)}, ValueError, r"src must be 3-D .* shape \(4, 5\)"),
        ({"src": np.zeros((5, 4, 3), np.uint8).transpose(1, 0, 2)}, ValueError, "src must be C-contiguous"),
        ({"row_index": np.zeros((8, 3), np.float64)}, TypeError, "row_index must be int64 or int32"),
        ({"col_weight": np.zeros((10, 3), np.float64)}, TypeError, "col_weight must be float32"),
        ({"row_index": np.zeros(8, np.int64)}, ValueError, "row_index must be 2-D"),
        ({"col_weight": np.zeros((10, 2), np.float32)}, ValueError, "col_weight must have the shape of col_index"),
        ({"row_weight": np.zeros((3, 8), np.float32).T}, ValueError, "row_weight must be C-contiguous"),
        ({"row_index": np.full((8, 3), 4)}, ValueError, r"row_index\[0, 0\] = 4 is outside the source's 4 pixels"),
        ({"col_index": np.full((10, 3), -1)}, ValueError, r"col_index\[0, 0\] = -1 is outside the source's 5"),
        (
            {"row_index": np.zeros((8, 0), np.int64), "row_weight": np.zeros((8, 0), np.float32)},
            ValueError,
            "row_index must have at least one tap",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_them(change: dict, error: type, match: str) -> None:
    args = _args()
    args.update(change)
    with pytest.raises(error, match=match):
        resample_separable(**args)


def test_empty_output() -> None:
    args = _args()
    args["row_index"], args["row_weight"] = resample_taps(0, 0, 2.0, 4)
    assert resample_separable(**args).shape == (0, 10, 3)
