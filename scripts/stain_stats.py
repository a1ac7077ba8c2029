"""Stain and colour statistics of the training sources, and the augmentation ranges they imply (issue 17).

Per image, over tissue pixels (glass excluded), the haematoxylin, eosin and DAB optical
densities of :func:`nucseg.data.rgb_to_hed` (:func:`skimage.color.rgb2hed` without its clamp
at 0, as the HED jitter of :class:`nucseg.data.AugmentConfig` sees them; units: natural-log
absorbance / ln(1e6), i.e. base-10 OD / 6), and the RGB brightness and contrast (mean and standard deviation of grey in [0, 1]
over the whole image). Printed per source: the median over its images, and the range over its
images in brackets.

The HED ranges come from the pooled 10th and 90th percentiles of each source (a fixed
subsample of every image's tissue pixels), per channel and for every ordered pair of sources
(s, t): the spread ratio ``alpha = (p90_t - p10_t) / (p90_s - p10_s)`` (how much s's densities
must be scaled to span t's) and the floor difference ``p10_t - p10_s`` (how far they must be
shifted). ``hed_scale`` is the largest ``|ln alpha|`` (the jitter draws ``ln alpha``
uniformly, so that a factor and its inverse are as likely), ``hed_shift`` the largest floor
difference: a draw can move any source's images into any other's range. The last lines check
what the HED jitter alone does to each source's RGB brightness and contrast at the ends of
that scale range.

Only training sources are read; the MoNuSeg 2018 test images (kept under ``eval_only/``) never are.

    PYTHONPATH=python python scripts/stain_stats.py --cache /work/data_cache --tnbc /work/shared/data/tnbc
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: Tissue: summed base-10 RGB optical density above this (white glass is about 0.05-0.1).
TISSUE_OD10 = 0.3
QUANTILES = (10, 90)
#: Pixels per image kept for the pooled per-source percentiles (a fixed, seeded subsample).
POOL_PIXELS = 20_000


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """True where an ``(H, W, 3)`` ``uint8`` image is tissue rather than glass."""
    od10 = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    return od10.sum(axis=-1) > TISSUE_OD10


def image_stats(rgb: np.ndarray, rng: np.random.Generator) -> tuple[dict[str, float], np.ndarray]:
    """Per-image statistics and a subsample of its tissue pixels' HED densities ``(n, 3)``."""
    from nucseg.data import rgb_to_hed

    hed = rgb_to_hed(rgb / 255.0)
    tissue = tissue_mask(rgb)
    if not tissue.any():  # an all-glass image: keep every pixel rather than none
        tissue = np.ones(rgb.shape[:2], bool)
    px = hed[tissue]
    grey = rgb.astype(np.float64).mean(axis=-1) / 255.0
    stats = {"tissue": float(tissue.mean()), "brightness": float(grey.mean()), "contrast": float(grey.std())}
    for c, name in enumerate("HED"):
        stats[f"{name}_mean"] = float(px[:, c].mean())
        stats[f"{name}_std"] = float(px[:, c].std())
    keep = rng.choice(len(px), size=min(POOL_PIXELS, len(px)), replace=False)
    return stats, px[keep]


