"""Leave-one-dataset-out evaluation: how a model does on a source it has never seen.

The protocol (issue 17): for each public source with at least 5 images, a model trained on
all the other sources is scored on it; the bundled TNBC-only model and the non-learned
baseline are scored on the same images. The MoNuSeg 2018 test set, which is never used to
train, tune or select anything, is scored with the model trained on every training source.

Every image is scored at the model's resolution (0.25 um/px): images and ground truth are
rescaled from their own mpp (:func:`nucseg.datasets.rescale_pair`, labels by nearest
neighbour). Scores are means and standard deviations over images.

A run folder holds one trained model per held-out source and one for the union::

    RUNS/<source>/multiorgan.safetensors   trained without <source>
    RUNS/all/multiorgan.safetensors        trained on every training source
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import text_table, write_csv

__all__ = [
    "LODO_METRICS",
    "EvalImage",
    "format_lodo_table",
    "load_eval_images",
    "lodo_models",
    "run_protocol",
    "score",
    "segment_at",
    "summarise_sources",
    "trained_on",
    "write_lodo",
]

#: (key of nucseg.metrics.evaluate, title): object metrics first, pixel F1 reported only.
LODO_METRICS: tuple[tuple[str, str], ...] = (
    ("aji", "AJI"),
    ("pq", "PQ"),
    ("dq", "DQ"),
    ("sq", "SQ"),
    ("object_f1", "object F1 (IoU 0.5)"),
    ("f1", "pixel F1"),
    ("count_error", "count error (pred - true)"),
)

#: Sources of the protocol, in table order; the last is evaluation-only.
PROTOCOL_SOURCES: tuple[str, ...] = ("tnbc", "monuseg2018_train", "cpm15", "consep", "gbm40", "dsb2018_he", "monuseg2018_test")
UNION = "all"
#: The lodo table's rows for the bundled models other than the default, by model name.
MULTIORGAN_ROW = "TNBC + MoNuSeg train (bundled multiorgan)"
ENSEMBLE_ROW = "default + multiorgan, mean (bundled)"
BUNDLED_ROWS: dict[str, str] = {"multiorgan": MULTIORGAN_ROW, "default+multiorgan": ENSEMBLE_ROW}


@dataclass(frozen=True)
class EvalImage:
    """One scored image: its source, name, RGB and instance labels at the scoring resolution."""

    source: str
    name: str
    rgb: np.ndarray
    labels: np.ndarray


def load_eval_images(source: str, cache: str | os.PathLike, tnbc: str | os.PathLike | None, mpp: float = 0.25) -> list[EvalImage]:
    """A source's images at ``mpp``: TNBC from its folder, the others from the converted cache.

    Raises
    ------
    ValueError
        For an unknown source, or ``"tnbc"`` without its folder.
    """
    if source == "tnbc":
        if tnbc is None:
            raise ValueError("source 'tnbc' needs the TNBC folder (tnbc=...)")
        from .data import load_tnbc

        return [EvalImage("tnbc", im.name, im.rgb, im.labels) for im in load_tnbc(tnbc)]
    from .datasets import SOURCES, load_source

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {['tnbc', *sorted(SOURCES)]}")
    evaluation = SOURCES[source].evaluation_only  # scoring is what an evaluation-only source is for
    return [EvalImage(source, im.name, im.rgb, im.labels) for im in load_source(cache, source, evaluation=evaluation, target_mpp=mpp)]


def trained_on(model_path: str | os.PathLike) -> list[str] | None:
    """The training sources recorded in a model's JSON (``training.sources``), or None when
    the JSON does not say."""
    import json

    doc_path = Path(model_path).with_suffix(".json")
    if not doc_path.is_file():
        return None
    sources = json.loads(doc_path.read_text(encoding="utf-8")).get("training", {}).get("sources")
    return list(sources) if isinstance(sources, list) else None


def lodo_models(runs: str | os.PathLike, sources: Sequence[str]) -> dict[str, Path]:
    """The model to score each source with: ``RUNS/<source>/`` (trained without it), or the union
    model ``RUNS/all/`` for test-only sources and for sources its JSON shows it never trained on.

    Raises
    ------
    FileNotFoundError
        Naming the missing model file.
    """
    from .datasets import SOURCES

    union = Path(runs) / UNION / "multiorgan.safetensors"
    out = {}
    for s in sources:
        held_out_only = s in SOURCES and SOURCES[s].evaluation_only
        path = union if held_out_only else Path(runs) / s / "multiorgan.safetensors"
        if not path.is_file() and not held_out_only and union.is_file():
            seen = trained_on(union)
            if seen is not None and s not in seen:
                path = union  # the union run held this source out too
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: train it with scripts/multiorgan.py --hold-out {s} --out {path.parent}")
        out[s] = path
    return out


def score(images: Sequence[EvalImage], segment: Callable[[np.ndarray], np.ndarray], method: str) -> list[dict[str, Any]]:
    """One row per image: ``method``, ``source``, ``image`` and every :func:`nucseg.metrics.evaluate` key."""
    from .metrics import evaluate

    return [{"method": method, "source": im.source, "image": im.name, **evaluate(im.labels, segment(im.rgb))} for im in images]


def summarise_sources(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean and std over images of each metric, per (method, source); ``n`` is the image count."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["source"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        d: dict[str, float] = {"n": float(len(rs))}
        for m, _ in LODO_METRICS:
            vals = np.array([r[m] for r in rs], float)
            d[f"{m}_mean"] = float(vals.mean())
            d[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        out[key] = d
    return out


def format_lodo_table(summary: dict[tuple[str, str], dict[str, float]], notes: dict[tuple[str, str], str] | None = None) -> str:
    """One block per metric: rows = method, columns = held-out source, cells mean ± std over images.

    ``notes`` marks cells (e.g. ``"seen"`` where the model trained on that source).
    """
    notes = notes or {}
    methods = list(dict.fromkeys(m for m, _ in summary))
    sources = list(dict.fromkeys(s for _, s in summary))
    images = {s: int(v["n"]) for (_, s), v in summary.items()}  # every method scored a source's same images
    columns = [f"{s} (n={images[s]})" for s in sources]
    lines = []
    for key, title in LODO_METRICS:
        head = [title, *columns]
        body = []
        for m in methods:
            cells = [m]
            for s in sources:
                v = summary.get((m, s))
                if v is None:
                    cells.append("—")
                    continue
                fmt = "{:+.1f} ± {:.1f}" if key == "count_error" else "{:.3f} ± {:.3f}"
                cell = fmt.format(v[f"{key}_mean"], v[f"{key}_std"])
                cells.append(cell + (f" ({notes[(m, s)]})" if (m, s) in notes else ""))
            body.append(cells)
        lines += text_table(head, body) + [""]
    return "\n".join(lines).rstrip() + "\n"


def segment_at(model: Any, image_mpp: float, run_mpp: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A segment function for images at ``image_mpp`` that runs ``model`` at ``run_mpp`` um/px.

    ``run_mpp`` defaults to the model's own resolution (``model.config.mpp``), so a model
    trained at 0.5 um/px is scored on 0.25 um/px ground truth as a slide run would use it.
    A ``run_mpp`` other than the model's is the model off its training resolution (the
    throughput issue's question: a 0.25 um/px model run at 0.5 um/px sees 4x fewer pixels);
    ``min_area`` then keeps its area in um^2. The image is resampled bilinearly (anti-aliased
    when shrinking) and the labels come back on the image's own pixels by nearest neighbour,
    so they score against the full-resolution ground truth.
    """
    from skimage.transform import resize

    if not image_mpp > 0 or (run_mpp is not None and not run_mpp > 0):
        raise ValueError(f"image_mpp and run_mpp must be positive um/px, got {image_mpp} and {run_mpp}")
    model_mpp = model.config.mpp
    run_mpp = model_mpp if run_mpp is None else run_mpp
    recipe = model.config.recipe.replace(min_area=int(round(model.config.recipe.min_area * (model_mpp / run_mpp) ** 2)))
    factor = run_mpp / image_mpp

    def segment(rgb: np.ndarray) -> np.ndarray:
        if abs(factor - 1) <= 0.01:
            return recipe.labels(model.predict(rgb))
        h, w = rgb.shape[:2]
        small = resize(rgb, (max(1, round(h / factor)), max(1, round(w / factor))), order=1, anti_aliasing=factor > 1,
                       preserve_range=True)
        labels = recipe.labels(model.predict(np.clip(np.rint(small), 0, 255).astype(np.uint8)))
        return resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)

    return segment


