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
    """Counts of ``predicted``, ``unmatched`` and the three kinds of unmatched objects."""
    out: Counter = Counter()
    ids = np.unique(pred[pred > 0])
    gt_area = dict(zip(*np.unique(gt[gt > 0], return_counts=True)))
    for p in ids:
        mask = pred == p
        under, counts = np.unique(gt[mask], return_counts=True)
        on = {int(g): int(c) for g, c in zip(under, counts) if g != 0}
        area = int(mask.sum())
        if any(c / (area + gt_area[g] - c) >= 0.5 for g, c in on.items()):
            continue  # matched (IoU >= 0.5 is one-to-one)
        out["unmatched"] += 1
        if sum(on.values()) < 0.5 * area:
            out["unlabelled"] += 1
            continue
        g = max(on, key=on.get)
        out["split" if len(np.unique(pred[(gt == g) & (pred > 0)])) >= 2 else "poor"] += 1
    out["predicted"] += len(ids)
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
