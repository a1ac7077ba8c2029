"""measure_nuclei against hand-computed shapes and stain colours of known optical density."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from skimage.color import rgb_from_hed
from skimage.draw import disk, ellipse

from nucseg.morphometrics import COLUMNS, TABLE_COLUMNS, arrow_fields, measure_nuclei, rows_for


def _grey(shape: tuple[int, int]) -> np.ndarray:
    return np.full((*shape, 3), 230, np.uint8)


def _stain_rgb(h_od: float, e_od: float) -> np.ndarray:
    """Beer-Lambert: transmitted light for base-10 densities h_od, e_od along the H and E vectors."""
    od = h_od * rgb_from_hed[0] + e_od * rgb_from_hed[1]
    return np.clip(np.rint(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def test_disk_of_known_radius() -> None:
    r, mpp = 20, 0.5
    lab = np.zeros((64, 64), np.uint32)
    lab[disk((31.5, 30.5), r)] = 3
    m = measure_nuclei(lab, _grey(lab.shape), mpp=mpp)
    assert set(m) == set(COLUMNS)
    assert m["label"].tolist() == [3]
    assert m["area_px"][0] == np.count_nonzero(lab)
    r_um = r * mpp
    assert m["area_um2"][0] == pytest.approx(math.pi * r_um**2, rel=0.02)
    assert m["perimeter_um"][0] == pytest.approx(2 * math.pi * r_um, rel=0.04)
    assert m["equivalent_diameter_um"][0] == pytest.approx(2 * r_um, rel=0.01)
    assert m["major_axis_um"][0] == pytest.approx(2 * r_um, rel=0.02)
    assert m["minor_axis_um"][0] == pytest.approx(2 * r_um, rel=0.02)
    assert m["eccentricity"][0] < 0.1
    assert 0.95 < m["solidity"][0] <= 1.0
    ys, xs = np.nonzero(lab)
    assert (m["centroid_y_px"][0], m["centroid_x_px"][0]) == pytest.approx((ys.mean(), xs.mean()))


@pytest.mark.parametrize(("ry", "rx", "angle"), [(24, 12, 0.0), (12, 24, 90.0)])
def test_ellipse_axes_and_orientation(ry: int, rx: int, angle: float) -> None:
    mpp = 0.25
    lab = np.zeros((80, 80), np.int32)
    lab[ellipse(40, 40, ry, rx)] = 1
    m = measure_nuclei(lab, _grey(lab.shape), mpp=mpp)
    a, b = max(ry, rx), min(ry, rx)
    assert m["major_axis_um"][0] == pytest.approx(2 * a * mpp, rel=0.03)
    assert m["minor_axis_um"][0] == pytest.approx(2 * b * mpp, rel=0.03)
    assert m["eccentricity"][0] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.02)
    assert abs(m["orientation_deg"][0]) == pytest.approx(angle, abs=1.0)


def test_anisotropic_pixels_use_each_axis() -> None:
    """An ellipse of 10 x 20 px at (0.5, 0.25) um/px is a 5 um circle."""
    lab = np.zeros((40, 60), np.uint16)
    lab[ellipse(20, 30, 10, 20)] = 9
    m = measure_nuclei(lab, _grey(lab.shape), mpp=(0.5, 0.25))
    assert m["area_um2"][0] == pytest.approx(math.pi * 25, rel=0.03)
    assert m["major_axis_um"][0] == pytest.approx(10, rel=0.03)
    assert m["minor_axis_um"][0] == pytest.approx(10, rel=0.03)
    assert m["minor_axis_um"][0] / m["major_axis_um"][0] > 0.95  # round, not 2:1 as in pixels


def test_stain_densities_of_known_colours() -> None:
    lab = np.zeros((40, 80), np.uint32)
    lab[disk((20, 20), 10)] = 1
    lab[disk((20, 60), 10)] = 2
    rgb = np.empty((40, 80, 3), np.uint8)
    rgb[:] = _stain_rgb(0.05, 0.3)  # pink stroma around the nuclei
    rgb[lab == 1] = _stain_rgb(0.8, 0.1)
    rgb[lab == 2] = _stain_rgb(0.4, 0.2)
    m = measure_nuclei(lab, rgb, mpp=0.25)
    assert m["hematoxylin_od"] == pytest.approx([0.8, 0.4], rel=0.03)
    assert m["eosin_od"] == pytest.approx([0.1, 0.2], rel=0.05, abs=0.01)


def test_stain_separation_equals_rgb2hed_bit_for_bit() -> None:
    """The table-and-blocks stain separation gives rgb2hed's float64 values exactly."""
    from skimage.color import rgb2hed

    from nucseg.morphometrics import _STAIN_ROWS, _rgb2hed_u8

    v = np.arange(256, dtype=np.uint8)
    every = np.stack(np.meshgrid(v, v[::5], v[::3], indexing="ij"), axis=-1).reshape(-1, 3)  # all of R, 0 and 255
    rng = np.random.default_rng(5)
    pixels = np.concatenate([every, rng.integers(0, 256, (3 * _STAIN_ROWS + 17, 3), dtype=np.uint8)])
    ours, theirs = _rgb2hed_u8(pixels), rgb2hed(pixels[None])[0]
    assert ours.dtype == theirs.dtype == np.float64
    np.testing.assert_array_equal(ours.view(np.uint64), theirs.view(np.uint64))


