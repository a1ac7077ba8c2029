"""The model card's pictures: a bundled model's nuclei on tissue it never saw.

Each row is H&E | ground-truth outlines (green) | predicted outlines (yellow), at 0.25 um/px.
For the default model: crops of 384 px from MoNuSeg 2018 *training* images (kidney, lung,
prostate; never a test image). For ``multiorgan``, which trained on those: the centre 256 px of
the image with the most annotated nuclei in each of three sources it never saw (GBM40 brain,
CoNSeP colon, DSB 2018 H&E), a rule fixed before looking at any prediction. Needs the
converted cache (scripts/nucseg_data.py).

    PYTHONPATH=python python scripts/model_card_figure.py /work/data_cache docs/img/organs.png
    PYTHONPATH=python python scripts/model_card_figure.py /work/data_cache docs/img/multiorgan.png multiorgan
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
HELD_OUT = ("gbm40", "consep", "dsb2018_he")  # sources the multiorgan model never trained on
HELD_OUT_SIZE = 256


def outline(rgb: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def _row(model: nucseg.NucleusModel, rgb: np.ndarray, gt: np.ndarray, what: str) -> np.ndarray:
    pred = nucseg.segment(rgb, model)
    print(f"{what}: {len(np.unique(gt)) - 1} annotated, {pred.max()} predicted")
    return np.concatenate([rgb, outline(rgb, gt, (0, 200, 0)), outline(rgb, pred, (255, 220, 0))], axis=1)


def _centre(a: np.ndarray, size: int, fill: int) -> np.ndarray:
    """The centre size x size of ``a``, padded with ``fill`` where ``a`` is smaller."""
    y, x = max(0, (a.shape[0] - size) // 2), max(0, (a.shape[1] - size) // 2)
    a = a[y : y + size, x : x + size]
    pad = [(0, size - a.shape[0]), (0, size - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, constant_values=fill)


def main(cache: str, path: str, name: str = "default") -> None:
    model = nucseg.load_model(name)
    rows = []
    if name == "default":
        images = {im.name: im for im in load_source(cache, "monuseg2018_train_xml", target_mpp=model.config.mpp)}
        for key, (y, x) in CROPS.items():
            im = images[key]
            rgb, gt = im.rgb[y : y + SIZE, x : x + SIZE], im.labels[y : y + SIZE, x : x + SIZE]
            rows.append(_row(model, rgb, gt, f"{key} ({im.organ})"))
    else:
        for source in HELD_OUT:
            im = max(load_source(cache, source, target_mpp=model.config.mpp), key=lambda i: len(np.unique(i.labels)))
            rgb, gt = _centre(im.rgb, HELD_OUT_SIZE, 255), _centre(im.labels, HELD_OUT_SIZE, 0)
            rows.append(_row(model, rgb, gt, f"{source} {im.name} ({im.organ})"))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
