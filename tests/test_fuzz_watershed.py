"""Fuzz campaign of :func:`nucseg.watershed_dynamics` against its contract (marker ``fuzz``).

Adversarial maps (1xN, Nx1, extreme aspect ratios, all-equal, alternating, huge plateaus,
denormals, extreme magnitudes), every supported dtype in both byte orders, C/Fortran order,
negative and non-unit strides, ``lam`` at 0, at the map's range, above it and at +inf.
Every case is checked pixel for pixel against :func:`nucseg._reference.reference_watershed`
and object for object against :func:`nucseg._reference.marker_groups` (the definition of
dynamics, no flooding); ``lam`` >= range is also checked against connected components
(scipy). NaN/inf maps and unsupported dtypes must raise. Arrays stay small because the
references are pure Python.

Run it with ``python -m pytest tests/test_fuzz_watershed.py -m fuzz -s`` to see the number of
cases run (printed at the end of the module).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

pytestmark = pytest.mark.fuzz

SUPPORTED = (np.uint8, np.uint16, np.float32, np.float64)
# About 50 s on one core for the whole module; CI runs it (marker "fuzz").
CONTRACT_EXAMPLES = 4000
BAD_VALUE_EXAMPLES = 500
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    database=None,  # a fresh campaign each run; failures still print their reproducer
)


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter]:
    """Counts the cases each test ran; printed when the module ends (``-s`` shows it)."""
    counts: Counter = Counter()
    yield counts
    total = sum(counts.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"\n[fuzz] watershed_dynamics cases run: {total} ({detail})")


# ---------------------------------------------------------------- strategies


@st.composite
def shapes(draw) -> tuple[int, int]:
    """Degenerate and extreme shapes, small enough for the pure-Python references."""
    kind = draw(st.sampled_from(["1xN", "Nx1", "wide", "tall", "small", "1x1"]))
    if kind == "1xN":
        return 1, draw(st.integers(1, 120))
    if kind == "Nx1":
        return draw(st.integers(1, 120)), 1
    if kind == "wide":
        return draw(st.integers(2, 3)), draw(st.integers(30, 80))
    if kind == "tall":
        return draw(st.integers(30, 80)), draw(st.integers(2, 3))
    if kind == "1x1":
        return 1, 1
    return draw(st.integers(1, 12)), draw(st.integers(1, 12))


def _levels(dtype: np.dtype, draw) -> list:
    """A few distinct values of ``dtype`` covering its range (extremes, denormals)."""
    if dtype.kind == "u":
        top = int(np.iinfo(dtype).max)
        pool = [0, 1, top // 2, top // 2 + 1, top - 1, top] + [top * k // 5 for k in range(6)]
        return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    tiny = float(np.finfo(dtype).smallest_subnormal)
    kind = draw(st.sampled_from(["prob", "denormal", "wide", "any"]))
    if kind == "prob":
        pool = [0.0, 0.1, 0.25, 0.5, 0.5000001, 0.75, 0.9, 1.0]
    elif kind == "denormal":
        pool = [0.0, tiny, 2 * tiny, 3 * tiny, 10 * tiny, -tiny]
    elif kind == "wide":
        big = float(np.finfo(dtype).max) / 4
        pool = [-big, -1.0, 0.0, 1e-30, 1.0, big]
    else:
        pool = draw(st.lists(st.floats(-2.0, 2.0, allow_nan=False, width=32), min_size=1, max_size=6))
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))


@st.composite
def maps(draw) -> np.ndarray:
    """A C-ordered native-endian map with a chosen structure."""
    dtype = np.dtype(draw(st.sampled_from(SUPPORTED)))
    shape = draw(shapes())
    levels = np.array(_levels(dtype, draw), dtype=dtype)
    pattern = draw(st.sampled_from(["random", "equal", "checker", "stripes", "plateaus", "ramp"]))
    h, w = shape
    if pattern == "equal":
        idx = np.zeros(shape, np.intp)
    elif pattern == "checker":
        idx = (np.add.outer(np.arange(h), np.arange(w)) % 2) % len(levels)
    elif pattern == "stripes":
        period = draw(st.integers(1, 4))
        idx = (np.arange(w)[None, :] // period % len(levels)) * np.ones((h, 1), np.intp)
    elif pattern == "plateaus":
        # A coarse random grid blown up into large constant blocks.
        by, bx = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        coarse = np.array(
            draw(st.lists(st.integers(0, len(levels) - 1), min_size=by * bx, max_size=by * bx))
        ).reshape(by, bx)
        idx = np.kron(coarse, np.ones((-(-h // by), -(-w // bx)), np.intp))[:h, :w]
    elif pattern == "ramp":
        idx = (np.arange(h * w).reshape(shape) * len(levels) // max(1, h * w)).astype(np.intp)
    else:
        flat = draw(st.lists(st.integers(0, len(levels) - 1), min_size=h * w, max_size=h * w))
        idx = np.array(flat, np.intp).reshape(shape)
    return np.ascontiguousarray(levels[idx])


def relayout(a: np.ndarray, how: str) -> np.ndarray:
    """The same logical map in another memory layout (values unchanged)."""
    if how == "C":
        return a
    if how == "F":
        return np.asfortranarray(a)
    if how == "swapped":  # non-native byte order, same values
        return a.astype(a.dtype.newbyteorder())
    if how == "negative":  # negative strides on both axes, read back the right way round
        return np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    if how == "step2":
        big = np.zeros((2 * a.shape[0], 3 * a.shape[1]), a.dtype)
        big[::2, ::3] = a
        return big[::2, ::3]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    raise ValueError(how)


@st.composite
def cases(draw) -> tuple[np.ndarray, float, float | None, int, bool, str]:
    prob = draw(maps())
    lo, hi = float(prob.min()), float(prob.max())
    span = hi - lo
    lam = draw(
        st.one_of(
            st.sampled_from([0.0, span, span * (1 + 1e-9) + 1e-300, np.nextafter(span, 0.0) if span > 0 else 0.0]),
            st.just(float("inf")),
            st.floats(0.0, max(span, 1e-300), allow_nan=False, allow_infinity=False),
        )
    )
    values = sorted({float(v) for v in np.unique(prob)})
    if prob.dtype.kind == "u":
        top = float(np.iinfo(prob.dtype).max)
        candidates = [0.0, top, top / 2] + values + [v - 0.5 for v in values if v >= 0.5]
    else:
        candidates = [lo - 1.0, 0.0, 0.5] + values + [float(np.nextafter(v, -np.inf)) for v in values]
    threshold = draw(st.one_of(st.none(), st.sampled_from(candidates)))
    connectivity = draw(st.sampled_from([1, 2]))
    line = draw(st.booleans())
    layout = draw(st.sampled_from(["C", "F", "negative", "step2", "readonly", "swapped"]))
    return prob, float(lam), threshold, connectivity, line, layout


# ---------------------------------------------------------------- the campaign


@settings(FUZZ, max_examples=CONTRACT_EXAMPLES)
@given(cases())
def test_contract_against_the_references(tally: Counter, case) -> None:
    import nucseg
    from nucseg._reference import _foreground, marker_groups, reference_watershed
    from nucseg.postprocess import default_threshold

    prob, lam, threshold, connectivity, line, layout = case
    arg = relayout(prob, layout)
    before = arg.copy()
    got = nucseg.watershed_dynamics(arg, lam, threshold=threshold, connectivity=connectivity, watershed_line=line)
    tally["contract"] += 1
    np.testing.assert_array_equal(arg, before)  # the input is never modified
    assert got.dtype == np.int32 and got.shape == prob.shape and got.flags.c_contiguous

    t = default_threshold(prob.dtype) if threshold is None else threshold
    expected = reference_watershed(prob, lam, t, connectivity, line)
    np.testing.assert_array_equal(got, expected)

    # Objects: exactly one per marker group of the definition, each group inside its object.
    groups = marker_groups(prob, lam, t, connectivity)
    assert int(got.max()) == len(groups)
    owners = sorted({int(got[next(iter(g))]) for g in groups})
    assert owners == list(range(1, len(groups) + 1))
    for g in groups:
        assert len({int(got[p]) for p in g}) == 1
    # Labels are consecutive in raster order of first pixel; background stays 0.
    fg = _foreground(prob, t)
    assert not got[~fg].any()
    flat = got.ravel()
    firsts = [int(flat[i]) for i in np.flatnonzero(flat)]
    assert list(dict.fromkeys(firsts)) == list(range(1, int(got.max()) + 1))

    # lam at or above the map's range: one object per foreground component, no lines.
    if lam >= float(prob.max()) - float(prob.min()):
        structure = ndi.generate_binary_structure(2, connectivity)
        _, n_comp = ndi.label(fg, structure=structure)
        assert int(got.max()) == n_comp
        np.testing.assert_array_equal(got > 0, fg)


def test_reference_marker_groups_at_infinite_lam() -> None:
    from nucseg._reference import marker_groups

    prob = np.array([[0, 128, 0, 200]], np.uint8)
    assert len(marker_groups(prob, float("inf"), 127, 1)) == 2


def test_reference_marker_groups_rounds_height_minus_lam() -> None:
    from nucseg._reference import marker_groups

    prob = np.array([[254, 128, 254]], np.uint8)
    assert len(marker_groups(prob, 125.99999999999999, 127, 1)) == 2


@st.composite
def poisoned(draw) -> tuple[np.ndarray, str]:
    prob = draw(maps().filter(lambda a: a.dtype.kind == "f"))
    bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    y, x = draw(st.integers(0, prob.shape[0] - 1)), draw(st.integers(0, prob.shape[1] - 1))
    prob = prob.copy()
    prob[y, x] = bad
    return prob, draw(st.sampled_from(["C", "F", "negative", "step2"]))


@settings(FUZZ, max_examples=BAD_VALUE_EXAMPLES)
@given(poisoned(), st.sampled_from([0.0, 0.1, float("inf")]), st.sampled_from([None, 0.0, 0.5]))
def test_nan_and_inf_always_raise(tally: Counter, case, lam: float, threshold: float | None) -> None:
    import nucseg

    prob, layout = case
    with pytest.raises(ValueError, match="NaN or infinite"):
        nucseg.watershed_dynamics(relayout(prob, layout), lam, threshold=threshold)
    tally["nan_inf"] += 1


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.astype(a.dtype.newbyteorder()),  # big-endian float32 / uint16
        lambda a: a.view(np.dtype(a.dtype.str, metadata={"unit": "probability"})),  # native, equal dtype
        lambda a: (a * 255).astype(np.uint8).view(np.dtype("u1").newbyteorder()),  # '|u1' == uint8
    ],
    ids=["non-native-byte-order", "dtype-with-metadata", "uint8-newbyteorder"],
)
def test_non_canonical_dtypes_are_accepted(tally: Counter, make) -> None:
    import nucseg

    base = np.array([[0.2, 0.9, 0.6, 0.95, 0.1]], np.float32)
    prob = make(base)
    assert prob.dtype.type in SUPPORTED  # the wrapper's own dtype check accepts it
    expected = nucseg.watershed_dynamics(np.ascontiguousarray(prob, dtype=prob.dtype.type), 0.1)
    np.testing.assert_array_equal(nucseg.watershed_dynamics(prob, 0.1), expected)
    tally["non_canonical_dtype"] += 1


# Every numpy dtype that is not one of the four supported ones.
UNSUPPORTED = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64,
    np.float16, np.longdouble, np.complex64, np.complex128, np.object_, "U1", "S1", "V4",
    "datetime64[s]", "timedelta64[s]",
]


@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=str)
def test_every_unsupported_dtype_is_a_type_error(tally: Counter, dtype) -> None:
    import nucseg

    prob = np.zeros((3, 4), dtype=dtype)
    with pytest.raises(TypeError, match="dtype uint8, uint16, float32 or float64"):
        nucseg.watershed_dynamics(prob, 0.1)
    tally["bad_dtype"] += 1


@pytest.mark.parametrize("dtype", SUPPORTED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "lam", [-1e-300, float("nan"), -float("inf")], ids=["negative", "nan", "-inf"]
)
def test_bad_lam_is_refused_for_every_dtype(tally: Counter, dtype, lam: float) -> None:
    import nucseg

    with pytest.raises(ValueError, match="lam"):
        nucseg.watershed_dynamics(np.zeros((2, 2), dtype), lam)
    tally["bad_lam"] += 1


@pytest.mark.parametrize(
    "shape", [(0,), (0, 5), (5, 0), (3,), (2, 2, 2), (1, 1, 1)], ids=str
)
def test_empty_and_non_2d_maps_are_refused(tally: Counter, shape: tuple[int, ...]) -> None:
    import nucseg

    with pytest.raises(ValueError, match="prob must"):
        nucseg.watershed_dynamics(np.zeros(shape, np.float32), 0.1)
    tally["bad_shape"] += 1


@pytest.mark.parametrize("n", [1, 2, 3, 5_000])
def test_long_lines_match_the_reference(tally: Counter, n: int) -> None:
    """1xN and Nx1 alternating maps up to 5000 px: every pixel a maximum or a valley."""
    import nucseg
    from nucseg._reference import reference_watershed

    row = np.where(np.arange(n) % 2 == 0, 0.9, 0.6).astype(np.float32)
    for prob in (row[None, :], row[:, None]):
        for lam in (0.0, 0.3, 0.29, float("inf")):
            got = nucseg.watershed_dynamics(prob, lam)
            np.testing.assert_array_equal(got, reference_watershed(prob, lam, 0.5, 1, True))
            tally["long_lines"] += 1
