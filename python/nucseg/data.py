"""TNBC dataset loading, training targets, patient-wise splits and augmentation.

The TNBC folder layout (Naylor et al. 2017/2018) is::

    root/Slide_XX/XX_N.png   H&E image, RGB or RGBA (alpha dropped)
    root/GT_XX/XX_N.png      binary mask {0, 255}; instances = connected components

Each ``XX`` is one patient; splits always keep a patient's images together.
This module is NumPy/SciPy only (no torch) so it can be used and tested alone.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "AugmentConfig",
    "HED_SCALE",
    "HED_SHIFT",
    "LEGACY_FIELDS",
    "TNBCImage",
    "augment_sample",
    "draw_centre",
    "draw_jpeg",
    "draw_pose",
    "draw_stain",
    "grouped_kfold",
    "hed_to_rgb",
    "instance_distance",
    "jpeg_roundtrip",
    "leave_one_patient_out",
    "load_tnbc",
    "loss_weights",
    "mask_to_instances",
    "read_rgb",
    "rgb_to_hed",
    "stain_jitter",
]

_SLIDE_RE = re.compile(r"^Slide_(\w+)$")


@dataclass(frozen=True)
class TNBCImage:
    """One annotated TNBC image.

    Attributes
    ----------
    patient : str
        Patient / slide identifier (``"01"`` for ``Slide_01``).
    name : str
        File stem, e.g. ``"01_3"``.
    rgb : numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.
    mask : numpy.ndarray
        ``bool`` array of shape ``(H, W)``, True on nuclei.
    labels : numpy.ndarray
        ``int32`` instance labels (connected components of ``mask``), 0 = background.
    """

    patient: str
    name: str
    rgb: np.ndarray
    mask: np.ndarray
    labels: np.ndarray


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``uint8`` RGB, dropping an alpha channel.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (PNG, JPEG, TIFF... anything Pillow reads).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the image is not RGB or RGBA (e.g. greyscale or palette).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            raise ValueError(f"image {path} has mode {im.mode!r}; expected an RGB or RGBA H&E image")
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def _read_binary_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        # A mask saved as RGB(A) is fine only if every channel holds the same binary value.
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
            raise ValueError(f"ground-truth mask {path} is a colour image; expected a binary mask")
        arr = arr[..., 0]
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = values[:8].tolist()
        raise ValueError(
            f"ground-truth mask {path} is not binary: values {shown}{'...' if values.size > 8 else ''}; "
            "expected {0, 255} (or {0, 1})"
        )
    return arr > 0


def mask_to_instances(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Label the connected components of a binary mask.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D boolean (or 0/non-zero) array.
    connectivity : {1, 2}
        1 = 4-connectivity (the TNBC convention: touching nuclei are split by
        background pixels), 2 = 8-connectivity.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels, 0 = background, objects ``1..N``.
    """
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    structure = ndi.generate_binary_structure(2, connectivity)
    labels, _ = ndi.label(mask > 0, structure=structure)
    return labels.astype(np.int32, copy=False)


