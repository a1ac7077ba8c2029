"""Tiles with a halo, resampling to the processing resolution, and object ownership.

Geometry
--------
The slide is processed at a *processing resolution* (the model's microns per pixel):
one pyramid level is read and resampled by ``scale`` (processing pixels per level
pixel). The processing image is cut into a grid of square *cores* of ``tile`` pixels.
Each tile reads its core grown by ``halo`` pixels on every side (the *read* box; where
it leaves the image, the image is mirrored as one-piece inference does). The network needs ``context`` pixels of that halo to produce a
reliable probability, so probabilities are trusted in the *valid* box: the core grown
by ``margin = halo - context`` (clipped to the image).

Ownership (why the result does not depend on the tile size)
----------------------------------------------------------
The dynamics watershed is local to each connected component of the foreground
``F = prob > threshold`` (markers are maxima whose dynamics *inside F* exceed lam, and
flooding never leaves F). So a component of F that lies inside the valid box without
touching its cut sides (sides that are not the image border) is segmented exactly as
in a whole-slide run. Each nucleus (watershed basin) is owned by the tile whose core
holds its first pixel in raster order, and the owner writes it with its full shape,
even where it reaches into a neighbour's core. Cores partition the image, so every
nucleus has exactly one owner.

A component of extent below the margin that has a pixel in a core lies inside that
tile's valid box, so the owner of each of its nuclei sees it whole: exact. When an
owned nucleus belongs to a component cut by the valid box (a cluster of touching
nuclei larger than the margin), :func:`own_objects` raises
:class:`ObjectTooLargeError` and the pipeline recomputes the tile with a doubled halo,
which keeps the result exact. At the largest halo allowed, the pipeline either raises
(``strict``) or keeps such nuclei marked *approximate* (a flag bit in the id, and
``exact = False`` in the table): their shape may differ from a one-piece run near
where the cluster was cut (a nucleus cut by the valid box keeps its visible part), and
where two tiles' approximate versions overlap, exact nuclei win, then the lower tile
index (the writer applies this rule pixel by pixel, so the output does not depend on
the order tiles finish).

The recipe's size filter (``min_area``, :class:`nucseg.PostprocessRecipe`) is applied
by the owner after this check, so only to nuclei whose shape is final: an exact nucleus
is dropped exactly when the one-piece run drops it (an approximate one is judged by the
part its tile keeps).

Label ids
---------
``id = (tile_index << object_bits) + rank``, where ``tile_index`` is the owner's index
in the row-major tile grid, ``rank`` (1, 2, ...) orders the owner's nuclei by their
first pixel in raster order, and ``object_bits = 32 - ceil(log2(n_tiles))``; the top
bit of the ``rank`` field marks approximate nuclei. Ids are unique, never 0, and
identical across runs and resumes with the same settings (not across tile sizes).
Labels are uint32 unless the grid needs more than 16 bits of tile index, then uint64.

Resampling
----------
Separable linear interpolation (a triangle kernel widened to ``1/scale`` source pixels
when downsampling, for anti-aliasing). The taps and weights of an output pixel depend
only on its global position, and borders clamp at the *slide* edge, so a pixel gets the
same value bit for bit whichever tile computes it: the compiled kernel
(``cpp/include/nucseg/resample.hpp``) accumulates each value tap by tap in float32 in a
fixed order, rows first, then rounds half to even.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Relative difference between a level's and the target's microns per pixel under
#: which the level is used as it is (resampling by 2% only blurs).
RESAMPLE_TOLERANCE = 0.02

#: Largest processing image side and tile count accepted (bad metadata shows up here).
MAX_SIDE = 2**31 - 1
MAX_TILES = 2**24

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, half-open, in processing pixels."""


class ObjectTooLargeError(ValueError):
    """An object crosses a tile's valid box: the halo is too small for it."""


