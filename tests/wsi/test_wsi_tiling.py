"""Geometry, resampling, ownership and label ids, on hand-built cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucseg.wsi.reader import open_slide
from nucseg.wsi.tiling import (
    IdScheme,
    ObjectTooLargeError,
    choose_level,
    make_tiles,
    merge_claims,
    own_objects,
    plan_geometry,
    read_region,
    resample_taps,
)


def _geom(size=(100, 100), tile=50, halo=10, context=2):
    h, w = size
    return plan_geometry([(w, h)], (0.25, 0.25), 0.25, tile=tile, halo=halo, context=context)


def test_choose_level_is_closest_in_ratio_ties_to_finer() -> None:
    assert choose_level([0.25, 0.5, 1.0], 0.25) == 0
    assert choose_level([0.125, 0.5], 0.25) == 0  # tie (2x either way): finer wins
    assert choose_level([0.25, 0.55], 0.5) == 1
    assert choose_level([0.499, 1.996], 0.25) == 0


def test_plan_geometry_upsamples_20x_to_the_model_resolution() -> None:
    g = plan_geometry([(2220, 2967)], (0.499, 0.499), 0.25, tile=512, halo=64, context=16)
    assert g.level == 0 and g.resampled
    assert g.size == (round(2967 * 0.499 / 0.25), round(2220 * 0.499 / 0.25))
    assert g.mpp == pytest.approx((0.25, 0.25), rel=1e-3)
    # Within 2 %: used as it is.
    g = plan_geometry([(1000, 800), (500, 400)], (0.252, 0.252), 0.25, tile=256, halo=32, context=8)
    assert not g.resampled and g.size == (800, 1000) and g.mpp == (0.252, 0.252)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile": 100, "stride": 32}, "tile must be"),
        ({"halo": 40, "stride": 32}, "halo must be a multiple"),
        ({"halo": 8, "context": 8}, "halo must be larger"),
        ({"level": 3}, "level must be"),
    ],
)
def test_plan_geometry_validation(kwargs: dict, match: str) -> None:
    args = {"tile": 256, "halo": 64, "context": 16, "stride": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plan_geometry([(1000, 1000)], (0.25, 0.25), 0.25, **args)


def test_tiles_partition_the_image() -> None:
    g = _geom(size=(130, 101), tile=50, halo=10)
    tiles = make_tiles(g)
    assert len(tiles) == g.n_tiles == 9
    cover = np.zeros(g.size, int)
    for t in tiles:
        cover[t.core[0] : t.core[1], t.core[2] : t.core[3]] += 1
        assert t.read == (t.core[0] - 10, t.core[1] + 10, t.core[2] - 10, t.core[3] + 10)
        y0, y1, x0, x1 = t.valid
        assert (y0, x0) == (max(0, t.core[0] - 8), max(0, t.core[2] - 8))
        assert (y1, x1) == (min(130, t.core[1] + 8), min(101, t.core[3] + 8))
    assert (cover == 1).all()


def test_resample_taps_weights_and_linear_exactness() -> None:
    for scale in (2.0, 1.37, 0.5, 0.3):
        idx, w = resample_taps(0, 50, scale, 200)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
        assert idx.min() >= 0 and idx.max() < 200
    # Linear interpolation reproduces a linear ramp away from the borders.
    idx, w = resample_taps(10, 90, 2.0, 60)
    ramp = np.arange(60, dtype=np.float64) * 3.0 + 1.0
    out = (ramp[idx] * w).sum(axis=1)
    centre = (np.arange(10, 90) + 0.5) / 2.0 - 0.5
    np.testing.assert_allclose(out, centre * 3.0 + 1.0, rtol=1e-5)


@pytest.mark.parametrize(("mpp", "size"), [(0.5, (600, 800)), (0.4, (480, 640)), (0.2, (240, 320))])
def test_read_region_is_bitwise_tile_invariant(
    tmp_path: Path, demo_image: np.ndarray, mpp: float, size: tuple[int, int]
) -> None:
    from nucseg.wsi.demo import write_pyramid_tiff

    path = write_pyramid_tiff(tmp_path / "s.tif", demo_image[:300, :400], mpp=mpp, levels=1)
    with open_slide(path) as s:
        g = plan_geometry([(400, 300)], s.mpp, 0.25, tile=128, halo=16, context=4)
        assert g.size == size  # upsampled 2x and 1.6x, downsampled 0.8x
        h, w = size
        big = read_region(s, g, (0, h, 0, w))
        part = read_region(s, g, (123, h - 37, 150, w - 51))
        np.testing.assert_array_equal(part, big[123 : h - 37, 150 : w - 51])
        # Outside the image the region is the image mirrored (numpy "reflect").
        edge = read_region(s, g, (-16, 100, -16, 100))
        np.testing.assert_array_equal(edge, np.pad(big, ((16, 0), (16, 0), (0, 0)), mode="reflect")[:116, :116])


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_an_object_crossing_the_core_border_is_written_once_in_full() -> None:
    g = _geom(size=(100, 100), tile=50, halo=12, context=2)  # margin 10
    prob = np.zeros(g.size, np.float32)
    prob[_disk(g.size, 48, 30, 5)] = 0.9  # first pixel (row 43) in tile 0's core, crosses into tile 2
    prob[_disk(g.size, 80, 80, 4)] = 0.8
    labels_full = (prob > 0.5).astype(np.int32) + (prob > 0.85)  # 2 where the first disk, 1 the second
    scheme = IdScheme(g.n_tiles)
    out = np.zeros(g.size, np.uint32)
    owners = []
    for t in make_tiles(g):
        y0, y1, x0, x1 = t.valid
        r = own_objects(labels_full[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t, g, scheme)
        if r.box is not None:
            by0, by1, bx0, bx1 = r.box
            region = out[by0:by1, bx0:bx1]
            assert not (region[r.labels != 0] != 0).any()  # never written twice
            region[r.labels != 0] = r.labels[r.labels != 0]
            owners += [t.index] * len(r.ids)
    assert sorted(owners) == [0, 3]
    first = out[_disk(g.size, 48, 30, 5)]
    assert (first == first[0]).all() and first[0] != 0 and scheme.tile_of(first[:1])[0] == 0
    assert ((out != 0) == (prob > 0.5)).all()


def test_object_larger_than_the_margin_raises() -> None:
    g = _geom(size=(100, 100), tile=50, halo=6, context=2)  # margin 4
    prob = np.zeros(g.size, np.float32)
    prob[45:60, 10:20] = 0.9  # starts in tile 0's core, 10 px past its bottom edge
    labels = (prob > 0.5).astype(np.int32)
    t0 = make_tiles(g)[0]
    y0, y1, x0, x1 = t0.valid
    with pytest.raises(ObjectTooLargeError, match="raise --halo"):
        own_objects(labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, IdScheme(g.n_tiles))
    # The tile below sees it cut at its top and does not own it: no error there.
    t2 = make_tiles(g)[2]
    y0, y1, x0, x1 = t2.valid
    r = own_objects(labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t2, g, IdScheme(g.n_tiles))
    assert r.box is None


@pytest.mark.parametrize("threshold", [0.3, 0.4])
def test_pixels_equal_to_the_float32_threshold_are_foreground_for_ownership(threshold: float) -> None:
    """A cluster made of float32(threshold) pixels is foreground for the kernel (float32(0.3) > 0.3):
    ownership must see it too, and so notice that the valid box cuts it."""
    import nucseg

    g = _geom(size=(100, 100), tile=50, halo=6, context=2)  # margin 4
    prob = np.zeros(g.size, np.float32)
    prob[45:60, 10:20] = threshold  # rounds up in float32: above the threshold
    t0 = make_tiles(g)[0]
    y0, y1, x0, x1 = t0.valid
    valid = np.ascontiguousarray(prob[y0:y1, x0:x1])
    labels = nucseg.watershed_dynamics(valid, 0.05, threshold=threshold)
    assert labels.max() == 1  # the kernel segments it
    with pytest.raises(ObjectTooLargeError, match="raise --halo"):
        own_objects(labels, valid, threshold, t0, g, IdScheme(g.n_tiles))


def test_min_area_filters_owned_nuclei_only_after_the_exactness_check() -> None:
    g = _geom(size=(100, 100), tile=50, halo=6, context=2)  # margin 4
    prob = np.zeros(g.size, np.float32)
    prob[45:60, 10:12] = 0.9  # 2 px wide, cut by tile 0's valid box: 18 px visible there
    prob[10:15, 10:14] = 0.9  # 20 px, whole
    prob[20:23, 30:36] = 0.9  # 18 px, whole
    labels = nucseg_labels(prob)
    t0 = make_tiles(g)[0]
    y0, y1, x0, x1 = t0.valid
    crop = (labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, IdScheme(g.n_tiles))
    # The cut fragment is under min_area here, yet the tile must still ask for a larger halo.
    with pytest.raises(ObjectTooLargeError):
        own_objects(*crop, min_area=1000)
    prob[45:60, 10:12] = 0
    labels = nucseg_labels(prob)
    crop = (labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, IdScheme(g.n_tiles))
    r = own_objects(*crop, min_area=20)  # 20 px kept (>=), 18 px dropped
    assert r.area.tolist() == [20] and r.ids.tolist() == IdScheme(g.n_tiles).ids(0, 1).tolist()
    assert (r.labels != 0).sum() == 20
    assert own_objects(*crop, min_area=21).box is None


def nucseg_labels(prob: np.ndarray) -> np.ndarray:
    import nucseg

    return nucseg.watershed_dynamics(prob, 0.05, threshold=0.5)


def test_ownership_stats_match_direct_computation() -> None:
    g = _geom(size=(60, 60), tile=60, halo=4, context=2)
    prob = np.zeros(g.size, np.float32)
    prob[_disk(g.size, 20, 20, 6)] = 0.7
    prob[5:9, 40:50] = 0.95
    labels = np.zeros(g.size, np.int32)
    labels[_disk(g.size, 20, 20, 6)] = 7
    labels[5:9, 40:50] = 3
    t = make_tiles(g)[0]
    r = own_objects(labels, prob, 0.5, t, g, IdScheme(1))
    # Ranked by first pixel in raster order: the rectangle (row 5) before the disk (row 14).
    assert list(r.area) == [40, int(_disk(g.size, 20, 20, 6).sum())]
    np.testing.assert_allclose(r.centroid[0], [6.5, 44.5])
    np.testing.assert_allclose(r.centroid[1], [20.0, 20.0])
    np.testing.assert_array_equal(r.bbox[0], [5, 40, 9, 50])
    np.testing.assert_allclose(r.mean_prob, [0.95, 0.7], rtol=1e-6)


def test_id_scheme() -> None:
    s = IdScheme(10)
    assert (s.tile_bits, s.object_bits, s.dtype) == (4, 28, "uint32")
    ids = np.concatenate([s.ids(t, 5) for t in range(10)])
    assert len(np.unique(ids)) == 50 and ids.min() >= 1
    np.testing.assert_array_equal(s.tile_of(ids), np.repeat(np.arange(10), 5))
    assert IdScheme(1).ids(0, 3).tolist() == [1, 2, 3]
    big = IdScheme(70000)
    assert big.dtype == "uint64" and big.ids(69999, 2).max() < 2**64
    with pytest.raises(ValueError, match="smaller --tile"):
        IdScheme(2**16).ids(0, 2**16)


def test_absurd_processing_size_is_refused_before_allocating() -> None:
    # A wrong mpp (50 um/px claimed for a 100k px level) would mean a 20M px wide image.
    with pytest.raises(ValueError, match="check the slide's mpp"):
        plan_geometry([(100_000, 80_000)], (50.0, 50.0), 0.25, tile=256, halo=64, context=16)


def test_qc_heat_colours_span_the_ramp() -> None:
    from nucseg.wsi.qc import heat_colours

    c = heat_colours(np.array([0.0, 0.5, 1.0, 2.0, np.nan]))
    assert c.dtype == np.uint8 and c.shape == (5, 3)
    np.testing.assert_array_equal(c[0], [13, 8, 135])
    np.testing.assert_array_equal(c[2], [240, 249, 33])
    np.testing.assert_array_equal(c[3], c[2])  # clipped
    np.testing.assert_array_equal(c[4], c[0])  # NaN -> 0


def test_cut_cluster_nuclei_are_approximate_at_the_largest_halo() -> None:
    g = _geom(size=(100, 100), tile=50, halo=6, context=2)  # margin 4
    prob = np.zeros(g.size, np.float32)
    prob[40:60, 10:13] = 0.9  # a long cluster crossing into tile 2, cut by tile 0's valid box
    labels = np.zeros(g.size, np.int32)
    labels[40:48, 10:13] = 1  # a nucleus fully inside tile 0's valid box
    labels[49:60, 10:13] = 2  # the rest of the cluster
    t0 = make_tiles(g)[0]
    y0, y1, x0, x1 = t0.valid
    scheme = IdScheme(g.n_tiles)
    with pytest.raises(ObjectTooLargeError, match="foreground object"):
        own_objects(labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, scheme)
    # Nucleus 2 starts in the core (row 49) and is itself cut: its visible part is kept.
    r = own_objects(labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, scheme, approximate=True)
    assert len(r.ids) == 2 and not r.exact.any() and scheme.is_approximate(r.ids).all()
    assert r.area.tolist() == [8 * 3, (54 - 49) * 3]
    labels[49:60, 10:13] = 0
    labels[51:60, 10:13] = 2  # now nucleus 2 starts in tile 2's core
    r = own_objects(labels[y0:y1, x0:x1], prob[y0:y1, x0:x1], 0.5, t0, g, scheme, approximate=True)
    assert len(r.ids) == 1 and not r.exact[0]
    assert r.area[0] == 8 * 3


def test_merge_claims_is_order_independent() -> None:
    s = IdScheme(4)
    a_exact = np.array([[s.ids(0, 1)[0], 0, 0]], s.dtype)
    b_approx = np.array([[s.ids(1, 1, approximate=True)[0]] * 3], s.dtype)
    c_approx = np.array([[0, 0, s.ids(2, 1, approximate=True)[0]]], s.dtype)
    claims = [a_exact, b_approx, c_approx]
    import itertools

    results = set()
    for order in itertools.permutations(claims):
        out = np.zeros((1, 3), s.dtype)
        for c in order:
            out = merge_claims(out, c, s)
        out = merge_claims(out, order[0], s)  # a repeated write (a resumed tile) changes nothing
        results.add(tuple(out.ravel().tolist()))
    assert len(results) == 1
    # Exact beats approximate; between approximate claims the lower tile wins.
    assert results.pop() == (int(a_exact[0, 0]), int(b_approx[0, 1]), int(b_approx[0, 2]))


def test_tissue_saturation_and_value_equal_rgb2hsv() -> None:
    """The (max, min) tables give rgb2hsv's float64 saturation and value bit for bit."""
    from skimage.color import rgb2hsv

    from nucseg.wsi.demo import synthetic_he
    from nucseg.wsi.tissue import detect_tissue, saturation_value

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    rgb[0, :256] = np.arange(256)[:, None]  # greys, black and white included
    hsv = rgb2hsv(rgb)
    sat, val = saturation_value(rgb)
    np.testing.assert_array_equal(sat.view(np.uint64), hsv[..., 1].view(np.uint64))
    np.testing.assert_array_equal(val.view(np.uint64), hsv[..., 2].view(np.uint64))
    he, tissue, _ = synthetic_he((256, 320), seed=5)
    mask = detect_tissue(he)
    assert mask.shape == tissue.shape and (mask == tissue).mean() > 0.9


