"""Patient-wise evaluation: watershed tuning, cross-validation and Table-1-style reports.

Protocol (Naylor et al. 2017, extended): for each split, a network is trained
on the training patients, the watershed's ``lam`` and ``threshold`` are
grid-searched on those same training images (never on the held-out patient),
and the held-out images are scored with :func:`nucseg.metrics.evaluate`. Scores
are averaged per held-out patient first, then reported as mean and standard
deviation over patients.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._recipe import PostprocessRecipe, remove_small
from .data import TNBCImage

__all__ = [
    "DEFAULT_LAMS",
    "DEFAULT_MIN_AREAS",
    "DEFAULT_THRESHOLDS",
    "TABLE_COLUMNS",
    "format_table",
    "per_patient",
    "remove_small",
    "score_images",
    "summarise",
    "text_table",
    "tune_postprocess",
    "write_csv",
    "write_results",
]

DEFAULT_LAMS: tuple[float, ...] = (0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3)
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8)
DEFAULT_MIN_AREAS: tuple[int, ...] = (0, 30, 60)
# (key in nucseg.metrics.evaluate, column title): the paper's Table 1, then object metrics.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Acc"),
    ("iu", "IU"),
    ("recall", "Recall"),
    ("precision", "Prec"),
    ("f1", "F1"),
    ("performance", "Perf"),
    ("aji", "AJI"),
    ("pq", "PQ"),
    ("object_f1", "ObjF1"),
    ("count_error", "CountErr"),
)


def _predict_maps(model: Any, images: Sequence[TNBCImage]) -> list[np.ndarray]:
    return [model.predict(im.rgb) for im in images]


def tune_postprocess(
    model: Any,
    images: Sequence[TNBCImage],
    *,
    lams: Iterable[float] = DEFAULT_LAMS,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    min_areas: Iterable[int] = (0,),
    maps: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, float] | tuple[float, float, int, float]:
    """Grid-search the watershed parameters that maximise mean AJI on ``images``.

    Call it with *training* images only: the chosen values are then applied to
    held-out patients.

    Parameters
    ----------
    model : NucleusModel
        Provides ``predict`` (skipped when ``maps`` is given).
    images : sequence of TNBCImage
    lams, thresholds : iterable of float
        Grid.
    min_areas : iterable of int
        Minimum object sizes to try; with more than one value the chosen one is
        returned too.
    maps : sequence of numpy.ndarray, optional
        Precomputed :meth:`NucleusModel.predict` maps of ``images``.

    Returns
    -------
    (lam, threshold, mean_aji) or (lam, threshold, min_area, mean_aji)
        The second form when several ``min_areas`` are searched.
    """
    from .metrics import aji

    if not images:
        raise ValueError("images is empty: tuning needs at least one image")
    maps = _predict_maps(model, images) if maps is None else list(maps)
    areas = [int(a) for a in min_areas]
    best = (float("nan"), float("nan"), 0, -1.0)
    for thr in thresholds:
        for lam in lams:
            # The watershed once per (threshold, lam); each min_area only filters its result.
            base = PostprocessRecipe(lam=float(lam), threshold=float(thr))
            labels = [base.watershed(m) for m in maps]
            for area in areas:
                recipe = base.replace(min_area=area)
                score = float(np.mean([aji(im.labels, recipe.remove_small(lab)) for im, lab in zip(images, labels)]))
                if score > best[3]:
                    best = (float(lam), float(thr), area, score)
    return best if len(areas) > 1 else (best[0], best[1], best[3])


def score_images(
    images: Sequence[TNBCImage],
    segment_fn: Callable[[TNBCImage], np.ndarray],
    method: str,
) -> list[dict[str, Any]]:
    """Score one method on images; one row per image.

    Parameters
    ----------
    images : sequence of TNBCImage
    segment_fn : callable
        Image -> ``int32`` labels.
    method : str
        Name stored in each row.

    Returns
    -------
    list of dict
        ``method``, ``patient``, ``image`` and every :func:`nucseg.metrics.evaluate` key.
    """
    from .metrics import evaluate

    rows = []
    for im in images:
        pred = segment_fn(im)
        rows.append({"method": method, "patient": im.patient, "image": im.name, **evaluate(im.labels, pred)})
    return rows


def per_patient(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average image rows per (method, patient)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["patient"]), []).append(r)
    out = []
    for (method, patient), rs in groups.items():
        keys = [k for k in rs[0] if isinstance(rs[0][k], (int, float)) and not isinstance(rs[0][k], bool)]
        out.append({"method": method, "patient": patient, "images": len(rs), **{k: float(np.mean([r[k] for r in rs])) for k in keys}})
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over patients of each method's per-patient scores.

    Parameters
    ----------
    rows : sequence of dict
        Image rows from :func:`score_images` (any number of methods).

    Returns
    -------
    list of dict
        One per method (first-seen order): ``method``, ``patients``,
        ``<key>_mean`` / ``<key>_std`` for each column of :data:`TABLE_COLUMNS`
        and, when the rows carry pixel counts, ``f1_pooled``: the pixel F1 of
        all the method's images taken as one set (large, dense images weigh
        more than in the per-patient mean).
    """
    pp = per_patient(rows)
    methods = list(dict.fromkeys(r["method"] for r in pp))
    out = []
    for m in methods:
        rs = [r for r in pp if r["method"] == m]
        d: dict[str, Any] = {"method": m, "patients": len(rs)}
        for key, _ in TABLE_COLUMNS:
            vals = np.array([r[key] for r in rs if key in r], float)
            d[f"{key}_mean"] = float(vals.mean()) if vals.size else math.nan
            d[f"{key}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        counts = [(r["pixel_tp"], r["pixel_fp"], r["pixel_fn"]) for r in rows if r["method"] == m and "pixel_tp" in r]
        if counts:
            tp, fp, fn = np.sum(counts, axis=0)
            d["f1_pooled"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0
        out.append(d)
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table shaped like the paper's Table 1 (mean ± std over patients), then the pooled pixel F1s."""
    head = ["Method", "n"] + [title for _, title in TABLE_COLUMNS]
    body = []
    for s in summary:
        cells = [str(s["method"]), str(s["patients"])]
        for key, _ in TABLE_COLUMNS:
            cells.append(f"{s[f'{key}_mean']:.3f} ± {s[f'{key}_std']:.3f}")
        body.append(cells)
    lines = text_table(head, body)
    pooled = [f"{s['method']} {s['f1_pooled']:.3f}" for s in summary if "f1_pooled" in s]
    if pooled:
        lines.append("Pixel F1 pooled over all images (not per patient): " + "; ".join(pooled))
    return "\n".join(lines)


def text_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: columns padded to their widest cell, a dashed rule under ``head``."""
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in body]


def write_results(out_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write image rows, per-patient rows and the summary as CSV, plus one JSON.

    Returns
    -------
    dict of str to pathlib.Path
        ``images_csv``, ``patients_csv``, ``summary_csv``, ``json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pp, summary = per_patient(rows), summarise(rows)
    paths = {
        "images_csv": out / "images.csv",
        "patients_csv": out / "patients.csv",
        "summary_csv": out / "summary.csv",
        "json": out / "results.json",
    }
    for key, data in (("images_csv", rows), ("patients_csv", pp), ("summary_csv", summary)):
        write_csv(paths[key], data)
    doc = {"summary": summary, "patients": pp, "images": list(rows), **(extra or {})}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    return paths


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows as CSV; the columns are every key seen, in first-seen order."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
