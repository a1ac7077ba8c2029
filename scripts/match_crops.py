"""Is any image of a source a crop of a MoNuSeg 2018 test image? (for sources without TCGA ids)

Grey-level normalised cross-correlation of every image of SOURCE, rescaled by each of --scales,
against every test image, by FFT. A crop scores about 1 at its own scale even after a colour
transform (grey levels stay an affine function of the original's); unrelated images score well
below (0.2-0.7, higher for smaller templates). Prints the best score per image and the top ten.

    PYTHONPATH=python python scripts/match_crops.py --cache /work/data_cache --source dsb2018_he
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.fft import irfft2, rfft2
from scipy.fft import next_fast_len
from skimage.transform import rescale

from nucseg import datasets as D

MAX_TEMPLATE = 400  # px per side: keeps the FFT size fixed


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64).mean(axis=2)


def window_sums(integral: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of every h x w window, from an integral image padded with a zero row and column."""
    return integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]


class Haystack:
    """One test image, its spectrum at a fixed FFT size and its integral images."""

    def __init__(self, image: np.ndarray, fft_shape: tuple[int, int]):
        self.shape = image.shape
        self.fft_shape = fft_shape
        self.spectrum = rfft2(image, fft_shape)
        self.sum = np.pad(image, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        self.sum2 = np.pad(image**2, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def best_ncc(self, template: np.ndarray) -> float:
        h, w = template.shape
        if h > self.shape[0] or w > self.shape[1]:
            return -1.0
        t = template - template.mean()
        norm = np.sqrt((t**2).sum())
        corr = irfft2(self.spectrum * np.conj(rfft2(t, self.fft_shape)), self.fft_shape)
        corr = corr[: self.shape[0] - h + 1, : self.shape[1] - w + 1]
        s1, s2 = window_sums(self.sum, h, w), window_sums(self.sum2, h, w)
        var = np.maximum(s2 - s1**2 / t.size, 1e-6)
        return float((corr / (np.sqrt(var) * norm)).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--scales", default="1,0.5,2", help="comma-separated rescale factors of the source's images")
    args = ap.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    # Read to look for copies, never to train or tune: evaluation=True is the right flag.
    tests = [grey(im.rgb) for im in D.iter_source(args.cache, "monuseg2018_test", evaluation=True)]
    side = max(max(t.shape) for t in tests) + MAX_TEMPLATE
    fft_shape = (next_fast_len(side, real=True),) * 2
    haystacks = [Haystack(t, fft_shape) for t in tests]
    best = []
    for im in D.iter_source(args.cache, args.source):
        g = grey(im.rgb)
        for s in scales:
            t = (g if s == 1 else rescale(g, s, anti_aliasing=s < 1))[:MAX_TEMPLATE, :MAX_TEMPLATE]
            best.append((max(h.best_ncc(t) for h in haystacks), im.name, s))
        print(im.name, f"{max(b[0] for b in best[-len(scales):]):.3f}", flush=True)
    best.sort(reverse=True)
    print("top:", [(round(score, 3), name, scale) for score, name, scale in best[:10]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