def load_tnbc(
    root: str | os.PathLike,
    patients: Sequence[str] | None = None,
    *,
    connectivity: int = 1,
) -> list[TNBCImage]:
    """Load the TNBC dataset (``Slide_XX`` images, ``GT_XX`` binary masks).

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding ``Slide_XX`` and ``GT_XX`` sub-folders.
    patients : sequence of str, optional
        Patient ids to load (e.g. ``["01", "02"]``); all when None.
    connectivity : {1, 2}
        Connectivity used to turn the binary masks into instances.

    Returns
    -------
    list of TNBCImage
        Sorted by patient, then by image number.

    Raises
    ------
    FileNotFoundError
        If ``root`` or a ``GT_XX`` folder is missing, or no ``Slide_XX`` folder exists.
    ValueError
        If image and mask names do not match, shapes differ, a mask is not binary,
        an image is not RGB/RGBA, or a requested patient does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"TNBC folder not found: {root}")
    slides = {}
    for child in sorted(root.iterdir()):
        m = _SLIDE_RE.match(child.name)
        if m and child.is_dir():
            slides[m.group(1)] = child
    if not slides:
        raise FileNotFoundError(f"no Slide_XX folders in {root}; expected the TNBC layout Slide_XX/ + GT_XX/")
    if patients is not None:
        missing = sorted(set(patients) - set(slides))
        if missing:
            raise ValueError(f"patients {missing} not found in {root}; available: {sorted(slides)}")
        slides = {p: slides[p] for p in slides if p in set(patients)}

    out: list[TNBCImage] = []
    for patient, slide_dir in slides.items():
        gt_dir = root / f"GT_{patient}"
        if not gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder {gt_dir} missing for {slide_dir}")
        images = {p.stem: p for p in slide_dir.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff")}
        masks = {p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff")}
        if set(images) != set(masks):
            only_img = sorted(set(images) - set(masks))
            only_gt = sorted(set(masks) - set(images))
            raise ValueError(
                f"image and ground-truth names differ for patient {patient}: "
                f"images without mask {only_img}, masks without image {only_gt}"
            )
        for stem in sorted(images, key=_natural_key):
            rgb = read_rgb(images[stem])
            mask = _read_binary_mask(masks[stem])
            if mask.shape != rgb.shape[:2]:
                raise ValueError(
                    f"mask {masks[stem]} has shape {mask.shape} but image {images[stem]} has {rgb.shape[:2]}"
                )
            out.append(TNBCImage(patient, stem, rgb, mask, mask_to_instances(mask, connectivity)))
    return out


def _natural_key(stem: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


# --------------------------------------------------------------------------- splits


def leave_one_patient_out(groups: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-patient-out splits (the paper's protocol).

    Parameters
    ----------
    groups : sequence of str
        Patient id of each sample.

    Returns
    -------
    list of (train_idx, test_idx)
        One split per patient, in sorted patient order.
    """
    groups = np.asarray(groups)
    return [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in sorted(set(groups.tolist()))]


