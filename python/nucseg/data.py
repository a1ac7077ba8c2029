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
    "TNBCImage",
    "augment_sample",
    "draw_centre",
    "draw_pose",
    "grouped_kfold",
    "instance_distance",
    "leave_one_patient_out",
    "load_tnbc",
    "loss_weights",
    "mask_to_instances",
    "read_rgb",
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


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training crops.

    Attributes
    ----------
    flip, rotate : bool
        Random mirror; random rotation by any angle (covers the 90-degree ones).
    scale : tuple of float
        Log-uniform scale jitter range (1 = no zoom).
    elastic_alpha, elastic_sigma : float
        Elastic deformation amplitude (px) and smoothness (px); alpha 0 disables.
    blur_p, blur_sigma : float
        Probability and maximum sigma of Gaussian blur.
    stain : float
        H&E stain jitter: each haematoxylin/eosin/DAB optical density is scaled by
        ``1 + U(-stain, stain)`` and shifted by ``U(-stain, stain) * 0.05``.
    brightness, contrast : float
        Brightness shift and contrast factor jitter amplitudes.
    """

    flip: bool = True
    rotate: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    elastic_alpha: float = 6.0
    elastic_sigma: float = 12.0
    blur_p: float = 0.2
    blur_sigma: float = 1.2
    stain: float = 0.15
    brightness: float = 0.06
    contrast: float = 0.12

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all (plain random crops)."""
        return cls(False, False, (1.0, 1.0), 0.0, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def merged(self, changes: dict) -> "AugmentConfig":
        """A copy with the fields in ``changes`` replaced, checked.

        Raises ``ValueError`` naming the field for an unknown name, a wrong type, a
        negative amount, a probability outside [0, 1] or a scale range that is not
        ``0 < lo <= hi``.
        """
        if not isinstance(changes, dict):
            raise ValueError(f"augment changes must be a dict of field: value, got {type(changes).__name__}")
        known = {f.name for f in fields(self)}
        clean: dict = {}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown augment field {key!r}; expected one of {sorted(known)}")
            if key in ("flip", "rotate"):
                if not isinstance(value, bool):
                    raise ValueError(f"augment {key} must be true or false, got {value!r}")
            elif key == "scale":
                ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
                if not ok or not 0 < value[0] <= value[1]:
                    raise ValueError(f"augment scale must be [lo, hi] with 0 < lo <= hi, got {value!r}")
                value = (float(value[0]), float(value[1]))
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"augment {key} must be a finite number >= 0, got {value!r}")
                if key == "blur_p" and value > 1:
                    raise ValueError(f"augment blur_p is a probability in [0, 1], got {value!r}")
                value = float(value)
            clean[key] = value
        return replace(self, **clean)


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


def _stain_jitter(rgb: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(rgb, 0, 1))
    alpha = 1 + rng.uniform(-amount, amount, 3)
    beta = rng.uniform(-amount, amount, 3) * 0.05
    return np.clip(hed2rgb(hed * alpha + beta), 0, 1).astype(np.float32)


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
    the image and every target; colour (stain, brightness, contrast, blur) is
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
    if aug.stain > 0:
        img = _stain_jitter(img, rng, aug.stain)
    if aug.contrast > 0 or aug.brightness > 0:
        f = 1 + rng.uniform(-aug.contrast, aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness)
        img = (img - 0.5) * f + 0.5 + b
    if aug.blur_p > 0 and rng.random() < aug.blur_p:
        sig = rng.uniform(0.3, aug.blur_sigma)
        img = ndi.gaussian_filter(img, (sig, sig, 0))
    return np.clip(img, 0, 1).astype(np.float32), warped