def _region_stats_numpy(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """The statistics own_objects took from NumPy before the one-pass kernel (the oracle)."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    ys, xs = np.divmod(np.arange(flat.size), labels.shape[1])
    first = np.full(n, -1)
    for i in range(flat.size - 1, -1, -1):
        first[flat[i]] = i
    first[0] = -1
    fg = flat != 0
    area = np.bincount(flat[fg], minlength=n)
    sum_y = np.bincount(flat[fg], weights=ys[fg], minlength=n)
    sum_x = np.bincount(flat[fg], weights=xs[fg], minlength=n)
    sum_v = np.bincount(flat[fg], weights=values.ravel()[fg].astype(np.float64), minlength=n)
    box = np.array([[np.iinfo(np.int64).max] * 2 + [-1] * 2] * n)
    for lab in np.unique(flat[fg]):
        yy, xx = np.nonzero(labels == lab)
        box[lab] = [yy.min(), xx.min(), yy.max(), xx.max()]
    return first, area, sum_y, sum_x, sum_v, box


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    n=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
    runs=st.booleans(),
)
def test_region_stats_equal_numpy_bit_for_bit(shape: tuple[int, int], n: int, seed: int, runs: bool) -> None:
    """The kernel behind own_objects: first pixel, area, coordinate and value sums (the
    same doubles as bincount's, raster-order sums) and boxes, absent labels included."""
    from nucseg._core import region_stats

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n + 1, shape).astype(np.int32)
    if runs:  # long runs along rows, as watershed labels have
        labels = np.repeat(labels[:, : max(1, shape[1] // 3)], 3, axis=1)[:, : shape[1]].copy()
    values = rng.random(labels.shape).astype(np.float32)
    got = region_stats(labels, values, moments=True)
    want = _region_stats_numpy(labels, values)
    for g, w_ in zip(got, want, strict=False):
        np.testing.assert_array_equal(g, w_)
    # Second moments about each label's first pixel: sums of dy^2, dx^2, dy dx.
    for lab in range(1, int(labels.max()) + 1):
        yy, xx = np.nonzero(labels == lab)
        dy, dx = yy - want[0][lab] // labels.shape[1], xx - want[0][lab] % labels.shape[1]
        assert got[6][lab].tolist() == ([int((dy * dy).sum()), int((dx * dx).sum()), int((dy * dx).sum())] if yy.size else [0, 0, 0])
    assert region_stats(labels)[4] is None and region_stats(labels)[6] is None
    np.testing.assert_array_equal(region_stats(labels)[1], want[1])
    np.testing.assert_array_equal(region_stats(labels, values.astype(np.float64))[4], want[4])


def test_region_stats_refuses_bad_input() -> None:
    from nucseg._core import region_stats

    with pytest.raises(ValueError, match="outside 0..n"):
        region_stats(np.array([[0, -2]], np.int32))
    with pytest.raises(ValueError, match="labels' shape"):
        region_stats(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        region_stats(np.zeros(3, np.int32))


def _tissue_map_case(seed: int):
    """A 20x slide processed at 0.25 um/px (2x upsampled) and a blobby overview mask."""
    from scipy import ndimage

    from nucseg.wsi.tissue import TissueMap

    rng = np.random.default_rng(seed)
    geom = plan_geometry([(200, 150)], (0.5, 0.5), 0.25, tile=128, halo=40, context=8, stride=8)
    smooth = ndimage.gaussian_filter(rng.random((38, 50)), 2)
    mask = smooth > np.quantile(smooth, 0.75)
    downsample = (150 / 38, 200 / 50)
    return geom, mask, downsample, TissueMap.grow(mask, downsample, geom, 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_map_holds_every_pixel_within_the_margin_of_tissue(seed: int) -> None:
    """Each processing pixel takes the overview pixel its centre falls in; the map holds every
    pixel within ``margin`` (Chebyshev) of a tissue pixel, and nothing a few overview pixels beyond."""
    from scipy import ndimage

    geom, mask, ds, tmap = _tissue_map_case(seed)
    h, w = geom.size
    box = (-30, h + 30, -30, w + 30)  # read boxes reach beyond the slide
    ys, xs = np.arange(box[0], box[1]), np.arange(box[2], box[3])
    # Brute force, pixel by pixel: the level-0 centre of a processing pixel is (p + 0.5) / 2 - 0.5.
    rows = np.clip(np.floor(((ys + 0.5) / 2) / ds[0]), 0, mask.shape[0] - 1).astype(int)
    cols = np.clip(np.floor(((xs + 0.5) / 2) / ds[1]), 0, mask.shape[1] - 1).astype(int)
    tissue = mask[rows][:, cols]
    got = tmap.inside(geom, box)
    assert got.shape == tissue.shape
    within = ndimage.maximum_filter(tissue.astype(np.uint8), size=2 * 12 + 1) > 0
    assert np.all(got[within])  # the guarantee
    beyond = ndimage.maximum_filter(tissue.astype(np.uint8), size=2 * (12 + 3 * 8) + 1) > 0
    # and not much more (3 overview px of ~8 processing px), on the slide (beyond it, the edge repeats)
    assert not np.any((got & ~beyond)[30:-30, 30:-30])
    assert 0 < got.mean() < 1


@pytest.mark.parametrize("seed", [0, 3])
def test_tissue_map_any_inside_is_inside_any(seed: int) -> None:
    import pickle

    geom, _, _, tmap = _tissue_map_case(seed)
    rng = np.random.default_rng(seed)
    h, w = geom.size
    boxes = []
    for _ in range(300):
        y0, x0 = rng.integers(-20, h), rng.integers(-20, w)
        boxes.append((y0, y0 + rng.integers(0, 40), x0, x0 + rng.integers(0, 40)))
    want = [tmap.inside(geom, b).any() for b in boxes]
    assert list(tmap.any_inside(geom, np.array(boxes))) == want
    assert 0 < sum(want) < len(want)
    # Sent to Dask workers packed: the unpacked cache never travels.
    copy = pickle.loads(pickle.dumps(tmap))
    assert "_grown" in tmap.__dict__ and "_grown" not in copy.__dict__
    assert len(pickle.dumps(tmap)) < tmap.shape[0] * tmap.shape[1]  # < one byte per overview pixel
    np.testing.assert_array_equal(copy.inside(geom, (0, h, 0, w)), tmap.inside(geom, (0, h, 0, w)))
