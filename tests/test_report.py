"""nucseg report: a well-formed, self-contained HTML page that renders in headless Chromium."""

from __future__ import annotations

import base64
import html.parser
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from nucseg.cli.main import main
from nucseg.export import write_report
from nucseg.export.report import density_map, histogram


@pytest.fixture(scope="module")
def slide_rgb() -> np.ndarray:
    from nucseg.wsi.demo import synthetic_he

    rgb, _, _ = synthetic_he((384, 512), seed=4)
    return rgb


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, slide_rgb: np.ndarray) -> Path:
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    tmp = tmp_path_factory.mktemp("report")
    slide = write_pyramid_tiff(tmp / "slide.tif", slide_rgb, mpp=0.25, levels=2)
    out = tmp / "out.zarr"
    segment_slide(slide, out, model=HematoxylinPredictor(), tile=256, halo=40, tissue="none", threads=1)
    return out


class _Page(html.parser.HTMLParser):
    """Collects tags and checks that they nest properly."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_report_is_well_formed_and_self_contained(store: Path, tmp_path: Path) -> None:
    out = write_report(store, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = _parse(text)
    assert page.errors == [] and page.stack == []
    # Nothing is fetched: no URL anywhere, no script, no external stylesheet.
    assert not re.search(r"(https?|ftp)://", text)
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in page.tags)
    assert "url(" not in text and "@import" not in text
    imgs = [a for tag, a in page.tags if tag == "img"]
    assert len(imgs) >= 4  # QC overview, QC detail, density, area (+ hematoxylin once the table has it)
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and min(png.size) > 50
        assert a.get("alt")
    # The run metadata and the summary made it in.
    n = zarr.open_group(str(store), mode="r").attrs["nucseg"]["nuclei"]
    assert f"{n:,}" in text and "model.sha256" in text and "processing.mpp" in text


def test_qc_overlay_draws_outlines_over_the_overview(store: Path) -> None:
    from nucseg.export import open_result
    from nucseg.export.report import qc_overlay

    res = open_result(store)
    rgb, caption = qc_overlay(res)
    ov = np.moveaxis(res.group["0"][...], 0, -1)
    assert rgb.shape == ov.shape and "overview" in caption
    green = np.all(rgb == (0, 255, 0), axis=-1)
    labels = res.labels[...]
    assert rgb.shape[:2] == labels.shape  # this overview is at the label resolution
    # Outlines are drawn on nucleus pixels only, one per nucleus at least.
    assert green.any() and not green[labels == 0].any()
    assert np.array_equal(rgb[~green], ov[~green])


def test_density_map_counts_per_mm2() -> None:
    # 100 nuclei in the first 100 um bin, none elsewhere: 10 000 per mm^2 at the top of the scale.
    y = np.full(100, 50.0)
    x = np.full(100, 50.0)
    rgb, top = density_map(y, x, (300.0, 200.0), bin_um=100.0)
    assert top == pytest.approx(100 / 0.01)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    # A bin cut by the slide's edge is divided by its area inside the slide: 10 nuclei in
    # the last 50 x 100 um column of a 250 um wide slide are 2 000 per mm^2, not 1 000.
    _, top = density_map(np.full(10, 50.0), np.full(10, 220.0), (100.0, 250.0), bin_um=100.0)
    assert top == pytest.approx(10 / 0.005)


def test_histogram_draws_bars_proportional_to_counts() -> None:
    values = np.r_[np.full(300, 1.0), np.full(100, 3.0)]
    img = histogram(values, title="t", xlabel="x", bins=2, size=(400, 300))
    bar = np.all(img == (70, 90, 170), axis=-1)
    cols = bar.sum(axis=0)
    mid = 60 + (400 - 60 - 16) // 2  # middle of the plot area (60 px left margin, 16 px right)
    left, right = cols[:mid].max(), cols[mid:].max()
    assert right / left == pytest.approx(1 / 3, abs=0.02)
    assert histogram(np.array([np.nan]), title="t", xlabel="x").shape == (300, 560, 3)


def test_qc_overlay_reads_a_coarse_level_of_a_full_image(tmp_path: Path) -> None:
    """With --save-image, level 0 is the slide at full resolution: the picture comes from a coarser level."""
    from nucseg.export import open_result
    from nucseg.export.report import qc_overlay
    from nucseg.wsi import segment_slide
    from nucseg.wsi.demo import synthetic_he, write_pyramid_tiff
    from nucseg.wsi.predictors import HematoxylinPredictor

    rgb, _, _ = synthetic_he((600, 520), seed=8)
    slide = write_pyramid_tiff(tmp_path / "s.tif", rgb, mpp=0.25, levels=1)
    out = tmp_path / "img.zarr"
    segment_slide(slide, out, model=HematoxylinPredictor(), tile=256, halo=40, tissue="none", threads=1,
                  save_image=True)
    res = open_result(out)
    pic, caption = qc_overlay(res, max_side=256)
    assert max(pic.shape[:2]) <= 256 and "overview" in caption
    # The picture is level 1 (300 px, the coarsest at least 256 px) shrunk by a box filter...
    level1 = np.moveaxis(res.group["1"][...], 0, -1)
    assert max(level1.shape[:2]) == 300
    ref = np.asarray(Image.fromarray(level1).resize((pic.shape[1], pic.shape[0]), Image.Resampling.BOX))
    green = np.all(pic == (0, 255, 0), axis=-1)
    assert max(pic.shape[:2]) == 256 and np.array_equal(pic[~green], ref[~green])
    # ... and the outlines sit on the dark nuclei of the picture (the labels are mapped right).
    assert green.any() and ref[green].mean() < ref.mean() - 40


def _without_overview(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest)
    shutil.rmtree(dest / "0")
    g = zarr.open_group(str(dest), mode="r+")
    attrs = dict(g.attrs)
    attrs.pop("ome")
    g.attrs.clear()
    g.attrs.update(attrs)
    return dest


def test_detail_view_shows_the_slide_pixels_under_the_labels(store: Path, slide_rgb: np.ndarray,
                                                            tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from nucseg.export import open_result
    from nucseg.export.report import detail_view

    t = pq.read_table(store / "nucseg" / "nuclei.parquet", columns=["y_um", "x_um"]).to_pydict()
    y_um, x_um = np.asarray(t["y_um"]), np.asarray(t["x_um"])
    # From the stored image (here at the label resolution), then from the slide file.
    bare = _without_overview(store, tmp_path / "bare.zarr")
    for path, source in ((store, "the stored slide image"), (bare, "the slide,")):
        res = open_result(path)
        pic, caption = detail_view(res, y_um, x_um, side=128, zoom=1)
        assert f"outlines (green) over {source}" in caption
        y0, y1, x0, x1 = (int(v) for v in re.search(r"y (\d+):(\d+), x (\d+):(\d+)", caption).groups())
        assert (y1 - y0, x1 - x0) == pic.shape[:2] == (128, 128)
        labels = res.labels[y0:y1, x0:x1]
        green = np.all(pic == (0, 255, 0), axis=-1)
        assert green.any() and not green[labels == 0].any()
        np.testing.assert_array_equal(pic[~green], slide_rgb[y0:y1, x0:x1][~green])
    # Slide gone too: the labels, coloured, and the caption says why.
    g = zarr.open_group(str(bare), mode="r+")
    meta = dict(g.attrs["nucseg"])
    meta["slide"] = dict(meta["slide"], path=str(tmp_path / "gone.tif"))
    g.attrs["nucseg"] = meta
    _, caption = detail_view(open_result(bare), y_um, x_um, side=64)
    assert "coloured labels" in caption and "not available" in caption


def test_report_without_overview_uses_labels(store: Path, tmp_path: Path) -> None:
    """A store whose overview image is missing still gets a QC picture (coloured labels)."""
    copy = _without_overview(store, tmp_path / "copy.zarr")
    text = write_report(copy, tmp_path / "r.html").read_text()
    assert "the store has no slide overview" in text


def test_cli_report_and_bad_input(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(store), str(out), "--quiet"]) == 0
    before = out.read_bytes()

    def error(argv: list[str]) -> str:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nucseg report: error: "), err
        return err[0]

    assert "already exists" in error(["report", str(store), str(out)])
    assert out.read_bytes() == before
    assert "does not exist" in error(["report", str(tmp_path / "none.zarr"), str(tmp_path / "x.html")])
    assert "not a nucseg-wsi output" in error(["report", str(tmp_path), str(tmp_path / "x.html")])
    assert "does not exist" in error(["report", str(store), str(tmp_path / "no" / "x.html")])
    assert "bin_um" in error(["report", str(store), str(tmp_path / "x.html"), "--bin-um", "-5"])
    assert not (tmp_path / "x.html").exists()


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_renders_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium)")
    page = write_report(store, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1600",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (1600, 1280)
    # Not a blank page: the embedded overview (pink tissue) and dark text are on screen.
    pink = (img[..., 0] > 180) & (img[..., 1] < 190) & (img[..., 2] > 150) & (img[..., 0] > img[..., 1] + 30)
    assert pink.mean() > 0.02  # the overview covers about 6% of this screen, 60% of it tissue
    assert (img.max(axis=-1) < 60).mean() > 0.001