@dataclass(frozen=True)
class Geometry:
    """Where the processing image comes from and how it is cut.

    Attributes
    ----------
    level : int
        Pyramid level read.
    level_size : tuple of int
        ``(height, width)`` of that level.
    size : tuple of int
        ``(height, width)`` of the processing image.
    scale : tuple of float
        ``(sy, sx)``: processing pixels per level pixel (1.0 means no resampling).
    mpp : tuple of float
        ``(mpp_y, mpp_x)`` of the processing image, in micrometres.
    level0_mpp : tuple of float
        ``(mpp_y, mpp_x)`` of slide level 0.
    level_downsample : tuple of float
        ``(dy, dx)``: level-0 pixels per level pixel.
    tile, halo, context : int
        Core size, halo and network context in processing pixels.
    """

    level: int
    level_size: tuple[int, int]
    size: tuple[int, int]
    scale: tuple[float, float]
    mpp: tuple[float, float]
    level0_mpp: tuple[float, float]
    level_downsample: tuple[float, float]
    tile: int
    halo: int
    context: int

    @property
    def margin(self) -> int:
        """Pixels of trusted probability around the core (``halo - context``)."""
        return self.halo - self.context

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (math.ceil(self.size[0] / self.tile), math.ceil(self.size[1] / self.tile))

    @property
    def n_tiles(self) -> int:
        """Number of tiles in the grid."""
        return self.grid[0] * self.grid[1]

    @property
    def resampled(self) -> bool:
        """Whether the level is resampled to reach the processing resolution."""
        return self.scale != (1.0, 1.0)

    def to_level0(self, yx: np.ndarray) -> np.ndarray:
        """Map processing pixel coordinates ``(..., 2)`` (pixel centres) to level 0."""
        yx = np.asarray(yx, dtype=np.float64)
        s = np.asarray(self.scale)
        d = np.asarray(self.level_downsample)
        return ((yx + 0.5) / s) * d - 0.5


@dataclass(frozen=True)
class Tile:
    """One tile of the grid, with its boxes in processing pixels (see module docs)."""

    index: int
    row: int
    col: int
    core: Box
    read: Box
    valid: Box


def with_halo(tile: Tile, geom: Geometry, halo: int) -> Tile:
    """The same tile with another halo (read box ``core +- halo``, valid box ``core +- (halo - context)``)."""
    if halo <= geom.context:
        raise ValueError(f"halo must be larger than the model context {geom.context}, got {halo}")
    c = tile.core
    return Tile(
        index=tile.index,
        row=tile.row,
        col=tile.col,
        core=c,
        read=(c[0] - halo, c[1] + halo, c[2] - halo, c[3] + halo),
        valid=_grow(c, halo - geom.context, geom.size),
    )


def _grow(box: Box, by: int, size: tuple[int, int]) -> Box:
    y0, y1, x0, x1 = box
    return (max(0, y0 - by), min(size[0], y1 + by), max(0, x0 - by), min(size[1], x1 + by))


def make_tiles(geom: Geometry) -> list[Tile]:
    """All tiles of the grid in row-major order (index = row * n_cols + col)."""
    rows, cols = geom.grid
    tiles = []
    for r in range(rows):
        for c in range(cols):
            core = (
                r * geom.tile,
                min(geom.size[0], (r + 1) * geom.tile),
                c * geom.tile,
                min(geom.size[1], (c + 1) * geom.tile),
            )
            tiles.append(
                Tile(
                    index=r * cols + c,
                    row=r,
                    col=c,
                    core=core,
                    read=(core[0] - geom.halo, core[1] + geom.halo, core[2] - geom.halo, core[3] + geom.halo),
                    valid=_grow(core, geom.margin, geom.size),
                )
            )
    return tiles


def choose_level(level_mpps: list[float], target_mpp: float) -> int:
    """Index of the level whose microns per pixel is closest to ``target_mpp``.

    Closeness is measured as a ratio (log scale); ties go to the finer level, since
    downsampling loses less than upsampling.
    """
    if not level_mpps:
        raise ValueError("level_mpps must not be empty")
    dist = [abs(math.log(m / target_mpp)) for m in level_mpps]
    best = min(dist)
    return min(i for i, d in enumerate(dist) if d <= best + 1e-9)


