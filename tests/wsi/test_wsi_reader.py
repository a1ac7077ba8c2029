"""Slide readers: geometry, resolution metadata, region reads, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nucseg.wsi.demo import write_pyramid_tiff
from nucseg.wsi.reader import SlideError, open_slide, validate_mpp


def test_pyramidal_tiff_levels_mpp_and_pixels(demo_slide: Path, demo_image: np.ndarray) -> None:
    with open_slide(demo_slide) as s:
        assert s.backend == "tifffile"
        assert [(lv.width, lv.height) for lv in s.levels] == [(1280, 1024), (640, 512), (320, 256)]
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.level_mpp(2) == pytest.approx((1.0, 1.0))
        np.testing.assert_array_equal(s.read(0, 100, 37, 300, 211), demo_image[37:248, 100:400])
        # Level 1 is the 2x2 mean of level 0, as written.
        lv1 = s.read(1, 0, 0, 640, 512)
        ref = demo_image.reshape(512, 2, 640, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        np.testing.assert_array_equal(lv1, ref)


def test_ome_tiff_physical_size(tmp_path: Path, demo_image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "s.ome.tif", demo_image[:256, :256], mpp=0.5, levels=2, ome=True)
    with open_slide(path) as s:
        assert s.vendor == "ome-tiff"
        assert s.mpp == pytest.approx((0.5, 0.5))


def test_tiff_without_resolution_has_no_mpp_and_override_works(tmp_path: Path, demo_image: np.ndarray) -> None:
    path = write_pyramid_tiff(tmp_path / "nompp.tif", demo_image[:256, :256], mpp=None, levels=1)
    with open_slide(path) as s:
        assert s.mpp is None
        with pytest.raises(SlideError, match="--mpp"):
            s.level_mpp(0)
    with open_slide(path, mpp=0.3) as s:
        assert s.mpp == (0.3, 0.3)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 352.8, "abc"])
def test_mpp_validation(bad: object) -> None:
    with pytest.raises(ValueError, match="mpp"):
        validate_mpp(bad, "mpp")  # type: ignore[arg-type]


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="slide not found"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(FileNotFoundError, match="not a file"):
        open_slide(tmp_path)


def test_non_slide_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    with pytest.raises(SlideError, match="not a slide") as exc:
        open_slide(text)
    assert str(text) in str(exc.value)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(SlideError):
        open_slide(empty)


def test_truncated_tiff_names_the_slide(tmp_path: Path, demo_slide: Path) -> None:
    data = demo_slide.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    # Either the header is unreadable, or a region read fails: both name the file.
    with pytest.raises(SlideError) as exc:
        with open_slide(cut) as s:
            s.read(0, 0, 0, s.levels[0].width, s.levels[0].height)
    assert "cut.tif" in str(exc.value)


def test_region_outside_level_is_refused(demo_slide: Path) -> None:
    with open_slide(demo_slide) as s:
        with pytest.raises(ValueError, match="outside level"):
            s.read(0, 1200, 0, 100, 10)
        with pytest.raises(ValueError, match="level must be"):
            s.read(5, 0, 0, 1, 1)


def test_thumbnail_is_bounded(demo_slide: Path, demo_image: np.ndarray) -> None:
    with open_slide(demo_slide) as s:
        ov = s.thumbnail(300)
        level2 = s.read(2, 0, 0, 320, 256)
    assert max(ov.rgb.shape[:2]) <= 300
    np.testing.assert_array_equal(ov.rgb, level2[::2, ::2])
    # Coarsest level with a side >= 300 is level 2 (320 px), subsampled by 2.
    assert ov.level == 2 and ov.stride == 2
    assert ov.downsample == (8.0, 8.0)


def test_real_aperio_slide(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        assert s.backend == "openslide" and s.vendor == "aperio"
        assert (s.levels[0].width, s.levels[0].height) == (2220, 2967)
        assert s.mpp == pytest.approx((0.499, 0.499))
        rgb = s.read(0, 1000, 1000, 256, 128)
        assert rgb.shape == (128, 256, 3) and rgb.dtype == np.uint8
        assert rgb.std() > 10  # tissue, not blank
        assert s.fingerprint() == s.fingerprint()
