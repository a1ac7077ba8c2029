"""The model card's slide picture: the two bundled models on the same real slide.

Runs ``nucseg-wsi`` with each bundled model on a slide (CPU), then draws three 100 um crops,
chosen at random (seed 1) among those where ``default`` finds at least 40 nuclei, as
H&E | ``default`` outlines (yellow) | ``multiorgan`` outlines (cyan), at the models' 0.25 um/px.
Prints the counts and the agreement of the two label images (object F1 at IoU 0.5).

    PYTHONPATH=python python scripts/slide_models_figure.py ../shared/data/wsi/CMU-1-Small-Region.svs \
        /tmp/slide_models docs/img/slide_models.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import zarr
from PIL import Image
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from nucseg.cli.wsi import main as wsi
from nucseg.metrics import object_scores
from nucseg.wsi.reader import open_slide

CROP = 400  # px at 0.25 um/px


def main(slide: str, work: str, figure: str) -> None:
    labels = {}
    for name in ("default", "multiorgan"):
        out = Path(work) / f"{name}.zarr"
        if not out.exists():
            assert wsi([slide, str(out), "--model", name, "--device", "cpu", "--quiet"]) == 0
        labels[name] = zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]
    a, b = labels["default"], labels["multiorgan"]
    agree = object_scores(a, b)
    print(f"default {agree.n_true} nuclei, multiorgan {agree.n_pred}; object F1 between them {agree.f1:.3f}")
    reader = open_slide(slide)
    zoom = reader.mpp[0] / 0.25
    rng = np.random.default_rng(1)
    rows = []
    while len(rows) < 3:
        y, x = (int(rng.integers(0, n - CROP)) for n in a.shape)
        if len(np.unique(a[y : y + CROP, x : x + CROP])) - 1 < 40:
            continue
        side = round(CROP / zoom)
        rgb = reader.read(0, round(x / zoom), round(y / zoom), side, side)
        rgb = (resize(rgb, (CROP, CROP), order=1) * 255).astype(np.uint8)
        row = [rgb]
        for lab, colour in ((a, (255, 220, 0)), (b, (0, 220, 255))):
            im = rgb.copy()
            im[find_boundaries(lab[y : y + CROP, x : x + CROP], mode="inner")] = colour
            row.append(im)
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(figure, quality=85)


if __name__ == "__main__":
    main(*sys.argv[1:4])
