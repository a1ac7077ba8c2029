"""Fixtures for the whole-slide tests: small synthetic slides written with tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_image() -> np.ndarray:
    """A 1024 x 1280 synthetic H&E image with glass regions (seed 1)."""
    from nucseg.wsi.demo import synthetic_he

    rgb, _, _ = synthetic_he((1024, 1280), seed=1)
    return rgb


@pytest.fixture(scope="session")
def demo_slide(tmp_path_factory: pytest.TempPathFactory, demo_image: np.ndarray) -> Path:
    """``demo_image`` as a 3-level pyramidal TIFF at 0.25 um/px."""
    from nucseg.wsi.demo import write_pyramid_tiff

    path = tmp_path_factory.mktemp("slides") / "demo.tif"
    return write_pyramid_tiff(path, demo_image, mpp=0.25, levels=3)


@pytest.fixture
def predictor():
    """The deterministic, translation-invariant test predictor."""
    from nucseg.wsi.predictors import HematoxylinPredictor

    return HematoxylinPredictor()
