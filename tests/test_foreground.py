"""nucseg.postprocess.foreground: the kernel's foreground rule, for every dtype.

The rule is checked against the kernel itself: with ``lam = inf`` every foreground
component is one object, so a pixel is labelled (or a watershed line) exactly when the
kernel counts it as foreground.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import nucseg
from nucseg.postprocess import foreground

FLOATS = (np.float32, np.float64)
INTS = (np.uint8, np.uint16)


def _kernel_foreground(prob: np.ndarray, threshold: float) -> np.ndarray:
    # Without lines every foreground pixel gets a label, and only those.
    return nucseg.watershed_dynamics(prob, np.inf, threshold=threshold, watershed_line=False) != 0


def _near(value: float, dtype: type) -> list[float]:
    """``value`` rounded to ``dtype`` and its neighbours there, as Python floats."""
    v = np.asarray(value).astype(dtype)
    if np.dtype(dtype).kind == "u":
        top = np.iinfo(dtype).max
        return [float(x) for x in {max(0, int(v) - 1), int(v), min(top, int(v) + 1)}]
    return [float(np.nextafter(v, -np.inf)), float(v), float(np.nextafter(v, np.inf))]


@st.composite
def float_case(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    dtype = draw(st.sampled_from(FLOATS))
    threshold = draw(st.floats(-2, 2, allow_nan=False) | st.sampled_from([0.3, 0.4, 0.5, 0.1, 1 / 3]))
    pool = _near(threshold, np.float32) + _near(threshold, np.float64) + [0.0, 1.0, threshold]
    prob = draw(arrays(dtype, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.sampled_from(pool)))
    return prob, threshold


@st.composite
def int_case(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    dtype = draw(st.sampled_from(INTS))
    top = np.iinfo(dtype).max
    threshold = draw(st.floats(0, top, allow_nan=False))
    whole = math.floor(threshold)
    pool = sorted({max(0, whole - 1), whole, min(top, whole + 1), 0, top})
    prob = draw(arrays(dtype, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.sampled_from(pool)))
    return prob, threshold


@settings(max_examples=300, deadline=None)
@given(float_case())
@example((np.array([[0, 0.3, 0.3, 0]], np.float32), 0.3))
@example((np.array([[0, 0.4, 0.4, 0]], np.float32), 0.4))
def test_float_maps_match_the_kernel(case: tuple[np.ndarray, float]) -> None:
    prob, threshold = case
    fg = foreground(prob, threshold)
    assert fg.dtype == bool and fg.shape == prob.shape
    np.testing.assert_array_equal(fg, _kernel_foreground(prob, threshold))
    # The rule in words: the value exceeds the threshold in exact (real) arithmetic.
    np.testing.assert_array_equal(fg, prob.astype(np.float64) > threshold)


@settings(max_examples=200, deadline=None)
@given(int_case())
@example((np.array([[0, 127, 128, 0]], np.uint8), 127.5))
def test_integer_maps_match_the_kernel(case: tuple[np.ndarray, float]) -> None:
    prob, threshold = case
    fg = foreground(prob, threshold)
    np.testing.assert_array_equal(fg, _kernel_foreground(prob, threshold))
    np.testing.assert_array_equal(fg, prob.astype(np.float64) > threshold)


def test_float32_value_equal_to_the_rounded_threshold() -> None:
    """float32(0.4) > 0.4 in real numbers: foreground, although ``prob > 0.4`` on float32 says no."""
    for t in (0.3, 0.4):
        prob = np.array([[0, t, t, 0]], np.float32)
        assert np.float64(np.float32(t)) > t
        assert not (prob > t).any()  # NumPy 2 compares in float32: the bug this function fixes
        np.testing.assert_array_equal(foreground(prob, t), [[False, True, True, False]])


def test_default_threshold_and_bad_input() -> None:
    prob = np.array([[0, 127, 128]], np.uint8)
    np.testing.assert_array_equal(foreground(prob), [[False, False, True]])
    np.testing.assert_array_equal(foreground(np.array([0.5, 0.6], np.float32)), [False, True])  # any shape
    with pytest.raises(ValueError, match="threshold"):
        foreground(prob, 300)
    with pytest.raises(ValueError, match="threshold"):
        foreground(prob.astype(np.float32), float("nan"))
    with pytest.raises(TypeError, match="dtype"):
        foreground(prob.astype(np.int64), 1)
