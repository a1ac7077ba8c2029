"""Synthetic nuclei for tests, benchmarks and demos (no real data needed)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["nuclei_labels", "probability_map"]


def nuclei_labels(
    shape: tuple[int, int],
    *,
    coverage: float = 0.25,
    radius: tuple[float, float] = (5.0, 11.0),
    seed: int = 0,
) -> np.ndarray:
    """Random elliptical nuclei, many of them touching, as an int32 label image.

    Parameters
    ----------
    shape : (int, int)
        Image shape (H, W).
    coverage : float
        Approximate fraction of the image covered by nuclei.
    radius : (float, float)
        Range of the semi-axes in pixels (5-11 px is a nucleus at about 0.25 um/px).
    seed : int
        Seed of the random generator; the result is a pure function of the arguments.

    Returns
    -------
    ndarray of int32
        0 for background, nuclei 1..N. Where ellipses overlap the earlier one wins, which
        leaves clusters of touching nuclei as in dense tissue.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive ints, got {shape}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    rng = np.random.default_rng(seed)
    height, width = shape
    mean_area = np.pi * np.mean(radius) ** 2
    count = max(1, int(coverage * height * width / mean_area * 1.15))  # overlaps eat ~15%
    labels = np.zeros(shape, np.int32)
    for k in range(1, count + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        a, b = rng.uniform(*radius, size=2)
        theta = rng.uniform(0, np.pi)
        r = int(np.ceil(max(a, b))) + 1
        y0, y1 = max(0, int(cy) - r), min(height, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(width, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        inside = (u * u + v * v <= 1.0) & (labels[y0:y1, x0:x1] == 0)
        labels[y0:y1, x0:x1][inside] = k
    return labels


def probability_map(
    shape: tuple[int, int],
    *,
    coverage: float = 0.3,
    noise: float = 0.02,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A realistic nucleus probability map and the nuclei it was drawn from.

    Each nucleus is a smooth dome (high in the middle, about 0.5 at its border); touching
    nuclei meet at a saddle; the map is blurred like a network's output and carries
    Gaussian noise, so it has many spurious shallow maxima for the dynamics to remove.

    Returns
    -------
    prob : ndarray of float32 in [0, 1]
    labels : ndarray of int32
        The nuclei (see :func:`nuclei_labels`).
    """
    labels = nuclei_labels(shape, coverage=coverage, seed=seed)
    # Distance to the nearest pixel outside the nucleus or on a border with another one.
    interior = labels > 0
    border = ndi.grey_dilation(labels, size=3) != ndi.grey_erosion(labels, size=3)
    dist = ndi.distance_transform_edt(interior & ~border)
    prob = np.where(interior, 0.45 + 0.55 * (1.0 - np.exp(-dist / 3.0)), 0.08)
    prob = ndi.gaussian_filter(prob, 1.2)
    # Spatially correlated noise (a network's errors are smooth, not per pixel).
    rng = np.random.default_rng(seed + 1)
    grain = ndi.gaussian_filter(rng.normal(0.0, 1.0, size=shape), 1.0)
    prob += grain * (noise / max(float(grain.std()), 1e-12))
    return np.clip(prob, 0.0, 1.0).astype(np.float32), labels