def grouped_kfold(groups: Sequence[str], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits that keep each patient's images in one fold.

    Patients are shuffled with ``seed`` and dealt to the fold with the fewest
    images so far (largest patients first), which balances fold sizes.

    Parameters
    ----------
    groups : sequence of str
        Patient id of each sample.
    k : int
        Number of folds, ``2 <= k <= number of patients``.
    seed : int
        Shuffle seed.

    Returns
    -------
    list of (train_idx, test_idx)
    """
    groups = np.asarray(groups)
    uniq = sorted(set(groups.tolist()))
    if not 2 <= k <= len(uniq):
        raise ValueError(f"k must be between 2 and the number of patients ({len(uniq)}), got {k}")
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    order.sort(key=lambda g: -int(np.sum(groups == g)))  # stable: ties keep the shuffled order
    folds: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for g in order:
        j = int(np.argmin(sizes))
        folds[j].append(g)
        sizes[j] += int(np.sum(groups == g))
    return [
        (np.flatnonzero(~np.isin(groups, f)), np.flatnonzero(np.isin(groups, f))) for f in folds
    ]


# --------------------------------------------------------------------------- targets


def instance_distance(labels: np.ndarray) -> np.ndarray:
    """Distance to the background inside each nucleus, normalised to 1 at its centre.

    Parameters
    ----------
    labels : numpy.ndarray
        2-D instance labels, 0 = background.

    Returns
    -------
    numpy.ndarray
        ``float32`` map in ``[0, 1]``; 0 on background, 1 at each nucleus' most
        interior pixel. Touching nuclei get a valley between them, which is what
        the dynamics watershed needs to split them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    # Distance to the nearest pixel that is background or another label.
    dist = np.zeros(labels.shape, np.float32)
    for sl, lab in _object_slices(labels):
        sub = np.pad(labels[sl] == lab, 1)
        d = ndi.distance_transform_edt(sub)[1:-1, 1:-1]
        inside = labels[sl] == lab
        if d.max() > 0:
            dist[sl][inside] = (d[inside] / d.max()).astype(np.float32)
    return dist


def _object_slices(labels: np.ndarray) -> list[tuple[tuple[slice, slice], int]]:
    objs = ndi.find_objects(labels)
    return [(sl, i + 1) for i, sl in enumerate(objs) if sl is not None]


def loss_weights(labels: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0, balance: bool = True) -> np.ndarray:
    """Per-pixel weights of the weighted log loss.

    Class-balancing weights plus U-Net-style emphasis on background pixels that
    lie between two close nuclei: ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``
    with ``d1``, ``d2`` the distances to the nearest and second nearest nucleus.

    Parameters
    ----------
    labels : numpy.ndarray
        2-D instance labels, 0 = background.
    w0, sigma : float
        Strength and width (px) of the between-nuclei term.
    balance : bool
        Weight each class by ``0.5 / frequency`` so both classes count equally.

    Returns
    -------
    numpy.ndarray
        ``float32`` weights, same shape as ``labels``, mean roughly 1-2.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    fg = labels > 0
    w = np.ones(labels.shape, np.float32)
    if balance:
        frac = float(fg.mean())
        if 0.0 < frac < 1.0:
            w[fg] = 0.5 / frac
            w[~fg] = 0.5 / (1.0 - frac)
    if w0 > 0:
        d1 = np.full(labels.shape, np.inf, np.float32)
        d2 = np.full(labels.shape, np.inf, np.float32)
        margin = int(math.ceil(3 * sigma))
        h, wd = labels.shape
        for sl, lab in _object_slices(labels):
            y0, y1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
            x0, x1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, wd)
            win = (slice(y0, y1), slice(x0, x1))
            d = ndi.distance_transform_edt(labels[win] != lab).astype(np.float32)
            a, b = d1[win], d2[win]
            d2[win] = np.where(d < a, a, np.minimum(b, d))
            d1[win] = np.minimum(a, d)
        between = np.where(np.isfinite(d2), np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0.0)
        w += (w0 * between * ~fg).astype(np.float32)
    return w


# --------------------------------------------------------------------------- augmentation


#: H, E, D jitter defaults: the ranges measured on the training sources by
#: scripts/stain_stats.py (docs/DATA.md, "Augmentation").
HED_SCALE = (1.14, 0.92, 0.95)
HED_SHIFT = (0.015, 0.011, 0.008)

#: What a field missing from a saved recipe means (:meth:`AugmentConfig.from_dict`): the value
#: that reproduces what training did before the field existed, not today's default.
LEGACY_FIELDS: dict[str, object] = {"stain": 0.15, "hed_scale": (0.0, 0.0, 0.0), "hed_shift": (0.0, 0.0, 0.0), "jpeg_p": 0.0}


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training crops (checked on construction).

    Colour transformations apply to the image only, in this order: stain jitter, brightness
    and contrast, blur, JPEG artefacts.

    Attributes
    ----------
    flip, rotate : bool
        Random mirror; random rotation by any angle (covers the 90-degree ones).
    scale : tuple of float
        Log-uniform scale jitter range (1 = no zoom).
    elastic_alpha, elastic_sigma : float
        Elastic deformation amplitude (px) and smoothness (px); alpha 0 disables.
    blur_p, blur_sigma : float
        Probability and maximum sigma (px) of Gaussian blur; sigma ~ U(0.3, blur_sigma).
    hed_scale, hed_shift : tuple of float
        HED jitter in optical-density space (Tellez et al. 2018): the haematoxylin, eosin
        and DAB densities (:func:`rgb_to_hed`) become ``od * alpha + beta``
        per channel, with ``ln alpha ~ U(-hed_scale, hed_scale)`` (a factor and its inverse
        equally likely) and ``beta ~ U(-hed_shift, hed_shift)``. The defaults span the
        measured differences between the training sources (:data:`HED_SCALE`,
        :data:`HED_SHIFT`); zeros disable.
    stain : float
        The former stain jitter, kept for recipes saved before ``hed_scale`` (0.15 then):
        every density scaled by ``1 + U(-stain, stain)`` and shifted by
        ``0.05 * U(-stain, stain)``. With the HED jitter on too, the factors multiply and the
        shifts add.
    brightness, contrast : float
        Brightness shift and contrast factor jitter amplitudes.
    jpeg_p : float
        Probability of a JPEG compression round trip (Pillow, 4:2:0 chroma subsampling).
    jpeg_quality : tuple of int
        Inclusive range of the JPEG quality drawn uniformly, ``1 <= lo <= hi <= 100``.

    Notes
    -----
    Saved recipes are read back with :meth:`from_dict`, which gives a field they lack its
    :data:`LEGACY_FIELDS` value: a model file written before the HED and JPEG fields
    existed still describes what its training did.
    """

    flip: bool = True
    rotate: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    elastic_alpha: float = 6.0
    elastic_sigma: float = 12.0
    blur_p: float = 0.2
    blur_sigma: float = 1.2
    stain: float = 0.0
    brightness: float = 0.06
    contrast: float = 0.25
    hed_scale: tuple[float, float, float] = HED_SCALE
    hed_shift: tuple[float, float, float] = HED_SHIFT
    jpeg_p: float = 0.25
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _checked_field(f.name, getattr(self, f.name)))

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all (plain random crops)."""
        return cls(flip=False, rotate=False, scale=(1.0, 1.0), elastic_alpha=0.0, blur_p=0.0, blur_sigma=0.0,
                   stain=0.0, brightness=0.0, contrast=0.0, hed_scale=(0.0, 0.0, 0.0), hed_shift=(0.0, 0.0, 0.0),
                   jpeg_p=0.0)

    @property
    def stain_on(self) -> bool:
        """Whether any stain jitter (the former one or the HED one) is on."""
        return self.stain > 0 or any(self.hed_scale) or any(self.hed_shift)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (tuples as lists); :meth:`from_dict` reads it back."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        """A saved augmentation recipe; fields it lacks take their :data:`LEGACY_FIELDS` value.

        Raises ``ValueError`` naming the field for an unknown name or an invalid value.
        """
        _check_names(d)
        return cls(**{**LEGACY_FIELDS, **d})

    def merged(self, changes: dict) -> "AugmentConfig":
        """A copy with the fields in ``changes`` replaced, checked.

        Raises ``ValueError`` naming the field for an unknown name, a wrong type, a
        negative amount, a probability outside [0, 1], a scale range that is not
        ``0 < lo <= hi`` or a JPEG quality range that is not ``1 <= lo <= hi <= 100``.
        """
        _check_names(changes)
        return replace(self, **changes)


def _check_names(changes: object) -> None:
    if not isinstance(changes, dict):
        raise ValueError(f"augment changes must be a dict of field: value, got {type(changes).__name__}")
    known = {f.name for f in fields(AugmentConfig)}
    for key in changes:
        if key not in known:
            raise ValueError(f"unknown augment field {key!r}; expected one of {sorted(known)}")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _checked_field(key: str, value: object) -> object:
    """``value`` of AugmentConfig field ``key`` in its canonical type, or ValueError naming the field."""
    if key in ("flip", "rotate"):
        if not isinstance(value, bool):
            raise ValueError(f"augment {key} must be true or false, got {value!r}")
        return value
    if key == "scale":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))
        if not ok or not 0 < value[0] <= value[1]:
            raise ValueError(f"augment scale must be [lo, hi] with 0 < lo <= hi, got {value!r}")
        return (float(value[0]), float(value[1]))
    if key in ("hed_scale", "hed_shift"):
        ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) and v >= 0 for v in value)
        if not ok:
            raise ValueError(f"augment {key} must be [h, e, d]: three finite numbers >= 0, got {value!r}")
        return tuple(float(v) for v in value)
    if key == "jpeg_quality":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        if not ok or not 1 <= value[0] <= value[1] <= 100:
            raise ValueError(f"augment jpeg_quality must be [lo, hi] integers with 1 <= lo <= hi <= 100, got {value!r}")
        return (int(value[0]), int(value[1]))
    if not _is_number(value) or value < 0:
        raise ValueError(f"augment {key} must be a finite number >= 0, got {value!r}")
    if key in ("blur_p", "jpeg_p") and value > 1:
        raise ValueError(f"augment {key} is a probability in [0, 1], got {value!r}")
    return float(value)


def draw_pose(rng: np.random.Generator, aug: AugmentConfig) -> tuple[float, float, bool]:
    """Random zoom ``s`` (> 1 zooms in), rotation ``theta`` (radians) and mirror of one crop."""
    lo, hi = aug.scale
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    theta = float(rng.uniform(0, 2 * np.pi)) if aug.rotate else 0.0
    return s, theta, bool(aug.flip and rng.random() < 0.5)


def draw_centre(rng: np.random.Generator, shape: tuple[int, int], size: int, s: float) -> tuple[float, float]:
    """Random crop centre such that the un-rotated crop (side ``size / s`` in the source)
    mostly lies inside an image of ``shape``; pixel-index coordinates (pixel i covers
    [i - 0.5, i + 0.5])."""
    h, w = shape
    half = min(size / (2 * s), h / 2, w / 2)
    cy = rng.uniform(half - 0.5, h - half - 0.5) if h > 2 * half else (h - 1) / 2
    cx = rng.uniform(half - 0.5, w - half - 0.5) if w > 2 * half else (w - 1) / 2
    return float(cy), float(cx)


def _sampling_grid(
    rng: np.random.Generator, shape: tuple[int, int], size: int, aug: AugmentConfig
) -> np.ndarray:
    """Source coordinates (2, size, size) for one random crop."""
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    s, theta, flip = draw_pose(rng, aug)
    if flip:
        xx = -xx
    ct, st = math.cos(theta), math.sin(theta)
    # Output pixel spacing 1/s in the source: s > 1 zooms in.
    ys = (ct * yy - st * xx) / s
    xs = (st * yy + ct * xx) / s
    if aug.elastic_alpha > 0:
        for arr in (ys, xs):
            noise = rng.standard_normal((size, size)).astype(np.float32)
            field = ndi.gaussian_filter(noise, aug.elastic_sigma, mode="reflect")
            field *= aug.elastic_alpha / (field.std() + 1e-8)
            arr += field
    cy, cx = draw_centre(rng, shape, size, s)
    return np.stack([ys + cy, xs + cx]).astype(np.float32)


def draw_stain(rng: np.random.Generator, aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``alpha`` and shift ``beta`` ``(3,)`` of the H, E, D densities of one crop.

    Draws nothing when ``aug.stain_on`` is False (then ``alpha = 1``, ``beta = 0``). The
    former ``stain`` jitter is drawn first, as before, so an old recipe keeps its random stream.
    """
    alpha, beta = np.ones(3), np.zeros(3)
    if aug.stain > 0:
        alpha = 1 + rng.uniform(-aug.stain, aug.stain, 3)
        beta = rng.uniform(-aug.stain, aug.stain, 3) * 0.05
    if any(aug.hed_scale) or any(aug.hed_shift):
        alpha = alpha * np.exp(rng.uniform(-1, 1, 3) * np.asarray(aug.hed_scale))
        beta = beta + rng.uniform(-1, 1, 3) * np.asarray(aug.hed_shift)
    return alpha, beta


