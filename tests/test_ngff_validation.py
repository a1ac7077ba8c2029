"""The OME-Zarr output read by independent code: ome-zarr-py, and the NGFF models of ome-zarr-models."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

ome_zarr = pytest.importorskip("ome_zarr", reason="ome-zarr (ome-zarr-py) not installed: pip install ome-zarr")
ome_zarr_models = pytest.importorskip(
    "ome_zarr_models", reason="ome-zarr-models not installed: pip install ome-zarr-models"
)


def _run(tmp: Path, **kwargs) -> Path:
    """A finished run on a 20x slide read at level 0 and upsampled to the model's 0.25 um/px."""
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    rgb, _, _ = synthetic_he((320, 384), seed=6, spacing=17, radius=(3.5, 6))
    slide = write_pyramid_tiff(tmp / "slide.tif", rgb, mpp=0.5, levels=2)
    out = tmp / "out.zarr"
    segment_slide(slide, out, model=HematoxylinPredictor(), tile=256, halo=40, tissue="none", threads=1, **kwargs)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default output: a one-level slide overview as the image, labels under it."""
    return _run(tmp_path_factory.mktemp("ngff"))


@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With --save-image: the slide's RGB pyramid level for level with the labels."""
    return _run(tmp_path_factory.mktemp("ngff_img"), save_image=True)


def _nodes(store: Path) -> list:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    loc = parse_url(str(store))
    assert loc is not None, "ome-zarr-py does not recognise the store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the non-zarr "nucseg/" folder is reported as unknown
        return list(Reader(loc)())


def test_ome_zarr_py_reads_image_and_labels(store: Path) -> None:
    nodes = _nodes(store)
    by_name = {n.metadata.get("name"): n for n in nodes if n.metadata.get("name")}
    assert {"slide overview", "nuclei"} <= set(by_name)
    nuc = by_name["nuclei"]
    assert "Label" in [type(s).__name__ for s in nuc.specs]
    ours = zarr.open_group(str(store / "labels" / "nuclei"), mode="r")
    levels = [ours[str(k)] for k in range(len(nuc.data))]
    assert [tuple(d.shape) for d in nuc.data] == [a.shape for a in levels]
    assert len(levels) >= 2
    np.testing.assert_array_equal(np.asarray(nuc.data[0]), levels[0][...])
    assert np.asarray(nuc.data[0]).max() > 0
    # The labels' physical pixel size is the processing resolution, doubling per level.
    meta = zarr.open_group(str(store), mode="r").attrs["nucseg"]
    for k, tr in enumerate(nuc.metadata["coordinateTransformations"]):
        scale = next(t["scale"] for t in tr if t["type"] == "scale")
        assert scale == pytest.approx([m * 2**k for m in meta["processing"]["mpp"]])
    axes = [a["name"] for a in nuc.metadata["axes"]]
    assert axes == ["y", "x"] and all(a.get("unit") == "micrometer" for a in nuc.metadata["axes"])


def test_labels_overlay_the_overview_in_physical_space(store: Path) -> None:
    """A nucleus found in the labels lands on dark (hematoxylin) pixels of the overview."""
    nodes = _nodes(store)
    by_name = {n.metadata.get("name"): n for n in nodes if n.metadata.get("name")}
    ov, nuc = by_name["slide overview"], by_name["nuclei"]

    def transform(node) -> tuple[np.ndarray, np.ndarray]:
        tr = node.metadata["coordinateTransformations"][0]
        s = np.asarray(next(t["scale"] for t in tr if t["type"] == "scale"))[-2:]
        t = np.asarray(next((t["translation"] for t in tr if t["type"] == "translation"), [0, 0]))[-2:]
        return s, t

    s_ov, t_ov = transform(ov)
    s_lab, t_lab = transform(nuc)
    lab = np.asarray(nuc.data[0])
    rgb = np.moveaxis(np.asarray(ov.data[0]), 0, -1).astype(float)
    yy, xx = np.nonzero(lab)
    phys = np.stack([yy, xx], 1) * s_lab + t_lab
    pix = np.rint((phys - t_ov) / s_ov).astype(int)
    pix = np.clip(pix, 0, np.array(rgb.shape[:2]) - 1)
    inside = rgb[pix[:, 0], pix[:, 1]].mean()
    outside = rgb[np.ones(rgb.shape[:2], bool)].mean()
    assert inside < outside - 40  # nuclei are much darker than the average slide


def test_labels_metadata_validates(store: Path) -> None:
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    root = zarr.open_group(str(store), mode="r")
    labels = Labels.from_zarr(root["labels"])
    assert labels.ome_attributes.labels == ["nuclei"]
    image_label = ImageLabel.from_zarr(root["labels/nuclei"])
    ms = image_label.ome_attributes.multiscales[0]
    assert [d.path for d in ms.datasets] == [str(k) for k in range(len(ms.datasets))]


def test_overview_image_metadata_validates(store: Path) -> None:
    from ome_zarr_models.v05.image import ImageAttrs

    attrs = zarr.open_group(str(store), mode="r").attrs["ome"]
    ImageAttrs.model_validate(attrs)


def test_store_with_image_validates_as_an_ngff_image(image_store: Path) -> None:
    from ome_zarr_models.v05.image import Image

    image = Image.from_zarr(zarr.open_group(str(image_store), mode="r"))
    assert image.labels is not None and image.labels.label_paths == ["nuclei"]
    nodes = _nodes(image_store)
    by_name = {n.metadata.get("name"): n for n in nodes if n.metadata.get("name")}
    img, nuc = by_name["slide"], by_name["nuclei"]
    assert [tuple(d.shape[-2:]) for d in img.data] == [tuple(d.shape) for d in nuc.data]


@pytest.mark.xfail(
    strict=True,
    reason="NGFF 0.5 'labels': a label image MUST have as many multiscale levels as its parent image; "
    "without --save-image the runner writes a 1-level overview image over a multi-level label pyramid "
    "(nucseg/wsi/store.py)",
)
def test_default_store_validates_as_an_ngff_image(store: Path) -> None:
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(store), mode="r"))
