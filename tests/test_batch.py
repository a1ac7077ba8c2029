"""nucseg.segment_files: formats, resolution, outputs equal to nucseg.segment, resume and refusals."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import shape
from skimage.draw import polygon as draw_polygon

import nucseg
from nucseg.batch import (
    ImageError,
    find_images,
    image_mpp,
    read_image,
    resolve_mpp,
    to_rgb,
    write_labels,
)
from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff

MPP = 0.25  # the bundled model's resolution


@pytest.fixture(scope="module")
def model():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # CI has 2 cores (as the torch_one_thread fixture)
    yield nucseg.load_model(device="cpu")
    torch.set_num_threads(old)


def _he(seed: int = 1, shape: tuple[int, int] = (112, 144)) -> np.ndarray:
    """A small H&E-like image in which the bundled model finds a few nuclei."""
    return synthetic_he(shape, seed=seed)[0]


def _png(path: Path, rgb: np.ndarray, mpp: float | None = MPP) -> Path:
    dpi = {"dpi": (25400 / mpp, 25400 / mpp)} if mpp else {}
    Image.fromarray(rgb).save(path, **dpi)
    return path


def _tif(path: Path, rgb: np.ndarray, mpp: float = MPP, unit: str = "CENTIMETER") -> Path:
    per = (1e4 if unit == "CENTIMETER" else 25400) / mpp
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(per, per), resolutionunit=unit)
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rasterise(geom: dict, shape_: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a (Multi)Polygon with integer pixel-edge vertices."""
    out = np.zeros(shape_, bool)
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    for poly in polys:
        for k, ring in enumerate(poly):
            xy = np.asarray(ring, float)
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape_)
            out[rr, cc] = k == 0  # holes clear what the exterior filled
    return out


# --------------------------------------------------------------------------- reading


def test_each_format_reads_as_rgb_with_its_resolution(tmp_path: Path) -> None:
    rgb = _he()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    thumb = rgb[::4, ::4].copy()
    files = {
        "pHYs.png": (_png(tmp_path / "pHYs.png", rgb), (MPP, MPP)),
        "rgba.png": (_png(tmp_path / "rgba.png", rgba, 0.5), (0.5, 0.5)),
        "cm.tif": (_tif(tmp_path / "cm.tif", rgb), (MPP, MPP)),
        "inch.tif": (_tif(tmp_path / "inch.tif", rgb, 0.5, "INCH"), (0.5, 0.5)),
        "pyramid.tif": (write_pyramid_tiff(tmp_path / "pyramid.tif", rgb, mpp=MPP, levels=2, tile=16), (MPP, MPP)),
        "ome.tif": (write_pyramid_tiff(tmp_path / "ome.tif", rgb, mpp=0.5, levels=2, tile=16, ome=True), (0.5, 0.5)),
        "none.png": (_png(tmp_path / "none.png", rgb, None), None),
    }
    multi = tmp_path / "multi.tif"  # full resolution first, a reduced page after it
    with tifffile.TiffWriter(multi) as tw:
        tw.write(rgb, photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
        tw.write(thumb, photometric="rgb")
    files["multi.tif"] = (multi, (MPP, MPP))
    tifffile.imwrite(tmp_path / "ij.tif", rgb, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "micron"})
    files["ij.tif"] = (tmp_path / "ij.tif", (MPP, MPP))
    planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    files["planar.tif"] = (tmp_path / "planar.tif", None)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)  # JFIF without a physical density
    files["a.jpg"] = (tmp_path / "a.jpg", None)

    for name, (path, mpp) in files.items():
        got = read_image(path)
        assert got.dtype == np.uint8 and got.shape == rgb.shape, name
        if name != "a.jpg":  # lossy
            np.testing.assert_array_equal(got, rgb, err_msg=name)
        found = image_mpp(path)
        if mpp is None:
            assert found is None, name
        else:
            np.testing.assert_allclose(found, mpp, rtol=1e-6, err_msg=name)


