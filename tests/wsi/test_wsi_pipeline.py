"""segment_slide end to end: tile-size invariance, store, table, tissue, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from nucseg.wsi import ObjectTooLargeError, SlideError, StoreError, segment_slide
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
from nucseg.wsi.predictors import HematoxylinPredictor
from wsi_helpers import same_partition


def _labels(out: Path, level: int = 0) -> np.ndarray:
    return zarr.open_array(str(out / "labels" / "nuclei" / str(level)), mode="r")[...]


def _whole(rgb: np.ndarray, pred: HematoxylinPredictor, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """One-piece reference: mirror-pad, predict, crop, watershed."""
    import nucseg

    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    prob = pred.predict(padded[None])[0][pad:-pad, pad:-pad]
    cfg = pred.config
    return nucseg.watershed_dynamics(prob, cfg.lam, threshold=cfg.threshold), prob


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rgb, _, _ = synthetic_he((3000, 3000), seed=3, tissue_fraction=1.0)
    path = tmp_path_factory.mktemp("big") / "big.tif"
    write_pyramid_tiff(path, rgb, mpp=0.25, levels=2)
    return path, rgb


def test_tile_size_invariance_3000(big_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Tiles of 512 and 1024 and one piece give the very same nuclei."""
    path, rgb = big_slide
    pred = HematoxylinPredictor()
    whole, _ = _whole(rgb, pred, pad=40)
    n = int(whole.max())
    assert n > 2000
    results = {}
    for tile in (512, 1024):
        s = segment_slide(path, tmp_path / f"t{tile}.zarr", model=pred, tile=tile, halo=40, tissue="none")
        assert s.nuclei == n
        results[tile] = _labels(tmp_path / f"t{tile}.zarr")
        assert len(np.unique(results[tile])) - 1 == n
        assert same_partition(results[tile], whole)
    assert same_partition(results[512], results[1024])


def test_invariance_with_resampling(tmp_path: Path, demo_image: np.ndarray) -> None:
    """A 20x (0.5 um/px) slide upsampled to 0.25: tile size still does not matter."""
    from nucseg.wsi.reader import open_slide
    from nucseg.wsi.tiling import plan_geometry, read_region

    rgb = demo_image[:600, :700]
    path = write_pyramid_tiff(tmp_path / "x20.tif", rgb, mpp=0.5, levels=2)
    pred = HematoxylinPredictor(sigma=1.0, low=0.02, high=0.07, halo=4)
    a = segment_slide(path, tmp_path / "a.zarr", model=pred, tile=256, halo=64, tissue="none")
    b = segment_slide(path, tmp_path / "b.zarr", model=pred, tile=512, halo=64, tissue="none")
    assert a.size == (1200, 1400) and a.level == 0 and a.mpp == pytest.approx((0.25, 0.25))
    with open_slide(path) as s:
        g = plan_geometry([(700, 600), (350, 300)], s.mpp, 0.25, tile=2048, halo=64, context=4)
        full = read_region(s, g, (0, 1200, 0, 1400))
    whole, _ = _whole(full, pred, pad=64)
    la, lb = _labels(tmp_path / "a.zarr"), _labels(tmp_path / "b.zarr")
    assert same_partition(la, whole) and same_partition(lb, whole)
    assert a.nuclei == b.nuclei == whole.max() > 100


def test_segments_the_known_nuclei(demo_slide: Path, tmp_path: Path) -> None:
    from nucseg.wsi.demo import synthetic_he

    _, _, truth = synthetic_he((1024, 1280), seed=1)
    s = segment_slide(demo_slide, tmp_path / "o.zarr", model="hematoxylin", tile=256, halo=64)
    lab = _labels(tmp_path / "o.zarr")
    cy, cx = truth.center[:, 0].astype(int), truth.center[:, 1].astype(int)
    hit = lab[cy, cx] != 0
    assert hit.mean() > 0.9
    # Distinct nuclei get distinct labels (a few touching pairs may merge).
    assert len(np.unique(lab[cy, cx][hit])) > 0.9 * hit.sum()
    assert 0.8 * len(truth.center) < s.nuclei < 1.2 * len(truth.center)


