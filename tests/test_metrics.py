"""Tests of nucseg.metrics against hand-computed cases and brute-force references."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.draw import disk

from nucseg.metrics import ObjectScores, PixelScores, aji, evaluate, object_scores, pixel_scores

# --------------------------------------------------------------------------- brute-force references
# Written independently of the module: one boolean mask per object, nested loops.


def _ids(labels: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(labels) if i != 0]


def bf_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection matrices, rows = GT objects, cols = predicted objects."""
    g_ids, p_ids = _ids(gt), _ids(pred)
    iou = np.zeros((len(g_ids), len(p_ids)))
    inter = np.zeros((len(g_ids), len(p_ids)), dtype=int)
    for i, gi in enumerate(g_ids):
        gm = gt == gi
        for j, pj in enumerate(p_ids):
            pm = pred == pj
            inter[i, j] = np.sum(gm & pm)
            iou[i, j] = inter[i, j] / np.sum(gm | pm)
    return iou, inter


def bf_matching(gt: np.ndarray, pred: np.ndarray, thr: float) -> tuple[int, float]:
    """(number of matches, sum of their IoU): best over every one-to-one assignment."""
    iou, _ = bf_iou(gt, pred)
    n = max(iou.shape)
    square = np.zeros((n, n))
    square[: iou.shape[0], : iou.shape[1]] = iou
    best = (0, 0.0)
    for perm in itertools.permutations(range(n)):
        vals = square[np.arange(n), perm]
        vals = vals[vals > thr]
        cand = (len(vals), float(vals.sum()))
        if cand[0] > best[0] or (cand[0] == best[0] and cand[1] > best[1] + 1e-12):
            best = cand
    return best


def bf_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. 2017, Algorithm 1, with a tie-break by intersection then raster order."""
    g_ids, p_ids = _ids(gt), _ids(pred)
    if not g_ids and not p_ids:
        return 1.0
    first = {pj: int(np.flatnonzero(pred.ravel() == pj)[0]) for pj in p_ids}
    c = u = 0
    used: set[int] = set()
    for gi in g_ids:
        gm = gt == gi
        best = None
        for pj in p_ids:
            pm = pred == pj
            i = int(np.sum(gm & pm))
            un = int(np.sum(gm | pm))
            if i == 0:
                continue
            key = (i / un, i, -first[pj])
            if best is None or key > best[0]:
                best = (key, pj, i, un)
        if best is None:
            u += int(gm.sum())
        else:
            c += best[2]
            u += best[3]
            used.add(best[1])
    for pj in p_ids:
        if pj not in used:
            u += int(np.sum(pred == pj))
    return c / u if u else 0.0


def square_image(shape: tuple[int, int], boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Label image from (label, r0, c0, r1, c1) boxes, later boxes drawn on top."""
    img = np.zeros(shape, dtype=np.int32)
    for lab, r0, c0, r1, c1 in boxes:
        img[r0:r1, c0:c1] = lab
    return img


# --------------------------------------------------------------------------- strategies

small_labels = hnp.arrays(np.int32, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 5))


