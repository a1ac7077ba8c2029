"""Segmentation metrics: pixel scores, object matching, panoptic quality, AJI.

All functions take numpy arrays of the same shape. A *mask* is a boolean or
integer array where nonzero means nucleus. A *label image* is an integer array
where 0 is background and every positive value is one object; ids need not be
consecutive (``{0, 7, 12}`` is fine) and their order never matters.

Overlaps between objects are computed in one pass over the pixels (a sparse
contingency table of paired labels built with :func:`numpy.bincount` or
:func:`numpy.unique`), so the cost is a few sorts of the image whatever the
number of nuclei.

Edge cases, the same everywhere:

* both images empty (no foreground, no objects): every score is 1.0;
* exactly one of them empty: every score is 0.0 (except pixel accuracy and
  the true-negative part of ``performance``, which still count background);
* any other ratio whose denominator is zero is 1.0 when the two inputs agree
  on that part of the image and 0.0 otherwise.

References
----------
.. [1] P. Naylor, M. Laé, F. Reyal, T. Walter, "Nuclei segmentation in
   histopathology images using deep neural networks", ISBI 2017.
.. [2] A. Kirillov, K. He, R. Girshick, C. Rother, P. Dollár, "Panoptic
   segmentation", CVPR 2019.
.. [3] N. Kumar, R. Verma, S. Sharma, S. Bhargava, A. Vahadane, A. Sethi,
   "A dataset and a technique for generalized nuclear segmentation for
   computational pathology", IEEE TMI 36(7), 2017.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .postprocess import first_pixels

__all__ = [
    "ObjectScores",
    "PixelScores",
    "aji",
    "evaluate",
    "object_scores",
    "pixel_scores",
]


@dataclass(frozen=True)
class PixelScores:
    """Pixel-level scores of a foreground mask (Table 1 of Naylor et al. 2017).

    Attributes
    ----------
    accuracy : float
        (TP + TN) / number of pixels.
    iu : float
        Intersection over union of the foregrounds, TP / (TP + FP + FN).
    recall : float
        True positive rate, TP / (TP + FN).
    precision : float
        TP / (TP + FP).
    f1 : float
        2 TP / (2 TP + FP + FN), the Dice coefficient.
    performance : float
        Balanced accuracy, (TPR + TNR) / 2.
    """

    accuracy: float
    iu: float
    recall: float
    precision: float
    f1: float
    performance: float


@dataclass(frozen=True)
class ObjectScores:
    """Object-level scores from a one-to-one matching of instances.

    Attributes
    ----------
    n_true, n_pred : int
        Number of objects in the ground truth and in the prediction.
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched ground-truth objects.
    precision, recall, f1 : float
        Object detection scores at the IoU threshold.
    sq : float
        Segmentation quality: mean IoU of the matched pairs.
    dq : float
        Detection quality, TP / (TP + FP/2 + FN/2); equal to ``f1``.
    pq : float
        Panoptic quality, ``sq * dq`` (Kirillov et al. 2019 at threshold 0.5).
    count_error : int
        ``n_pred - n_true``: positive when over-segmenting.
    """

    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    sq: float
    dq: float
    pq: float
    count_error: int


# --------------------------------------------------------------------------- validation


def _check_pair(a: object, b: object, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays, same shape, bool or integer, non-negative."""
    arrays = []
    for arr, name in ((a, name_a), (b, name_b)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim < 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty image, got shape {arr.shape}")
        if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{name} must be a bool mask or an integer label image, got dtype {arr.dtype} "
                "(threshold probability maps first)"
            )
        if np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
            raise ValueError(f"{name} must not contain negative labels (min is {arr.min()})")
        if arr.dtype == np.uint64 and arr.max() >= 2**63:
            raise ValueError(f"{name} has labels of 2**63 or more (max is {arr.max()}); relabel it")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {arrays[0].shape} and {arrays[1].shape}")
    return arrays[0], arrays[1]