def test_default_dpi_is_no_resolution_and_mpp_overrides(tmp_path: Path) -> None:
    rgb = _he()
    p72 = _png(tmp_path / "72.png", rgb, 25400 / 72)
    assert image_mpp(p72) is None
    with pytest.raises(ImageError, match="pass --mpp"):
        resolve_mpp(p72, None)
    assert resolve_mpp(p72, 0.3) == 0.3
    tifffile.imwrite(tmp_path / "aniso.tif", rgb, resolution=(40000, 20000), resolutionunit="CENTIMETER")
    with pytest.raises(ImageError, match="not square"):
        resolve_mpp(tmp_path / "aniso.tif", None)


def test_greyscale_is_refused_and_alpha_composited_on_white(tmp_path: Path) -> None:
    grey = _png(tmp_path / "grey.png", _he()[..., 0])
    with pytest.raises(ImageError, match="greyscale"):
        read_image(grey)
    tifffile.imwrite(tmp_path / "grey.tif", _he()[..., 0])
    with pytest.raises(ImageError, match="greyscale"):
        read_image(tmp_path / "grey.tif")
    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((8, 8, 4), np.uint8), photometric="separated")
    with pytest.raises(ImageError, match="CMYK"):
        read_image(tmp_path / "cmyk.tif")
    px = np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128]]], np.uint8)
    np.testing.assert_array_equal(to_rgb(px, Path("x")), [[[255, 255, 255], [100, 50, 0], [127, 127, 127]]])
    with pytest.raises(ImageError, match="8-bit"):
        to_rgb(np.zeros((4, 4, 3), np.uint16), Path("x"))


def test_find_images_skips_hidden_files_and_our_outputs(tmp_path: Path) -> None:
    rgb = _he()
    _png(tmp_path / "a.png", rgb)
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.png", rgb)
    _png(tmp_path / "a_overlay.png", rgb)
    _png(tmp_path / ".hidden.png", rgb)
    (tmp_path / "notes.txt").write_text("x")
    flat = find_images([tmp_path])
    assert [(p.name, str(r)) for p, r in flat] == [("a.png", ".")]
    deep = find_images([tmp_path, tmp_path / "a.png"], recursive=True)  # the duplicate is dropped
    assert [(p.name, str(r)) for p, r in deep] == [("a.png", "."), ("b.png", "sub")]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "nope"])


def test_label_files_are_uint16_or_uint32_with_resolution(tmp_path: Path) -> None:
    small = np.array([[0, 1], [65535, 2]], np.int32)
    big = np.array([[0, 1], [65536, 2]], np.int32)
    for lab, dtype in ((small, np.uint16), (big, np.uint32)):
        p = write_labels(tmp_path / f"{dtype.__name__}.tif", lab, 0.5)
        got = tifffile.imread(p)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, lab)
        assert image_mpp(p) == pytest.approx((0.5, 0.5))
    p = write_labels(tmp_path / "l.png", small, 0.5)
    with Image.open(p) as im:
        np.testing.assert_array_equal(np.asarray(im), small)
    assert image_mpp(p) == pytest.approx((0.5, 0.5))
    with pytest.raises(ImageError, match="16-bit PNG"):
        write_labels(tmp_path / "big.png", big, 0.5)
    assert not (tmp_path / "big.png").exists()


# --------------------------------------------------------------------------- segmenting