def test_store_metadata_table_and_pyramid(demo_slide: Path, demo_image: np.ndarray, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "o.zarr"
    s = segment_slide(demo_slide, out, model="hematoxylin", tile=256, save_prob=True, tissue="none")
    root = zarr.open_group(str(out), mode="r")
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert root["0"].shape[0] == 3 and root["0"].dtype == np.uint8
    assert root["labels"].attrs["ome"] == {"version": "0.5", "labels": ["nuclei"]}
    nuc = root["labels/nuclei"].attrs["ome"]
    assert nuc["image-label"]["source"]["image"] == "../../"
    lms = nuc["multiscales"][0]
    assert [(a["name"], a["type"], a["unit"]) for a in lms["axes"]] == [
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    lab0 = root["labels/nuclei/0"]
    assert lab0.shape == (1024, 1280) and lab0.dtype == np.uint32 and lab0.chunks == (256, 256)
    assert lab0.metadata.dimension_names == ("y", "x")
    for k, ds in enumerate(lms["datasets"]):
        scale = next(t for t in ds["coordinateTransformations"] if t["type"] == "scale")["scale"]
        assert scale == pytest.approx([0.25 * 2**k, 0.25 * 2**k])
        arr = root[f"labels/nuclei/{ds['path']}"]
        assert arr.shape == (-(-1024 // 2**k), -(-1280 // 2**k))
    lab = lab0[...]
    np.testing.assert_array_equal(root["labels/nuclei/1"][...], lab[::2, ::2])
    assert set(np.unique(root["labels/nuclei/2"][...])) <= set(np.unique(lab))
    # Probability map, uint8, equal to the predictor's map where it is trusted.
    prob = root["prob/0"][...]
    assert prob.dtype == np.uint8 and prob.shape == lab.shape
    assert prob[lab != 0].min() > 127  # labelled pixels are above the 0.5 threshold
    whole, ref = _whole(demo_image, HematoxylinPredictor(), pad=104)
    np.testing.assert_array_equal(prob, np.clip(np.rint(ref * 255.0), 0, 255).astype(np.uint8))
    assert same_partition(lab, whole)
    # Run metadata.
    meta = root.attrs["nucseg"]
    assert meta["status"] == "complete"
    assert meta["model"]["name"] == "hematoxylin" and len(meta["model"]["sha256"]) == 64
    assert meta["settings"]["lam"] == 0.05 and meta["settings"]["threshold"] == 0.5
    assert meta["processing"]["mpp"] == [0.25, 0.25] and meta["processing"]["tile"] == 256
    assert meta["slide"]["path"] == str(demo_slide.resolve()) and len(meta["slide"]["fingerprint"]) == 64
    assert meta["nuclei"] == s.nuclei and meta["start_time"] <= meta["end_time"]
    # The table agrees with the labels.
    tab = pq.read_table(out / "nucseg" / "nuclei.parquet").to_pydict()
    ids, areas = np.unique(lab[lab != 0], return_counts=True)
    assert sorted(tab["label"]) == ids.tolist()
    order = np.argsort(tab["label"])
    np.testing.assert_array_equal(np.asarray(tab["area_px"])[order], areas)
    np.testing.assert_allclose(np.asarray(tab["area_um2"])[order], areas * 0.0625)
    k = int(order[0])
    yy, xx = np.nonzero(lab == tab["label"][k])
    assert tab["y_px"][k] == pytest.approx(yy.mean()) and tab["x_px"][k] == pytest.approx(xx.mean())
    assert tab["y_um"][k] == pytest.approx((yy.mean() + 0.5) * 0.25)
    assert (tab["bbox_y0"][k], tab["bbox_x1"][k]) == (yy.min(), xx.max() + 1)
    assert all(0.5 < p <= 1.0 for p in tab["mean_prob"])


def test_tissue_detection_skips_glass(tmp_path: Path) -> None:
    rgb, tissue, _ = synthetic_he((1024, 1024), seed=5, tissue_fraction=0.35)
    path = write_pyramid_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=3)
    s = segment_slide(path, tmp_path / "a.zarr", model="hematoxylin", tile=128, halo=64)
    assert s.tiles == 64 and s.tiles_tissue < s.tiles
    assert s.tissue_fraction == pytest.approx(tissue.mean(), abs=0.08)
    assert s.tissue_mm2 == pytest.approx(s.tissue_fraction * 1024 * 1024 * 0.0625 / 1e6)
    full = segment_slide(path, tmp_path / "b.zarr", model="hematoxylin", tile=128, halo=64, tissue="none")
    assert full.tiles_tissue == 64 and full.tissue_fraction == 1.0
    # Skipping glass loses nothing: glass has no nuclei.
    assert same_partition(_labels(tmp_path / "a.zarr"), _labels(tmp_path / "b.zarr"))
    # A user mask: nothing marked, nothing computed.
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    empty = segment_slide(path, tmp_path / "c.zarr", model="hematoxylin", tile=128, halo=64, tissue=tmp_path / "mask.png")
    assert empty.tiles_tissue == 0 and empty.nuclei == 0 and empty.tissue_fraction == 0.0


def test_refuses_to_touch_existing_output(demo_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    segment_slide(demo_slide, out, model="hematoxylin", tile=512, tissue="none")
    before = _labels(out)
    with pytest.raises(StoreError, match="already exists.*--resume.*--overwrite"):
        segment_slide(demo_slide, out, model="hematoxylin", tile=512, tissue="none")
    np.testing.assert_array_equal(_labels(out), before)
    # Resume with other settings is refused too.
    with pytest.raises(StoreError, match="settings differ.*tile"):
        segment_slide(demo_slide, out, model="hematoxylin", tile=256, tissue="none", resume=True)
    # Resume of a finished run recomputes nothing.
    s = segment_slide(demo_slide, out, model="hematoxylin", tile=512, tissue="none", resume=True)
    assert s.tiles_run == 0 and s.tiles_resumed == s.tiles
    s = segment_slide(demo_slide, out, model="hematoxylin", tile=256, tissue="none", overwrite=True)
    assert s.tiles_run == s.tiles == 20
    # Overwrite never deletes something that is not ours.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not an output of nucseg-wsi"):
        segment_slide(demo_slide, other, model="hematoxylin", tissue="none", overwrite=True)
    assert (other / "thesis.tex").exists()
    with pytest.raises(ValueError, match="exclusive"):
        segment_slide(demo_slide, out, model="hematoxylin", resume=True, overwrite=True)


def test_resume_after_partial_run_equals_full_run(demo_slide: Path, tmp_path: Path) -> None:
    """Drop some completion records (as a crash would), resume, compare."""
    full = tmp_path / "full.zarr"
    segment_slide(demo_slide, full, model="hematoxylin", tile=256, tissue="none", save_prob=True)
    part = tmp_path / "part.zarr"
    segment_slide(demo_slide, part, model="hematoxylin", tile=256, tissue="none", save_prob=True)
    records = sorted((part / "nucseg" / "tiles").glob("*.json"))
    for r in records[::2]:
        r.unlink()
    s = segment_slide(demo_slide, part, model="hematoxylin", tile=256, tissue="none", save_prob=True, resume=True)
    assert s.tiles_run == len(records[::2]) and s.tiles_resumed == len(records) - len(records[::2])
    for name in ("labels/nuclei/0", "labels/nuclei/1", "prob/0"):
        a = zarr.open_array(str(full / name), mode="r")[...]
        b = zarr.open_array(str(part / name), mode="r")[...]
        np.testing.assert_array_equal(a, b)
    import pyarrow.parquet as pq

    ta = pq.read_table(full / "nucseg" / "nuclei.parquet")
    tb = pq.read_table(part / "nucseg" / "nuclei.parquet")
    assert ta.equals(tb)


def test_slide_without_mpp_asks_for_mpp(tmp_path: Path, demo_image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "nompp.tif", demo_image[:256, :256], mpp=None, levels=1)
    with pytest.raises(SlideError, match="pass --mpp"):
        segment_slide(path, tmp_path / "o.zarr", model="hematoxylin")
    assert not (tmp_path / "o.zarr").exists()
    s = segment_slide(path, tmp_path / "o.zarr", model="hematoxylin", mpp=0.25, tile=128, tissue="none")
    assert s.mpp == (0.25, 0.25)


def test_small_halo_is_enlarged_or_raises_a_clear_error(demo_slide: Path, demo_image: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ObjectTooLargeError, match="raise --halo"):
        segment_slide(
            demo_slide,
            tmp_path / "o.zarr",
            model="hematoxylin",
            tile=64,
            halo=10,
            max_halo=10,
            strict=True,
            tissue="none",
        )
    # With room to grow, tiles whose clusters do not fit are redone with a larger halo: still exact.
    s = segment_slide(demo_slide, tmp_path / "p.zarr", model="hematoxylin", tile=128, halo=12, tissue="none")
    meta = zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["nucseg"]
    assert meta["tiles_enlarged"] > 0
    whole, _ = _whole(demo_image, HematoxylinPredictor(), pad=12)
    assert same_partition(_labels(tmp_path / "p.zarr"), whole) and s.nuclei == whole.max()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tile": 0}, ValueError, "tile must be"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"threads": 0}, ValueError, "threads"),
        ({"connectivity": 3}, ValueError, "connectivity"),
        ({"lam": float("nan")}, ValueError, "lam"),
        ({"tissue": 3}, TypeError, "tissue"),
        ({"model": 3}, TypeError, "model"),
        ({"model": "missing_weights.safetensors"}, FileNotFoundError, "model weights not found"),
        ({"model": "multiorgn"}, FileNotFoundError, "bundled model: .default., .multiorgan., .default\\+multiorgan."),
        ({"mpp": -1}, ValueError, "mpp"),
        ({"precision": "bf16"}, ValueError, "precision must be one of"),
    ],
)
def test_argument_validation(demo_slide: Path, tmp_path: Path, kwargs: dict, exc: type, match: str) -> None:
    args = {"model": "hematoxylin", "tissue": "none"}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        segment_slide(demo_slide, tmp_path / "o.zarr", **args)


def test_real_slide_is_rescaled_to_the_model_resolution(cmu_slide: Path, tmp_path: Path) -> None:
    # Hematoxylin densities of a real 20x slide are higher than the synthetic ones.
    pred = HematoxylinPredictor(low=0.15, high=0.3)
    s = segment_slide(cmu_slide, tmp_path / "cmu.zarr", model=pred, tile=1024, qc=tmp_path / "qc.png")
    assert s.level == 0
    assert s.size == (round(2967 * 0.499 / 0.25), round(2220 * 0.499 / 0.25))
    assert s.mpp == pytest.approx((0.25, 0.25), rel=1e-3)
    assert 0.3 < s.tissue_fraction < 1.0
    assert s.nuclei > 1000
    meta = json.loads((tmp_path / "cmu.zarr" / "zarr.json").read_text())["attributes"]["nucseg"]
    assert meta["slide"]["vendor"] == "aperio" and meta["slide"]["mpp"] == [0.499, 0.499]
    assert (tmp_path / "qc.png").stat().st_size > 1000


def test_corrupt_tile_names_slide_and_region_and_keeps_finished_tiles(tmp_path: Path) -> None:
    import tifffile

    # Larger than the 2048 px overview, so the overview comes from level 1 and only
    # the tile that reads the corrupt level-0 TIFF tile fails.
    rgb = np.full((2304, 2304, 3), (232, 160, 196), np.uint8)
    path = write_pyramid_tiff(tmp_path / "bad.tif", rgb, mpp=0.25, levels=2, tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
        i = len(offsets) - 1  # the last TIFF tile: bottom-right corner
    data = bytearray(path.read_bytes())
    data[offsets[i] : offsets[i] + counts[i]] = b"\xff" * counts[i]
    path.write_bytes(bytes(data))
    out = tmp_path / "o.zarr"
    with pytest.raises(SlideError) as exc:
        segment_slide(path, out, model="hematoxylin", tile=768, halo=64, tissue="none", threads=1)
    msg = str(exc.value)
    assert "bad.tif" in msg and "region" in msg and "tile 8" in msg
    meta = zarr.open_group(str(out), mode="r").attrs["nucseg"]
    assert meta["status"] == "running"  # resumable, not marked complete
    assert len(list((out / "nucseg" / "tiles").glob("*.json"))) >= 1


def test_write_failure_is_one_clear_error_and_resumable(
    demo_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nucseg.wsi.store import OutputStore

    real = OutputStore._write_tile
    calls = {"n": 0}

    def flaky(self, result, table, record, scheme):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, result, table, record, scheme)

    monkeypatch.setattr(OutputStore, "_write_tile", flaky)
    out = tmp_path / "o.zarr"
    with pytest.raises(StoreError, match="cannot write tile .* No space left.*--resume"):
        segment_slide(demo_slide, out, model="hematoxylin", tile=256, halo=64, tissue="none", threads=1)
    assert len(list((out / "nucseg" / "tiles").glob("*.json"))) == 4
    monkeypatch.setattr(OutputStore, "_write_tile", real)
    s = segment_slide(demo_slide, out, model="hematoxylin", tile=256, halo=64, tissue="none", resume=True)
    assert s.tiles_resumed == 4 and s.tiles_run == 16
    ref = segment_slide(demo_slide, tmp_path / "ref.zarr", model="hematoxylin", tile=256, halo=64, tissue="none")
    np.testing.assert_array_equal(_labels(out), _labels(tmp_path / "ref.zarr"))
    assert s.nuclei == ref.nuclei


def test_clusters_beyond_the_largest_halo_are_kept_approximate(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rgb, _, _ = synthetic_he((768, 768), seed=2, tissue_fraction=1.0, spacing=20.0, radius=(8.0, 11.0))
    path = write_pyramid_tiff(tmp_path / "dense.tif", rgb, mpp=0.25, levels=1)
    pred = HematoxylinPredictor()
    whole, _ = _whole(rgb, pred, pad=40)
    outs = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}.zarr"
        segment_slide(path, out, model=pred, tile=128, halo=40, max_halo=40, tissue="none", threads=threads)
        meta = zarr.open_group(str(out), mode="r").attrs["nucseg"]
        tab = pq.read_table(out / "nucseg" / "nuclei.parquet").to_pydict()
        assert meta["approximate_nuclei"] == tab["exact"].count(False) > 0
        outs.append(_labels(out))
    # Deterministic whatever the completion order.
    np.testing.assert_array_equal(outs[0], outs[1])
    lab = outs[0]
    # Exact nuclei are exactly those of the one-piece run.
    from nucseg.wsi.tiling import IdScheme

    scheme = IdScheme(36)
    exact_ids = [i for i in np.unique(lab) if i and not scheme.is_approximate(np.array([i]))[0]]
    for i in exact_ids[::10]:
        mask = lab == i
        ref = np.unique(whole[mask])
        assert len(ref) == 1 and ref[0] != 0 and np.array_equal(whole == ref[0], mask)
    # Approximate ones still cover the clusters: most one-piece nuclei have a partner.
    from wsi_helpers import matched_fraction

    assert matched_fraction(whole, lab, iou=0.5) > 0.9
    # With room to grow the halo, the same slide comes out exact.
    segment_slide(path, tmp_path / "grow.zarr", model=pred, tile=128, halo=40, tissue="none")
    assert same_partition(_labels(tmp_path / "grow.zarr"), whole)


def test_store_validates_as_ngff_05(demo_slide: Path, demo_image: np.ndarray, tmp_path: Path) -> None:
    """Read back with ome-zarr-models (an independent NGFF 0.5 implementation)."""
    models = pytest.importorskip("ome_zarr_models.v05")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    out = tmp_path / "full.zarr"
    segment_slide(demo_slide, out, model="hematoxylin", tile=256, tissue="none", save_image=True, save_prob=True)
    root = zarr.open_group(str(out), mode="r")
    img = Image.from_zarr(root)  # checks the labels' levels match the image's too
    assert img.labels is not None and img.labels.label_paths == ["nuclei"]
    label = ImageLabel.from_zarr(root["labels/nuclei"])
    scales = [d.coordinateTransformations[0].scale for d in label.ome_attributes.multiscales[0].datasets]
    assert scales[:3] == [[0.25, 0.25], [0.5, 0.5], [1.0, 1.0]]
    Image.from_zarr(root["prob"])
    assert models is not None
    # The stored image is the slide (no resampling at 0.25 um/px) and its 2x2 means.
    np.testing.assert_array_equal(root["0"][...].transpose(1, 2, 0), demo_image)
    mean = demo_image.astype(np.uint16).reshape(512, 2, 640, 2, 3).sum(axis=(1, 3))
    np.testing.assert_array_equal(root["1"][...].transpose(1, 2, 0), ((mean + 2) // 4).astype(np.uint8))


def test_level_selection_on_an_80x_pyramid(tmp_path: Path, demo_image: np.ndarray) -> None:
    """0.125 um/px slide: level 1 is at the model's 0.25 and is read as it is."""
    import pyarrow.parquet as pq

    from nucseg.wsi.reader import open_slide

    big = np.repeat(np.repeat(demo_image[:384, :512], 2, axis=0), 2, axis=1)  # 768 x 1024 at 0.125
    path = write_pyramid_tiff(tmp_path / "x80.tif", big, mpp=0.125, levels=3)
    s = segment_slide(path, tmp_path / "a.zarr", model="hematoxylin", tile=128, tissue="none")
    assert s.level == 1 and s.size == (384, 512) and s.mpp == pytest.approx((0.25, 0.25))
    with open_slide(path) as slide:
        level1 = slide.read(1, 0, 0, 512, 384)
    whole, _ = _whole(level1, HematoxylinPredictor(), pad=104)
    lab = _labels(tmp_path / "a.zarr")
    assert same_partition(lab, whole)
    tab = pq.read_table(tmp_path / "a.zarr" / "nucseg" / "nuclei.parquet").to_pydict()
    # Level-0 coordinates are twice the processing ones (pixel centres), microns the same.
    y, y0 = np.asarray(tab["y_px"]), np.asarray(tab["y_level0"])
    np.testing.assert_allclose(y0, (y + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(tab["y_um"], (y + 0.5) * 0.25)
    np.testing.assert_allclose(tab["area_um2"], np.asarray(tab["area_px"]) * 0.0625)
    # Forcing level 0 downsamples it by 2 (anti-aliased): same grid, similar nuclei.
    f = segment_slide(path, tmp_path / "b.zarr", model="hematoxylin", tile=128, tissue="none", level=0)
    assert f.level == 0 and f.size == (384, 512) and f.mpp == pytest.approx((0.25, 0.25))
    from wsi_helpers import matched_fraction

    assert matched_fraction(whole, _labels(tmp_path / "b.zarr"), iou=0.5) > 0.9


def _local_map(batch: np.ndarray) -> np.ndarray:
    """A stand-in network of context 3 px: a 7x7 box mean of the red channel (edges mirrored)."""
    from scipy import ndimage

    return np.stack([ndimage.uniform_filter(b[..., 0].astype(np.float32), 7, mode="mirror") for b in batch])


@pytest.mark.parametrize(("h", "w", "window"), [(300, 260, 128), (300, 260, 96), (97, 400, 64), (50, 60, 64)])
def test_predict_in_windows_equals_one_piece_and_bounds_the_input(h, w, window):
    """A halo retry's map in windows: the same as one piece wherever each window kept its
    context (here everywhere: the stand-in's context is 3 px, 8 are kept), and no window
    larger than the tiles' read box, so the network's memory is that of an ordinary tile."""
    from nucseg.wsi.pipeline import predict_in_windows

    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    seen = []

    def predict(batch):
        seen.append(batch.shape[1:3])
        return _local_map(batch)

    got = predict_in_windows(predict, rgb, window=window, context=8, stride=8)
    np.testing.assert_array_equal(got, _local_map(rgb[None])[0])
    assert all(a <= window and b <= window for a, b in seen)
    if h <= window and w <= window:
        assert seen == [(h, w)]  # small enough: one call, as before
    else:
        assert len(seen) <= (-(-h // (window - 16)) * -(-w // (window - 16)))  # the fewest windows


def test_predict_in_windows_refuses_a_window_without_room():
    from nucseg.wsi.pipeline import predict_in_windows

    with pytest.raises(ValueError, match="no room"):
        predict_in_windows(_local_map, np.zeros((100, 100, 3), np.uint8), window=20, context=8, stride=8)


def test_measure_tile_is_measure_nuclei_bit_for_bit() -> None:
    """The runner numbers a tile's nuclei from their ids (ascending in rank order) instead
    of sorting its labels: every column equals measure_nuclei's on the owned labels."""
    import nucseg
    from nucseg.morphometrics import measure_nuclei
    from nucseg.synthetic import probability_map
    from nucseg.wsi.pipeline import measure_tile
    from nucseg.wsi.tiling import IdScheme, crop_box, make_tiles, own_objects, plan_geometry

    geom = plan_geometry([(700, 600)], (0.25, 0.25), 0.25, tile=256, halo=48, context=4)
    tiles = make_tiles(geom)
    scheme = IdScheme(len(tiles))
    rng = np.random.default_rng(4)
    approximate = 0
    for tile in tiles:
        vy0, vy1, vx0, vx1 = tile.valid
        prob = probability_map((vy1 - vy0, vx1 - vx0), seed=tile.index)[0].astype(np.float32)
        labels = nucseg.watershed_dynamics(prob, 0.2, threshold=0.4)
        result = own_objects(labels, prob, 0.4, tile, geom, scheme, approximate=True, min_area=30)
        approximate += int((~result.exact).sum())
        rgb = rng.integers(0, 256, (tile.read[1] - tile.read[0], tile.read[3] - tile.read[2], 3), dtype=np.uint8)
        got = measure_tile(result, tile, geom, rgb)
        y0, _, x0, _ = result.box
        want = measure_nuclei(result.labels, rgb[crop_box(result.box, tile.read)], mpp=geom.mpp, offset=(y0, x0))
        assert list(got) == list(want) and len(got["label"]) == len(result.ids) > 5
        for column in want:
            assert got[column].dtype == want[column].dtype
            np.testing.assert_array_equal(got[column], want[column], err_msg=column)
    assert approximate > 0  # exact and approximate ids (two id ranges) both numbered


@pytest.mark.parametrize("seed", range(6))
def test_tissue_windows_cover_every_inside_pixel_of_the_valid_box(seed: int) -> None:
    from nucseg.wsi.pipeline import tissue_windows
    from nucseg.wsi.tiling import Tile

    rng = np.random.default_rng(seed)
    tile = Tile(index=0, row=0, col=0, core=(0, 512, 0, 640), read=(-40, 552, -40, 680), valid=(-16, 528, -16, 656))
    h, w = 592, 720
    inside = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):  # a few rectangles of tissue
        y0, x0 = rng.integers(0, h - 50), rng.integers(0, w - 50)
        inside[y0 : y0 + rng.integers(20, 200), x0 : x0 + rng.integers(20, 200)] = True
    windows = tissue_windows(inside, tile, context=20, stride=8, strip=128)
    assert windows is not None
    covered = np.zeros_like(inside)
    for (y0, y1, x0, x1), (ry0, ry1, rx0, rx1) in windows:
        assert 24 <= y0 < y1 <= 568 and 24 <= x0 < x1 <= 696  # kept parts lie in the valid box
        assert not covered[y0:y1, x0:x1].any()  # each pixel predicted once
        covered[y0:y1, x0:x1] = True
        assert ry0 % 8 == 0 and rx0 % 8 == 0  # on the stride grid of the read box
        assert (ry0, rx0) == (max(0, y0 - 24), max(0, x0 - 24))  # context, rounded up to the stride
        assert (ry1, rx1) == (min(h, y1 + 24), min(w, x1 + 24))
    valid = np.zeros_like(inside)
    valid[24:568, 24:696] = True
    assert np.all(covered[inside & valid])
    assert tissue_windows(np.zeros((h, w), bool), tile, context=20, stride=8, strip=128) == []
    assert tissue_windows(np.ones((h, w), bool), tile, context=20, stride=8, strip=128) is None  # one piece is cheaper
    with pytest.raises(ValueError, match="multiple of the stride"):
        tissue_windows(inside, tile, context=20, stride=8, strip=100)


@pytest.mark.parametrize("windows", [True, False])
def test_predict_tiles_is_the_whole_map_inside_tissue_and_zero_outside(windows: bool) -> None:
    """Windowed or whole, each tile's map equals the one-piece map where the tissue map holds
    and is 0 elsewhere (the stand-in network's context, 3 px, is within the 8 px kept)."""
    from scipy import ndimage

    from nucseg.wsi.pipeline import mask_outside, plan_tile, predict_tiles
    from nucseg.wsi.tiling import crop_box, make_tiles, plan_geometry
    from nucseg.wsi.tissue import TissueMap

    geom = plan_geometry([(700, 600)], (0.25, 0.25), 0.25, tile=256, halo=32, context=8, stride=8)
    mask = np.zeros((600, 700), bool)
    mask[50:120, 40:300] = True
    mask[400:430, 500:690] = True
    tmap = TissueMap.grow(mask, (1.0, 1.0), geom, geom.margin)
    image = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    padded = np.pad(image, ((64, 64), (64, 64), (0, 0)), mode="reflect")
    tiles = make_tiles(geom)
    rgbs = [padded[t.read[0] + 64 : t.read[1] + 64, t.read[2] + 64 : t.read[3] + 64] for t in tiles]
    fed = []

    def predict(batch):
        fed.append(batch.shape[0] * batch.shape[1] * batch.shape[2])
        return _local_map(batch)

    plans = [plan_tile(tmap, geom, t, 8, windows=windows) for t in tiles]
    probs = [mask_outside(p, plan) for p, plan in zip(predict_tiles(predict, rgbs, plans), plans)]
    for t, rgb, prob in zip(tiles, rgbs, probs):
        valid = crop_box(t.valid, t.read)  # the runner uses nothing else of the read box
        inside = tmap.inside(geom, t.read)
        np.testing.assert_array_equal(prob[valid], np.where(inside, _local_map(rgb[None])[0], 0)[valid])
    whole = sum(r.shape[0] * r.shape[1] for r in rgbs)
    assert (sum(fed) < 0.6 * whole) if windows else (sum(fed) == whole)
    assert ndimage.label(mask)[1] == 2  # (the case has two pieces of tissue)


def test_glass_inside_tissue_tiles_costs_no_inference_and_no_nuclei(tmp_path: Path) -> None:
    """With a tissue mask the labels do not depend on the tile grid, nor on whether glass
    inside a tile is skipped; skipping it feeds the network far fewer pixels."""

    class Counting(HematoxylinPredictor):
        def __init__(self, windows: bool) -> None:
            super().__init__()
            self.accepts_windows = windows
            self.pixels = 0

        def predict(self, rgb: np.ndarray) -> np.ndarray:  # noqa: D102
            self.pixels += rgb.shape[0] * rgb.shape[1] * rgb.shape[2]
            return super().predict(rgb)

    rgb, _, _ = synthetic_he((1024, 1024), seed=5, tissue_fraction=0.35)
    path = write_pyramid_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=3)
    runs = {}
    for name, tile, windows in [("w256", 256, True), ("w384", 384, True), ("whole256", 256, False)]:
        pred = Counting(windows)
        s = segment_slide(path, tmp_path / f"{name}.zarr", model=pred, tile=tile, halo=64)
        runs[name] = (s, pred.pixels, _labels(tmp_path / f"{name}.zarr"))
    assert runs["w256"][0].nuclei == runs["w384"][0].nuclei == runs["whole256"][0].nuclei > 50
    assert same_partition(runs["w256"][2], runs["w384"][2])
    assert same_partition(runs["w256"][2], runs["whole256"][2])
    assert runs["w256"][1] < 0.8 * runs["whole256"][1]
