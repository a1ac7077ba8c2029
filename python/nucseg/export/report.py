"""``nucseg report``: one self-contained HTML page about a finished slide run.

The page embeds every picture as a base64 PNG and loads nothing from anywhere (no
scripts, no stylesheets, no fonts, no URLs), so it can be mailed or archived as it is.
It shows: a QC overlay (nucleus outlines over the slide overview stored in the output,
or over the labels when there is none), a nuclei density heat map, histograms of
nucleus area and mean hematoxylin optical density, summary figures and the run
metadata. Pictures are drawn with numpy and Pillow (no plotting library needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Longest side of the embedded overview pictures, in pixels.
MAX_PICTURE_SIDE = 680
_OUTLINE = (0, 255, 0)
_BAR = (70, 90, 170)


# -- pictures ------------------------------------------------------------------------


def _png(rgb: np.ndarray) -> str:
    """``data:`` URI of an RGB uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _ngff_transform(attrs: dict[str, Any], k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, translation)`` of the ``y, x`` axes of dataset ``k`` of an NGFF image."""
    ms = attrs["ome"]["multiscales"][0]
    axes = [a["name"] for a in ms["axes"]]
    tr = {t["type"]: t for t in ms["datasets"][k]["coordinateTransformations"]}
    scale = np.asarray(tr["scale"]["scale"], float)
    trans = np.asarray(tr.get("translation", {"translation": [0.0] * len(axes)})["translation"], float)
    iy, ix = axes.index("y"), axes.index("x")
    return scale[[iy, ix]], trans[[iy, ix]]


def _labels_on_grid(result: Any, centres_um: tuple[np.ndarray, np.ndarray], step_um: float) -> np.ndarray:
    """Labels sampled (nearest) at physical points, from the coarsest fine-enough level."""
    nuc = result.group["labels/nuclei"]
    levels = result.label_levels()
    k = 0
    for i in range(len(levels)):
        s, _ = _ngff_transform(dict(nuc.attrs), i)
        if max(s) <= step_um:
            k = i
    arr = levels[k]
    s, t = _ngff_transform(dict(nuc.attrs), k)
    iy = np.clip(np.rint((centres_um[0] - t[0]) / s[0]), 0, arr.shape[0] - 1).astype(np.int64)
    ix = np.clip(np.rint((centres_um[1] - t[1]) / s[1]), 0, arr.shape[1] - 1).astype(np.int64)
    # Read only the rows and columns needed (a bounding block, then gather).
    y0, y1, x0, x1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    if (y1 - y0) * (x1 - x0) <= 64e6:
        block = np.asarray(arr[y0:y1, x0:x1])
        return block[iy - y0][:, ix - x0]
    return np.stack([np.asarray(arr[int(r), :])[ix] for r in iy])  # huge level: row by row


def qc_overlay(result: Any, max_side: int = MAX_PICTURE_SIDE) -> tuple[np.ndarray, str]:
    """The QC picture: nucleus outlines over the overview (or coloured labels).

    Returns
    -------
    rgb : ndarray of uint8, shape (h, w, 3)
    caption : str
    """
    from skimage.segmentation import find_boundaries

    group = result.group
    root_attrs = dict(group.attrs)
    has_overview = "0" in group and "ome" in root_attrs
    if has_overview:
        # The coarsest level still at least max_side wide (a --save-image store holds the
        # slide at full resolution in level 0: never read that whole).
        paths = [d["path"] for d in root_attrs["ome"]["multiscales"][0]["datasets"]]
        k = 0
        for i, path in enumerate(paths):
            if path in group and max(group[path].shape[-2:]) >= max_side:
                k = i
        arr = group[paths[k]]
        s, t = _ngff_transform(root_attrs, k)
        ov = np.asarray(arr[...])
        rgb = np.moveaxis(ov, 0, -1)[..., :3] if ov.ndim == 3 else np.repeat(ov[..., None], 3, -1)
        rgb, f = _fit(np.ascontiguousarray(rgb, dtype=np.uint8), max_side)
        # New pixel i averages old pixels [i f, (i + 1) f): its centre is old (i + 0.5) f - 0.5.
        t = t + (0.5 * f - 0.5) * s
        s = s * f
    else:
        lab0 = result.labels
        step = max(1, int(math.ceil(max(lab0.shape) / max_side)))
        s0, t = _ngff_transform(dict(group["labels/nuclei"].attrs))
        s = s0 * step
        rgb = np.full((-(-lab0.shape[0] // step), -(-lab0.shape[1] // step), 3), 255, np.uint8)
    h, w = rgb.shape[:2]
    cy = t[0] + np.arange(h) * s[0]
    cx = t[1] + np.arange(w) * s[1]
    labels = _labels_on_grid(result, (cy, cx), float(min(s)))
    if has_overview:
        edges = find_boundaries(labels, mode="inner")
        rgb[edges] = _OUTLINE
        caption = f"Nucleus outlines (green) over the slide overview, {w} x {h} px at {s[1]:.2f} um/px."
    else:
        rgb = _colour_labels(labels)  # no overview in the store
        caption = f"Nucleus labels (the store has no slide overview), {w} x {h} px at {s[1]:.2f} um/px."
    return rgb, caption


def _detail_rgb(result: Any, box: tuple[int, int, int, int]) -> tuple[np.ndarray | None, str]:
    """RGB under a box of label pixels: from the stored image, else from the slide file."""
    y0, y1, x0, x1 = box
    group = result.group
    lab_scale, _ = _ngff_transform(dict(group["labels/nuclei"].attrs), 0)
    attrs = dict(group.attrs)
    if "ome" in attrs:
        for i, d in enumerate(attrs["ome"]["multiscales"][0]["datasets"]):
            s, _ = _ngff_transform(attrs, i)
            arr = group[d["path"]] if d["path"] in group else None
            if arr is not None and np.allclose(s, lab_scale) and arr.shape[-2:] == result.labels.shape:
                return np.moveaxis(np.asarray(arr[:3, y0:y1, x0:x1]), 0, -1), "the stored slide image"
    slide = result.meta.get("slide", {})
    path = Path(str(slide.get("path", "")))
    if not path.is_file():
        return None, f"the slide {path} is not available"
    from nucseg.wsi.reader import open_slide

    proc = result.meta["processing"]
    level = int(proc["level"])
    sy, sx = (float(v) for v in proc["scale"])
    with open_slide(path, mpp=1.0) as reader:  # mpp unused here: pixels only
        if reader.fingerprint() != slide.get("fingerprint"):
            return None, f"the slide {path} has changed since the run"
        lv = reader.levels[level]
        # Nearest level pixel under each label pixel centre.
        iy = np.clip(((np.arange(y0, y1) + 0.5) / sy).astype(np.int64), 0, lv.height - 1)
        ix = np.clip(((np.arange(x0, x1) + 0.5) / sx).astype(np.int64), 0, lv.width - 1)
        ly0, lx0 = int(iy.min()), int(ix.min())
        region = reader.read(level, lx0, ly0, int(ix.max()) - lx0 + 1, int(iy.max()) - ly0 + 1)
    return region[iy - ly0][:, ix - lx0], "the slide"


def detail_view(
    result: Any, y_um: np.ndarray, x_um: np.ndarray, *, side: int = 256, zoom: int = 2
) -> tuple[np.ndarray, str] | None:
    """Outlines at full label resolution around the densest spot of nuclei.

    The RGB comes from the store's image when it holds the slide at the label
    resolution (``--save-image``), else from the slide file when it is still where the
    run read it (checked by fingerprint), else the labels are shown coloured.

    Returns
    -------
    (rgb, caption) or None
        None when there are no nuclei.
    """
    from skimage.segmentation import find_boundaries

    if len(y_um) == 0:
        return None
    labels = result.labels
    h, w = labels.shape
    my, mx = result.label_mpp
    # Densest square of the crop's size (table centroids are in micrometres).
    bins = (max(1, h // side), max(1, w // side))
    counts, ey, ex = np.histogram2d(y_um, x_um, bins=bins, range=((0, h * my), (0, w * mx)))
    by, bx = np.unravel_index(int(np.argmax(counts)), counts.shape)
    cy, cx = 0.5 * (ey[by] + ey[by + 1]) / my, 0.5 * (ex[bx] + ex[bx + 1]) / mx
    y0 = int(np.clip(round(cy) - side // 2, 0, max(0, h - side)))
    x0 = int(np.clip(round(cx) - side // 2, 0, max(0, w - side)))
    box = (y0, min(h, y0 + side), x0, min(w, x0 + side))
    lab = np.asarray(labels[box[0] : box[1], box[2] : box[3]])
    try:
        rgb, source = _detail_rgb(result, box)
    except Exception as exc:  # noqa: BLE001 - a missing picture must not sink the report
        rgb, source = None, f"the slide could not be read ({exc})"
    if rgb is None:
        pic = _colour_labels(lab)
        what = f"coloured labels ({source})"
    else:
        pic = rgb.copy()
        pic[find_boundaries(lab, mode="inner")] = _OUTLINE
        what = f"outlines (green) over {source}"
    pic = np.repeat(np.repeat(pic, zoom, axis=0), zoom, axis=1)
    caption = (
        f"Detail at full resolution ({mx:.3f} um/px, shown {zoom}x): {what}, "
        f"{lab.shape[1] * mx:.0f} x {lab.shape[0] * my:.0f} um around the densest spot "
        f"(label pixels y {box[0]}:{box[1]}, x {box[2]}:{box[3]})."
    )
    return pic, caption


def _fit(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink (box filter) so the longest side is at most ``max_side``; returns the
    picture and the ``(y, x)`` size ratio old / new."""
    from PIL import Image

    h, w = rgb.shape[:2]
    f = max(h, w) / max_side
    if f <= 1:
        return rgb.copy(), np.ones(2)
    nh, nw = max(1, round(h / f)), max(1, round(w / f))
    small = np.array(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BOX))
    return small, np.array([h / nh, w / nw])