def test_mean_probability_and_missing_map() -> None:
    lab = np.zeros((30, 30), np.uint32)
    lab[2:8, 2:8] = 5
    lab[12:20, 10:25] = 6
    prob = np.zeros((30, 30), np.float32)
    prob[2:8, 2:8] = 0.75
    prob[12:20, 10:25] = np.linspace(0.5, 1.0, 15)[None, :]
    m = measure_nuclei(lab, _grey(lab.shape), prob, mpp=1.0)
    assert m["mean_prob"] == pytest.approx([0.75, 0.75])
    assert np.isnan(measure_nuclei(lab, _grey(lab.shape), mpp=1.0)["mean_prob"]).all()


def test_sparse_global_ids_sorted_with_offset() -> None:
    """Whole-slide ids are huge and sparse; rows come out sorted by id, centroids shifted."""
    lab = np.zeros((20, 20), np.uint32)
    big, small = np.uint32(3 << 29), np.uint32(7)
    lab[1:4, 1:4] = big
    lab[10:16, 10:12] = small
    m = measure_nuclei(lab, _grey(lab.shape), mpp=0.5, offset=(100, 2000))
    assert m["label"].tolist() == [7, 3 << 29] and m["label"].dtype == np.uint32
    assert m["area_px"].tolist() == [12, 9]
    assert m["centroid_y_px"] == pytest.approx([112.5, 102.0])
    assert m["centroid_x_px"] == pytest.approx([2010.5, 2002.0])


