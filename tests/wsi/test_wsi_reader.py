"""Slide readers: geometry, resolution metadata, region reads, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nucseg.wsi.demo import write_pyramid_tiff
from nucseg.wsi.reader import LevelInfo, ReaderUnavailable, SlideError, open_slide, validate_mpp


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


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_real_aperio_slide(cmu_slide: Path, reader: str) -> None:
    if reader == "tifffile":
        pytest.importorskip("imagecodecs", reason="tifffile decodes JPEG tiles with imagecodecs")
    with open_slide(cmu_slide, reader=reader) as s:
        assert s.backend == reader and s.vendor == "aperio"
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


# -- readers: tifffile against OpenSlide -------------------------------------------------


def _random_regions(rng: np.random.Generator, lv: LevelInfo, n: int) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(n):
        w, h = int(rng.integers(1, lv.width + 1)), int(rng.integers(1, lv.height + 1))
        out.append((int(rng.integers(0, lv.width - w + 1)), int(rng.integers(0, lv.height - h + 1)), w, h))
    return out


def test_real_svs_tifffile_equals_openslide(cmu_slide: Path) -> None:
    """The whole level of the real JPEG SVS: the same pixels, resolution and geometry."""
    pytest.importorskip("imagecodecs", reason="tifffile decodes JPEG tiles with imagecodecs")
    with open_slide(cmu_slide, reader="openslide") as o, open_slide(cmu_slide) as t:
        assert t.backend == "tifffile"  # auto picks it for JPEG SVS
        assert [(lv.width, lv.height) for lv in t.levels] == [(lv.width, lv.height) for lv in o.levels]
        assert t.mpp == o.mpp == pytest.approx((0.499, 0.499))
        assert t.fingerprint() == o.fingerprint()
        lv = o.levels[0]
        np.testing.assert_array_equal(t.read(0, 0, 0, lv.width, lv.height), o.read(0, 0, 0, lv.width, lv.height))
        np.testing.assert_array_equal(t.thumbnail(512).rgb, o.thumbnail(512).rgb)


_LOSSY = {"jpeg", "jpeg2000", "aperio-j2k-rgb", "aperio-j2k-ycbcr"}


def _slide(tmp_path: Path, image: np.ndarray, compression: str, layout: str) -> Path:
    if compression in _LOSSY:
        pytest.importorskip("imagecodecs", reason="lossy tiles are written and decoded with imagecodecs")
    from nucseg.wsi.demo import write_tiled_slide

    suffix = ".svs" if layout == "aperio" else ".tif"
    # 700 x 900 px in 128 px tiles: partial tiles on the right and bottom edges of every level.
    return write_tiled_slide(tmp_path / f"{layout}-{compression}{suffix}", image[:700, :900], compression=compression,
                             layout=layout, mpp=0.25, levels=3, tile=128)


@pytest.mark.parametrize(
    ("layout", "compression"),
    [("aperio", "jpeg"), ("aperio", "aperio-j2k-rgb"), ("aperio", "deflate"), ("aperio", "none"),
     ("generic", "jpeg"), ("generic", "deflate")],
)
def test_tifffile_reads_the_pixels_openslide_reads(
    tmp_path: Path, demo_image: np.ndarray, layout: str, compression: str
) -> None:
    """Formats both read: auto picks tifffile, and every level, region and property agrees."""
    from nucseg.wsi.tiling import plan_geometry

    path = _slide(tmp_path, demo_image, compression, layout)
    rng = np.random.default_rng(1)
    with open_slide(path, reader="openslide") as o, open_slide(path) as t:
        assert (o.backend, t.backend) == ("openslide", "tifffile")
        assert o.vendor == ("aperio" if layout == "aperio" else "generic-tiff")
        assert t.vendor == ("aperio" if layout == "aperio" else "tiff")
        assert [(lv.width, lv.height) for lv in t.levels] == [(900, 700), (450, 350), (225, 175)]
        assert [(lv.width, lv.height) for lv in o.levels] == [(lv.width, lv.height) for lv in t.levels]
        assert t.mpp == o.mpp == pytest.approx((0.25, 0.25))
        for level, lv in enumerate(o.levels):
            assert t.level_mpp(level) == pytest.approx(o.level_mpp(level))
            for x, y, w, h in [(0, 0, lv.width, lv.height), *_random_regions(rng, lv, 8)]:
                np.testing.assert_array_equal(t.read(level, x, y, w, h), o.read(level, x, y, w, h))
        # The runner's level choice (the level closest to the model's 0.5 um/px) is the same.
        sizes = [[(lv.width, lv.height) for lv in r.levels] for r in (o, t)]
        geoms = [plan_geometry(sz, r.require_mpp(), 0.5, tile=128, halo=16, context=8) for sz, r in zip(sizes, (o, t))]
        assert geoms[0].level == geoms[1].level == 1 and not geoms[1].resampled
    if compression not in _LOSSY:  # and both are the written image
        with open_slide(path) as t:
            np.testing.assert_array_equal(t.read(0, 0, 0, 900, 700), demo_image[:700, :900])


def test_aperio_ycbcr_jpeg2000_stays_with_openslide(tmp_path: Path, demo_image: np.ndarray) -> None:
    """Compression 33003: tifffile returns the YCbCr samples; auto keeps OpenSlide, which converts."""
    import tifffile

    path = _slide(tmp_path, demo_image, "aperio-j2k-ycbcr", "aperio")
    with open_slide(path) as s:
        assert s.backend == "openslide"
        rgb = s.read(0, 0, 0, 900, 700)
    # OpenSlide's colours are the written image's (up to the lossy coding); tifffile's raw decode is not.
    err = np.abs(rgb.astype(int) - demo_image[:700, :900])
    assert err.max() <= 48 and err.mean() < 4
    assert np.abs(tifffile.imread(path).astype(int) - rgb).mean() > 20
    with pytest.raises(ReaderUnavailable, match=r"33003.*reader='openslide'"):
        open_slide(path, reader="tifffile")


def test_plain_jpeg2000_tiff_only_tifffile_reads(tmp_path: Path, demo_image: np.ndarray) -> None:
    path = _slide(tmp_path, demo_image, "jpeg2000", "generic")
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        rgb = s.read(0, 0, 0, 900, 700)
    err = np.abs(rgb.astype(int) - demo_image[:700, :900])  # lossy, 45 dB
    assert err.max() <= 48 and err.mean() < 4
    with pytest.raises(SlideError, match="OpenSlide cannot (open|read)"):
        open_slide(path, reader="openslide")


def test_reader_choice_is_checked_and_named(tmp_path: Path, demo_slide: Path) -> None:
    with pytest.raises(ValueError, match="reader must be one of 'auto', 'openslide', 'tifffile', got 'vips'"):
        open_slide(demo_slide, reader="vips")
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    with pytest.raises(SlideError, match="not a TIFF file, which reader='tifffile' needs"):
        open_slide(text, reader="tifffile")


def test_missing_imagecodecs_names_the_extra_and_auto_falls_back(
    tmp_path: Path, demo_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    jpeg = _slide(tmp_path, demo_image, "jpeg", "aperio")
    generic = _slide(tmp_path, demo_image, "jpeg", "generic")
    deflate = _slide(tmp_path, demo_image, "deflate", "aperio")
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs -> ImportError
    with pytest.raises(ReaderUnavailable, match=r"compression 7\) with tifffile needs imagecodecs: "
                                                r"pip install 'nucseg\[fast-read\]'"):
        open_slide(jpeg, reader="tifffile")
    for path in (jpeg, generic):  # OpenSlide reads them: auto uses it
        with open_slide(path) as s:
            assert s.backend == "openslide"
    with open_slide(deflate) as s:  # zlib is Python's: tifffile needs no imagecodecs
        assert s.backend == "tifffile"


def test_tiles_never_written_are_glass_for_both_readers(tmp_path: Path, demo_image: np.ndarray) -> None:
    """A tile with no data (TileByteCounts 0) is white, as OpenSlide composites it."""
    import tifffile

    path = _slide(tmp_path, demo_image, "deflate", "aperio")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[8] = 0  # row 1, column 0 of the 8 x 6 tiles of 128 px
        tag.overwrite(counts)
    with open_slide(path, reader="openslide") as o, open_slide(path, reader="tifffile") as t:
        a, b = o.read(0, 0, 100, 300, 200), t.read(0, 0, 100, 300, 200)
    np.testing.assert_array_equal(b, a)
    assert (b[28:156, :128] == 255).all() and (b[:28] != 255).any()


def test_threads_sharing_a_tiff_reader_read_what_one_thread_reads(tmp_path: Path, demo_image: np.ndarray) -> None:
    """Decoding outside the lock: two threads on one reader, with evictions, get the same regions."""
    from concurrent.futures import ThreadPoolExecutor

    path = _slide(tmp_path, demo_image, "jpeg", "aperio")
    rng = np.random.default_rng(2)
    with open_slide(path, reader="tifffile") as s:
        regions = [(lv, *r) for lv in range(3) for r in _random_regions(rng, s.levels[lv], 20)]
        expected = [s.read(*r) for r in regions]
        s._cache.tiles.clear()
        s._cache.bytes = 0
        s._cache.max_bytes = 6 * 128 * 128 * 3
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda r: s.read(*r), regions * 3))
    for a, b in zip(got, expected * 3):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("opaque", [True, False])
def test_openslide_rgba_composited_on_white(opaque: bool) -> None:
    """Premultiplied RGBA on white: rgb + 255 - alpha; the opaque shortcut returns the same."""
    from nucseg.wsi.reader import _rgba_on_white

    rng = np.random.default_rng(3)
    alpha = np.full((40, 50), 255, np.uint8) if opaque else rng.integers(0, 256, (40, 50), dtype=np.uint8)
    rgb = (rng.integers(0, 256, (40, 50, 3)) * alpha[..., None] // 255).astype(np.uint8)  # premultiplied
    got = _rgba_on_white(np.dstack([rgb, alpha]))
    expected = np.minimum(rgb.astype(int) + 255 - alpha[..., None].astype(int), 255)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous and got.dtype == np.uint8