def test_outputs_equal_segment_at_the_model_and_another_resolution(tmp_path: Path, model) -> None:
    rgb = _he(seed=2, shape=(128, 160))
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "native.png", rgb)
    # The same tissue at 0.5 um/px: resampled to the model's 0.25, labels back on this grid.
    half = np.asarray(Image.fromarray(rgb).resize((80, 64), Image.BILINEAR))
    _tif(src / "coarse.tif", half, 0.5)
    out = tmp_path / "out"
    rows = nucseg.segment_files([src], out, model=model, geojson=True, table="csv", overlay=True)
    assert [(r.image.name, r.status) for r in rows] == [("coarse.tif", "done"), ("native.png", "done")]
    for r, img, mpp in ((rows[0], half, 0.5), (rows[1], rgb, MPP)):
        stem = r.image.stem
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        expected = nucseg.segment(img, model, mpp=mpp)
        assert labels.dtype == np.uint16 and labels.shape == img.shape[:2]
        np.testing.assert_array_equal(labels, expected)
        assert image_mpp(out / f"{stem}_labels.tif") == pytest.approx((mpp, mpp))
        ids = np.unique(labels[labels > 0])
        assert ids.size >= 2 and r.nuclei == ids.size and r.mpp == mpp
        areas = np.bincount(labels.ravel())[ids]
        assert r.mean_area_um2 == pytest.approx(areas.mean() * mpp * mpp)

        table = _csv_rows(out / f"{stem}_nuclei.csv")
        assert sorted(int(t["label"]) for t in table) == ids.tolist()
        assert [int(t["area_px"]) for t in table] == areas.tolist()
        assert float(table[0]["area_um2"]) == pytest.approx(areas[0] * mpp * mpp)

        doc = json.loads((out / f"{stem}_nuclei.geojson").read_text())
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == ids.size
        for f in doc["features"]:
            lab = f["properties"]["nucleus_id"]
            g = shape(f["geometry"])
            assert shapely.is_valid(g) and g.area == np.count_nonzero(labels == lab)
            np.testing.assert_array_equal(_rasterise(f["geometry"], labels.shape), labels == lab)
            assert f["properties"]["objectType"] == "detection"
            assert f["properties"]["measurements"]["area_px"] == np.count_nonzero(labels == lab)

        with Image.open(out / f"{stem}_overlay.png") as im:
            overlay = np.asarray(im)
        assert overlay.shape == img.shape
        changed = np.any(overlay != img, axis=-1)
        assert changed.any() and np.all(labels[changed] > 0)  # outlines only on nuclei
    summary = _csv_rows(out / "summary.csv")
    assert [(s["image"], s["status"], int(s["nuclei"])) for s in summary] == [
        (str(r.image), "done", r.nuclei) for r in rows
    ]


def test_a_bad_file_fails_alone(tmp_path: Path, model) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rgb = _he()
    _png(src / "a.png", rgb)
    _png(src / "grey.png", rgb[..., 0])
    (src / "broken.tif").write_bytes(b"II*\x00 not a tiff at all")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(src / "z_rgba.png")
    seen = []
    rows = nucseg.segment_files([src], tmp_path / "out", model=model, mpp=MPP, on_result=seen.append)
    assert seen == rows
    status = {r.image.name: r.status for r in rows}
    assert status == {"a.png": "done", "broken.tif": "failed", "grey.png": "failed", "z_rgba.png": "done"}
    errors = {r.image.name: r.error for r in rows if r.error}
    assert "greyscale" in errors["grey.png"] and str(src / "grey.png") in errors["grey.png"]
    assert "broken.tif" in errors["broken.tif"] and "\n" not in errors["broken.tif"]
    assert sorted(os.listdir(tmp_path / "out")) == ["a_labels.tif", "summary.csv", "z_rgba_labels.tif"]
    # The opaque alpha channel was dropped: the same labels as the RGB image.
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "out" / "z_rgba_labels.tif"), tifffile.imread(tmp_path / "out" / "a_labels.tif")
    )


