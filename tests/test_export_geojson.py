"""QuPath GeoJSON export: exact outlines, level-0 coordinates, streaming, bad input."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import shape
from skimage.draw import polygon as draw_polygon

from nucseg.cli.main import main
from nucseg.export import ResultError, iter_features, open_result, write_feature_collection, write_geojson
from nucseg.export.geojson import rings_to_geometry, trace_rings


def _segment(tmp: Path, name: str, *, shape_px: tuple[int, int], slide_mpp: float, levels: int, tile: int) -> Path:
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    k = 0.25 / slide_mpp  # nuclei of the same size in micrometres at any magnification
    rgb, _, _ = synthetic_he(shape_px, seed=5, tissue_fraction=1.0, spacing=34 * k, radius=(7 * k, 12 * k))
    slide = write_pyramid_tiff(tmp / f"{name}.tif", rgb, mpp=slide_mpp, levels=levels)
    out = tmp / f"{name}.zarr"
    segment_slide(slide, out, model=HematoxylinPredictor(), tile=tile, halo=40, tissue="none", threads=1)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run at the slide's own resolution, 128 px tiles (many nuclei cross chunks)."""
    return _segment(tmp_path_factory.mktemp("geo"), "s", shape_px=(384, 448), slide_mpp=0.25, levels=2, tile=128)


