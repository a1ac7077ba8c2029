"""Pure-Python references of the compiled kernels (used by the tests and benchmarks only).

:func:`resample_reference` is the float32 NumPy resampling that
``nucseg._core.resample_separable`` reproduces bit for bit. For
:func:`nucseg.watershed_dynamics`, two independent pieces:

* :func:`reference_watershed` runs the same flooding sweep as the C++ kernel, written for
  reading rather than speed: ``heapq`` ordered by (-value, push age), dictionaries for the
  two union-finds, then every piece of a label cut off from its marker by lines set to 0
  (the C++ kernel only searches where such a piece can occur; here the search always runs).
  The C++ result must equal it pixel for pixel, ties included.
* :func:`marker_groups` computes the markers from the *definition* of dynamics, with no
  flooding at all: for each regional maximum, a max-min path search to the nearest strictly
  higher pixel. The objects of either implementation must correspond one-to-one with these
  groups, which checks the sweep's dynamics against the definition.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

__all__ = ["marker_groups", "reference_watershed", "regional_maxima"]


def _offsets(connectivity: int) -> list[tuple[int, int]]:
    # Raster order, the same as the C++ Neighbourhood: it fixes the push order.
    return [
        (dy, dx)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0) and (connectivity == 2 or dy == 0 or dx == 0)
    ]


def _neighbours(p: tuple[int, int], shape: tuple[int, int], offsets: list[tuple[int, int]]):
    for dy, dx in offsets:
        y, x = p[0] + dy, p[1] + dx
        if 0 <= y < shape[0] and 0 <= x < shape[1]:
            yield (y, x)


def _foreground(prob: np.ndarray, threshold: float) -> np.ndarray:
    if prob.dtype.kind == "u":
        return prob > math.floor(threshold)
    return prob.astype(np.float64) > threshold


def regional_maxima(prob: np.ndarray, fg: np.ndarray, connectivity: int) -> list[list[tuple[int, int]]]:
    """Regional-maximum plateaus of ``prob`` inside ``fg``, in raster order of first pixel."""
    offsets = _offsets(connectivity)
    seen = np.zeros(prob.shape, bool)
    plateaus = []
    for start in zip(*np.nonzero(fg)):
        start = (int(start[0]), int(start[1]))
        if seen[start]:
            continue
        value = prob[start]
        plateau, stack, is_max = [start], [start], True
        seen[start] = True
        while stack:
            p = stack.pop()
            for q in _neighbours(p, prob.shape, offsets):
                if not fg[q]:
                    continue
                if prob[q] > value:
                    is_max = False
                elif prob[q] == value and not seen[q]:
                    seen[q] = True
                    plateau.append(q)
                    stack.append(q)
        if is_max:
            plateaus.append(sorted(plateau))
    return plateaus


def _dynamics(prob: np.ndarray, fg: np.ndarray, plateau, offsets) -> float:
    """Smallest drop a path inside fg must accept to reach a strictly higher pixel."""
    height = float(prob[plateau[0]])
    best = {p: height for p in plateau}  # best (largest) path minimum found so far
    heap = [(-height, p) for p in plateau]
    while heap:
        neg_low, p = heapq.heappop(heap)
        low = -neg_low
        if low < best[p]:
            continue
        if float(prob[p]) > height:
            return height - low
        for q in _neighbours(p, prob.shape, offsets):
            if fg[q]:
                cand = min(low, float(prob[q]))
                if cand > best.get(q, -math.inf):
                    best[q] = cand
                    heapq.heappush(heap, (-cand, q))
    return math.inf


def marker_groups(
    prob: np.ndarray, lam: float, threshold: float, connectivity: int
) -> list[set[tuple[int, int]]]:
    """Markers from the definition: maxima with dynamics > lam, grouped.

    Maxima of equal height that connect inside {prob >= height - lam} form one marker
    (they are one regional maximum of the lam-reconstruction). Returns one set of pixels
    (the union of the grouped plateaus) per marker.
    """
    fg = _foreground(prob, threshold)
    offsets = _offsets(connectivity)
    # A component's highest maximum (dynamics inf) is a marker even for lam = inf.
    markers = [
        m
        for m in regional_maxima(prob, fg, connectivity)
        if (d := _dynamics(prob, fg, m, offsets)) == math.inf or d > lam
    ]
    groups: list[set[tuple[int, int]]] = []
    assigned: set[tuple[int, int]] = set()
    for plateau in markers:
        if plateau[0] in assigned:
            continue
        height = float(prob[plateau[0]])
        # Flood {prob >= height - lam} from this plateau; collect every marker plateau met.
        reach, stack = {plateau[0]}, [plateau[0]]
        while stack:
            p = stack.pop()
            for q in _neighbours(p, prob.shape, offsets):
                # drop <= lam, written as the kernel computes it (no rounding of height - lam)
                if fg[q] and q not in reach and height - float(prob[q]) <= lam:
                    reach.add(q)
                    stack.append(q)
        group = set()
        for other in markers:
            if other[0] in reach and float(prob[other[0]]) == height:
                group.update(other)
        assigned.update(group)
        groups.append(group)
    return groups


def reference_watershed(
    prob: np.ndarray,
    lam: float,
    threshold: float,
    connectivity: int = 1,
    watershed_line: bool = True,
) -> np.ndarray:
    """The sweep of the C++ kernel, in plain Python (slow; small images only)."""
    offsets = _offsets(connectivity)
    fg = _foreground(prob, threshold)
    values = prob.astype(np.float64)
    shape = prob.shape

    # Basins: seeds are regional-maximum plateaus, numbered in raster order of first pixel.
    label_of: dict[tuple[int, int], int] = {}  # processed pixel -> basin it carries
    is_line: set[tuple[int, int]] = set()
    label_parent: dict[int, int] = {}
    comp_parent: dict[int, int] = {}
    peak: dict[int, float] = {}
    status: dict[int, str] = {}  # "top" (undecided leader), "marker", "nonmarker"
    seed_of: dict[tuple[int, int], int] = {}
    for b, plateau in enumerate(regional_maxima(prob, fg, connectivity), start=1):
        label_parent[b] = comp_parent[b] = b
        peak[b] = float(values[plateau[0]])
        status[b] = "top"
        for p in plateau:
            seed_of[p] = b

    def find(parent: dict[int, int], b: int) -> int:
        while parent[b] != b:
            b = parent[b]
        return b

    heap: list[tuple[float, int, tuple[int, int]]] = []
    age = 0
    queued: set[tuple[int, int]] = set()
    for p in sorted(seed_of):  # raster order
        heapq.heappush(heap, (-values[p], age, p))
        age += 1
        queued.add(p)
        label_of[p] = seed_of[p]

    while heap:
        _, _, p = heapq.heappop(heap)
        seen = []  # (basin, real) of processed neighbours, in neighbour order
        for q in _neighbours(p, shape, offsets):
            if fg[q] and q not in queued:
                queued.add(q)
                heapq.heappush(heap, (-values[q], age, q))
                age += 1
            elif q in label_of and p not in seed_of:
                seen.append((label_of[q], q not in is_line))
        if p in seed_of:
            continue
        level = values[p]

        comps = list(dict.fromkeys(find(comp_parent, b) for b, _ in seen))
        if len(comps) > 1:
            top = max(comps, key=lambda c: (peak[c], -c))
            for c in comps:
                if c != top:
                    status[c] = "marker" if peak[c] - level > lam else "nonmarker"
                    comp_parent[c] = top

        def is_marker(r: int) -> bool:
            return status[r] == "marker" or (status[r] == "top" and peak[r] - level > lam)

        roots = [(find(label_parent, b), real) for b, real in seen]
        real_markers = {r for r, real in roots if real and is_marker(r)}
        line_markers = {r for r, real in roots if not real and is_marker(r)}
        unknown = [r for r, _ in roots if status[r] == "top" and not is_marker(r)]
        if real_markers:
            target = min(real_markers)
        elif line_markers:
            target = min(line_markers)
        elif unknown:
            target = unknown[0]
        else:
            target = min(r for r, _ in roots)
        for r, _ in roots:
            if r != target and status[r] == "nonmarker":
                label_parent[r] = target
        label_of[p] = target
        if watershed_line and len(real_markers) >= 2:
            is_line.add(p)

    # An object is what its marker (its root basin's plateau) reaches without crossing a
    # line; the flood crossed lines, so a piece cut off by them becomes line pixels too.
    root_of = {p: find(label_parent, b) for p, b in label_of.items() if p not in is_line}
    reached = {p for p, b in seed_of.items() if find(label_parent, b) == b}
    stack = list(reached)
    while stack:
        p = stack.pop()
        for q in _neighbours(p, shape, offsets):
            if q not in reached and root_of.get(q) == root_of[p]:
                reached.add(q)
                stack.append(q)

    out = np.zeros(shape, np.int32)
    final: dict[int, int] = {}
    for p in sorted(reached):  # raster order of first pixel
        r = root_of[p]
        final.setdefault(r, len(final) + 1)
        out[p] = final[r]
    return out


# -- resampling -------------------------------------------------------------------


def _apply_taps(src: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """One pass of the reference: ``out = term0; out = out + term1; ...`` in float32.

    Parameters
    ----------
    src : ndarray of float32
        The image (rows, columns, channels).
    index, weight : ndarray, shape (n, k)
        Source index and weight of each tap of each output pixel along ``axis``.
    axis : int
        0 for the vertical pass, 1 for the horizontal one.

    Returns
    -------
    ndarray of float32
    """
    shape = [1] * src.ndim
    shape[axis] = index.shape[0]
    out = np.take(src, index[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for t in range(1, index.shape[1]):
        out = out + np.take(src, index[:, t], axis=axis) * weight[:, t].reshape(shape)
    return out


def resample_reference(src: np.ndarray, iy: np.ndarray, wy: np.ndarray, ix: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """The NumPy resampling ``_core.resample_separable`` must reproduce bit for bit (the
    path ``tiling.read_region`` used before the kernel): rows, columns, rint, clip.

    Parameters
    ----------
    src : ndarray of uint8, shape (h, w, c)
    iy, wy : ndarray, shape (n_rows, k)
        Row taps.
    ix, wx : ndarray, shape (n_cols, k')
        Column taps.

    Returns
    -------
    ndarray of uint8, shape (n_rows, n_cols, c)
    """
    rows = _apply_taps(src.astype(np.float32), iy, wy, axis=0)
    out = _apply_taps(rows, ix, wx, axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