def draw_jpeg(rng: np.random.Generator, aug: AugmentConfig) -> int:
    """JPEG quality of one crop's compression round trip, or 0 for none."""
    if aug.jpeg_p > 0 and rng.random() < aug.jpeg_p:
        lo, hi = aug.jpeg_quality
        return int(rng.integers(lo, hi + 1))
    return 0


# scikit-image's separate_stains/combine_stains scale: densities are ln(absorbance) / ln(1e-6).
_LOG_ADJUST = math.log(1e-6)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities of an RGB image in [0, 1], not clamped at 0.

    :func:`skimage.color.rgb2hed` (Ruifrok & Johnston matrix, its units) without its final
    ``max(., 0)``: with it, a pixel with a negative density (much of a pale slide's eosin)
    does not come back from :func:`hed_to_rgb`; without it the pair is the identity.
    """
    from skimage.color import hed_from_rgb

    od = np.log(np.maximum(rgb, 1e-6)) / _LOG_ADJUST
    return od @ hed_from_rgb


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed` (:func:`skimage.color.hed2rgb`), clipped to [0, 1]."""
    from skimage.color import rgb_from_hed

    return np.clip(np.exp((hed @ rgb_from_hed) * _LOG_ADJUST), 0, 1)


def stain_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E, D optical densities of an RGB image in [0, 1].

    ``hed_to_rgb(rgb_to_hed(rgb) * alpha + beta)``: ``float32`` ``(H, W, 3)``. With
    ``alpha = 1, beta = 0`` the identity (up to rounding, and pixels at 0 read as 1e-6).
    """
    hed = rgb_to_hed(np.clip(np.asarray(rgb, np.float64), 0, 1))
    return hed_to_rgb(hed * np.asarray(alpha) + np.asarray(beta)).astype(np.float32)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Compress an RGB image in [0, 1] as JPEG with Pillow and decode it.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` float image in [0, 1] (rounded to 8 bits first, as a scanner stores it).
    quality : int
        JPEG quality, 1-100 (Pillow's default 4:2:0 chroma subsampling).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(H, W, 3)`` in [0, 1], on the 1/255 grid.
    """
    import io

    from PIL import Image

    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}")
    u8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def augment_sample(
    rng: np.random.Generator,
    rgb: np.ndarray,
    targets: Sequence[np.ndarray],
    size: int,
    aug: AugmentConfig,
    *,
    nearest: Sequence[bool] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw one augmented ``size x size`` crop of an image and its target maps.

    Geometry (flip, rotation, scale, elastic) is one resampling grid applied to
    the image and every target; colour (stain, brightness, contrast, blur, JPEG) is
    applied to the image only.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (seeded by the caller).
    rgb : numpy.ndarray
        ``uint8`` image ``(H, W, 3)``.
    targets : sequence of numpy.ndarray
        2-D maps of shape ``(H, W)`` to warp with the image.
    size : int
        Crop side in pixels.
    aug : AugmentConfig
        What to randomise.
    nearest : sequence of bool, optional
        Per target: nearest-neighbour resampling (masks) instead of bilinear.

    Returns
    -------
    (numpy.ndarray, list of numpy.ndarray)
        ``float32`` image ``(size, size, 3)`` in ``[0, 1]`` and the warped targets.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    nearest = [False] * len(targets) if nearest is None else list(nearest)
    grid = _sampling_grid(rng, rgb.shape[:2], size, aug)
    img = np.stack(
        [ndi.map_coordinates(rgb[..., c].astype(np.float32), grid, order=1, mode="mirror") for c in range(3)],
        axis=-1,
    ) / 255.0
    warped = [
        ndi.map_coordinates(np.asarray(t, np.float32), grid, order=0 if nn else 1, mode="mirror")
        for t, nn in zip(targets, nearest)
    ]
    if aug.stain_on:
        img = stain_jitter(img, *draw_stain(rng, aug))
    if aug.contrast > 0 or aug.brightness > 0:
        f = 1 + rng.uniform(-aug.contrast, aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness)
        img = (img - 0.5) * f + 0.5 + b
    if aug.blur_p > 0 and rng.random() < aug.blur_p:
        sig = rng.uniform(0.3, aug.blur_sigma)
        img = ndi.gaussian_filter(img, (sig, sig, 0))
    img = np.clip(img, 0, 1).astype(np.float32)
    quality = draw_jpeg(rng, aug)
    if quality:
        img = jpeg_roundtrip(img, quality)
    return img, warped
