"""Where does the held-out pixel F1 go? Error analysis of a cross-validated model on TNBC.

Reads the folds of a ``nucseg-eval`` results.json (each fold's weights and the ``lam``,
``threshold`` and ``min_area`` chosen on its training patients), segments each fold's
held-out images again, and prints:

* pixel F1 as in the results table (mean per patient) and pooled over all images;
* pixel F1 when the pixels within 1 or 2 px of a ground-truth border are not scored
  (how much of the error is border placement);
* false-negative pixels split into nuclei missed entirely and nuclei found with too
  small an extent, false positives into spurious objects and too large extents;
* how much of each true nucleus the prediction covers;
* the nucleus channel's own pixel F1 (``p > t``) for several ``t``: the best any
  threshold on the network's output could do on these images (chosen on them, so an
  upper bound, not a result).

    python scripts/f1_gap.py runs/eval_gpu_cv/results.json ../shared/data/tnbc

The network runs once per image, unpadded (TNBC images are 512 px, a multiple of every
stride here); its map is ``combine_outputs`` of the logits, as in ``NucleusModel.predict``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def _counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    from nucseg.metrics import _pixel_counts

    return np.array(_pixel_counts(pred, gt), float)


def main(results: str, data: str) -> None:
    import torch
    from scipy import ndimage as ndi

    from nucseg.data import load_tnbc
    from nucseg.evaluate import remove_small
    from nucseg.inference import combine_outputs, load_model
    from nucseg.postprocess import watershed_dynamics

    torch.set_num_threads(2)
    folds = next(iter(json.loads(Path(results).read_text())["folds"].values()))
    thresholds = (0.4, 0.5, 0.6, 0.7, 0.8)
    per_patient: dict[str, list[float]] = {}
    pooled, split, nuclear = np.zeros(3), np.zeros(4), np.zeros((len(thresholds), 3))
    band = {1: np.zeros(3), 2: np.zeros(3)}
    band_pp: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
    coverage, missing = [], []
    for fold in folds:
        model = load_model(fold["weights"][0], device="cpu")
        for im in load_tnbc(data, fold["test_patients"]):
            # One forward pass gives both the nucleus channel and the map `predict` returns (combine_outputs).
            with torch.inference_mode():
                x = torch.tensor(im.rgb).permute(2, 0, 1)[None].float().div(255)
                x = (x - torch.tensor(model.config.mean).view(1, 3, 1, 1)) / torch.tensor(model.config.std).view(1, 3, 1, 1)
                logits = model.net(x.contiguous(memory_format=torch.channels_last))
            nuc, prob = torch.sigmoid(logits[0, 0]).numpy(), combine_outputs(logits)[0].numpy()
            labels = remove_small(watershed_dynamics(prob, fold["lam"], threshold=fold["threshold"]), fold["min_area"])
            p, g = labels > 0, im.labels > 0
            c = _counts(p, g)
            pooled += c
            per_patient.setdefault(im.patient, []).append(_f1(*c))
            for d in band:
                border = ndi.binary_dilation(g, iterations=d) & ~ndi.binary_erosion(g, iterations=d, border_value=1)
                cb = _counts(p[~border], g[~border])
                band[d] += cb
                band_pp[d].setdefault(im.patient, []).append(_f1(*cb))
            missed = g & ~np.isin(im.labels, np.unique(im.labels[p]))
            spurious = p & ~np.isin(labels, np.unique(labels[g]))
            split += (missed.sum(), c[2] - missed.sum(), spurious.sum(), c[1] - spurious.sum())
            area = np.bincount(im.labels.ravel())[1:]
            hit = np.bincount(im.labels.ravel(), weights=p.ravel(), minlength=area.size + 1)[1:]
            coverage += list(hit[area > 0] / area[area > 0])
            missing += list((area - hit)[area > 0])
            for i, t in enumerate(thresholds):
                nuclear[i] += _counts(nuc > t, g)
    mean_pp = lambda d: float(np.mean([np.mean(v) for v in d.values()]))  # noqa: E731
    print(f"pixel F1: per patient {mean_pp(per_patient):.4f}, pooled {_f1(*pooled):.4f}")
    for d in band:
        print(f"  not scoring {d} px on each side of a true border: per patient {mean_pp(band_pp[d]):.4f}, pooled {_f1(*band[d]):.4f}")
    tp, fp, fn = pooled
    print(f"false negatives {fn:.0f} px: {split[0]:.0f} in nuclei missed entirely, {split[1]:.0f} in nuclei found too small")
    print(f"false positives {fp:.0f} px: {split[2]:.0f} in spurious objects, {split[3]:.0f} in nuclei found too large")
    print(f"  pooled F1 with missed and spurious objects fixed, borders as they are: {_f1(tp + split[0], fp - split[2], fn - split[0]):.4f}")
    cov, miss = np.array(coverage), np.array(missing)
    for lo, hi in ((0, 0.01), (0.01, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 1.01)):
        s = (cov >= lo) & (cov < hi)
        print(f"  true nuclei {lo:.2f}-{min(hi, 1):.2f} covered: {s.sum()} of {cov.size}, {miss[s].sum() / miss.sum():.0%} of the missed pixels")
    print("nucleus channel alone, threshold chosen on these images (upper bound): " + ", ".join(
        f"p>{t}: {_f1(*nuclear[i]):.4f}" for i, t in enumerate(thresholds)) + " (pooled)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