@st.composite
def box_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction made of overlapping rectangles: realistic, high-IoU pairs."""
    shape = (16, 16)
    out = []
    for _ in range(2):
        boxes = []
        for lab in range(1, draw(st.integers(0, 5)) + 1):
            r0, c0 = draw(st.integers(0, 13)), draw(st.integers(0, 13))
            boxes.append((lab, r0, c0, r0 + draw(st.integers(1, 8)), c0 + draw(st.integers(1, 8))))
        out.append(square_image(shape, boxes))
    return out[0], out[1]


label_pairs = st.one_of(
    box_pair(),
    st.integers(1, 9).flatmap(
        lambda w: st.tuples(
            hnp.arrays(np.int32, (6, w), elements=st.integers(0, 4)),
            hnp.arrays(np.int32, (6, w), elements=st.integers(0, 4)),
        )
    ),
)


# --------------------------------------------------------------------------- pixel scores


def test_pixel_scores_hand_computed() -> None:
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True  # 8 px, 4 in common
    s = pixel_scores(pred, gt)
    # TP 4, FP 4, FN 4, TN 4
    assert s == PixelScores(accuracy=0.5, iu=4 / 12, recall=0.5, precision=0.5, f1=0.5, performance=0.5)


def test_pixel_scores_accepts_label_images() -> None:
    gt = np.array([[0, 3, 3], [0, 0, 7]])
    pred = np.array([[1, 1, 0], [0, 0, 2]], dtype=np.uint16)
    s = pixel_scores(pred, gt)
    # TP 2, FP 1, FN 1, TN 2
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.performance == pytest.approx((2 / 3 + 2 / 3) / 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_labels, small_labels)
def test_pixel_scores_match_counts(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        b = np.resize(b, a.shape)
    p, g = a > 0, b > 0
    tp, fp = np.sum(p & g), np.sum(p & ~g)
    fn, tn = np.sum(~p & g), np.sum(~p & ~g)
    s = pixel_scores(a, b)
    assert s.accuracy == pytest.approx((tp + tn) / a.size)
    if tp + fp:
        assert s.precision == pytest.approx(tp / (tp + fp))
    if tp + fn:
        assert s.recall == pytest.approx(tp / (tp + fn))
    if tp + fp + fn:
        assert s.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert s.iu == pytest.approx(tp / (tp + fp + fn))
    if tp + fn and tn + fp:
        assert s.performance == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)


def test_pixel_scores_empty() -> None:
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert pixel_scores(empty, empty) == PixelScores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    s = pixel_scores(full, empty)  # everything is a false positive
    assert (s.accuracy, s.iu, s.recall, s.precision, s.f1, s.performance) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    s = pixel_scores(empty, full)
    assert (s.iu, s.recall, s.precision, s.f1) == (0.0, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- object scores: hand-computed


def test_shifted_squares_known_iou() -> None:
    gt = square_image((30, 30), [(1, 5, 5, 15, 15)])
    pred = square_image((30, 30), [(9, 5, 7, 15, 17)])  # shift by 2: 80 / 120
    s = object_scores(gt, pred)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.sq == pytest.approx(2 / 3)
    assert s.pq == pytest.approx(2 / 3)
    assert aji(gt, pred) == pytest.approx(2 / 3)
    far = square_image((30, 30), [(9, 5, 11, 15, 21)])  # shift by 6: 40 / 160 = 0.25
    s = object_scores(gt, far)
    assert (s.tp, s.fp, s.fn, s.f1, s.pq) == (0, 1, 1, 0.0, 0.0)
    s = object_scores(gt, far, iou_threshold=0.2)
    assert (s.tp, s.sq) == (1, pytest.approx(0.25))


@pytest.mark.parametrize("shift", [4, 10, 16, 24])
def test_shifted_disks_analytic_iou(shift: int) -> None:
    r = 30.0
    gt = np.zeros((120, 160), np.int32)
    pred = np.zeros_like(gt)
    gt[disk((60, 60), r, shape=gt.shape)] = 1
    pred[disk((60, 60 + shift), r, shape=gt.shape)] = 4
    d = float(shift)
    lens = 2 * r**2 * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r**2 - d**2)
    analytic = lens / (2 * math.pi * r**2 - lens)
    s = object_scores(gt, pred, iou_threshold=0.1)
    assert s.tp == 1
    assert s.sq == pytest.approx(analytic, abs=0.01)  # pixelisation error of a r=30 disk
    assert s.sq == pytest.approx(bf_iou(gt, pred)[0][0, 0], rel=1e-12)
    assert (object_scores(gt, pred).tp == 1) == (analytic > 0.5)
    assert aji(gt, pred) == pytest.approx(s.sq)


def test_split_object() -> None:
    gt = square_image((20, 30), [(1, 0, 0, 10, 20)])
    even = square_image((20, 30), [(1, 0, 0, 10, 10), (2, 0, 10, 10, 20)])  # IoU 0.5 each: not > 0.5
    s = object_scores(gt, even)
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn, s.count_error) == (1, 2, 0, 2, 1, 1)
    assert aji(gt, even) == pytest.approx(100 / 300)
    uneven = square_image((20, 30), [(1, 0, 0, 10, 12), (2, 0, 12, 10, 20)])  # IoU 0.6 and 0.4
    s = object_scores(gt, uneven)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert (s.precision, s.recall) == (0.5, 1.0)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.sq == pytest.approx(0.6)
    assert s.pq == pytest.approx(0.4)
    assert aji(gt, uneven) == pytest.approx(120 / 280)
    assert pixel_scores(uneven, gt).f1 == 1.0  # a split is invisible at the pixel level


def test_merged_objects() -> None:
    gt = square_image((20, 30), [(1, 0, 0, 10, 12), (2, 0, 12, 10, 20)])
    pred = square_image((20, 30), [(3, 0, 0, 10, 20)])
    s = object_scores(gt, pred)
    assert (s.tp, s.fp, s.fn, s.count_error) == (1, 0, 1, -1)
    assert s.sq == pytest.approx(0.6)
    # both GT objects pick the merged prediction: it counts twice in the union
    assert aji(gt, pred) == pytest.approx((120 + 80) / (200 + 200))


def test_one_to_one_below_half() -> None:
    # one GT, two predictions of IoU 0.4 and 0.3: only one may match
    gt = square_image((10, 30), [(1, 0, 0, 10, 10)])
    pred = square_image((10, 30), [(1, 0, 0, 10, 4), (2, 0, 4, 10, 7)])
    s = object_scores(gt, pred, iou_threshold=0.2)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.sq == pytest.approx(0.4)


def test_assignment_prefers_more_matches() -> None:
    # greedy on IoU would pair G1-P2 (0.52) and leave G2 unmatched; the best has 2 matches
    gt = square_image((10, 40), [(1, 0, 0, 10, 20), (2, 0, 20, 10, 40)])
    pred = square_image((10, 40), [(1, 0, 0, 10, 9), (2, 0, 9, 10, 21)])
    iou, _ = bf_iou(gt, pred)
    assert iou[0, 0] == pytest.approx(0.45) and iou[0, 1] > 0.3 and iou[1, 1] < iou[0, 1]
    s = object_scores(gt, pred, iou_threshold=0.0)
    assert s.tp == 2
    assert s.sq == pytest.approx((0.45 + 10 / 310) / 2)


def test_empty_images() -> None:
    empty = np.zeros((8, 8), np.int32)
    one = square_image((8, 8), [(1, 2, 2, 5, 5)])
    both = object_scores(empty, empty)
    assert both == ObjectScores(0, 0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0)
    assert aji(empty, empty) == 1.0
    for gt, pred in ((empty, one), (one, empty)):
        s = object_scores(gt, pred)
        assert (s.precision, s.recall, s.f1, s.sq, s.dq, s.pq) == (0.0,) * 6
        assert aji(gt, pred) == 0.0
    m = evaluate(empty, empty)
    assert all(m[k] == 1.0 for k in ("f1", "iu", "object_f1", "pq", "aji", "accuracy"))
    assert m["n_true"] == 0.0 and m["count_error"] == 0.0


def test_evaluate_keys_and_values() -> None:
    gt = square_image((20, 30), [(1, 0, 0, 10, 12), (2, 0, 12, 10, 20)])
    pred = square_image((20, 30), [(5, 0, 0, 10, 20), (6, 15, 15, 18, 18)])
    m = evaluate(gt, pred)
    obj = object_scores(gt, pred)
    pix = pixel_scores(pred, gt)
    assert m["object_f1"] == obj.f1 and m["object_precision"] == obj.precision
    assert all(m[k] == v for k, v in asdict(pix).items())
    assert (m["pixel_tp"], m["pixel_fp"], m["pixel_fn"]) == (200.0, 9.0, 0.0)  # both squares inside the 10x20 one
    assert m["pq"] == obj.pq and m["count_error"] == 0.0 and m["tp"] == 1.0
    assert m["aji"] == aji(gt, pred)
    assert all(isinstance(v, float) for v in m.values())
    assert {"accuracy", "iu", "recall", "performance", "object_recall", "sq", "dq", "n_pred", "fp", "fn"} <= m.keys()


# --------------------------------------------------------------------------- against brute force


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs, st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7]))
def test_object_scores_vs_brute_force(pair: tuple[np.ndarray, np.ndarray], thr: float) -> None:
    gt, pred = pair
    s = object_scores(gt, pred, iou_threshold=thr)
    tp, iou_sum = bf_matching(gt, pred, thr)
    n_true, n_pred = len(_ids(gt)), len(_ids(pred))
    assert (s.n_true, s.n_pred, s.tp) == (n_true, n_pred, tp)
    assert (s.fp, s.fn, s.count_error) == (n_pred - tp, n_true - tp, n_pred - n_true)
    if tp:
        assert s.sq == pytest.approx(iou_sum / tp)
        assert s.f1 == pytest.approx(2 * tp / (n_true + n_pred))
    assert s.dq == s.f1
    assert s.pq == pytest.approx(s.sq * s.dq)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs)
def test_aji_vs_brute_force(pair: tuple[np.ndarray, np.ndarray]) -> None:
    gt, pred = pair
    assert aji(gt, pred) == pytest.approx(bf_aji(gt, pred))


# Found by this test at IoU 0.2 (issue 20): three pairs tie for the optimal total IoU, and the
# mean IoU of the matched pairs changed in its last bit with the order of the sum.
_ORDER_COUNTEREXAMPLE = (
    np.array([[0, 1], [3, 3], [3, 2], [3, 3], [3, 3], [3, 3]], dtype=np.int32),
    np.array([[2, 2], [0, 3], [0, 1], [2, 0], [3, 1], [1, 1]], dtype=np.int32),
)


def _relabel(labels: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    return np.vectorize(lambda v: lut.get(int(v), 0), otypes=[np.int64])(labels)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs, st.randoms(use_true_random=False))
@example(_ORDER_COUNTEREXAMPLE, __import__("random").Random(0))
def test_invariant_to_label_permutation(pair: tuple[np.ndarray, np.ndarray], rnd) -> None:  # noqa: ANN001
    gt, pred = pair

    def scramble(labels: np.ndarray) -> np.ndarray:
        ids = _ids(labels)
        return _relabel(labels, dict(zip(ids, rnd.sample(range(1, 10**6), len(ids)), strict=True)))

    gt2, pred2 = scramble(gt), scramble(pred)
    # bit-identical, not approximately equal: the scores must not depend on numbering at all
    assert evaluate(gt2, pred2) == evaluate(gt, pred)
    for thr in (0.0, 0.2, 0.3, 0.5):
        assert object_scores(gt2, pred2, thr) == object_scores(gt, pred, thr)


def test_counterexample_every_numbering() -> None:
    # All 36 numberings of the pinned counterexample give one result at every threshold.
    gt, pred = _ORDER_COUNTEREXAMPLE
    for thr in (0.0, 0.2, 0.5):
        results = {
            object_scores(_relabel(gt, dict(zip((1, 2, 3), pg))), _relabel(pred, dict(zip((1, 2, 3), pp))), thr)
            for pg in itertools.permutations((1, 2, 3))
            for pp in itertools.permutations((1, 2, 3))
        }
        assert len(results) == 1
    tp, iou_sum = bf_matching(gt, pred, 0.2)
    s = object_scores(gt, pred, 0.2)
    assert s.tp == tp == 3
    assert s.sq == pytest.approx(iou_sum / 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs, st.sampled_from([0.5, 0.6, 0.8]))
def test_unique_matching_at_half_or_above(pair: tuple[np.ndarray, np.ndarray], thr: float) -> None:
    # At IoU > 0.5 every pair above the threshold is a match (no assignment is solved): the
    # matched pairs are exactly the brute-force pairs above the threshold.
    gt, pred = pair
    iou, _ = bf_iou(gt, pred)
    above = iou[iou > thr]
    assert (iou > thr).sum(axis=0).max(initial=0) <= 1 and (iou > thr).sum(axis=1).max(initial=0) <= 1
    s = object_scores(gt, pred, thr)
    assert s.tp == above.size
    if above.size:
        assert s.sq == pytest.approx(math.fsum(above) / above.size, rel=0, abs=1e-15)


def test_aji_ties_do_not_depend_on_numbering() -> None:
    # G1 ties (IoU 2/6, 2 px in common) between P1 and P2, G2 between P2 and P3.
    # Raster order picks P1 for G1 and P2 for G2: C = 4, U = 6 + 6 + |P3| = 16.
    # "Highest id wins" with P2 numbered last would pick P2 twice: 4 / 20.
    gt = square_image((2, 6), [(1, 0, 1, 2, 3), (2, 0, 3, 2, 5)])
    for ids in ((1, 3, 2), (3, 1, 2), (2, 3, 1), (1, 2, 3)):
        pred = square_image((2, 6), [(ids[0], 0, 0, 2, 2), (ids[1], 0, 2, 2, 4), (ids[2], 0, 4, 2, 6)])
        assert aji(gt, pred) == pytest.approx(4 / 16)
        assert bf_aji(gt, pred) == pytest.approx(4 / 16)


# --------------------------------------------------------------------------- dtypes, large ids, many objects


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_integer_dtypes(dtype: type) -> None:
    gt = square_image((20, 30), [(1, 0, 0, 10, 12), (2, 0, 12, 10, 20)])
    pred = square_image((20, 30), [(3, 0, 0, 10, 20)])
    ref = evaluate(gt, pred)
    assert evaluate(gt.astype(dtype), pred.astype(dtype)) == ref


def test_huge_sparse_ids() -> None:
    gt = square_image((20, 30), [(1, 0, 0, 10, 12), (2, 0, 12, 10, 20)])
    pred = square_image((20, 30), [(3, 0, 0, 10, 20)])
    big_gt = gt.astype(np.int64) * 10**12
    big_pred = pred.astype(np.int64) * 7 * 10**11
    assert evaluate(big_gt, big_pred) == evaluate(gt, pred)


def test_many_objects_sparse_path() -> None:
    # 3600 2x2 blocks (too many for a dense contingency table); the prediction is
    # the same grid shifted by one column (wrapping): every prediction overlaps
    # two GT blocks with IoU 2/6.
    gt = (np.arange(120)[:, None] // 2) * 60 + (np.arange(120)[None, :] // 2) + 1
    pred = np.roll(gt, 1, axis=1) + 5000
    s = object_scores(gt, pred)
    assert (s.n_true, s.n_pred, s.tp) == (3600, 3600, 0)
    s = object_scores(gt, pred, iou_threshold=0.3)
    assert s.tp == 3600  # a perfect matching along each row of blocks
    assert s.sq == pytest.approx(1 / 3)
    # each GT ties between its two predictions and takes the one starting first
    # in raster order: its left neighbour, except the last block of each row of
    # blocks, whose right neighbour is the wrapped prediction starting at column 0.
    # So 60 predictions are chosen twice and 60 (of 4 px) are never chosen.
    assert aji(gt, pred) == pytest.approx(3600 * 2 / (3600 * 6 + 60 * 4))
    assert aji(gt[:, :8], pred[:, :8]) == pytest.approx(bf_aji(gt[:, :8], pred[:, :8]))


# --------------------------------------------------------------------------- validation


def test_rejects_bad_input() -> None:
    lab = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="same shape"):
        evaluate(lab, np.zeros((4, 5), np.int32))
    with pytest.raises(TypeError, match="dtype float"):
        pixel_scores(lab.astype(float), lab)
    with pytest.raises(TypeError, match="bool mask"):
        object_scores(lab.astype(bool), lab)
    with pytest.raises(TypeError, match="numpy array"):
        aji([[0, 1]], lab)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        aji(lab - 1, lab)
    with pytest.raises(ValueError, match="iou_threshold"):
        object_scores(lab, lab, iou_threshold=1.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        object_scores(lab, lab, iou_threshold=float("nan"))
    with pytest.raises(TypeError, match="iou_threshold"):
        object_scores(lab, lab, iou_threshold="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        pixel_scores(np.zeros((0, 3), bool), np.zeros((0, 3), bool))