@pytest.mark.parametrize("mpp", [(0.25, 0.25), (0.5, 0.25)])
def test_shapes_equal_scikit_image_regionprops(mpp: tuple[float, float]) -> None:
    """Random ellipses (touching, cut by the border, single pixels, a thin line) against
    regionprops_table with the same pixel size, nucleus by nucleus."""
    from skimage.measure import regionprops_table

    rng = np.random.default_rng(4)
    lab = np.zeros((160, 200), np.uint32)
    for k in range(1, 60):
        cy, cx = rng.uniform(-5, 165), rng.uniform(-5, 205)
        rr, cc = ellipse(cy, cx, rng.uniform(1, 12), rng.uniform(1, 12), shape=lab.shape, rotation=rng.uniform(0, 3))
        lab[rr, cc] = 1000 * k  # sparse ids, later ones drawn over earlier ones
    lab[5, 5] = 7
    lab[150, 20:40] = 9
    m = measure_nuclei(lab, _grey(lab.shape), mpp=mpp)
    ref = regionprops_table(
        lab.astype(np.int64), spacing=mpp,
        properties=("label", "axis_major_length", "axis_minor_length", "eccentricity", "orientation", "solidity",
                    "equivalent_diameter_area", "area"),
    )
    assert m["label"].tolist() == ref["label"].tolist() and len(m["label"]) > 40
    np.testing.assert_allclose(m["major_axis_um"], ref["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m["minor_axis_um"], ref["axis_minor_length"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m["eccentricity"], ref["eccentricity"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m["orientation_deg"], np.degrees(ref["orientation"]), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(m["solidity"], ref["solidity"], rtol=1e-12)
    np.testing.assert_allclose(m["equivalent_diameter_um"], ref["equivalent_diameter_area"], rtol=1e-12)
    np.testing.assert_allclose(m["area_um2"], ref["area"], rtol=1e-12)
    if mpp[0] == mpp[1]:
        perim = regionprops_table(lab.astype(np.int64), properties=("label", "perimeter"))["perimeter"]
        np.testing.assert_allclose(m["perimeter_um"], perim * mpp[0], rtol=1e-12)


def test_rows_for_reorders_to_the_tile_order() -> None:
    lab = np.zeros((10, 10), np.uint32)
    lab[0:2, 0:2] = 30
    lab[5:8, 5:6] = 10
    lab[9, 9] = 20
    m = measure_nuclei(lab, _grey(lab.shape), mpp=1.0)
    r = rows_for(m, np.array([20, 30, 10], np.uint32))
    assert r["label"].tolist() == [20, 30, 10] and r["area_px"].tolist() == [1, 4, 3]
    with pytest.raises(ValueError, match=r"\[40\]"):
        rows_for(m, np.array([10, 40], np.uint32))


def test_no_nuclei_and_full_image() -> None:
    empty = measure_nuclei(np.zeros((8, 8), np.uint32), _grey((8, 8)), mpp=0.5)
    assert all(len(v) == 0 for v in empty.values()) and set(empty) == set(COLUMNS)
    full = measure_nuclei(np.full((8, 8), 4, np.uint32), _grey((8, 8)), mpp=0.5)
    assert full["label"].tolist() == [4] and full["area_px"].tolist() == [64]


def test_arrow_fields_cover_table_columns() -> None:
    fields = arrow_fields()
    assert [f.name for f in fields] == list(TABLE_COLUMNS)
    with pytest.raises(ValueError, match="columns"):
        arrow_fields(("nope",))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": np.zeros((4, 4, 1), np.uint32)}, ValueError, "labels must be 2-D"),
        ({"labels": np.zeros((4, 4), np.float32)}, TypeError, "integer"),
        ({"labels": -np.ones((4, 4), np.int32)}, ValueError, ">= 0"),
        ({"rgb": np.zeros((4, 5, 3), np.uint8)}, ValueError, "rgb must be uint8"),
        ({"rgb": np.zeros((4, 4, 3), np.float32)}, ValueError, "rgb must be uint8"),
        ({"prob": np.zeros((3, 4))}, ValueError, "prob must have"),
        ({"mpp": -1.0}, ValueError, "positive"),
        ({"mpp": "0.25"}, TypeError, "mpp must be"),
        ({"mpp": (0.25, float("nan"))}, ValueError, "positive"),
    ],
)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    args = {"labels": np.ones((4, 4), np.uint32), "rgb": _grey((4, 4)), "prob": None, "mpp": 0.25}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        measure_nuclei(args.pop("labels"), args.pop("rgb"), args.pop("prob"), **args)