def plan_geometry(
    level_sizes: list[tuple[int, int]],
    level0_mpp: tuple[float, float],
    target_mpp: float,
    *,
    tile: int,
    halo: int,
    context: int,
    level: int | None = None,
    stride: int = 1,
) -> Geometry:
    """Choose the level and the processing size for a slide.

    Parameters
    ----------
    level_sizes : list of (width, height)
        Pyramid level sizes, finest first.
    level0_mpp : tuple of float
        Level-0 microns per pixel ``(x, y)``.
    target_mpp : float
        The model's microns per pixel.
    tile, halo, context : int
        Core size, halo and network context in processing pixels; ``tile`` and ``halo``
        must be multiples of ``stride`` and ``halo`` larger than ``context``.
    level : int, optional
        Force this level instead of the closest one.
    stride : int
        The network's total stride: tile origins stay multiples of it so that
        strided networks see every tile at the same phase.

    Returns
    -------
    Geometry
    """
    if tile <= 0 or tile % stride:
        raise ValueError(f"tile must be a positive multiple of the model stride {stride}, got {tile}")
    if halo % stride:
        raise ValueError(f"halo must be a multiple of the model stride {stride}, got {halo}")
    if halo <= context:
        raise ValueError(
            f"halo must be larger than the model context ({context} px) to leave room for nuclei, got {halo}"
        )
    w0, h0 = level_sizes[0]
    mpps = [math.sqrt(level0_mpp[0] * w0 / w * level0_mpp[1] * h0 / h) for w, h in level_sizes]
    if level is None:
        level = choose_level(mpps, target_mpp)
    elif not 0 <= level < len(level_sizes):
        raise ValueError(f"level must be in [0, {len(level_sizes) - 1}], got {level}")
    w, h = level_sizes[level]
    mx, my = level0_mpp[0] * w0 / w, level0_mpp[1] * h0 / h
    if abs(math.sqrt(mx * my) / target_mpp - 1.0) <= RESAMPLE_TOLERANCE:
        size, scale, mpp = (h, w), (1.0, 1.0), (my, mx)
    else:
        size = (max(1, round(h * my / target_mpp)), max(1, round(w * mx / target_mpp)))
        scale = (size[0] / h, size[1] / w)
        mpp = (my / scale[0], mx / scale[1])
    if max(size) > MAX_SIDE or math.ceil(size[0] / tile) * math.ceil(size[1] / tile) > MAX_TILES:
        raise ValueError(
            f"the processing image would be {size[1]}x{size[0]} px in "
            f"{math.ceil(size[0] / tile) * math.ceil(size[1] / tile)} tiles; check the slide's mpp "
            f"(level 0: {level0_mpp[0]:g} um/px) or use a larger tile"
        )
    return Geometry(
        level=level,
        level_size=(h, w),
        size=size,
        scale=scale,
        mpp=mpp,
        level0_mpp=(level0_mpp[1], level0_mpp[0]),
        level_downsample=(h0 / h, w0 / w),
        tile=tile,
        halo=halo,
        context=context,
    )


# -- resampling ----------------------------------------------------------------------


