"""PostprocessRecipe: the one map -> labels recipe every consumer applies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import nucseg
from nucseg import PostprocessRecipe
from nucseg._recipe import recipe_of
from nucseg.evaluate import remove_small, tune_postprocess
from nucseg.inference import ModelConfig
from nucseg.synthetic import probability_map

WEIGHTS = Path(nucseg.__file__).parent / "models" / "weights" / "default.safetensors"


def _map(seed: int = 0) -> np.ndarray:
    return probability_map((96, 96), seed=seed)[0].astype(np.float32)


def test_labels_is_the_watershed_then_the_size_filter() -> None:
    prob = _map()
    r = PostprocessRecipe(lam=0.05, threshold=0.5, min_area=100, connectivity=2)
    ws = nucseg.watershed_dynamics(prob, 0.05, threshold=0.5, connectivity=2)
    np.testing.assert_array_equal(r.watershed(prob), ws)
    np.testing.assert_array_equal(r.labels(prob), remove_small(ws, 100))
    areas = np.bincount(ws.ravel())[1:]
    assert (areas < 100).any() and (areas >= 100).any()  # the filter has work to do here
    assert r.labels(prob).max() == (areas >= 100).sum()
    np.testing.assert_array_equal(r.foreground(prob), prob.astype(np.float64) > 0.5)


def test_an_object_of_exactly_min_area_is_kept() -> None:
    prob = np.zeros((10, 20), np.float32)
    prob[1:4, 1:4] = 0.9  # 9 px
    prob[6:9, 10:14] = 0.9  # 12 px
    for min_area, n in ((9, 2), (10, 1), (12, 1), (13, 0)):
        lab = PostprocessRecipe(lam=0.1, threshold=0.5, min_area=min_area).labels(prob)
        assert lab.max() == n
    np.testing.assert_array_equal(PostprocessRecipe(lam=0.1, threshold=0.5, min_area=10).keeps([9, 10, 11]), [False, True, True])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lam": -1}, ValueError, "lam must be >= 0"),
        ({"lam": float("nan")}, ValueError, "lam"),
        ({"threshold": float("inf")}, ValueError, "threshold must be finite"),
        ({"threshold": "0.5"}, TypeError, "threshold must be a real number"),
        ({"min_area": -1}, ValueError, "min_area"),
        ({"min_area": 2.5}, ValueError, "min_area"),
        ({"connectivity": 3}, ValueError, "connectivity"),
        ({"watershed_line": 1}, ValueError, "watershed_line"),
    ],
)
def test_validation(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        PostprocessRecipe(**{"lam": 0.1, "threshold": 0.5, **kwargs})


def test_frozen_plain_values_and_replace() -> None:
    r = PostprocessRecipe(lam=np.float32(0.25), threshold=np.float64(0.4), min_area=np.int64(60))
    assert r.to_dict() == {"lam": 0.25, "threshold": 0.4, "min_area": 60, "connectivity": 1, "watershed_line": True}
    assert all(type(v) in (float, int, bool) for v in r.to_dict().values())
    assert r.replace(lam=None, min_area=None) == r
    assert r.replace(min_area=0).min_area == 0 and r.min_area == 60
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lam = 1.0  # type: ignore[misc]


def test_the_model_config_owns_its_recipe() -> None:
    cfg = ModelConfig(name="m", arch="unet", in_channels=3, out_channels=2, stride=8, lam=0.2, threshold=0.4, min_area=60)
    assert cfg.recipe == PostprocessRecipe(lam=0.2, threshold=0.4, min_area=60)
    assert recipe_of(cfg) is not None and recipe_of(cfg) == cfg.recipe
    assert "recipe" not in cfg.to_dict()  # the JSON keeps its flat fields
    # Connectivity too: a model JSON without the field (every one written before it) reads as 1.
    eight = dataclasses.replace(cfg, connectivity=2)
    assert eight.recipe.connectivity == 2 and ModelConfig.from_dict(eight.to_dict()).recipe == eight.recipe
    old = {k: v for k, v in cfg.to_dict().items() if k != "connectivity"}
    assert ModelConfig.from_dict(old).recipe.connectivity == 1
    with pytest.raises(ValueError, match="connectivity must be 1"):
        dataclasses.replace(cfg, connectivity=4).recipe  # noqa: B018


def test_tuning_scores_the_recipe_it_returns() -> None:
    from nucseg.data import TNBCImage
    from nucseg.metrics import aji

    prob = _map(1)
    truth = PostprocessRecipe(lam=0.1, threshold=0.5, min_area=100).labels(prob)
    im = TNBCImage(patient="p", name="i", rgb=np.zeros((*prob.shape, 3), np.uint8), mask=truth > 0, labels=truth)
    lam, thr, area, score = tune_postprocess(None, [im], maps=[prob], lams=(0.1,), thresholds=(0.5,), min_areas=(0, 100))
    assert (lam, thr, area) == (0.1, 0.5, 100)
    assert score == aji(truth, PostprocessRecipe(lam=lam, threshold=thr, min_area=area).labels(prob)) == 1.0


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="bundled model weights not found")
@pytest.mark.usefixtures("torch_one_thread")
def test_segment_and_postprocess_apply_the_config_recipe() -> None:
    from nucseg.inference import load_model

    model = load_model(device="cpu")
    assert model.config.recipe.min_area == 60
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    labels, prob = nucseg.segment(rgb, model, return_map=True)
    np.testing.assert_array_equal(labels, model.config.recipe.labels(prob))
    np.testing.assert_array_equal(model.postprocess(prob, min_area=0), model.config.recipe.replace(min_area=0).labels(prob))