def test_missing_resolution_is_refused_before_any_work(tmp_path: Path, model) -> None:
    rgb = _he()
    _png(tmp_path / "a.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"b\.jpg: no microns-per-pixel metadata .*pass --mpp"):
        nucseg.segment_files([tmp_path / "a.png", tmp_path / "b.jpg"], out, model=model)
    assert not out.exists()
    rows = nucseg.segment_files([tmp_path / "b.jpg"], out, model=model, mpp=MPP)
    assert rows[0].status == "done"
    expected = nucseg.segment(read_image(tmp_path / "b.jpg"), model, mpp=MPP)
    np.testing.assert_array_equal(tifffile.imread(out / "b_labels.tif"), expected)


def test_existing_outputs_refused_resumed_or_replaced(tmp_path: Path, model) -> None:
    rgb = _he()
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", rgb)
    _png(src / "b.png", _he(seed=3))
    out = tmp_path / "out"
    first = nucseg.segment_files([src], out, model=model, table="csv")
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    with pytest.raises(ValueError, match=r"a_labels\.tif already exists; pass --resume .* or --overwrite"):
        nucseg.segment_files([src], out, model=model, table="csv")
    with pytest.raises(ValueError, match="exclude each other"):
        nucseg.segment_files([src], out, model=model, resume=True, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp

    again = nucseg.segment_files([src], out, model=model, table="csv", resume=True)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert [(r.nuclei, r.mpp) for r in again] == [(r.nuclei, r.mpp) for r in first]
    assert [r.mean_area_um2 for r in again] == pytest.approx([r.mean_area_um2 for r in first])
    assert all(stamp[p.name] == p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv")

    (out / "b_nuclei.csv").unlink()  # an interrupted image: redone whole
    partial = nucseg.segment_files([src], out, model=model, table="csv", resume=True)
    assert [r.status for r in partial] == ["skipped", "done"]
    assert (out / "a_labels.tif").stat().st_mtime_ns == stamp["a_labels.tif"]
    assert len(_csv_rows(out / "b_nuclei.csv")) == first[1].nuclei

    replaced = nucseg.segment_files([src], out, model=model, table="csv", overwrite=True)
    assert [r.status for r in replaced] == ["done", "done"]
    assert (out / "a_labels.tif").stat().st_mtime_ns != stamp["a_labels.tif"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_inputs_are_never_overwritten(tmp_path: Path, model) -> None:
    rgb = _he()
    _png(tmp_path / "a.png", rgb)
    before = (tmp_path / "a.png").read_bytes()
    # --out is the input folder: the outputs go beside the images, and are not inputs next time.
    nucseg.segment_files([tmp_path], tmp_path, model=model, overlay=True)
    rows = nucseg.segment_files([tmp_path], tmp_path, model=model, overlay=True, resume=True)
    assert [(r.image.name, r.status) for r in rows] == [("a.png", "skipped")]
    assert (tmp_path / "a.png").read_bytes() == before
    # An output that would replace an input is refused, even with overwrite.
    _png(tmp_path / "b_overlay.png", rgb)
    _png(tmp_path / "b.png", rgb)
    with pytest.raises(ValueError, match="would be written over the input"):
        nucseg.segment_files(
            [tmp_path / "b.png", tmp_path / "b_overlay.png"], tmp_path, model=model, overlay=True, overwrite=True
        )


def test_recursive_mirrors_folders_and_refuses_collisions(tmp_path: Path, model) -> None:
    rgb = _he()
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    _png(src / "a.png", rgb)
    _png(src / "x" / "a.png", rgb)
    out = src / "results"  # inside the input folder: never searched for inputs
    rows = nucseg.segment_files([src], out, model=model, recursive=True, label_format="png")
    assert [r.status for r in rows] == ["done", "done"]
    assert (out / "a_labels.png").is_file() and (out / "x" / "a_labels.png").is_file()
    again = nucseg.segment_files([src], out, model=model, recursive=True, label_format="png", resume=True)
    assert len(again) == 2
    _tif(src / "a.tif", rgb)
    with pytest.raises(ValueError, match=r"would both write .*a_labels\.png"):
        nucseg.segment_files([src], tmp_path / "o2", model=model, label_format="png")


def test_an_image_without_nuclei(tmp_path: Path, model) -> None:
    _png(tmp_path / "glass.png", np.full((64, 80, 3), 245, np.uint8))
    out = tmp_path / "out"
    (row,) = nucseg.segment_files([tmp_path / "glass.png"], out, model=model, geojson=True, table="csv")
    assert row.status == "done" and row.nuclei == 0 and np.isnan(row.mean_area_um2)
    assert not tifffile.imread(out / "glass_labels.tif").any()
    assert json.loads((out / "glass_nuclei.geojson").read_text())["features"] == []
    assert _csv_rows(out / "glass_nuclei.csv") == []
    assert (out / "glass_nuclei.csv").read_text().startswith('"label",')
    summary = _csv_rows(out / "summary.csv")
    assert summary[0]["nuclei"] == "0" and summary[0]["mean_area_um2"] == ""