def write_lodo(
    out_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], summary: dict[tuple[str, str], dict[str, float]], extra: dict[str, Any]
) -> list[Path]:
    """``images.csv`` (one row per method and image) and ``lodo.json`` (the summary, ``extra``) in ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images.csv"
    write_csv(images, rows)
    doc = {
        "protocol": "leave-one-dataset-out",
        **extra,
        "summary": [{"method": m, "source": s, **v} for (m, s), v in summary.items()],
    }
    js = out / "lodo.json"
    js.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return [images, js]


def run_protocol(
    runs: str | os.PathLike | None,
    cache: str | os.PathLike,
    tnbc: str | os.PathLike | None,
    sources: Sequence[str] = PROTOCOL_SOURCES,
    *,
    device: str | None = "cpu",
    baseline: bool = True,
    coarse: bool = False,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], str]]:
    """Score the baseline, the bundled models and the leave-one-out models on ``sources``.

    Every source is scored at the bundled model's resolution (0.25 um/px); each model runs at
    its own (:func:`segment_at`). With ``coarse``, the bundled model also runs at twice its pixel
    size (0.5 um/px), the resolution question of the throughput issue.
    A bundled model's cells of the sources it trained on (its JSON says which; TNBC for the
    default) are marked "seen". Returns the image rows and the cell notes for :func:`format_lodo_table`.
    Sources whose leave-one-out model is missing get no multi-organ cell (logged, not fatal).
    """
    import logging

    from .baseline import segment_baseline
    from .inference import BUNDLED_MODELS, load_model

    log = logging.getLogger(__name__)
    default = load_model(None, device=device)
    others = {BUNDLED_ROWS[name]: load_model(name, device=device) for name in BUNDLED_MODELS if name != "default"}
    seen = {BUNDLED_ROWS[name]: set(trained_on(path) or ()) for name, path in BUNDLED_MODELS.items() if name != "default"}
    rows: list[dict[str, Any]] = []
    notes: dict[tuple[str, str], str] = {}
    for s in sources:
        images = load_eval_images(s, cache, tnbc, mpp=default.config.mpp)
        if progress:
            log.info("%s: %d images", s, len(images))
        if baseline:
            rows += score(images, lambda rgb: segment_baseline(rgb, mpp=default.config.mpp), "Baseline (no learning)")
        rows += score(images, lambda rgb: default.postprocess(default.predict(rgb)), "TNBC-only (bundled)")
        if coarse:
            rows += score(images, segment_at(default, default.config.mpp, 2 * default.config.mpp),
                          "TNBC-only (bundled) at 0.5 um/px")
        for row, other in others.items():
            rows += score(images, lambda rgb, m=other: m.postprocess(m.predict(rgb)), row)
            if s in seen[row]:
                notes[(row, s)] = "seen"
        if s == "tnbc":
            notes[("TNBC-only (bundled)", s)] = "seen"
            notes[("TNBC-only (bundled) at 0.5 um/px", s)] = "seen"
        if runs is not None:
            try:
                path = lodo_models(runs, [s])[s]
            except FileNotFoundError as e:
                log.warning("%s", e)
                continue
            model = load_model(path, device=device)
            method = "Multi-organ (source held out)"
            if abs(model.config.mpp / default.config.mpp - 1) > 0.01:
                method += f" at {model.config.mpp:g} um/px"
            rows += score(images, segment_at(model, default.config.mpp), method)
    return rows, notes

