"""The slide runner applies the model's whole post-processing recipe, min_area included."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import zarr

import nucseg
from nucseg.wsi import StoreError, segment_slide
from nucseg.wsi.demo import write_pyramid_tiff
from nucseg.wsi.predictors import HematoxylinPredictor, describe
from wsi_helpers import matched_fraction, same_partition

WEIGHTS = Path(nucseg.__file__).parent / "models" / "weights" / "default.safetensors"
HALO = 64


def _labels(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]


def _areas(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels[labels != 0], return_counts=True)[1]


def _one_piece_prob(rgb: np.ndarray, pred: HematoxylinPredictor) -> np.ndarray:
    padded = np.pad(rgb, ((HALO, HALO), (HALO, HALO), (0, 0)), mode="reflect")
    return pred.predict(padded[None])[0][HALO:-HALO, HALO:-HALO]


def _one_piece(rgb: np.ndarray, pred: HematoxylinPredictor) -> np.ndarray:
    """What segment() does for this predictor: mirror-pad, predict, the config's recipe."""
    return pred.config.recipe.labels(_one_piece_prob(rgb, pred))


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory, demo_image: np.ndarray) -> tuple[Path, np.ndarray]:
    rgb = np.ascontiguousarray(demo_image[:512, :640])
    path = write_pyramid_tiff(tmp_path_factory.mktemp("recipe") / "s.tif", rgb, mpp=0.25, levels=1)
    return path, rgb


@pytest.mark.parametrize("tile", [1024, 128], ids=["one-tile", "many-tiles"])
def test_slide_equals_one_piece_recipe_with_min_area(small_slide: tuple[Path, np.ndarray], tmp_path: Path, tile: int) -> None:
    """Same objects, pixel for pixel, as the one-piece recipe; none under min_area."""
    path, rgb = small_slide
    pred = HematoxylinPredictor(min_area=120)
    whole = _one_piece(rgb, pred)
    s = segment_slide(path, tmp_path / "o.zarr", model=pred, tile=tile, halo=HALO, tissue="none")
    out = _labels(tmp_path / "o.zarr")
    assert same_partition(out, whole) and s.nuclei == whole.max()
    assert _areas(out).min() >= 120
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["nucseg"]
    assert meta["settings"]["min_area"] == 120 and meta["model"]["min_area"] == 120


