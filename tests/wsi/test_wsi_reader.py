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


@pytest.mark.parametrize("max_pixels", [20, 300, 2**22], ids=["rows", "small-blocks", "default"])
def test_thumbnail_reads_are_bounded_and_read_only_sampled_rows(
    demo_slide: Path, monkeypatch: pytest.MonkeyPatch, max_pixels: int
) -> None:
    """Whatever the stride, no read holds more than OVERVIEW_READ_PIXELS pixels, and the
    overview is the level subsampled by the stride (independent reference: numpy slicing)."""
    import nucseg.wsi.reader as reader_mod

    monkeypatch.setattr(reader_mod, "OVERVIEW_READ_PIXELS", max_pixels)
    reads: list[tuple[int, int, int, int, int]] = []
    with open_slide(demo_slide) as s:
        level2 = s.read(2, 0, 0, 320, 256)  # the whole level, in one read
        real = s.read

        def spy(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            reads.append((level, x, y, w, h))
            return real(level, x, y, w, h)

        s.read = spy  # type: ignore[method-assign]
        ov = s.thumbnail(64)  # level 2 (320 x 256 px), stride 5
    assert ov.level == 2 and ov.stride == 5
    np.testing.assert_array_equal(ov.rgb, level2[::5, ::5])
    assert all(w * h <= max_pixels for _, _, _, w, h in reads)
    rows = {y + i for _, _, y, _, h in reads for i in range(h)}
    if max_pixels == 20:  # a 5x5 block is too large: one sampled row per read, 20 px wide
        assert rows == set(range(0, 256, 5))
        assert all(h == 1 and x % 5 == 0 for _, x, _, _, h in reads)
    else:
        assert rows == set(range(256))


@pytest.mark.parametrize(
    ("stride", "max_pixels", "block"),
    [(1, 2**22, (2048, 2048)), (5, 2**22, (2045, 2045)), (2048, 2**22, (2048, 2048)),
     (2049, 2**22, (1, 2**22 // 2049 * 2049)), (10**7, 2**22, (1, 10**7))],
)
def test_overview_block(stride: int, max_pixels: int, block: tuple[int, int]) -> None:
    from nucseg.wsi.reader import overview_block

    got = overview_block(stride, max_pixels)
    assert got == block
    assert got[1] % stride == 0 and (got[0] == 1 or got[0] % stride == 0)


def test_check_extent_names_the_slide_its_size_in_mm_and_the_limit(demo_slide: Path) -> None:
    with open_slide(demo_slide) as s:
        assert s.check_extent() == pytest.approx((1280 * 0.25e-3, 1024 * 0.25e-3))
        msg = r"demo\.tif: level 0 is 1280x1024 px .* = 0\.3x0\.3 mm, larger than the 0\.2 mm limit"
        with pytest.raises(SlideError, match=msg):
            s.check_extent(0.2)
    with open_slide(demo_slide, mpp=50) as s:  # 64 x 51.2 mm: a plausible whole-mount slide
        assert s.check_extent() == pytest.approx((64.0, 51.2))


def test_real_aperio_slide(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        assert s.backend == "openslide" and s.vendor == "aperio"
        assert (s.levels[0].width, s.levels[0].height) == (2220, 2967)
        assert s.mpp == pytest.approx((0.499, 0.499))
        rgb = s.read(0, 1000, 1000, 256, 128)
        assert rgb.shape == (128, 256, 3) and rgb.dtype == np.uint8
        assert rgb.std() > 10  # tissue, not blank
        assert s.fingerprint() == s.fingerprint()


@pytest.mark.parametrize("layout", ["pyramid", "ome", "grey", "rgba", "strips"])
def test_tile_reads_equal_tifffile_zarr_reads(tmp_path: Path, demo_image: np.ndarray, layout: str) -> None:
    """Regions read tile by tile (through the decoded-tile cache) equal tifffile's zarr reads."""
    import tifffile

    from nucseg.wsi import reader as rd

    rgb = demo_image[:700, :900]
    path = tmp_path / f"{layout}.tif"
    res = {"resolution": (4e4, 4e4), "resolutionunit": "CENTIMETER"}
    if layout in ("pyramid", "ome"):
        write_pyramid_tiff(path, rgb, mpp=0.25, levels=3, ome=layout == "ome")
    elif layout == "grey":
        tifffile.imwrite(path, rgb[..., 0], tile=(64, 64), **res)
    elif layout == "rgba":
        tifffile.imwrite(path, np.dstack([rgb, rgb[..., :1]]), tile=(128, 64), photometric="rgb", extrasamples=[1],
                         compression="zlib", **res)
    else:
        tifffile.imwrite(path, rgb, photometric="rgb", **res)
    rng = np.random.default_rng(0)
    with open_slide(path) as s:
        assert all((p is None) == (layout == "strips") for p in s._tiled)
        s._cache.max_bytes = 4 * 128 * 64 * 4  # a few tiles: evictions happen
        for level, lv in enumerate(s.levels):
            for _ in range(20):
                w, h = int(rng.integers(1, lv.width + 1)), int(rng.integers(1, lv.height + 1))
                x, y = int(rng.integers(0, lv.width - w + 1)), int(rng.integers(0, lv.height - h + 1))
                tiled = s.read(level, x, y, w, h)
                page, s._tiled[level] = s._tiled[level], None  # tifffile's zarr store
                try:
                    np.testing.assert_array_equal(tiled, s.read(level, x, y, w, h))
                finally:
                    s._tiled[level] = page
        assert s._cache.bytes <= max(s._cache.max_bytes, max((t.nbytes for t in s._cache.tiles.values()), default=0))
    assert rd.TILE_CACHE_BYTES >= 2**20