def test_runner_table_matches_whole_image_measurements(tmp_path) -> None:
    """Measured per tile by the runner = measured once on the whole image, whatever the tile size."""
    import pyarrow.parquet as pq
    import zarr

    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    rgb, _, _ = synthetic_he((320, 352), seed=9, tissue_fraction=1.0)
    slide = write_pyramid_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=1)
    pred = HematoxylinPredictor()
    tables = {}
    for tile in (128, 352):
        out = tmp_path / f"t{tile}.zarr"
        segment_slide(slide, out, model=pred, tile=tile, halo=40, tissue="none", threads=1)
        table = pq.read_table(out / "nucseg" / "nuclei.parquet")
        assert set(TABLE_COLUMNS) <= set(table.column_names)
        assert table.num_rows > 20
        labels = zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]
        prob = pred.predict(np.pad(rgb, ((40, 40), (40, 40), (0, 0)), mode="reflect")[None])[0][40:-40, 40:-40]
        whole = rows_for(measure_nuclei(labels, rgb, prob, mpp=0.25), table.column("label").to_numpy())
        for c in TABLE_COLUMNS:
            assert np.isfinite(table.column(c).to_numpy()).all(), c  # measured, not left NaN
            np.testing.assert_allclose(table.column(c).to_numpy(), whole[c].astype(np.float32), rtol=1e-5,
                                       atol=1e-6, err_msg=c)
        tables[tile] = table
    # Same nuclei (same positions) in both runs, measured the same.
    a = tables[128].sort_by([("y_px", "ascending"), ("x_px", "ascending")])
    b = tables[352].sort_by([("y_px", "ascending"), ("x_px", "ascending")])
    for c in TABLE_COLUMNS:
        np.testing.assert_allclose(a.column(c).to_numpy(), b.column(c).to_numpy(), rtol=1e-5, atol=1e-6, err_msg=c)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    k=st.integers(1, 5),
    density=st.floats(0.1, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_perimeter_and_convex_area_equal_regionprops(shape, k, density, seed) -> None:
    """The compiled kernel against regionprops on arbitrary labels: touching objects,
    holes, objects in several pieces, the image border."""
    from skimage.measure import regionprops_table

    from nucseg._core import perimeter_and_convex_area

    rng = np.random.default_rng(seed)
    lab = np.where(rng.random(shape) < density, rng.integers(1, k + 1, shape), 0)
    ids, inv = np.unique(lab, return_inverse=True)
    lab = inv.reshape(shape) if ids[0] == 0 else inv.reshape(shape) + 1
    n = int(lab.max())
    assume(n > 0)
    per, cvx = perimeter_and_convex_area(lab.astype(np.int32), n)
    ref = regionprops_table(lab, properties=("label", "perimeter", "area_convex"))
    assert ref["label"].tolist() == list(range(1, n + 1))
    np.testing.assert_allclose(per, ref["perimeter"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cvx, ref["area_convex"])


def test_symmetric_nuclei_orientation_and_eccentricity_equal_scikit_image() -> None:
    """Round and square nuclei have equal variances: scikit-image then reports eccentricity 0
    and its diagonal orientation (-45 degrees here). Moments taken in floating point about the
    centroid missed the tie by an ulp (0 or +-90 degrees, eccentricity ~1e-8); the exact
    integer moments find it."""
    from skimage.draw import disk
    from skimage.measure import regionprops_table

    lab = np.zeros((60, 200), np.int32)
    lab[disk((15, 15), 5)] = 1
    lab[5:9, 40:44] = 2
    lab[20:23, 60] = 3
    lab[21, 59:62] = 3  # a plus
    lab[disk((40, 100), 7.3)] = 4
    lab[40:46, 150:156] = 5
    lab[30, 170] = 6
    m = measure_nuclei(lab, _grey(lab.shape), mpp=0.25)
    ref = regionprops_table(lab, spacing=(0.25, 0.25), properties=("label", "orientation", "eccentricity"))
    np.testing.assert_array_equal(m["eccentricity"], ref["eccentricity"])
    np.testing.assert_array_equal(m["orientation_deg"], np.degrees(ref["orientation"]))
    assert (m["eccentricity"] == 0).all() and (m["orientation_deg"] == -45).all()
