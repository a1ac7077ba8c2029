"""Speed of nucseg.metrics beside a per-object loop, same input, same run.

Run::

    python -m pytest benchmarks/bench_metrics.py --benchmark-only -q \
        --benchmark-columns=min,median,rounds --benchmark-sort=name

The loop is the usual implementation (as in HoVer-Net's ``get_fast_aji``):
for every GT object, crop its bounding box and compare it with each
prediction found there. Both give the same AJI (asserted). Inputs are
synthetic label images of disks with a shifted, partly split prediction:
512x512 (about 100 nuclei, a TNBC tile) and 2048x2048 (about 1,600).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from nucseg.metrics import aji, evaluate, object_scores

SIZES = (512, 2048)


def _scene(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GT disks on a jittered grid; prediction shifted by 2 px, every 7th disk cut in two halves."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.int32)
    step = 50
    k = 0
    for r in range(step // 2, size - step // 2, step):
        for c in range(step // 2, size - step // 2, step):
            k += 1
            rr, cc = disk((r + rng.integers(-6, 7), c + rng.integers(-6, 7)), rng.integers(8, 18), shape=gt.shape)
            gt[rr, cc] = k
    pred = np.roll(gt, 2, axis=1) * 3
    cols = np.arange(size)[None, :]
    centre = np.zeros(pred.max() + 1)
    ids = np.unique(pred)[1:]
    centre[ids] = [c for _, c in ndi.center_of_mass(pred > 0, pred, ids)]
    pred[(pred % 7 == 0) & (pred > 0) & (cols > centre[pred])] += 1
    return gt, pred


def loop_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI with a loop over GT objects and bounding-box crops (the common implementation)."""
    g_ids = np.unique(gt)[1:]
    p_ids = np.unique(pred)[1:]
    p_area = dict(zip(*np.unique(pred[pred > 0], return_counts=True), strict=True))
    first = {int(v): int(i) for v, i in zip(*np.unique(pred.ravel(), return_index=True), strict=True)}
    used: set[int] = set()
    c = u = 0
    boxes = ndi.find_objects(gt)
    for gi in g_ids:
        sl = boxes[gi - 1]
        gm = gt[sl] == gi
        g_area = int(gm.sum())
        best = None
        for pj in np.unique(pred[sl][gm]):
            if pj == 0:
                continue
            inter = int(np.sum(gm & (pred[sl] == pj)))
            union = g_area + int(p_area[pj]) - inter
            key = (inter / union, inter, -first[int(pj)])
            if best is None or key > best[0]:
                best = (key, int(pj), inter, union)
        if best is None:
            u += g_area
        else:
            c += best[2]
            u += best[3]
            used.add(best[1])
    u += sum(int(p_area[pj]) for pj in p_ids if int(pj) not in used)
    return c / u


@pytest.mark.benchmark(group="metrics: aji")
@pytest.mark.parametrize("size", SIZES)
def test_aji_nucseg(benchmark, size: int) -> None:  # noqa: ANN001
    gt, pred = _scene(size)
    value = benchmark(aji, gt, pred)
    benchmark.extra_info.update({"size": size, "n_true": int(gt.max()), "aji": value})
    assert 0.5 < value < 0.9


@pytest.mark.benchmark(group="metrics: aji")
@pytest.mark.parametrize("size", SIZES)
def test_aji_loop(benchmark, size: int) -> None:  # noqa: ANN001
    gt, pred = _scene(size)
    value = benchmark.pedantic(loop_aji, args=(gt, pred), rounds=3 if size <= 512 else 1)
    assert value == pytest.approx(aji(gt, pred))


@pytest.mark.benchmark(group="metrics: evaluate")
@pytest.mark.parametrize("size", SIZES)
def test_evaluate_nucseg(benchmark, size: int) -> None:  # noqa: ANN001
    gt, pred = _scene(size)
    out = benchmark(evaluate, gt, pred)
    assert out["n_true"] == gt.max()
    assert out["aji"] == pytest.approx(aji(gt, pred))


@pytest.mark.benchmark(group="metrics: object_scores at IoU 0.3")
@pytest.mark.parametrize("size", SIZES)
def test_object_scores_below_half(benchmark, size: int) -> None:  # noqa: ANN001
    # threshold 0.3: the assignment path (connected blocks + linear_sum_assignment)
    gt, pred = _scene(size)
    s = benchmark(object_scores, gt, pred, 0.3)
    assert s.tp >= object_scores(gt, pred).tp
