"""Which watershed connectivity segments TNBC best? Held-out patients of the CV folds.

For each fold model of a grouped k-fold run (``runs/cv_default/fold_XX``), predict the
held-out patients' images and post-process the same maps with connectivity 1 and 2
(lam, threshold and min_area from the fold's config, which were tuned on its training
patients only, or from a ``nucseg-eval --retune`` results.json, tuned the same way).
Prints mean AJI, PQ and object F1 over the held-out images.

    python scripts/connectivity_on_tnbc.py runs/cv_default /path/to/shared/data/tnbc [runs/eval/results.json]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def main(run: str, data: str, results: str | None = None) -> None:
    import torch

    from nucseg.data import load_tnbc
    from nucseg.evaluate import remove_small
    from nucseg.inference import load_model
    from nucseg.metrics import evaluate
    from nucseg.postprocess import watershed_dynamics

    torch.set_num_threads(2)
    scores: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    tuned = {}
    if results:  # per fold, keyed by its held-out patients
        for folds in json.loads(Path(results).read_text())["folds"].values():
            tuned.update({tuple(f["test_patients"]): f for f in folds})
    for fold in sorted(Path(run).glob("fold_*")):
        split = json.loads((fold / "split.json").read_text())
        model = load_model(fold / "default.safetensors")
        cfg = model.config
        if tuned:
            t = tuned[tuple(split["test_patients"])]
            cfg = dataclasses.replace(cfg, lam=t["lam"], threshold=t["threshold"], min_area=t["min_area"])
        for image in load_tnbc(data, split["test_patients"]):
            prob = model.predict(image.rgb)
            for conn in (1, 2):
                labels = watershed_dynamics(prob, cfg.lam, threshold=cfg.threshold, connectivity=conn)
                scores[conn].append(evaluate(image.labels, remove_small(labels, cfg.min_area)))
    for conn, rows in scores.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "pq", "object_f1", "f1")}
        print(f"connectivity={conn}: n={len(rows)} " + " ".join(f"{k}={v:.4f}" for k, v in mean.items()))


if __name__ == "__main__":
    main(*sys.argv[1:4])