def _check_labels(gt_labels: object, pred_labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Label images: like :func:`_check_pair` but bool is refused (one object per mask is a trap)."""
    gt, pred = _check_pair(gt_labels, pred_labels, "gt_labels", "pred_labels")
    for arr, name in ((gt, "gt_labels"), (pred, "pred_labels")):
        if arr.dtype == np.bool_:
            raise TypeError(
                f"{name} must be an integer label image, got a bool mask; "
                "label connected components first (e.g. skimage.measure.label(mask, connectivity=1))"
            )
    return gt, pred


def _ratio(num: float, den: float, agree: bool) -> float:
    """num / den, or 1.0 / 0.0 when den is zero and the inputs agree / disagree."""
    if den == 0:
        return 1.0 if agree else 0.0
    return float(num) / float(den)


# --------------------------------------------------------------------------- pixel scores


def pixel_scores(pred: np.ndarray, gt: np.ndarray) -> PixelScores:
    """Pixel-level scores of a predicted foreground against the ground truth.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Bool masks or integer label images of the same shape; nonzero means
        nucleus. Float arrays are refused (threshold probability maps first).

    Returns
    -------
    PixelScores
        Accuracy, IU, recall, precision, F1 and performance.

    Raises
    ------
    TypeError
        If an input is not a bool or integer numpy array.
    ValueError
        If the shapes differ or a label is negative.

    Notes
    -----
    A ratio whose denominator is zero (e.g. recall when ``gt`` has no
    foreground) is 1.0 when the masks are identical and 0.0 otherwise, so
    two empty masks score 1.0 everywhere.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), bool); gt[:2] = True
    >>> pred = np.zeros((4, 4), bool); pred[:1] = True
    >>> s = pixel_scores(pred, gt)
    >>> s.precision, s.recall, s.iu
    (1.0, 0.5, 0.5)
    """
    p, g = _check_pair(pred, gt, "pred", "gt")
    return _scores_from_counts(*_pixel_counts(p, g), p.size)


def _pixel_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """True-positive, false-positive and false-negative pixel counts of two checked masks."""
    p = pred.astype(bool, copy=False).ravel()
    g = gt.astype(bool, copy=False).ravel()
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def _scores_from_counts(tp: int, fp: int, fn: int, n: int) -> PixelScores:
    tn = n - tp - fp - fn
    same = fp == 0 and fn == 0
    tpr = _ratio(tp, tp + fn, same)
    tnr = _ratio(tn, tn + fp, same)
    return PixelScores(
        accuracy=(tp + tn) / n,
        iu=_ratio(tp, tp + fp + fn, same),
        recall=tpr,
        precision=_ratio(tp, tp + fp, same),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, same),
        performance=(tpr + tnr) / 2,
    )


# --------------------------------------------------------------------------- overlaps


def _flat_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flattened non-negative ids small enough for bincount, and the largest id.

    Ids are kept as they are when the largest is at most a few times the
    number of pixels (no full-image relabelling pass); huge sparse ids
    (``10**12``) are compacted by sorting.
    """
    flat = labels.ravel()
    if flat.dtype == np.bool_ or flat.dtype == np.uint64:
        flat = flat.astype(np.int64)  # bincount refuses both; ids above 2**63 are not images
    top = int(flat.max())
    if top < 4 * flat.size + 1024:
        return flat, top
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.astype(np.int64, copy=False).ravel()
    if ids[0] != 0:
        inverse += 1  # keep 0 for the background
    return inverse, int(inverse.max())