def resample_taps(start: int, stop: int, scale: float, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """Source taps and weights for output pixels ``start..stop-1`` along one axis.

    Returns
    -------
    index : ndarray of int64, shape (n, k)
        Source pixel of each tap, clamped to ``[0, n_src)``.
    weight : ndarray of float32, shape (n, k)
        Normalised weights (each row sums to 1).
    """
    p = np.arange(start, stop, dtype=np.float64)
    centre = (p + 0.5) / scale - 0.5
    radius = max(1.0, 1.0 / scale)
    k = int(math.ceil(2 * radius)) + 1
    first = np.floor(centre - radius).astype(np.int64) + 1
    index = first[:, None] + np.arange(k)[None, :]
    weight = np.maximum(0.0, 1.0 - np.abs(index - centre[:, None]) / radius)
    weight /= weight.sum(axis=1, keepdims=True)
    return np.clip(index, 0, n_src - 1), weight.astype(np.float32)


def read_region(reader: object, geom: Geometry, box: Box) -> np.ndarray:
    """Read ``box`` of the processing image from the slide as RGB uint8.

    Parts of ``box`` outside the image are filled by mirroring the image at its
    border (numpy's ``reflect``), the way one-piece inference pads a whole image.

    Parameters
    ----------
    reader : SlideReader
        The open slide.
    geom : Geometry
        Level and scale.
    box : Box
        ``(y0, y1, x0, x1)`` in processing pixels; may extend beyond the image.
    """
    y0, y1, x0, x1 = box
    h, w = geom.size
    inside = (max(0, y0), min(h, y1), max(0, x0), min(w, x1))
    if inside != box:
        if inside[0] >= inside[1] or inside[2] >= inside[3]:
            raise ValueError(f"box {box} does not overlap the {h}x{w} image")
        pads = ((inside[0] - y0, y1 - inside[1]), (inside[2] - x0, x1 - inside[3]), (0, 0))
        # np.pad repeats the reflection when the image is thinner than the pad.
        return np.pad(_read_inside(reader, geom, inside), pads, mode="reflect")
    return _read_inside(reader, geom, box)


def _read_inside(reader: object, geom: Geometry, box: Box) -> np.ndarray:
    y0, y1, x0, x1 = box
    if not geom.resampled:
        return reader.read(geom.level, x0, y0, x1 - x0, y1 - y0)  # type: ignore[attr-defined]
    from nucseg._core import resample_separable

    h, w = geom.level_size
    iy, wy = resample_taps(y0, y1, geom.scale[0], h)
    ix, wx = resample_taps(x0, x1, geom.scale[1], w)
    sy0, sy1 = int(iy.min()), int(iy.max()) + 1
    sx0, sx1 = int(ix.min()), int(ix.max()) + 1
    src = reader.read(geom.level, sx0, sy0, sx1 - sx0, sy1 - sy0)  # type: ignore[attr-defined]
    return resample_separable(np.ascontiguousarray(src), iy - sy0, wy, ix - sx0, wx)


# -- ids -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdScheme:
    """Global label ids: ``(tile_index << object_bits) + rank`` (see module docs).

    The top bit of the object field marks *approximate* nuclei (see
    :func:`own_objects`), so a writer can tell them from exact ones.
    """

    n_tiles: int
    tile_bits: int = field(init=False)
    object_bits: int = field(init=False)
    dtype: str = field(init=False)

    def __post_init__(self) -> None:
        if self.n_tiles <= 0:
            raise ValueError(f"n_tiles must be positive, got {self.n_tiles}")
        tile_bits = max(1, math.ceil(math.log2(self.n_tiles)))
        total = 32 if tile_bits <= 16 else 64
        object.__setattr__(self, "tile_bits", tile_bits)
        object.__setattr__(self, "object_bits", total - tile_bits)
        object.__setattr__(self, "dtype", "uint32" if total == 32 else "uint64")

    @property
    def max_per_tile(self) -> int:
        """Most nuclei of one kind (exact or approximate) one tile may own."""
        return (1 << (self.object_bits - 1)) - 1

    def ids(self, tile_index: int, count: int, *, approximate: bool = False) -> np.ndarray:
        """Ids of the ``count`` nuclei owned by one tile, in rank order."""
        if count > self.max_per_tile:
            raise ValueError(
                f"tile {tile_index} owns {count} nuclei, more than the {self.max_per_tile} the "
                "label ids allow; use a smaller --tile"
            )
        base = np.uint64(tile_index) << np.uint64(self.object_bits)
        if approximate:
            base |= np.uint64(1) << np.uint64(self.object_bits - 1)
        return (base + np.arange(1, count + 1, dtype=np.uint64)).astype(self.dtype)

    def tile_of(self, ids: np.ndarray) -> np.ndarray:
        """Owning tile index of each id."""
        return (np.asarray(ids, dtype=np.uint64) >> np.uint64(self.object_bits)).astype(np.int64)

    def is_approximate(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id belongs to an approximate nucleus."""
        bit = np.uint64(1) << np.uint64(self.object_bits - 1)
        return (np.asarray(ids, dtype=np.uint64) & bit) != 0

    def priority(self, ids: np.ndarray) -> np.ndarray:
        """Who wins a pixel claimed twice: exact before approximate, then the lower tile.

        Background (0) has the lowest priority. The maximum over claims does not depend
        on the order of the writes, so the output does not either.
        """
        ids = np.asarray(ids)
        pr = np.where(self.is_approximate(ids), 0, 1 << 40) - self.tile_of(ids)
        return np.where(ids == 0, np.iinfo(np.int64).min, pr)


# -- ownership -----------------------------------------------------------------------


@dataclass
class TileResult:
    """The nuclei one tile owns, ready to be written.

    Attributes
    ----------
    tile : Tile
    box : Box or None
        Bounding box of the owned pixels in processing pixels, None when it owns none.
    labels : ndarray or None
        Global ids inside ``box`` (0 elsewhere, including pixels of other tiles' nuclei).
    ids : ndarray
        The owned ids, in rank order (exact ones first).
    exact : ndarray of bool
        False for approximate nuclei (part of a cluster too large for any halo tried).
    area, mean_prob : ndarray
        Pixels and mean probability per owned nucleus.
    centroid : ndarray, shape (n, 2)
        ``(y, x)`` centroid per nucleus in processing pixels.
    bbox : ndarray, shape (n, 4)
        ``(y0, x0, y1, x1)`` per nucleus in processing pixels (half-open).
    prob_core : ndarray of uint8 or None
        The probability of the core as uint8 (0..255), for ``--save-prob``.
    rgb_core : ndarray of uint8 or None
        The RGB of the core at the processing resolution, for ``--save-image``.
    """

    tile: Tile
    box: Box | None
    labels: np.ndarray | None
    ids: np.ndarray
    exact: np.ndarray
    area: np.ndarray
    mean_prob: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    prob_core: np.ndarray | None = None
    rgb_core: np.ndarray | None = None


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(2, connectivity)


def own_objects(
    labels: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    tile: Tile,
    geom: Geometry,
    scheme: IdScheme,
    *,
    connectivity: int = 1,
    approximate: bool = False,
    min_area: int = 0,
) -> TileResult:
    """Keep the nuclei a tile owns and give them global ids.

    A nucleus (watershed basin) is owned by the tile whose core holds its first pixel
    in raster order. It is *exact* when its foreground component lies inside the valid
    box without touching a cut side: the dynamics watershed is local to foreground
    components, so it is then segmented exactly as in a one-piece run. Owned nuclei
    under ``min_area`` pixels are dropped only once that is settled (after the check
    that may raise :class:`ObjectTooLargeError`): an exact nucleus has its one-piece
    area, so it is dropped exactly when the one-piece recipe drops it.

    Parameters
    ----------
    labels : ndarray of int, shape of ``tile.valid``
        Watershed labels computed on the valid box.
    prob : ndarray of float, same shape
        The probability the labels came from.
    threshold : float
        Foreground threshold used by the watershed (``F = prob > threshold`` as the
        kernel evaluates it: :func:`nucseg.postprocess.foreground`).
    tile : Tile
    geom : Geometry
    scheme : IdScheme
    connectivity : int
        The watershed connectivity (1: 4-neighbours, 2: 8-neighbours).
    approximate : bool
        What to do with an owned nucleus whose component is cut by the valid box.
        False: raise :class:`ObjectTooLargeError` (the caller retries with a larger
        halo). True: keep it, marked approximate (if the nucleus itself is cut, only
        its part inside the valid box is kept).
    min_area : int
        Owned nuclei with fewer pixels are dropped (the recipe's size filter:
        :class:`nucseg.PostprocessRecipe`); an approximate nucleus is judged by the
        part this tile keeps.

    Returns
    -------
    TileResult

    Raises
    ------
    ObjectTooLargeError
        When ``approximate`` is False and an owned nucleus's component is cut.
    """
    from scipy import ndimage

    from nucseg._core import region_stats
    from nucseg.postprocess import foreground

    vy0, vy1, vx0, vx1 = tile.valid
    if labels.shape != (vy1 - vy0, vx1 - vx0) or prob.shape != labels.shape:
        raise ValueError(
            f"labels {labels.shape} and prob {prob.shape} must both have the valid box shape "
            f"{(vy1 - vy0, vx1 - vx0)}"
        )
    h, w = labels.shape
    empty = TileResult(
        tile=tile,
        box=None,
        labels=None,
        ids=np.zeros(0, scheme.dtype),
        exact=np.zeros(0, bool),
        area=np.zeros(0, np.int64),
        mean_prob=np.zeros(0, np.float32),
        centroid=np.zeros((0, 2)),
        bbox=np.zeros((0, 4), np.int64),
    )
    # Every basin's first pixel, area, coordinate and probability sums and box in one pass.
    first, area, sum_y, sum_x, sum_prob, bbox, _ = region_stats(np.ascontiguousarray(labels, np.int32), prob)
    basins = np.flatnonzero(first >= 0)
    if basins.size == 0:
        return empty
    anchor = first[basins]
    ay, ax = anchor // w + vy0, anchor % w + vx0
    cy0, cy1, cx0, cx1 = tile.core
    in_core = (ay >= cy0) & (ay < cy1) & (ax >= cx0) & (ax < cx1)
    if not in_core.any():
        return empty
    basins, anchor, ay, ax = basins[in_core], anchor[in_core], ay[in_core], ax[in_core]

    # Components (and basins) touching a cut side of the valid box may continue beyond it.
    # The kernel's own foreground test: `prob > threshold` on float32 would compare in float32.
    comp, n_comp = ndimage.label(foreground(prob, threshold), structure=_structure(connectivity))
    cut_comp = np.zeros(n_comp + 1, bool)
    for side, is_cut in (
        ((0, slice(None)), vy0 > 0),
        ((h - 1, slice(None)), vy1 < geom.size[0]),
        ((slice(None), 0), vx0 > 0),
        ((slice(None), w - 1), vx1 < geom.size[1]),
    ):
        if is_cut:
            cut_comp[comp[side]] = True
    cut_comp[0] = False
    inexact = cut_comp[comp.ravel()[anchor]]
    if inexact.any() and not approximate:
        i = int(np.flatnonzero(inexact)[0])
        halo = cy0 - tile.read[0]
        raise ObjectTooLargeError(
            f"tile {tile.index} (core y={cy0}:{cy1} x={cx0}:{cx1}): a foreground object starting at "
            f"y={int(ay[i])} x={int(ax[i])} reaches beyond the {halo - geom.context} px margin the halo leaves "
            f"(halo {halo} - model context {geom.context}); raise --halo or --max-halo"
        )

    # The size filter, now that every kept nucleus is exact (or final at the largest halo);
    # dropped before ranking, so ids stay 1..n for the nuclei written.
    if min_area > 1:
        big = area[basins] >= min_area  # same rule as PostprocessRecipe.keeps
        if not big.all():
            basins, anchor, inexact = basins[big], anchor[big], inexact[big]
            if basins.size == 0:
                return empty

    # Rank: exact nuclei first, each kind by first pixel in raster order (translation invariant).
    order = np.lexsort((anchor, inexact))
    basins, inexact = basins[order], inexact[order]
    n_exact = int((~inexact).sum())
    ids = np.concatenate(
        [scheme.ids(tile.index, n_exact), scheme.ids(tile.index, basins.size - n_exact, approximate=True)]
    )
    area = area[basins]
    cy = sum_y[basins] / area + vy0
    cx = sum_x[basins] / area + vx0
    mp = sum_prob[basins] / area
    bbox = bbox[basins] + np.array([vy0, vx0, 1 + vy0, 1 + vx0])  # (y0, x0, y1, x1), y1 and x1 exclusive
    box = (int(bbox[:, 0].min()), int(bbox[:, 2].max()), int(bbox[:, 1].min()), int(bbox[:, 3].max()))
    # The global ids of the kept basins over the box; 0 for the rest.
    lut = np.zeros(first.size, scheme.dtype)
    lut[basins] = ids
    crop = lut[labels[box[0] - vy0 : box[1] - vy0, box[2] - vx0 : box[3] - vx0]]
    return TileResult(
        tile=tile,
        box=box,
        labels=crop,
        ids=ids,
        exact=~inexact,
        area=area,
        mean_prob=mp.astype(np.float32),
        centroid=np.stack([cy, cx], axis=1),
        bbox=bbox,
    )


def merge_claims(existing: np.ndarray, new: np.ndarray, scheme: IdScheme) -> np.ndarray:
    """Write the non-zero pixels of ``new`` over ``existing`` where they win.

    A pixel keeps the claim of highest :meth:`IdScheme.priority`, so merging tiles in
    any order (or twice) gives the same array.
    """
    out = np.array(existing, copy=True)
    mine = new != 0
    if scheme.is_approximate(new[mine]).any() or scheme.is_approximate(out[mine]).any():
        mine &= scheme.priority(new) > scheme.priority(out)
    out[mine] = new[mine]
    return out


def crop_box(box: Box, inside: Box) -> tuple[slice, slice]:
    """Slices selecting ``box`` within an array covering ``inside``."""
    return (slice(box[0] - inside[0], box[1] - inside[0]), slice(box[2] - inside[2], box[3] - inside[2]))
