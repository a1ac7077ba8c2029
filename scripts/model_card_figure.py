"""The model card's picture: the bundled model's nuclei on three organs it never saw.

Crops of 384 px from MoNuSeg 2018 *training* images (kidney, lung, prostate; never a test
image), each shown as H&E | ground-truth outlines (green) | predicted outlines (yellow), at
0.25 um/px. Needs the converted cache (scripts/nucseg_data.py).

    PYTHONPATH=python python scripts/model_card_figure.py /work/data_cache docs/img/organs.png
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

import nucseg
from nucseg.datasets import load_source

CROPS = {  # image -> top-left corner of the crop (chosen for dense tissue, by eye)
    "TCGA-B0-5698-01Z-00-DX1": (300, 300),
    "TCGA-21-5784-01Z-00-DX1": (300, 300),
    "TCGA-G9-6362-01Z-00-DX1": (300, 300),
}
SIZE = 384


def outline(rgb: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def main(cache: str, path: str) -> None:
    model = nucseg.load_model()
    images = {im.name: im for im in load_source(cache, "monuseg2018_train_xml", target_mpp=model.config.mpp)}
    rows = []
    for name, (y, x) in CROPS.items():
        im = images[name]
        rgb, gt = im.rgb[y : y + SIZE, x : x + SIZE], im.labels[y : y + SIZE, x : x + SIZE]
        pred = nucseg.segment(rgb, model)
        rows.append(np.concatenate([rgb, outline(rgb, gt, (0, 200, 0)), outline(rgb, pred, (255, 220, 0))], axis=1))
        print(f"{name} ({im.organ}): {len(np.unique(gt)) - 1} annotated, {pred.max()} predicted")
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
