"""What a model's unmatched objects on held-out TNBC patients are (docs/RESULTS.md, union CV).

Each predicted object that matches no annotated nucleus at IoU >= 0.5 is counted as
``unlabelled`` (most of its pixels lie where TNBC drew no nucleus), ``split`` (it lies mostly on
an annotated nucleus that two or more predicted objects cover) or ``poor`` (it lies mostly on an
annotated nucleus that only it covers, at IoU < 0.5).

    PYTHONPATH=python python scripts/unmatched_objects.py --model runs/quarter/cv1/multiorgan.safetensors \\
        --data ../shared/data/tnbc --patients 01,02,10
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np


def classify(gt: np.ndarray, pred: np.ndarray) -> Counter:
    """Counts of ``predicted``, ``unmatched`` and the three kinds of unmatched objects.

    From the contingency table :mod:`nucseg.metrics` matches objects with (IoU >= 0.5
    matches are one-to-one).
    """
    from nucseg.metrics import _overlap

    ov = _overlap(gt, pred)
    matched = np.zeros(ov.n_pred, bool)
    matched[ov.cols[ov.iou >= 0.5]] = True
    on_gt = np.bincount(ov.cols, weights=ov.inter, minlength=ov.n_pred)  # each prediction's pixels on nuclei
    covers = np.bincount(ov.rows, minlength=ov.n_true)  # predictions over each annotated nucleus
    out: Counter = Counter(predicted=ov.n_pred, unmatched=int((~matched).sum()))
    for j in np.flatnonzero(~matched):
        if on_gt[j] < 0.5 * ov.area_pred[j]:
            out["unlabelled"] += 1
            continue
        pairs = np.flatnonzero(ov.cols == j)
        g = ov.rows[pairs[np.argmax(ov.inter[pairs])]]
        out["split" if covers[g] >= 2 else "poor"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--patients", required=True, help="comma-separated TNBC patients")
    args = ap.parse_args()

    import torch

    from nucseg.data import load_tnbc
    from nucseg.inference import load_model

    torch.set_num_threads(1)
    model = load_model(args.model)
    patients = set(args.patients.split(","))
    total: Counter = Counter()
    for im in load_tnbc(args.data):
        if im.patient in patients:
            total += classify(im.labels, model.postprocess(model.predict(im.rgb[None])[0]))
    print(dict(total))


if __name__ == "__main__":
    main()