def _features(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    return doc["features"]


def _rasterise(geom: dict, shape_px: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Pixels whose centres fall inside the polygon(s), with skimage.draw.polygon."""
    out = np.zeros(shape_px, bool)
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    for rings in polys:
        for k, ring in enumerate(rings):
            xy = np.asarray(ring, float)
            # Vertices are pixel edges: pixel (i, j) is inside when its centre (i+.5, j+.5) is.
            rr, cc = draw_polygon(xy[:, 1] / scale[0] - 0.5, xy[:, 0] / scale[1] - 0.5, shape_px)
            m = np.zeros(shape_px, bool)
            m[rr, cc] = True
            out = out | m if k == 0 else out & ~m
    return out


# -- tracing on hand-made labels -----------------------------------------------------


def test_single_pixel_and_l_shape() -> None:
    lab = np.zeros((5, 6), np.uint32)
    lab[1, 1] = 4
    lab[2:4, 3] = 9
    lab[3, 4] = 9
    rings = trace_rings(lab, np.array([4, 9]))
    g4 = rings_to_geometry(rings[4])
    assert g4 == {"type": "Polygon", "coordinates": [[[1, 1], [2, 1], [2, 2], [1, 2], [1, 1]]]}
    g9 = shape(rings_to_geometry(rings[9]))
    assert g9.is_valid and g9.area == 3 and len(rings[9][0]) == 6  # an L has 6 corners


def test_hole_is_an_interior_ring() -> None:
    lab = np.zeros((7, 7), np.int32)
    lab[1:6, 1:6] = 2
    lab[3, 3] = 0
    geom = rings_to_geometry(trace_rings(lab, np.array([2]))[2])
    assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 2
    g = shape(geom)
    assert g.is_valid and g.area == 24
    assert shapely.is_ccw(g.exterior) != shapely.is_ccw(g.interiors[0])


def test_diagonal_pieces_become_a_valid_multipolygon() -> None:
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0] = lab[1, 1] = lab[2, 2] = 1
    geom = rings_to_geometry(trace_rings(lab, np.array([1]))[1])
    assert geom["type"] == "MultiPolygon" and len(geom["coordinates"]) == 3
    assert shape(geom).is_valid and shape(geom).area == 3


def test_only_requested_ids_and_window_borders() -> None:
    lab = np.array([[1, 1, 2], [1, 3, 2], [3, 3, 2]], np.uint16)  # everything touches the border
    rings = trace_rings(lab, np.array([1, 2]))
    assert set(rings) == {1, 2}
    assert shape(rings_to_geometry(rings[2])).area == 3 and shape(rings_to_geometry(rings[1])).area == 3


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.sampled_from([0.0, 0.4]))
def test_random_labels_are_traced_exactly(seed: int, n: int, hole_rate: float) -> None:
    """Every label, whatever its shape, gives a valid geometry covering exactly its pixels."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n, (12, 14)).astype(np.uint32)
    lab[rng.random(lab.shape) < hole_rate] = 0
    ids = np.unique(lab[lab > 0])
    saddles: set[int] = set()
    rings = trace_rings(lab, ids, saddles)
    assert set(rings) == set(ids.tolist())
    for i in ids:
        geom = rings_to_geometry(rings[int(i)], repair=int(i) in saddles)
        g = shape(geom)
        assert g.is_valid, shapely.is_valid_reason(g)
        assert g.area == np.count_nonzero(lab == i)
        yy, xx = np.mgrid[: lab.shape[0], : lab.shape[1]]
        inside = shapely.contains_xy(g, xx + 0.5, yy + 0.5)
        np.testing.assert_array_equal(inside, lab == i)


# -- a real run ----------------------------------------------------------------------


def test_export_reproduces_the_labels(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "nuclei.geojson"
    summary = write_geojson(store, out)
    feats = _features(out)
    labels = zarr.open_array(str(store / "labels" / "nuclei" / "0"), mode="r")[...]
    ids = np.unique(labels[labels > 0])
    assert summary.features == len(feats) == ids.size > 100
    assert summary.missing == 0
    chunk = 128
    crossing = 0
    seen = set()
    for f in feats:
        props = f["properties"]
        assert props["objectType"] == "detection"
        nid = props["nucleus_id"]
        assert nid not in seen
        seen.add(nid)
        mask = labels == nid
        g = shape(f["geometry"])
        assert g.is_valid
        assert g.area == pytest.approx(mask.sum(), rel=0.02)
        assert props["measurements"]["area_px"] == mask.sum()
        raster = _rasterise(f["geometry"], labels.shape)
        iou = (raster & mask).sum() / (raster | mask).sum()
        assert iou >= 0.95, nid
        ys, xs = np.nonzero(mask)
        if ys.min() // chunk != ys.max() // chunk or xs.min() // chunk != xs.max() // chunk:
            crossing += 1
            assert iou == 1.0  # traced whole, not as two halves
    assert seen == set(ids.tolist())
    assert crossing > 10  # the test did exercise nuclei across chunk borders
    assert len({f["id"] for f in feats}) == len(feats)


@pytest.mark.parametrize(
    ("slide_mpp", "levels", "factor"),
    [(0.5, 1, 0.5), (0.125, 2, 2.0)],
    ids=["upsampled-20x", "level-1-of-80x"],
)
def test_level0_coordinates(tmp_path: Path, slide_mpp: float, levels: int, factor: float) -> None:
    """Labels at another resolution than level 0: polygons land in level-0 pixels."""
    import pyarrow.parquet as pq

    size = (int(256 * 0.25 / slide_mpp),) * 2
    store = _segment(tmp_path, "r", shape_px=size, slide_mpp=slide_mpp, levels=levels, tile=128)
    res = open_result(store)
    assert res.level0_per_label == pytest.approx((factor, factor))
    feats = list(iter_features(res))
    table = pq.read_table(res.table_path).to_pydict()
    row = {lab: i for i, lab in enumerate(table["label"])}
    assert len(feats) == len(row) > 20
    labels = res.labels[...]
    for f in feats:
        i = row[f["properties"]["nucleus_id"]]
        g = shape(f["geometry"])
        assert g.area == pytest.approx(table["area_px"][i] * factor**2)
        # Polygon centroid (edge coordinates) = the table's level-0 centroid (pixel centres) + 0.5.
        assert g.centroid.x - 0.5 == pytest.approx(table["x_level0"][i], abs=1e-6)
        assert g.centroid.y - 0.5 == pytest.approx(table["y_level0"][i], abs=1e-6)
        x0, y0, x1, y1 = g.bounds
        assert 0 <= x0 and x1 <= size[1] and 0 <= y0 and y1 <= size[0]
    mask = labels == feats[0]["properties"]["nucleus_id"]
    raster = _rasterise(feats[0]["geometry"], labels.shape, scale=(factor, factor))
    assert np.array_equal(raster, mask)


def test_simplify_keeps_polygons_valid_and_close(store: Path, tmp_path: Path) -> None:
    exact = {f["properties"]["nucleus_id"]: shape(f["geometry"]) for f in iter_features(store)}
    out = tmp_path / "simple.geojson"
    write_geojson(store, out, simplify=1.0, classification="Nucleus")
    feats = _features(out)
    n_exact = sum(len(g.exterior.coords) for g in exact.values() if g.geom_type == "Polygon")
    n_simple = 0
    for f in feats:
        g = shape(f["geometry"])
        assert g.is_valid
        ref = exact[f["properties"]["nucleus_id"]]
        assert g.area == pytest.approx(ref.area, rel=0.1)
        assert g.symmetric_difference(ref).area / ref.area < 0.15
        assert f["properties"]["classification"]["name"] == "Nucleus"
        n_simple += len(g.exterior.coords) if g.geom_type == "Polygon" else 0
    assert n_simple < 0.7 * n_exact


# -- streaming -----------------------------------------------------------------------


def test_features_are_produced_lazily(store: Path) -> None:
    gen = iter_features(store)
    assert inspect.isgenerator(gen)
    first = next(gen)
    assert first["type"] == "Feature"
    gen.close()


def test_writer_streams_without_holding_features(tmp_path: Path) -> None:
    """The writer drops each feature once written: never more than two are alive at once."""
    import gc
    import weakref

    class Feature(dict):
        pass  # a dict that can be weakly referenced

    alive: list[weakref.ref] = []
    most = 0

    def features(n: int):
        nonlocal most
        for i in range(n):
            f = Feature(type="Feature", geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
                        properties={"objectType": "detection", "nucleus_id": i})
            alive.append(weakref.ref(f))
            gc.collect(0)
            most = max(most, sum(r() is not None for r in alive[-50:]))
            yield f

    n = write_feature_collection(features(2000), tmp_path / "many.geojson")
    assert n == 2000 and len(_features(tmp_path / "many.geojson")) == 2000
    assert most <= 2


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "x.geojson"
    dest.write_text("old")

    def broken():
        yield {"type": "Feature", "geometry": None, "properties": {}}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_feature_collection(broken(), dest, overwrite=True)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.geojson"]  # no temporary left behind


# -- bad input -----------------------------------------------------------------------


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("nucseg export: error: ") and "Traceback" not in err[0]
    return err[0]


def test_cli_export_writes_and_refuses_to_overwrite(store: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "n.geojson"
    assert main(["export", str(store), "--geojson", str(out), "--quiet"]) == 0
    first = out.read_text()
    assert len(_features(out)) > 100
    msg = _cli_error(["export", str(store), "--geojson", str(out)], capsys)
    assert "already exists" in msg and "--overwrite" in msg
    assert out.read_text() == first
    assert main(["export", str(store), "--geojson", str(out), "--overwrite", "--quiet", "--simplify", "2"]) == 0
    assert out.read_text() != first


def test_cli_bad_stores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dest = str(tmp_path / "n.geojson")
    assert "does not exist" in _cli_error(["export", str(tmp_path / "nope.zarr"), "--geojson", dest], capsys)
    (tmp_path / "empty").mkdir()
    assert "not a nucseg-wsi output" in _cli_error(["export", str(tmp_path / "empty"), "--geojson", dest], capsys)
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("0", shape=(4, 4), dtype="uint8")
    assert "not a nucseg-wsi output" in _cli_error(["export", str(other), "--geojson", dest], capsys)
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    assert "not a nucseg-wsi output" in _cli_error(["export", str(afile), "--geojson", dest], capsys)
    assert not os.path.exists(dest)


def test_half_finished_run_says_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    class Crash(HematoxylinPredictor):
        calls = 0

        def predict(self, rgb: np.ndarray) -> np.ndarray:
            Crash.calls += 1
            if Crash.calls > 2:
                raise RuntimeError("simulated crash")
            return super().predict(rgb)

    rgb, _, _ = synthetic_he((256, 384), seed=2, tissue_fraction=1.0)
    slide = write_pyramid_tiff(tmp_path / "c.tif", rgb, mpp=0.25, levels=1)
    out = tmp_path / "c.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        segment_slide(slide, out, model=Crash(), tile=128, halo=40, tissue="none", threads=1, batch_size=1)
    with pytest.raises(ResultError, match="half-finished"):
        open_result(out)
    dest = tmp_path / "c.geojson"
    msg = _cli_error(["export", str(out), "--geojson", str(dest)], capsys)
    assert "half-finished" in msg and "--resume" in msg and str(slide.resolve()) in msg
    assert not dest.exists()


def test_bad_destinations(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    msg = _cli_error(["export", str(store), "--geojson", str(tmp_path / "no" / "such" / "n.geojson")], capsys)
    assert "does not exist" in msg
    assert "is a folder" in _cli_error(["export", str(store), "--geojson", str(tmp_path)], capsys)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert "does not exist" in _cli_error(["export", str(store), "--geojson", str(blocker / "n.geojson")], capsys)
    with pytest.raises(ValueError, match="simplify"):
        write_geojson(store, tmp_path / "n.geojson", simplify=-1)
    assert not (tmp_path / "n.geojson").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_folder(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "not writable" in _cli_error(["export", str(store), "--geojson", str(ro / "n.geojson")], capsys)
    finally:
        ro.chmod(0o700)


def test_help_is_instant_and_has_examples(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--simplify" in out and "--overwrite" in out
