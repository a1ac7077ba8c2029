"""Segment folders of ordinary images (PNG, TIFF, JPEG) into label images and tables.

:func:`segment_files` is the ``nucseg segment`` command as a function. Each image
``NAME.ext`` gives, in the output folder (sub-folders mirror those of a folder given with
``recursive``):

``NAME_labels.tif``      the nucleus labels on the image's own pixel grid (0 = background),
                         uint16 when the ids fit, else uint32, with the resolution in the
                         TIFF resolution tags (centimetres); ``NAME_labels.png`` (16 bit,
                         pHYs) with ``label_format="png"``
``NAME_nuclei.geojson``  every nucleus as a QuPath detection with its measurements, in
                         image pixels (``geojson=True``)
``NAME_nuclei.csv``      one row per nucleus: the morphometrics of
                         :func:`nucseg.morphometrics.measure_nuclei` plus the centroid in
                         micrometres (``table="csv"``; ``"parquet"`` writes
                         ``NAME_nuclei.parquet``)
``NAME_overlay.png``     the image with the nucleus outlines in green (``overlay=True``)

and ``summary.csv`` has one row per image (nuclei, mean area, seconds, status).

Resolution: ``mpp`` when given, else the file's own (OME or ImageJ metadata, TIFF
resolution tags in inch or centimetre, PNG pHYs, JPEG JFIF density); the 72 and 96 dpi
that writers put in files by default do not count. The image is resampled to the model's
resolution by :func:`nucseg.segment` and the labels come back on the input's grid.

Nothing the user has is lost: every file is written under a temporary name and renamed
when complete; an output that exists is refused before any work unless ``resume``
(images whose outputs all exist are skipped, the others redone) or ``overwrite``; an
input is never written to.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "ImageResult",
    "Job",
    "check_existing",
    "check_resolutions",
    "find_images",
    "image_mpp",
    "iter_label_features",
    "label_dtype",
    "nucleus_table",
    "outline_overlay",
    "plan_jobs",
    "read_image",
    "resolve_mpp",
    "segment_files",
    "segment_image",
    "summary_lines",
    "to_rgb",
    "write_labels",
    "write_summary",
]

#: Suffixes of the images taken from folders (any case).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: What each output adds to the image's stem.
OUTPUT_SUFFIXES = {
    "labels.tif": "_labels.tif",
    "labels.png": "_labels.png",
    "geojson": "_nuclei.geojson",
    "csv": "_nuclei.csv",
    "parquet": "_nuclei.parquet",
    "overlay": "_overlay.png",
}
SUMMARY_NAME = "summary.csv"
#: Columns of summary.csv.
SUMMARY_COLUMNS = ("image", "status", "nuclei", "mean_area_um2", "seconds", "mpp", "error")
#: Default densities that writers put in every file (PNG, JPEG): not a real resolution.
_DEFAULT_DPI = (72.0, 96.0)
_NAMESPACE = uuid.UUID("0b6c4b8e-4f0e-4d8a-9a43-3f1d2f6c9a57")  # stable per-nucleus feature ids
_OUTLINE = (0, 200, 0)  # the QC picture's green


class ImageError(ValueError):
    """An image that cannot be segmented; the message names the file."""


@dataclass(frozen=True)
class Job:
    """One image and the files it becomes.

    Attributes
    ----------
    image : Path
        The input file.
    outputs : dict of str to Path
        ``"labels"`` and, when asked for, ``"geojson"``, ``"table"``, ``"overlay"``.
    """

    image: Path
    outputs: dict[str, Path]


@dataclass
class ImageResult:
    """What happened to one image.

    Attributes
    ----------
    image : Path
    status : {"done", "skipped", "failed"}
        ``"skipped"``: its outputs existed (``resume``).
    nuclei : int or None
        Nuclei in the labels (distinct non-zero ids).
    mean_area_um2 : float or None
        Mean nucleus area in square micrometres (NaN without nuclei).
    seconds : float or None
        Wall time to read, segment and write it.
    mpp : float or None
        Microns per pixel used for the image.
    outputs : dict of str to Path
    error : str or None
        One line naming the image, for ``"failed"``.
    """

    image: Path
    status: str
    nuclei: int | None = None
    mean_area_um2: float | None = None
    seconds: float | None = None
    mpp: float | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    error: str | None = None


# --------------------------------------------------------------------------- finding and planning


def _is_output_name(name: str) -> bool:
    return any(name.endswith(s) for s in OUTPUT_SUFFIXES.values())


def _folder_images(folder: Path, recursive: bool, skip: Path | None) -> Iterator[Path]:
    """Images of a folder in sorted order; hidden files, our own outputs and ``skip`` left out."""
    entries = sorted(folder.iterdir())
    for p in entries:
        if p.name.startswith("."):
            continue  # hidden files, including our temporary files
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _is_output_name(p.name):
            yield p
    if recursive:
        for p in entries:
            if p.is_dir() and not p.name.startswith(".") and (skip is None or p.resolve() != skip):
                yield from _folder_images(p, recursive, skip)


def find_images(
    paths: Sequence[str | os.PathLike[str]], *, recursive: bool = False, skip: str | os.PathLike[str] | None = None
) -> list[tuple[Path, Path]]:
    """The images named by files and folders, each with its output sub-folder.

    Parameters
    ----------
    paths : sequence of path-like
        Image files (taken whatever their suffix) and folders (their files with a suffix
        in :data:`IMAGE_SUFFIXES`, except hidden files and files named like this
        module's outputs, e.g. ``*_labels.tif`` or ``*_overlay.png``).
    recursive : bool
        Also look in the sub-folders of folders.
    skip : path-like, optional
        A folder never entered (the output folder, when it is inside an input folder).

    Returns
    -------
    list of (Path, Path)
        ``(image, relative folder)``: an image found in ``FOLDER/a/b`` has ``a/b``, a
        file given directly ``.``. Duplicates are dropped.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    skip_dir = Path(skip).resolve() if skip is not None else None
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        items = (
            [(q, q.parent.relative_to(p)) for q in _folder_images(p, recursive, skip_dir)]
            if p.is_dir()
            else [(p, Path("."))]
        )
        for image, rel in items:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                found.append((image, rel))
    return found


def plan_jobs(
    images: Sequence[tuple[Path, Path]],
    out: str | os.PathLike[str],
    *,
    label_format: str = "tif",
    geojson: bool = False,
    table: str | None = None,
    overlay: bool = False,
) -> list[Job]:
    """The output files of every image (see the module docstring for the names).

    Raises
    ------
    ValueError
        Two images would write the same file (same name in the same output folder), or
        an output would replace one of the images.
    """
    if label_format not in ("tif", "png"):
        raise ValueError(f"label_format must be 'tif' or 'png', got {label_format!r}")
    if table not in (None, "csv", "parquet"):
        raise ValueError(f"table must be None, 'csv' or 'parquet', got {table!r}")
    out = Path(out)
    kinds = {"labels": f"labels.{label_format}"}
    if geojson:
        kinds["geojson"] = "geojson"
    if table:
        kinds["table"] = table
    if overlay:
        kinds["overlay"] = "overlay"
    inputs = {image.resolve(): image for image, _ in images}
    owner: dict[Path, Path] = {}
    jobs = []
    for image, rel in images:
        folder = out / rel
        outputs = {k: folder / (image.stem + OUTPUT_SUFFIXES[v]) for k, v in kinds.items()}
        for path in outputs.values():
            key = path.resolve()
            if key in inputs:
                raise ValueError(f"{image} would be written over the input {inputs[key]}; choose another --out")
            if key in owner:
                raise ValueError(
                    f"{owner[key]} and {image} would both write {path}; rename one or segment them separately"
                )
            owner[key] = image
        jobs.append(Job(image, outputs))
    return jobs


def _is_done(job: Job) -> bool:
    return all(p.is_file() for p in job.outputs.values())


def check_existing(jobs: Sequence[Job], summary: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse outputs that exist, before any work, unless ``resume`` or ``overwrite``.

    Raises
    ------
    ValueError
        Both flags, or an existing output (or ``summary``) without either; a folder
        where a file should go.
    """
    if resume and overwrite:
        raise ValueError(
            "resume and overwrite exclude each other: resume keeps finished outputs, overwrite replaces them"
        )
    for path in [*(p for j in jobs for p in j.outputs.values()), summary]:
        if path.is_dir():
            raise ValueError(f"output {path} is a folder; move it away or choose another --out")
        if path.exists() and not (resume or overwrite):
            raise ValueError(
                f"output {path} already exists; pass --resume to skip finished images or --overwrite to replace"
            )


# --------------------------------------------------------------------------- reading


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(4)
    return magic[:2] in (b"II", b"MM") and magic[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def _read_tiff(path: Path) -> np.ndarray:
    """First page (the full resolution of a pyramid) with its samples last."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.photometric == tifffile.PHOTOMETRIC.SEPARATED:  # four samples, but not RGBA
            raise ImageError(f"{path}: CMYK image; expected an RGB (H&E) image")
        arr = page.asarray()
        axes = page.axes
    if "S" in axes and arr.ndim == len(axes):
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return arr


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":  # a palette holds colours (or greys: refused below)
            im = im.convert("RGBA")
        if im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I", "1"):
            raise ImageError(f"{path}: image mode {im.mode!r}; expected an RGB (H&E) image")
        return np.asarray(im)


def to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """``uint8`` ``(H, W, 3)`` from a decoded image; an alpha channel is composited on white.

    White is the glass of a slide: a transparent margin becomes background, not black
    stain. An opaque alpha channel is simply dropped.

    Raises
    ------
    ImageError
        Greyscale, not 8-bit, or not an image.
    """
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        raise ImageError(f"{path}: greyscale image; expected an RGB (H&E) image")
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageError(f"{path}: image of shape {arr.shape}; expected an RGB (H&E) image of shape (H, W, 3)")
    if arr.dtype != np.uint8:
        raise ImageError(f"{path}: {arr.dtype} pixels; expected 8-bit RGB")
    if min(arr.shape[:2]) < 1:
        raise ImageError(f"{path}: empty image of shape {arr.shape}")
    if arr.shape[-1] == 3:
        return np.ascontiguousarray(arr)
    alpha = arr[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(arr[..., :3])
    a = alpha.astype(np.float32) / 255.0
    return np.rint(arr[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, TIFF (first page) or JPEG as ``uint8`` RGB.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ImageError
        Greyscale, not 8-bit RGB(A), or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        arr = _read_tiff(path) if _is_tiff(path) else _read_pillow(path)
    except ImageError:
        raise
    except Exception as exc:  # every decoder raises its own types; one message for all
        raise ImageError(f"{path}: cannot read the image: {exc}") from exc
    return to_rgb(arr, path)


def _dpi_mpp(dpi: Any) -> tuple[float, float] | None:
    """Microns per pixel from Pillow's ``info["dpi"]``, None for the writers' defaults."""
    try:
        dx, dy = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (dx > 0 and dy > 0) or any(abs(dx - d) < 0.1 for d in _DEFAULT_DPI):
        return None
    return 25400.0 / dx, 25400.0 / dy


def _imagej_mpp(tif: Any) -> tuple[float, float] | None:
    """ImageJ's calibration: the resolution tags count pixels per ``unit`` (micron here)."""
    meta = tif.imagej_metadata or {}
    if str(meta.get("unit", "")).lower() not in ("micron", "um", "µm", "\\u00b5m"):
        return None
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    (nx, ddx), (ny, ddy) = tags["XResolution"].value, tags["YResolution"].value
    if min(nx, ddx, ny, ddy) <= 0:
        return None
    return ddx / nx, ddy / ny


def image_mpp(path: str | os.PathLike[str]) -> tuple[float, float] | None:
    """Microns per pixel ``(x, y)`` stored in an image file, or None.

    TIFF: OME PhysicalSize, the resolution tags in inch or centimetre (as ``nucseg-wsi``
    reads them), ImageJ's micron calibration. PNG (pHYs in pixels per metre) and JPEG
    (JFIF density): through Pillow. 72 and 96 dpi are the writers' defaults, not a
    resolution.

    Raises
    ------
    ValueError
        The file states an implausible resolution (outside
        :data:`nucseg.wsi.reader.MPP_RANGE`).
    """
    from nucseg.wsi.reader import validate_mpp

    path = Path(path)
    if _is_tiff(path):
        import tifffile

        from nucseg.wsi.reader import tiff_file_mpp

        with tifffile.TiffFile(path) as tif:
            found = tiff_file_mpp(tif, path)
            if found is None and tif.is_imagej:
                found = _imagej_mpp(tif)
        what = "TIFF resolution"
    else:
        from PIL import Image

        with Image.open(path) as im:
            found = _dpi_mpp(im.info.get("dpi"))
        what = f"{path.suffix.lstrip('.').upper() or 'image'} resolution (pHYs/density)"
    if found is None:
        return None
    try:
        return validate_mpp(found[0], what), validate_mpp(found[1], what)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc} (pass --mpp to override)") from None


def resolve_mpp(path: Path, override: float | None) -> float:
    """The microns per pixel to use for ``path``: ``override``, else the file's own.

    Raises
    ------
    ImageError
        No resolution in the file and no ``override``, or pixels that are not square.
    """
    if override is not None:
        return override
    found = image_mpp(path)
    if found is None:
        raise ImageError(
            f"{path}: the image has no microns-per-pixel metadata (TIFF resolution tags, PNG pHYs); pass --mpp"
        )
    mx, my = found
    if abs(mx / my - 1.0) > 0.01:
        raise ImageError(f"{path}: pixels are not square ({mx:.4g} x {my:.4g} um); pass --mpp to choose one size")
    return mx


def check_resolutions(images: Sequence[Path]) -> None:
    """Refuse, before any work, images whose files state no resolution (``--mpp`` is needed).

    Only the headers are read. Files that cannot be read are left for the run, which
    reports them one by one.

    Raises
    ------
    ValueError
        One line naming the first image without resolution and how many more there are.
    """
    missing = []
    for image in images:
        try:
            if image_mpp(image) is None:
                missing.append(image)
        except Exception:  # unreadable or implausible: reported with the image during the run
            continue
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise ValueError(
            f"{missing[0]}{more}: no microns-per-pixel metadata (TIFF resolution tags, PNG pHYs); pass --mpp"
        )


# --------------------------------------------------------------------------- outputs


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint16 when the ids fit, else uint32."""
    top = int(labels.max()) if labels.size else 0
    return np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def _check_png_fits(path: Path, labels: np.ndarray) -> None:
    if path.suffix == ".png" and label_dtype(labels) != np.uint16:
        raise ImageError(f"{path}: label ids up to {int(labels.max())} do not fit a 16-bit PNG; use --format tif")


def _atomic(path: Path, overwrite: bool, mode: str = "wb") -> Any:
    from nucseg.export.result import atomic_writer

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_writer(path, overwrite=overwrite, mode=mode)


def write_labels(path: Path, labels: np.ndarray, mpp: float, *, overwrite: bool = False) -> Path:
    """Write labels as a TIFF (uint16 or uint32) or a 16-bit PNG, with their resolution.

    Parameters
    ----------
    path : Path
        ``.tif`` (resolution tags in pixels per centimetre, zlib) or ``.png`` (pHYs).
    labels : ndarray of int, shape (H, W)
    mpp : float
        Microns per pixel.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ImageError
        A PNG for ids that need more than 16 bits.
    """
    dtype = label_dtype(labels)
    data = labels.astype(dtype)
    if path.suffix == ".png":
        from PIL import Image

        _check_png_fits(path, labels)
        with _atomic(path, overwrite) as fh:
            Image.fromarray(data).save(fh, format="PNG", dpi=(25400.0 / mpp, 25400.0 / mpp))
        return path
    import io

    import tifffile

    per_cm = 1e4 / mpp
    buf = io.BytesIO()  # tifffile wants a named file; the temporary one is a bare descriptor
    tifffile.imwrite(
        buf, data, photometric="minisblack", compression="zlib", resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER", metadata=None,
    )
    with _atomic(path, overwrite) as fh:
        fh.write(buf.getvalue())
    return path


def nucleus_table(measurements: dict[str, np.ndarray], mpp: float) -> Any:
    """Arrow table of :func:`~nucseg.morphometrics.measure_nuclei` with centroids in um.

    ``y_um, x_um`` are measured from the image's top-left corner to the centroid (pixel
    centres), as in the slide runner's table.
    """
    import pyarrow as pa

    from nucseg.morphometrics import COLUMNS

    cols: dict[str, Any] = {}
    for c in COLUMNS:
        cols[c] = measurements[c]
        if c == "centroid_x_px":
            cols["y_um"] = (measurements["centroid_y_px"] + 0.5) * mpp
            cols["x_um"] = (measurements["centroid_x_px"] + 0.5) * mpp
    cols["label"] = np.asarray(cols["label"], np.uint32)
    return pa.Table.from_pydict(cols)


def iter_label_features(
    labels: np.ndarray, measurements: dict[str, np.ndarray], *, name: str = ""
) -> Iterator[dict[str, Any]]:
    """One QuPath GeoJSON detection per nucleus of ``labels``, in image pixels.

    Outlines follow the pixel edges (the exporter's :func:`~nucseg.export.geojson.trace_rings`),
    so re-rasterising them gives the labels back.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    measurements : dict of str to ndarray
        :func:`~nucseg.morphometrics.measure_nuclei` of ``labels``: one feature per row,
        with the row's measurements.
    name : str
        Makes the feature ids (UUIDs) differ between images.
    """
    from nucseg.export.geojson import _NOT_MEASUREMENTS, _measurements, rings_to_geometry, trace_rings

    ids = measurements["label"]
    saddles: set[int] = set()
    rings = trace_rings(labels, ids, saddles)
    cols = [c for c in measurements if c not in _NOT_MEASUREMENTS]
    for k, lab in enumerate(ids.tolist()):
        geom = rings_to_geometry(rings[lab], repair=lab in saddles)
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, f"{name}:{lab}")),
            "geometry": geom,
            "properties": {
                "objectType": "detection",
                "name": f"nucleus {lab}",
                "nucleus_id": lab,
                "measurements": _measurements(measurements, cols, k),
            },
        }


def outline_overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``rgb`` with each nucleus's inner boundary pixels in green."""
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = _OUTLINE
    return out


def _write_png(path: Path, rgb: np.ndarray, mpp: float, overwrite: bool) -> None:
    from PIL import Image

    with _atomic(path, overwrite) as fh:
        Image.fromarray(rgb).save(fh, format="PNG", dpi=(25400.0 / mpp, 25400.0 / mpp))


def _write_table(path: Path, table: Any, overwrite: bool) -> None:
    with _atomic(path, overwrite) as fh:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, fh)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, fh)


# --------------------------------------------------------------------------- one image


def segment_and_measure(
    rgb: np.ndarray, model: Any, *, mpp: float, lam: float | None = None, threshold: float | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`nucseg.segment` of ``rgb`` and :func:`~nucseg.morphometrics.measure_nuclei` of its labels.

    ``mean_prob`` comes from the network's map, resampled to the image's grid when ``mpp``
    is not the model's resolution (the map is at the model's, the labels at the image's).
    """
    import nucseg
    from nucseg.morphometrics import measure_nuclei

    labels, prob = nucseg.segment(rgb, model, lam=lam, threshold=threshold, mpp=mpp, return_map=True)
    if prob.shape != labels.shape:
        from skimage.transform import resize

        prob = resize(prob, labels.shape, order=1, preserve_range=True, anti_aliasing=False)
    return labels, measure_nuclei(labels, rgb, prob.astype(np.float32, copy=False), mpp=mpp)


def segment_image(job: Job, model: Any, *, mpp: float | None, overwrite: bool) -> ImageResult:
    """Read, segment and write one image; errors propagate (see :func:`segment_files`)."""
    from nucseg.export.geojson import write_feature_collection

    t0 = time.perf_counter()
    rgb = read_image(job.image)
    um = resolve_mpp(job.image, mpp)
    labels, meas = segment_and_measure(rgb, model, mpp=um)
    out = job.outputs
    _check_png_fits(out["labels"], labels)  # before the other outputs are written
    if "geojson" in out:
        feats = iter_label_features(labels, meas, name=job.image.name)
        out["geojson"].parent.mkdir(parents=True, exist_ok=True)
        write_feature_collection(feats, out["geojson"], overwrite=overwrite)
    if "table" in out:
        _write_table(out["table"], nucleus_table(meas, um), overwrite)
    if "overlay" in out:
        _write_png(out["overlay"], outline_overlay(rgb, labels), um, overwrite)
    # Labels last: with every file renamed into place whole, they mark the image finished.
    write_labels(out["labels"], labels, um, overwrite=overwrite)
    n = int(meas["label"].size)
    return ImageResult(
        image=job.image,
        status="done",
        nuclei=n,
        mean_area_um2=float(meas["area_um2"].mean()) if n else math.nan,
        seconds=time.perf_counter() - t0,
        mpp=um,
        outputs=dict(out),
    )


def _existing_result(job: Job) -> ImageResult:
    """Summary row of an image skipped by ``resume``, read back from its label file."""
    result = ImageResult(image=job.image, status="skipped", outputs=dict(job.outputs))
    path = job.outputs["labels"]
    try:
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                labels = np.asarray(im)
        else:
            import tifffile

            labels = tifffile.imread(path)
        found = image_mpp(path)
    except Exception as exc:  # the row is informative only; the files stay as they are
        logger.warning("%s: could not read back %s: %s", job.image, path, exc)
        return result
    areas = np.bincount(labels.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    result.nuclei = int(areas.size)
    if found is not None:
        result.mpp = found[0]
        result.mean_area_um2 = float(areas.mean() * found[0] * found[1]) if areas.size else math.nan
    return result


# --------------------------------------------------------------------------- many images

#: Exceptions that fail one image and let the others go on.
_PER_IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, RuntimeError, MemoryError)


def _failure(image: Path, exc: BaseException) -> ImageResult:
    msg = str(exc) or type(exc).__name__
    if str(image) not in msg:
        msg = f"{image}: {msg}"
    return ImageResult(image=image, status="failed", error=" ".join(msg.split()))


def segment_files(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    model: Any = None,
    recursive: bool = False,
    label_format: str = "tif",
    geojson: bool = False,
    table: str | None = None,
    overlay: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    precision: str = "auto",
    backend: str = "auto",
    progress: bool = False,
    on_result: Callable[[ImageResult], None] | None = None,
) -> list[ImageResult]:
    """Segment every image of some files and folders into ``out``.

    Everything that can be checked is checked before the first image is segmented
    (paths, options, the model, existing outputs). Then an image that cannot be read or
    segmented fails alone: its :class:`ImageResult` says why and the others go on.

    Parameters
    ----------
    paths : sequence of path-like
        Image files and folders (see :func:`find_images`).
    out : path-like
        Output folder, created if needed. It may be an input folder: inputs are never
        replaced, and files named like outputs are not taken as inputs.
    mpp : float, optional
        Microns per pixel of every image, overriding the files' own. Without it, images
        lacking resolution metadata are refused before any work.
    model : NucleusModel, path or bundled model name, optional
        The bundled default model when None (``"multiorgan"``, ``"default+multiorgan"``:
        the others, :data:`nucseg.inference.BUNDLED_MODELS`).
    recursive : bool
        Look into sub-folders; outputs mirror them.
    label_format : {"tif", "png"}
        ``"png"`` writes 16-bit PNG labels (an image with more ids fails).
    geojson, overlay : bool
        Also write ``NAME_nuclei.geojson`` and ``NAME_overlay.png``.
    table : {None, "csv", "parquet"}
        Also write the per-nucleus table.
    resume : bool
        Skip images whose outputs all exist, redo the others (their partial outputs
        are replaced).
    overwrite : bool
        Replace existing outputs.
    device, precision, backend : str, optional
        See :func:`nucseg.load_model` (when ``model`` is not already loaded). ``backend``
        ``"auto"``, as in ``nucseg-wsi``, runs the network with ONNX Runtime on the CPU when
        it is installed (float32; the labels of torch within the parity bar).
    progress : bool
        Show a tqdm progress bar.
    on_result : callable, optional
        Called with each :class:`ImageResult` as soon as it is known.

    Returns
    -------
    list of ImageResult
        One per image, in input order; ``summary.csv`` in ``out`` holds the same rows.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        No images, conflicting options, an existing output without ``resume`` or
        ``overwrite``, two images writing the same file, images without resolution
        metadata and no ``mpp``, a bad ``mpp`` or model.

    Examples
    --------
    >>> import nucseg
    >>> rows = nucseg.segment_files(["crops/"], "out/", mpp=0.25, table="csv")  # doctest: +SKIP
    >>> [(r.image.name, r.nuclei) for r in rows]  # doctest: +SKIP
    [('crop1.png', 77), ('crop2.png', 54)]
    """
    from tqdm.auto import tqdm

    from nucseg.inference import NucleusModel, load_model
    from nucseg.wsi.reader import validate_mpp

    out = Path(out)
    if not paths:
        raise ValueError("no images given")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if mpp is not None:
        mpp = validate_mpp(mpp, "mpp")
    images = find_images(paths, recursive=recursive, skip=out)
    if not images:
        shown = ", ".join(str(p) for p in paths)
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {shown}")
    jobs = plan_jobs(images, out, label_format=label_format, geojson=geojson, table=table, overlay=overlay)
    summary = out / SUMMARY_NAME
    check_existing(jobs, summary, resume=resume, overwrite=overwrite)
    if mpp is None:
        check_resolutions([j.image for j in jobs if not (resume and _is_done(j))])
    if not isinstance(model, NucleusModel):
        model = load_model(model, device=device, precision=precision, backend=backend)
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for job in tqdm(jobs, unit="image", disable=not progress, dynamic_ncols=True, desc="segment"):
        if resume and _is_done(job):
            result = _existing_result(job)
        else:
            try:
                result = segment_image(job, model, mpp=mpp, overwrite=overwrite or resume)
            except _PER_IMAGE_ERRORS as exc:
                result = _failure(job.image, exc)
        results.append(result)
        if on_result is not None:
            on_result(result)
    write_summary(summary, results)
    return results


# --------------------------------------------------------------------------- summary


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_summary(path: Path, results: Sequence[ImageResult]) -> None:
    """``summary.csv``: one row per image (:data:`SUMMARY_COLUMNS`), replaced whole."""
    with _atomic(path, True, mode="w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SUMMARY_COLUMNS)
        for r in results:
            w.writerow(_cell(v) for v in (r.image, r.status, r.nuclei, r.mean_area_um2, r.seconds, r.mpp, r.error))


def summary_lines(results: Sequence[ImageResult]) -> list[str]:
    """The summary as an aligned text table, one line per image, then a total line."""
    header = ("image", "nuclei", "mean area um^2", "time s", "status")
    rows = [
        (
            str(r.image),
            "" if r.nuclei is None else str(r.nuclei),
            "" if r.mean_area_um2 is None or math.isnan(r.mean_area_um2) else f"{r.mean_area_um2:.1f}",
            "" if r.seconds is None else f"{r.seconds:.1f}",
            r.status,
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4])] + [row[4]]
        return "  ".join(cells).rstrip()

    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    total = sum(r.nuclei or 0 for r in results)
    tail = (
        f"{len(results)} images: {counts['done']} segmented, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; {total} nuclei"
    )
    return [fmt(header), *(fmt(r) for r in rows), tail]
