"""Helpers for the whole-slide tests (imported by name: tests/wsi is on sys.path)."""

from __future__ import annotations

import time

import numpy as np

from nucseg.wsi.predictors import HematoxylinPredictor


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images hold the same objects, whatever their ids."""
    fa, fb = np.asarray(a).ravel().astype(np.int64), np.asarray(b).ravel().astype(np.int64)
    if a.shape != b.shape or not np.array_equal(fa == 0, fb == 0):
        return False
    m = fa != 0
    pairs = np.unique(np.stack([fa[m], fb[m]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def matched_fraction(a: np.ndarray, b: np.ndarray, iou: float = 0.9) -> float:
    """Fraction of objects of ``a`` with a partner in ``b`` at IoU >= ``iou``."""
    fa, fb = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    ids_a, area_a = np.unique(fa[fa > 0], return_counts=True)
    ids_b, area_b = np.unique(fb[fb > 0], return_counts=True)
    both = (fa > 0) & (fb > 0)
    pairs, inter = np.unique(np.stack([fa[both], fb[both]]), axis=1, return_counts=True)
    ua = area_a[np.searchsorted(ids_a, pairs[0])]
    ub = area_b[np.searchsorted(ids_b, pairs[1])]
    good = inter / (ua + ub - inter) >= iou
    return len(np.unique(pairs[0][good])) / max(1, len(ids_a))


class SlowPredictor(HematoxylinPredictor):
    """The hematoxylin predictor, 0.15 s slower per batch so a run can be killed midway."""

    def predict(self, rgb: np.ndarray) -> np.ndarray:  # noqa: D102
        time.sleep(0.15)
        return super().predict(rgb)


def make_slow() -> SlowPredictor:
    """Factory for ``--model wsi_helpers:make_slow``."""
    return SlowPredictor()