def pair_maps(quantiles: dict[str, np.ndarray]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Spread ratio and floor difference per channel for every ordered pair of sources.

    Parameters
    ----------
    quantiles : dict of str to numpy.ndarray
        Per source, ``(2, 3)``: its low and high percentile of H, E and D.

    Returns
    -------
    dict of (str, str) to (numpy.ndarray, numpy.ndarray)
        ``(s, t)``: ``(3,)`` ratio ``(hi_t - lo_t) / (hi_s - lo_s)`` and ``(3,)`` ``lo_t - lo_s``.
    """
    out = {}
    for s, t in itertools.permutations(quantiles, 2):
        (lo_s, hi_s), (lo_t, hi_t) = quantiles[s], quantiles[t]
        out[s, t] = ((hi_t - lo_t) / np.maximum(hi_s - lo_s, 1e-9), lo_t - lo_s)
    return out


def hed_ranges(quantiles: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Half-widths of ``ln alpha`` and of the shift that cover every pair of sources (:func:`pair_maps`).

    Parameters
    ----------
    quantiles : dict of str to numpy.ndarray
        Per source, ``(2, 3)``: its low and high percentile of H, E and D.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(3,)`` half-widths of ``ln alpha`` and of the shift.
    """
    maps = pair_maps(quantiles).values()
    scale = np.max([np.abs(np.log(alpha)) for alpha, _ in maps], axis=0)
    shift = np.max([np.abs(floor) for _, floor in maps], axis=0)
    return scale, shift


def rgb_after_hed(rgb: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """Brightness and contrast of ``rgb`` after scaling its H, E, D densities by ``alpha``."""
    from nucseg.data import stain_jitter

    grey = stain_jitter(rgb / 255.0, alpha, np.zeros(3)).mean(axis=-1)
    return float(grey.mean()), float(grey.std())


def load_sources(cache: Path, tnbc: Path) -> Iterable[tuple[str, list[np.ndarray]]]:
    """``(source, images)`` for TNBC and every training source of the cache, at native resolution."""
    from nucseg.data import load_tnbc
    from nucseg.datasets import SOURCES, is_monuseg_test, load_source

    yield "tnbc", [im.rgb for im in load_tnbc(tnbc)]
    for name, src in SOURCES.items():
        if src.evaluation_only or not (cache / name / "manifest.json").is_file():
            continue
        images = load_source(cache, name)
        assert not any(is_monuseg_test(im.name) for im in images), "a MoNuSeg test image in a training source"
        yield name, [im.rgb for im in images]


def _fmt(values: list[float], digits: int = 3) -> str:
    v = np.asarray(values)
    return f"{np.median(v):.{digits}f} [{v.min():.{digits}f}-{v.max():.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="converted cache (scripts/nucseg_data.py)")
    ap.add_argument("--tnbc", type=Path, required=True, help="TNBC folder (Slide_XX/, GT_XX/)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pixel subsample")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    cols = ["H_mean", "H_std", "E_mean", "E_std", "D_mean", "brightness", "contrast"]
    print("| source | images | " + " | ".join(cols) + " | pooled H p10-p90 | pooled E p10-p90 | pooled D p10-p90 |")
    print("|---" * (len(cols) + 5) + "|")
    quantiles, medians, sources = {}, {}, {}
    for name, images in load_sources(args.cache, args.tnbc):
        sources[name] = images
        per_image, pooled = zip(*(image_stats(rgb, rng) for rgb in images))
        pix = np.concatenate(pooled)
        quantiles[name] = np.percentile(pix, QUANTILES, axis=0)
        medians[name] = {k: float(np.median([s[k] for s in per_image])) for k in ("brightness", "contrast")}
        row = [_fmt([s[k] for s in per_image]) for k in cols]
        q = quantiles[name]
        row += [f"{q[0, c]:.3f}-{q[1, c]:.3f}" for c in range(3)]
        print(f"| {name} | {len(images)} | " + " | ".join(row) + " |")

    scale, shift = hed_ranges(quantiles)
    print()
    print("Per pair of sources s -> t: spread ratio alpha and floor difference, channels H, E, D:")
    for (s, t), (alpha, floor) in pair_maps(quantiles).items():
        print(f"  {s:>24} -> {t:<24} alpha {np.round(alpha, 2).tolist()}  floor {np.round(floor, 4).tolist()}")
    print(f"hed_scale (max |ln alpha|): {np.round(scale, 2).tolist()}")
    print(f"hed_shift (max |floor difference|): {np.round(shift, 4).tolist()}")
    bright = [m["brightness"] for m in medians.values()]
    contrast = [m["contrast"] for m in medians.values()]
    print(f"source medians: brightness {min(bright):.3f}-{max(bright):.3f}, contrast {min(contrast):.3f}-{max(contrast):.3f}")
    print("median brightness / contrast after the HED jitter alone at alpha = exp(-hed_scale) and exp(+hed_scale):")
    for name, images in sources.items():
        ends = [np.median([rgb_after_hed(rgb, np.exp(sign * scale)) for rgb in images], axis=0) for sign in (-1, 1)]
        print(f"  {name:>24}: brightness {ends[1][0]:.3f}-{ends[0][0]:.3f}, contrast {ends[0][1]:.3f}-{ends[1][1]:.3f}")


if __name__ == "__main__":
    main()