def _present(ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Areas of the objects present, their ids, and a lut id -> 0-based index (-1 if absent)."""
    area = np.bincount(ids, minlength=top + 1)
    area[0] = 0
    present = np.flatnonzero(area)
    lut = np.full(top + 1, -1, dtype=np.int64)
    lut[present] = np.arange(present.size)
    return area[present].astype(np.int64), present, lut


@dataclass(frozen=True)
class _Overlap:
    """Sparse contingency table between GT objects (rows) and predicted objects (cols)."""

    n_true: int
    n_pred: int
    area_true: np.ndarray  # (n_true,)
    area_pred: np.ndarray  # (n_pred,)
    rows: np.ndarray  # (k,) 0-based GT index of each overlapping pair
    cols: np.ndarray  # (k,) 0-based pred index
    inter: np.ndarray  # (k,) pixels in common, > 0
    true_flat: np.ndarray  # flattened ground-truth ids, for the raster-order tie-breaks
    pred_flat: np.ndarray  # flattened prediction ids

    @property
    def iou(self) -> np.ndarray:
        union = self.area_true[self.rows] + self.area_pred[self.cols] - self.inter
        return self.inter / union

    def first_pixel(self) -> np.ndarray:
        """Raster index of the first pixel of each predicted object: ids do not matter to it."""
        return first_pixels(self.pred_flat)[1]

    def first_pixel_true(self) -> np.ndarray:
        """Raster index of the first pixel of each ground-truth object."""
        return first_pixels(self.true_flat)[1]


def _overlap(gt: np.ndarray, pred: np.ndarray) -> _Overlap:
    """One pass over the pixels: object areas and every overlapping (gt, pred) pair."""
    g, top_g = _flat_ids(gt)
    p, top_p = _flat_ids(pred)
    area_true, _, lut_g = _present(g, top_g)
    area_pred, _, lut_p = _present(p, top_p)
    both = (g > 0) & (p > 0)
    width = top_p + 1
    codes = g[both].astype(np.int64) * width + p[both]
    if (top_g + 1) * width <= max(4 * codes.size, 1 << 20):
        counts = np.bincount(codes, minlength=(top_g + 1) * width)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:
        # many objects: the dense table would not fit, sort the pairs instead
        pairs, inter = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(pairs, width)
    return _Overlap(
        n_true=area_true.size,
        n_pred=area_pred.size,
        area_true=area_true,
        area_pred=area_pred,
        rows=lut_g[rows],
        cols=lut_p[cols],
        inter=inter.astype(np.int64),
        true_flat=g,
        pred_flat=p,
    )


# --------------------------------------------------------------------------- matching


def _match(ov: _Overlap, iou_threshold: float) -> np.ndarray:
    """IoU of each matched pair of a one-to-one matching with IoU > iou_threshold.

    The matching maximises the number of matched pairs, then their total IoU
    (StarDist's ``matching`` rule). It never depends on how objects are
    numbered: each block of competing pairs is laid out with its objects in
    raster order of their first pixel before it is solved, so among several
    optimal assignments the same one is chosen whatever the ids.
    """
    iou = ov.iou
    cand = iou > iou_threshold
    if iou_threshold >= 0.5:
        # IoU > 0.5 makes a pair unique for both objects: no assignment needed
        return iou[cand]
    rows, cols, w = ov.rows[cand], ov.cols[cand], iou[cand]
    if w.size == 0:
        return w
    # solve each connected block of the candidate graph on its own: blocks are tiny
    n = ov.n_true + ov.n_pred
    graph = sparse.coo_matrix((np.ones(w.size), (rows, ov.n_true + cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[rows]
    per_comp = np.bincount(edge_comp)
    single = per_comp[edge_comp] == 1
    matched = [w[single]]
    multi = np.flatnonzero(~single)
    if multi.size == 0:
        return w[single]
    # raster rank of every object: the block layout, hence the choice among ties, ignores ids
    rank_true = np.argsort(np.argsort(ov.first_pixel_true()))
    rank_pred = np.argsort(np.argsort(ov.first_pixel()))
    order = multi[np.argsort(edge_comp[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for block in np.split(order, bounds):
        _, r = np.unique(rank_true[rows[block]], return_inverse=True)
        _, c = np.unique(rank_pred[cols[block]], return_inverse=True)
        # most matches first, then the largest total IoU: the IoU term sums to < 1
        block_iou = np.zeros((r.max() + 1, c.max() + 1))
        block_iou[r, c] = w[block]
        score = np.where(block_iou > 0, 1.0 + block_iou / (2.0 * block.size), 0.0)
        ri, ci = linear_sum_assignment(score, maximize=True)
        keep = score[ri, ci] > 0
        matched.append(block_iou[ri[keep], ci[keep]])
    return np.concatenate(matched)


def _object_scores(ov: _Overlap, thr: float) -> ObjectScores:
    """:func:`object_scores` from a contingency table."""
    ious = _match(ov, thr)
    tp = int(ious.size)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    same = ov.n_true == 0 and ov.n_pred == 0
    dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn, same)
    # fsum is exactly rounded, so the mean does not depend on the order of the pairs
    sq = math.fsum(ious) / tp if tp else (1.0 if same else 0.0)
    return ObjectScores(
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, ov.n_pred, same),
        recall=_ratio(tp, ov.n_true, same),
        f1=dq,
        sq=sq,
        dq=dq,
        pq=sq * dq,
        count_error=ov.n_pred - ov.n_true,
    )


def _aji(ov: _Overlap) -> float:
    """:func:`aji` from a contingency table."""
    if ov.n_true == 0 and ov.n_pred == 0:
        return 1.0
    if ov.n_true == 0 or ov.n_pred == 0:
        return 0.0
    iou = ov.iou
    # best pair per GT row: sort by (row, iou, inter) and keep the last of each row
    order = np.lexsort((ov.inter, iou, ov.rows))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = ov.rows[order][1:] != ov.rows[order][:-1]
    tied = ~last[:-1] & last[1:]  # runner-up of a row...
    tied[tied] = (iou[order[:-1][tied]] == iou[order[1:][tied]]) & (
        ov.inter[order[:-1][tied]] == ov.inter[order[1:][tied]]
    )  # ...equal to the best on both keys
    if tied.any():
        # rare exact ties: break them by raster order so numbering never matters
        order = np.lexsort((-ov.first_pixel()[ov.cols], ov.inter, iou, ov.rows))
    best = order[last]
    inter = ov.inter[best]
    union = ov.area_true[ov.rows[best]] + ov.area_pred[ov.cols[best]] - inter
    used = np.zeros(ov.n_pred, dtype=bool)
    used[ov.cols[best]] = True
    unmatched_true = ov.area_true.sum() - ov.area_true[ov.rows[best]].sum()
    total_u = union.sum() + unmatched_true + ov.area_pred[~used].sum()
    return float(inter.sum() / total_u)


def _validate_threshold(iou_threshold: float) -> float:
    try:
        thr = float(iou_threshold)
    except (TypeError, ValueError):
        raise TypeError(f"iou_threshold must be a number, got {iou_threshold!r}") from None
    if not (0.0 <= thr < 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
    return thr


def object_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> ObjectScores:
    """Object-level detection scores and panoptic quality.

    A predicted object and a ground-truth object match when their IoU is
    strictly greater than ``iou_threshold``; each object matches at most once.

    Parameters
    ----------
    gt_labels, pred_labels : numpy.ndarray
        Integer label images of the same shape (0 = background).
    iou_threshold : float, default 0.5
        Minimum IoU (exclusive) for a match, in [0, 1).

    Returns
    -------
    ObjectScores
        Counts, precision/recall/F1, SQ/DQ/PQ and the count error.

    Raises
    ------
    TypeError
        If an input is not an integer numpy array (bool masks are refused).
    ValueError
        If the shapes differ, a label is negative or the threshold is outside
        [0, 1).

    Notes
    -----
    At thresholds >= 0.5 the matching is unique: an object cannot have IoU
    above 0.5 with two disjoint objects. Below 0.5 the candidate pairs form a
    bipartite graph; each connected block is solved with
    :func:`scipy.optimize.linear_sum_assignment`, maximising the number of
    matches first and the total IoU second (the rule of StarDist's
    ``matching``). Tie rule: when several assignments are optimal, the one
    chosen is fixed by the raster order of the objects' first pixels, never by
    their ids, so renumbering either image leaves every score bit-identical.

    SQ is the mean IoU of the matched pairs, DQ = TP / (TP + FP/2 + FN/2)
    (equal to the object F1) and PQ = SQ * DQ; with the default threshold this
    is the panoptic quality of Kirillov et al. (2019). With no match SQ is 0;
    with both images empty every score is 1.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((6, 6), int); gt[:2, :2] = 1; gt[4:, 4:] = 2
    >>> pred = np.zeros((6, 6), int); pred[:2, :2] = 5
    >>> s = object_scores(gt, pred)
    >>> s.tp, s.fn, s.precision, s.recall
    (1, 1, 1.0, 0.5)
    """
    gt, pred = _check_labels(gt_labels, pred_labels)
    return _object_scores(_overlap(gt, pred), _validate_threshold(iou_threshold))


def aji(gt_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017), original definition.

    Every ground-truth object G is paired with the predicted object S of
    largest IoU; ``|G ∩ S|`` is added to C and ``|G ∪ S|`` to U (``|G|`` alone
    when G overlaps nothing). Predicted objects never chosen add their area to
    U. AJI = C / U.

    Parameters
    ----------
    gt_labels, pred_labels : numpy.ndarray
        Integer label images of the same shape (0 = background).

    Returns
    -------
    float
        AJI in [0, 1]; 1.0 when both images are empty, 0.0 when only one is.

    Raises
    ------
    TypeError
        If an input is not an integer numpy array (bool masks are refused).
    ValueError
        If the shapes differ or a label is negative.

    Notes
    -----
    As in the original, a prediction may be chosen by several ground-truth
    objects (its pixels then count in U more than once); this is what
    penalises merges. Ties in IoU go to the larger intersection, then to the
    object that comes first in raster order, which makes the score
    independent of how objects are numbered.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), int); gt[:2] = 1
    >>> pred = np.zeros((4, 4), int); pred[:1] = 1
    >>> aji(gt, pred)
    0.5
    """
    gt, pred = _check_labels(gt_labels, pred_labels)
    return _aji(_overlap(gt, pred))


def evaluate(gt_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """Every metric of this module in one flat dictionary.

    Parameters
    ----------
    gt_labels, pred_labels : numpy.ndarray
        Integer label images of the same shape (0 = background).

    Returns
    -------
    dict of str to float
        Pixel scores under their own names (``accuracy``, ``iu``, ``recall``,
        ``precision``, ``f1``, ``performance``); object scores at IoU > 0.5
        prefixed where the name would clash (``object_precision``,
        ``object_recall``, ``object_f1``) or as is (``sq``, ``dq``, ``pq``,
        ``n_true``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``count_error``);
        ``aji``; and the pixel counts ``pixel_tp``, ``pixel_fp``, ``pixel_fn``.
        Counts are stored as floats so the dict averages and serialises
        uniformly.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), int); gt[:2] = 1
    >>> m = evaluate(gt, gt)
    >>> m["f1"], m["object_f1"], m["aji"], m["pq"]
    (1.0, 1.0, 1.0, 1.0)
    """
    gt, pred = _check_labels(gt_labels, pred_labels)
    counts = _pixel_counts(pred, gt)
    out = {k: float(v) for k, v in asdict(_scores_from_counts(*counts, gt.size)).items()}
    # Raw counts too, so F1 can also be pooled over a whole test set (nucseg.evaluate.summarise).
    out.update(zip(("pixel_tp", "pixel_fp", "pixel_fn"), map(float, counts)))
    ov = _overlap(gt, pred)
    obj = asdict(_object_scores(ov, 0.5))
    for key in ("precision", "recall", "f1"):
        out[f"object_{key}"] = float(obj.pop(key))
    out.update({k: float(v) for k, v in obj.items()})
    out["aji"] = _aji(ov)
    return out
