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
    """The default output: the slide overview (a pyramid level for level with the labels) as the image."""
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


def test_default_store_validates_as_an_ngff_image(store: Path) -> None:
    """Without --save-image too: the overview is a pyramid with as many levels as the labels."""
    from ome_zarr_models.v05.image import Image

    image = Image.from_zarr(zarr.open_group(str(store), mode="r"))  # checks the level counts match
    assert image.labels is not None and image.labels.label_paths == ["nuclei"]
    nodes = _nodes(store)
    by_name = {n.metadata.get("name"): n for n in nodes if n.metadata.get("name")}
    ov, nuc = by_name["slide overview"], by_name["nuclei"]
    assert len(ov.data) == len(nuc.data) >= 2


def _mean2(a: np.ndarray) -> np.ndarray:
    """Reference 2x2 mean of (c, h, w) uint8, rounding half up, odd edges repeated."""
    c, h, w = a.shape
    p = np.pad(a.astype(np.int64), ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    return ((p[:, 0::2, 0::2] + p[:, 1::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 1::2] + 2) // 4).astype(np.uint8)


def test_overview_pyramid_levels_are_2x2_means_placed_at_their_block_centres(store: Path) -> None:
    root = zarr.open_group(str(store), mode="r")
    ms = root.attrs["ome"]["multiscales"][0]
    n = len(root["labels/nuclei"].attrs["ome"]["multiscales"][0]["datasets"])
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(n)]
    levels = [root[str(k)][...] for k in range(n)]
    transforms = [{t["type"]: t[t["type"]] for t in d["coordinateTransformations"]} for d in ms["datasets"]]
    s0, t0 = np.asarray(transforms[0]["scale"]), np.asarray(transforms[0]["translation"])
    for k in range(1, n):
        assert levels[k].dtype == np.uint8 and levels[k].shape[0] == 3
        np.testing.assert_array_equal(levels[k], _mean2(levels[k - 1]), err_msg=f"level {k}")
        assert transforms[k]["scale"] == pytest.approx(s0 * [1, 2**k, 2**k])
        # Pixel 0 of level k averages level-0 pixels 0 .. 2**k - 1: its centre is theirs.
        centre = t0[1:] + 0.5 * (2**k - 1) * s0[1:]
        assert transforms[k]["translation"] == pytest.approx([0.0, *centre])


def test_root_image_has_rgb_omero_channels(store: Path, image_store: Path) -> None:
    from ome_zarr_models.common.omero import Omero

    for path in (store, image_store):
        omero = zarr.open_group(str(path), mode="r").attrs["ome"]["omero"]
        Omero.model_validate(omero)
        chans = omero["channels"]
        assert [c["color"] for c in chans] == ["FF0000", "00FF00", "0000FF"]
        assert [c["label"] for c in chans] == ["red", "green", "blue"]
        assert all((c["window"]["start"], c["window"]["end"]) == (0, 255) for c in chans)
        assert all((c["window"]["min"], c["window"]["max"]) == (0, 255) for c in chans)
        assert zarr.open_group(str(path), mode="r")["0"].shape[0] == len(chans)
    # ome-zarr-py reads the rendering settings as napari's plugin does: one coloured channel each.
    ov = next(n for n in _nodes(store) if n.metadata.get("name") == "slide overview")
    assert ov.metadata.get("channel_names") == ["red", "green", "blue"]
    assert [cmap[-1] for cmap in ov.metadata["colormap"]] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert ov.metadata["contrast_limits"] == [[0, 255]] * 3