def _colour_labels(labels: np.ndarray) -> np.ndarray:
    """Each nucleus in a colour of its own (hashed from its id), outlined in black, on white."""
    from skimage.color import hsv2rgb
    from skimage.segmentation import find_boundaries

    rgb = np.full((*labels.shape, 3), 255, np.uint8)
    fg = labels != 0
    # Fibonacci hashing spreads consecutive ids over the hue circle.
    hue = (labels[fg].astype(np.uint64) * np.uint64(2654435761) % np.uint64(360)).astype(float) / 360.0
    hsv = np.stack([hue, np.full_like(hue, 0.55), np.full_like(hue, 0.9)], axis=-1)
    rgb[fg] = np.rint(hsv2rgb(hsv[None])[0] * 255).astype(np.uint8)
    rgb[find_boundaries(labels, mode="inner")] = (0, 0, 0)
    return rgb


def density_map(
    y_um: np.ndarray, x_um: np.ndarray, extent_um: tuple[float, float], *, bin_um: float = 100.0,
    max_side: int = 540,
) -> tuple[np.ndarray, float]:
    """Heat map of nuclei per mm^2 in square bins, with a colour bar.

    Parameters
    ----------
    y_um, x_um : ndarray
        Nucleus centroids in micrometres from the slide's top-left corner.
    extent_um : (float, float)
        Slide height and width in micrometres.
    bin_um : float
        Bin side in micrometres.

    Returns
    -------
    rgb : ndarray of uint8
    top : float
        Density (nuclei / mm^2) at the top of the colour scale.
    """
    from PIL import Image, ImageDraw

    from nucseg.wsi.qc import heat_colours

    ny = max(1, int(math.ceil(extent_um[0] / bin_um)))
    nx = max(1, int(math.ceil(extent_um[1] / bin_um)))
    counts, _, _ = np.histogram2d(y_um, x_um, bins=(ny, nx), range=((0, ny * bin_um), (0, nx * bin_um)))
    # The last row and column of bins may stick out of the slide: divide by the area inside.
    hy = np.minimum(bin_um, extent_um[0] - np.arange(ny) * bin_um)
    hx = np.minimum(bin_um, extent_um[1] - np.arange(nx) * bin_um)
    density = counts / (np.outer(hy, hx) / 1e6)
    top = float(np.percentile(density[density > 0], 99)) if (density > 0).any() else 1.0
    top = max(top, 1e-9)
    heat = heat_colours(density / top)
    heat[density == 0] = (235, 235, 235)
    # Upscale bins to at most max_side pixels (nearest: the bins stay visible).
    zoom = max(1, min(max_side // max(ny, nx), 64))
    img = np.repeat(np.repeat(heat, zoom, axis=0), zoom, axis=1)
    h, w = img.shape[:2]
    bar_w, pad = 18, 70
    canvas = Image.new("RGB", (w + bar_w + pad + 10, max(h, 160)), "white")
    canvas.paste(Image.fromarray(img), (0, 0))
    ramp = heat_colours(np.linspace(1, 0, max(h, 160))[:, None].repeat(bar_w, axis=1))
    canvas.paste(Image.fromarray(ramp), (w + 8, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    bh = max(h, 160)
    for frac in (0.0, 0.5, 1.0):
        y = int(round((1 - frac) * (bh - 1)))
        draw.line([(w + 8 + bar_w, y), (w + 12 + bar_w, y)], fill="black")
        draw.text((w + 14 + bar_w, min(max(y - 7, 0), bh - 14)), f"{frac * top:,.0f}", fill="black", font=font)
    return np.asarray(canvas), top


def histogram(
    values: np.ndarray, *, title: str, xlabel: str, bins: int = 40, size: tuple[int, int] = (560, 300)
) -> np.ndarray:
    """A bar histogram with axes, ticks and labels, drawn with Pillow.

    The range is the 0.5th to 99.5th percentile; values beyond it are counted in the
    end bars.
    """
    from PIL import Image, ImageDraw

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    w, h = size
    left, right, top, bottom = 60, 16, 28, 46
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    draw.text((left, 6), title, fill="black", font=font)
    pw, ph = w - left - right, h - top - bottom
    draw.rectangle([left, top, left + pw, top + ph], outline=(120, 120, 120))
    if v.size == 0:
        draw.text((left + 10, top + ph // 2), "no values", fill="black", font=font)
        return np.asarray(img)
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    cmax = max(int(counts.max()), 1)
    for i, c in enumerate(counts):
        x0 = left + pw * i / bins
        x1 = left + pw * (i + 1) / bins
        y = top + ph * (1 - c / cmax)
        if c:
            draw.rectangle([x0 + 0.5, y, x1 - 0.5, top + ph], fill=_BAR)
    for frac in np.linspace(0, 1, 5):
        x = left + pw * frac
        draw.line([(x, top + ph), (x, top + ph + 4)], fill="black")
        label = _fmt(lo + frac * (hi - lo))
        tw = draw.textlength(label, font=small)
        draw.text((x - tw / 2, top + ph + 6), label, fill="black", font=small)
    for frac in (0.0, 0.5, 1.0):
        y = top + ph * (1 - frac)
        draw.line([(left - 4, y), (left, y)], fill="black")
        label = f"{frac * cmax:,.0f}"
        tw = draw.textlength(label, font=small)
        draw.text((left - 6 - tw, y - 6), label, fill="black", font=small)
    tw = draw.textlength(xlabel, font=small)
    draw.text((left + (pw - tw) / 2, h - 18), xlabel, fill="black", font=small)
    return np.asarray(img)


def _fmt(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 1:
        return f"{x:.1f}"
    return f"{x:.3f}"


# -- page ----------------------------------------------------------------------------


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` rows of nested metadata."""
    rows: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj) and len(obj) > 4:
        rows.append((prefix, json.dumps(obj)[:300]))
    else:
        if isinstance(obj, float):
            text = f"{obj:.6g}"
        elif isinstance(obj, list):
            text = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in obj)
        else:
            text = str(obj)
        rows.append((prefix, text))
    return rows


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px} figure{margin:0 0 12px;max-width:100%} figcaption{color:#555;font-size:13px}
img{max-width:100%;height:auto;border:1px solid #ccc} .row{display:flex;flex-wrap:wrap;gap:16px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top} th{background:#f4f4f4} td.k{font-family:monospace;white-space:nowrap}
td.v{font-family:monospace;word-break:break-all}
"""


def _figure(rgb: np.ndarray, caption: str, alt: str) -> str:
    # The figure is as wide as its picture, so that the caption wraps under it.
    return (f'<figure style="width:{rgb.shape[1] + 2}px"><img src="{_png(rgb)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def default_bin_um(extent_um: tuple[float, float]) -> float:
    """Density bin side: 100 um on whole slides, finer (down to 50 um) on small ones."""
    return float(np.clip(max(extent_um) / 40.0, 50.0, 100.0))


def build_report(result: Any, *, bin_um: float | None = None) -> str:
    """The HTML text of the report of a finished store (see :func:`write_report`)."""
    import pyarrow.parquet as pq

    meta = result.meta
    names = pq.ParquetFile(result.table_path).schema_arrow.names
    want = [c for c in ("y_um", "x_um", "area_um2", "hematoxylin_od") if c in names]
    cols = pq.read_table(result.table_path, columns=want)
    data = {c: cols.column(c).to_numpy(zero_copy_only=False).astype(float) for c in want}
    n = cols.num_rows
    h0, w0 = result.level0_size
    mpp0 = meta.get("slide", {}).get("mpp", [float("nan")] * 2)  # (x, y) as the reader gives it
    extent = (h0 * float(mpp0[1]), w0 * float(mpp0[0]))

    bin_um = default_bin_um(extent) if bin_um is None else bin_um
    qc, qc_caption = qc_overlay(result)
    parts = [_figure(qc, qc_caption, "QC overlay")]
    if n and "y_um" in data:
        detail = detail_view(result, data["y_um"], data["x_um"])
        if detail is not None:
            parts.append(_figure(detail[0], detail[1], "QC detail"))
    dens_html = ""
    if n and "y_um" in data:
        dens, top = density_map(data["y_um"], data["x_um"], extent, bin_um=bin_um)
        dens_html = _figure(
            dens,
            f"Nuclei per mm^2 in {bin_um:g} um bins (colour scale up to the 99th percentile, {top:,.0f}/mm^2; "
            "grey: no nuclei).",
            "density heat map",
        )
    hists = []
    if "area_um2" in data:
        pic = histogram(data["area_um2"], title=f"Nucleus area (n = {n:,})", xlabel="area (um^2)")
        hists.append(_figure(pic, "Nucleus area.", "area histogram"))
    if "hematoxylin_od" in data:
        pic = histogram(data["hematoxylin_od"], title="Mean hematoxylin density per nucleus",
                        xlabel="hematoxylin optical density (base 10)")
        hists.append(_figure(pic, "Mean hematoxylin optical density (colour deconvolution).", "hematoxylin histogram"))
    else:
        hists.append('<p class="sub">Hematoxylin density: not in this run\'s table (no morphometrics).</p>')

    tissue = float(meta.get("tissue_mm2", float("nan")))
    summary = [
        ("nuclei", f"{n:,}"),
        ("tissue area", f"{tissue:.3f} mm^2"),
        ("nuclei per mm^2 of tissue", f"{n / tissue:,.0f}" if tissue > 0 else "n/a"),
        ("median area", f"{np.median(data['area_um2']):.1f} um^2" if n and "area_um2" in data else "n/a"),
        ("median hematoxylin OD", f"{np.median(data['hematoxylin_od']):.3f}"
         if n and "hematoxylin_od" in data else "n/a"),
        ("labels", f"{result.labels.shape[1]} x {result.labels.shape[0]} px at "
                   f"{result.label_mpp[1]:.4f} um/px"),
        ("slide level 0", f"{w0} x {h0} px"),
    ]
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    meta_rows = "".join(
        f'<tr><td class="k">{html.escape(k)}</td><td class="v">{html.escape(v)}</td></tr>'
        for k, v in _flatten(meta)
    )
    title = f"nucseg report: {Path(str(meta.get('slide', {}).get('path', result.path))).name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">{html.escape(str(result.path.resolve()))} &middot; run ended {html.escape(str(meta.get("end_time", "?")))}
</p>
<h2>Summary</h2>
<table>{summary_rows}</table>
<h2>Quality control</h2>
<div class="row">{''.join(parts)}</div>
<h2>Nuclei density and distributions</h2>
<div class="row">{dens_html or '<p class="sub">No nuclei.</p>'}{''.join(hists)}</div>
<h2>Run metadata</h2>
<table>{meta_rows}</table>
</body>
</html>
"""


def write_report(
    store: Any,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    bin_um: float | None = None,
) -> Path:
    """Write the self-contained HTML report of a finished nucseg-wsi store.

    Parameters
    ----------
    store : path-like or Result
        The ``OUT.zarr`` written by ``nucseg-wsi``.
    path : path-like
        The ``.html`` file to write.
    overwrite : bool
        Replace an existing file.
    bin_um : float, optional
        Side of the density bins in micrometres (default: 100, or finer on small
        slides, see :func:`default_bin_um`).

    Returns
    -------
    Path
        The report.

    Raises
    ------
    FileNotFoundError, ResultError
        Missing store, not a nucseg output, half-finished run, or a destination that
        exists (without ``overwrite``) or cannot be written. Nothing is written then.
    """
    from .result import Result, atomic_writer, check_destination, open_result

    if bin_um is not None and not (isinstance(bin_um, (int, float)) and math.isfinite(bin_um) and bin_um > 0):
        raise ValueError(f"bin_um must be a positive number of micrometres, got {bin_um!r}")
    result = store if isinstance(store, Result) else open_result(store)
    dest = check_destination(path, overwrite=overwrite)
    text = build_report(result, bin_um=bin_um)
    with atomic_writer(dest, overwrite=overwrite) as fh:
        fh.write(text)
    return dest
