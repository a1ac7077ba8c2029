"""Does Reinhard stain normalisation at inference help the TNBC-only bundled model on other sources?

Each image is mapped in LAB (mean and standard deviation over tissue, per image) onto the
TNBC images' pooled statistics, then segmented by the bundled model; AJI, PQ, object and pixel
F1 with and without, per source. Decide on training sources only; the MoNuSeg 2018 test set
may be reported after the decision, never used for it.

    python scripts/stain_norm_check.py --cache /work/data_cache --tnbc ../shared/data/tnbc \
        cpm15 monuseg2018_train_xml

Measured 2026-12-07 (issue 17): it helps the other sources by ~0.016 AJI and hurts TNBC
itself by 0.09, so it is not a default.
"""

from __future__ import annotations

import argparse

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from nucseg.generalization import load_eval_images
from nucseg.inference import load_model
from nucseg.metrics import evaluate


def tissue(rgb: np.ndarray) -> np.ndarray:
    """Pixels whose summed RGB optical density exceeds 0.3 (glass is below)."""
    return -np.log((rgb.astype(np.float32) + 1) / 256).sum(-1) > 0.3


def lab_stats(rgbs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of L, a, b over the tissue of all images."""
    px = np.concatenate([rgb2lab(rgb)[tissue(rgb)] for rgb in rgbs])
    return px.mean(0), px.std(0)


def reinhard(rgb: np.ndarray, target: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``rgb`` with its tissue's LAB mean and spread moved to ``target``'s."""
    lab = rgb2lab(rgb)
    m = tissue(rgb)
    mu, sd = lab[m].mean(0), lab[m].std(0) + 1e-6
    out = (lab - mu) / sd * target[1] + target[0]
    return np.clip(np.rint(lab2rgb(out) * 255), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--tnbc", required=True)
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()
    target = lab_stats([im.rgb for im in load_eval_images("tnbc", args.cache, args.tnbc)])
    model = load_model(device="cpu", backend="auto")
    for source in args.sources:
        images = load_eval_images(source, args.cache, args.tnbc)
        for mode in ("none", "reinhard"):
            rows = [
                evaluate(im.labels, model.postprocess(model.predict(im.rgb if mode == "none" else reinhard(im.rgb, target))))
                for im in images
            ]
            means = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("aji", "pq", "object_f1", "f1")}
            print(source, mode, means, flush=True)


if __name__ == "__main__":
    main()