def test_min_area_drops_objects_the_unfiltered_run_keeps(small_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """The filter does something here, and an object of exactly min_area pixels stays (>=)."""
    path, rgb = small_slide
    segment_slide(path, tmp_path / "all.zarr", model=HematoxylinPredictor(), tile=128, halo=HALO, tissue="none")
    areas = np.sort(_areas(_labels(tmp_path / "all.zarr")))
    assert (areas < 120).sum() >= 5
    edge = int(areas[(areas >= 100)][0])  # an existing area: objects of exactly that size are kept
    segment_slide(path, tmp_path / "edge.zarr", model="hematoxylin", min_area=edge, tile=128, halo=HALO, tissue="none")
    kept = _areas(_labels(tmp_path / "edge.zarr"))
    assert kept.min() == edge and len(kept) == (areas >= edge).sum()


def test_resume_with_another_min_area_is_refused(small_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = small_slide
    out = tmp_path / "o.zarr"
    segment_slide(path, out, model="hematoxylin", min_area=30, tile=256, halo=HALO, tissue="none")
    with pytest.raises(StoreError, match=r"min_area: 30 -> 60"):
        segment_slide(path, out, model="hematoxylin", min_area=60, tile=256, halo=HALO, tissue="none", resume=True)
    # The same recipe resumes (nothing left to do).
    s = segment_slide(path, out, model="hematoxylin", min_area=30, tile=256, halo=HALO, tissue="none", resume=True)
    assert s.tiles_run == 0


@dataclass(frozen=True)
class _ThirdPartyConfig:
    """A predictor config with plain fields and no ``recipe`` (the Predictor protocol)."""

    name: str = "third-party"
    mpp: float = 0.25
    lam: float = 0.05
    threshold: float = 0.5
    halo: int = 8
    min_area: int = 0


class _ThirdParty:
    """The hematoxylin map behind a third-party config; the same sha256 whatever min_area."""

    def __init__(self, min_area: int) -> None:
        self._inner = HematoxylinPredictor()
        self.config = _ThirdPartyConfig(min_area=min_area)
        self.sha256 = self._inner.sha256

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return self._inner.predict(rgb)


def test_a_predictor_config_min_area_is_applied_and_recorded(small_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, rgb = small_slide
    assert describe(_ThirdParty(120))["min_area"] == 120
    out = tmp_path / "o.zarr"
    segment_slide(path, out, model=_ThirdParty(120), tile=256, halo=HALO, tissue="none")
    assert _areas(_labels(out)).min() >= 120
    assert same_partition(_labels(out), _one_piece(rgb, HematoxylinPredictor(min_area=120)))
    with pytest.raises(StoreError, match="min_area"):  # same weights checksum, another recipe
        segment_slide(path, out, model=_ThirdParty(0), tile=256, halo=HALO, tissue="none", resume=True)


@pytest.mark.parametrize("tile", [1024, 128], ids=["one-tile", "many-tiles"])
def test_the_model_recipe_connectivity_is_the_run_default(
    small_slide: tuple[Path, np.ndarray], tmp_path: Path, tile: int
) -> None:
    """A model whose recipe says connectivity 2 is run with 2 (it was overridden by 1); an
    explicit connectivity still wins, and either way the store records what ran."""
    path, rgb = small_slide
    pred = HematoxylinPredictor()
    pred.config = replace(pred.config, connectivity=2)
    assert pred.config.recipe.connectivity == 2
    want = _one_piece(rgb, pred)
    other = pred.config.recipe.replace(connectivity=1).labels(_one_piece_prob(rgb, pred))
    assert not same_partition(want, other)  # the two connectivities differ on this image
    segment_slide(path, tmp_path / "model.zarr", model=pred, tile=tile, halo=HALO, tissue="none")
    assert same_partition(_labels(tmp_path / "model.zarr"), want)
    segment_slide(path, tmp_path / "one.zarr", model=pred, connectivity=1, tile=tile, halo=HALO, tissue="none")
    assert same_partition(_labels(tmp_path / "one.zarr"), other)
    for name, conn in (("model", 2), ("one", 1)):
        meta = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r").attrs["nucseg"]
        assert meta["settings"]["connectivity"] == conn


def test_min_area_is_validated(small_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = small_slide
    with pytest.raises(ValueError, match="min_area"):
        segment_slide(path, tmp_path / "o.zarr", model="hematoxylin", min_area=-1, tissue="none")


needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"bundled model weights not found at {WEIGHTS}")


@needs_weights
@pytest.mark.usefixtures("torch_one_thread")
def test_default_model_slide_matches_segment_and_drops_small_objects(
    small_slide: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """nucseg.segment and the slide runner, one tile and many: the same nuclei, none under min_area.

    The network's map is not bit-identical across window sizes, so objects are matched at
    IoU >= 0.9 (the tiling contract for networks, as in test_default_model_is_tile_size_invariant).
    """
    from nucseg.inference import load_model

    path, rgb = small_slide
    model = load_model(device="cpu")
    min_area = model.config.min_area
    assert min_area == 60
    whole = nucseg.segment(rgb, model)
    assert _areas(whole).min() >= min_area
    for tile in (1024, 256):
        s = segment_slide(path, tmp_path / f"{tile}.zarr", model=model, tile=tile, tissue="none")
        out = _labels(tmp_path / f"{tile}.zarr")
        assert _areas(out).min() >= min_area, f"tile {tile}: an object under min_area"
        assert s.nuclei > 50
        assert matched_fraction(out, whole) >= 0.99 and matched_fraction(whole, out) >= 0.99
    # The command itself, many tiles: the same nuclei as the library call above.
    from nucseg.cli.wsi import main

    assert main([str(path), str(tmp_path / "cli.zarr"), "--tile", "256", "--tissue", "none", "--device", "cpu",
                 "--quiet"]) == 0
    cli = _labels(tmp_path / "cli.zarr")
    assert same_partition(cli, _labels(tmp_path / "256.zarr"))
    assert matched_fraction(cli, whole) >= 0.99 and matched_fraction(whole, cli) >= 0.99


@needs_weights
@pytest.mark.usefixtures("torch_one_thread")
def test_the_second_bundled_model_runs_by_name_on_slides(small_slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """``--model multiorgan``: the slide runner loads the named bundled model, gives the
    nuclei ``segment`` gives with it, and records which model ran."""
    from nucseg.cli.wsi import main
    from nucseg.inference import BUNDLED_MODELS, load_model

    path, rgb = small_slide
    whole = nucseg.segment(rgb, "multiorgan", device="cpu")
    assert not same_partition(whole, nucseg.segment(rgb, device="cpu"))  # the two models differ here
    assert main([str(path), str(tmp_path / "m.zarr"), "--model", "multiorgan", "--tile", "256", "--tissue", "none",
                 "--device", "cpu", "--quiet"]) == 0
    out = _labels(tmp_path / "m.zarr")
    assert whole.max() > 50
    assert matched_fraction(out, whole) >= 0.99 and matched_fraction(whole, out) >= 0.99
    model = zarr.open_group(str(tmp_path / "m.zarr"), mode="r").attrs["nucseg"]["model"]
    assert model["name"] == "multiorgan" and model["sha256"] == load_model("multiorgan", device="cpu").sha256
    assert BUNDLED_MODELS["multiorgan"].is_file()
